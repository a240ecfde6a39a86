"""Sampled tiles and the review grid lie beside the tissue (never over it) and the view goes to them;
the Sample panel's job cancels cleanly, also when the panel is closed mid-run (pytest-qt, xvfb)."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import test_widgets as W
from napari_histodiff.core.jobs.load import open_handle

fresh_model = W.fresh_model  # autouse: no model loaded before or after a test
dock, sample_with = W.dock, W.sample_with

TISSUE_SCALE = (0.5, 0.5)


def yx_box(layer):
    from napari_histodiff.widgets.sample import _yx_box

    return _yx_box(layer)


def overlap(a, b) -> bool:
    """Whether two ``[[ymin, xmin], [ymax, xmax]]`` boxes share any area."""
    return bool(np.all(a[0] < b[1]) and np.all(b[0] < a[1]))


def inside(point, box) -> bool:
    return bool(np.all(box[0] <= point) and np.all(point <= box[1]))


def shown(viewer):
    """The layers but the class labels the Review panel draws over tiles."""
    return [layer for layer in viewer.layers if not layer.name.startswith("classes: ")]


def camera_yx(viewer):
    from napari_histodiff.widgets.sample import camera_of

    return np.asarray(camera_of(viewer).center, dtype=float)[-2:]


def tissue_viewer(make_napari_viewer, fresh_model, finetuned_bundle):
    from napari_histodiff import load_bundle

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    tissue = viewer.add_image(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), name="tissue", rgb=True,
                              scale=TISSUE_SCALE)
    viewer.add_shapes([[[10, 10], [40, 60]]], name="annotations", scale=TISSUE_SCALE)
    fresh_model.set(open_handle(finetuned_bundle[0], "cpu"))
    return viewer, tissue


def test_sampled_tiles_and_the_grid_lie_beside_the_tissue(make_napari_viewer, qtbot, finetuned_bundle,
                                                          fresh_model, tmp_path):
    viewer, tissue = tissue_viewer(make_napari_viewer, fresh_model, finetuned_bundle)
    tissue_box = yx_box(tissue)
    s = dock(viewer, "Sample")
    sample_with(s, qtbot, "DAB-rich", 4, 4, 2, tmp_path / "samples")
    layer = viewer.layers["synthetic: DAB-rich"]
    assert layer.data.shape == (4, 32, 32, 3)  # still a stack: one tile per step, as the review expects
    box = yx_box(layer)
    assert not overlap(box, tissue_box), (box, tissue_box)
    assert box[0][1] > tissue_box[1][1]  # to the right of the tissue
    assert np.allclose(layer.scale[-2:], TISSUE_SCALE)  # a tile pixel is a tissue pixel
    assert np.allclose(box[1] - box[0], np.multiply(TISSUE_SCALE, 32))
    assert inside(camera_yx(viewer), box)  # the view went to the tiles
    assert "target_class" in layer.metadata["features"].columns

    # a second sampling goes beside the first, not over it
    sample_with(s, qtbot, "hematoxylin-rich", 2, 4, 2, tmp_path / "samples")
    second = viewer.layers["synthetic: hematoxylin-rich"]
    assert not overlap(yx_box(second), box) and not overlap(yx_box(second), tissue_box)
    assert inside(camera_yx(viewer), yx_box(second))

    r = dock(viewer, "Review & export")
    r.layers.setCurrentText(layer.name)
    grid = r.grid_view()
    assert grid.name == f"grid: {layer.name}" and len(shown(viewer)) == 5
    grid_box = yx_box(grid)
    for other in (tissue, layer, second):
        assert not overlap(grid_box, yx_box(other)), other.name
    assert np.allclose(grid.scale[-2:], TISSUE_SCALE)
    assert inside(camera_yx(viewer), grid_box)
    r.decide(False)
    assert r.grid_view().name == grid.name and len(shown(viewer)) == 5  # refreshed in place
    assert np.allclose(yx_box(grid), grid_box)  # still beside the tissue

    # a reopened sample folder is placed beside too
    reopened = r.open_folder(layer.metadata["histodiff"]["folder"])
    assert not overlap(yx_box(reopened), tissue_box) and inside(camera_yx(viewer), yx_box(reopened))


def start_long_sampling(s, qtbot, out):
    from napari_histodiff.widgets._common import State

    s.target.setCurrentText("DAB-rich")
    s.form["n"].value, s.form["steps"].value, s.form["batch_size"].value = 64, 50, 1
    s.out.value = str(out)
    s.start()
    assert s.state == State.RUNNING and not s.start_button.isEnabled() and s.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: s.progress.value() > 0, timeout=60_000)


def assert_nothing_on_disk(s, out):
    assert not s.folder.exists()
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_cancel_during_sampling_leaves_no_folder(make_napari_viewer, qtbot, finetuned_bundle, fresh_model,
                                                 tmp_path):
    from napari_histodiff.widgets._common import State

    viewer, _ = tissue_viewer(make_napari_viewer, fresh_model, finetuned_bundle)
    s = dock(viewer, "Sample")
    out = tmp_path / "samples"
    start_long_sampling(s, qtbot, out)
    s.start()  # busy: ignored
    s.cancel()
    assert s.state == State.CANCELLING and not s.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: s.state == State.STOPPED, timeout=60_000)
    assert s.start_button.isEnabled() and not s.cancel_button.isEnabled() and s.worker is None
    assert s.status.text() == "stopped"
    assert_nothing_on_disk(s, out)
    sample_with(s, qtbot, "DAB-rich", 2, 4, 2, out)  # and it samples again
    assert s.folder.is_dir()


def test_closing_the_sample_panel_stops_its_job(make_napari_viewer, qtbot, finetuned_bundle, fresh_model,
                                                tmp_path):
    from qtpy.QtWidgets import QDockWidget

    from napari_histodiff.widgets._common import State

    viewer, _ = tissue_viewer(make_napari_viewer, fresh_model, finetuned_bundle)
    s = dock(viewer, "Sample")
    out = tmp_path / "samples"
    start_long_sampling(s, qtbot, out)
    job = s.job
    panel, = [d for d in viewer.window._qt_window.findChildren(QDockWidget) if d.widget() is s]
    panel.destroyOnClose()  # the panel's close button
    assert job.state == State.CANCELLING
    qtbot.waitUntil(lambda: job.state == State.STOPPED, timeout=60_000)
    assert job.worker is None
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_export_ignores_a_second_start_and_reports_its_worker(make_napari_viewer, qtbot, finetuned_bundle,
                                                              fresh_model, tmp_path):
    viewer, _ = tissue_viewer(make_napari_viewer, fresh_model, finetuned_bundle)
    s = dock(viewer, "Sample")
    s.form["rule"].value = "none"
    sample_with(s, qtbot, "DAB-rich", 2, 4, 2, tmp_path / "samples")
    r = dock(viewer, "Review & export")
    r.layers.setCurrentText("synthetic: DAB-rich")
    r.accept_all()
    r.out.value = str(tmp_path / "set")
    r.export()
    assert r.job.busy and r.worker is not None and not r.export_button.isEnabled()
    r.export()  # busy: ignored
    qtbot.waitUntil(lambda: r.worker is None and r.export_button.isEnabled(), timeout=30_000)
    assert (tmp_path / "set" / "manifest.csv").is_file() and r.intent.value == "append"

"""The audit in the Review tab (issue 28, items 1 and 2): each tile shows its similarity to its nearest real
tile, the tiles sort by it, the nearest real tile is shown beside the current one, and Export leaves the
flagged tiles out while "leave out near-copies" is checked (pytest-qt, xvfb; no training: the audit folder
is written with ``core.formats.audit.write_audit``, and the Audit button runs a stand-in job)."""

import json

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_review_station import sample_folder, wait_export  # noqa: E402
from test_widgets import dock, errors_shown, fresh_model  # noqa: E402,F401 (fresh_model: an autouse fixture)

SIMILARITY = [0.41, 0.97, 0.63]  # tile 1 is the near-copy


def real_tiles(folder, n=3):
    """``n`` real tiles ``real_<k>.png`` (16 px, each its own pixels); returns them."""
    from PIL import Image

    folder.mkdir(parents=True)
    tiles = np.random.default_rng(7).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    for k, tile in enumerate(tiles):
        Image.fromarray(tile).save(folder / f"real_{k}.png")
    return tiles


def audit_rows(samples, real):
    from napari_histodiff.core.formats.records import read_records

    return [{"tile": str(samples / r.file), "class": r.target_class, "nearest_real": str(real / f"real_{k}.png"),
             "similarity": sim, "near_copy": sim > 0.9, "feature_similarity": 0.5, "source_folder": str(samples),
             "file": r.file} for k, (r, sim) in enumerate(zip(read_records(samples), SIMILARITY))]


def write(folder, rows):
    from napari_histodiff.core.formats.audit import write_audit

    folder.mkdir(parents=True, exist_ok=True)
    write_audit(folder, rows, {"threshold": 0.9, "how": "given"}, 1)


def infos(monkeypatch):
    import napari.utils.notifications as N

    shown = []
    monkeypatch.setattr(N, "show_info", shown.append)
    return shown


def test_similarities_sort_nearest_real_tile_and_export_without_near_copies(make_napari_viewer, qtbot, tmp_path,
                                                                            monkeypatch):
    from napari_histodiff.core.generate.export import read_export
    from napari_histodiff.widgets.review import audit_folder_for

    shown, told = errors_shown(monkeypatch), infos(monkeypatch)
    samples = sample_folder(tmp_path / "s", "TUM", [0.9, 0.8, 0.7])
    real = tmp_path / "real"
    pixels = real_tiles(real)
    write(audit_folder_for(samples), audit_rows(samples, real))  # s-audit, written after the tiles

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="slide", scale=(0.5, 0.5), units=("um", "um"))
    r = dock(viewer, "Review & export")
    layer = r.open_folder(samples)  # the folder's audit is found again beside it
    labels = viewer.layers[f"classes: {layer.name}"]
    assert list(labels.features["label"]) == ["TUM 0.41", "TUM 0.97 copy?", "TUM 0.63"]
    assert "1 of 3 tiles are near-copies" in r.audit_status.text() and r.sort_box.isEnabled()
    r.accept_all()
    assert list(labels.features["label"]) == ["TUM ✓ 0.41", "TUM ✓ 0.97 copy?", "TUM ✓ 0.63"]

    # sorting: the most copy-like tile first, Next / Previous and the grid in that order
    r.sort_box.setChecked(True)
    assert r.index() == 1 and "<b>near-copy</b>" in r.current.text()
    r.move(1)
    assert r.index() == 2
    r.move(1)
    assert r.index() == 0
    r.move(1)  # the last one: stays
    assert r.index() == 0
    grid = r.grid_view()
    assert list(viewer.layers[f"classes: {grid.name}"].features["label"]) == [
        "TUM ✓ 0.97 copy?", "TUM ✓ 0.63", "TUM ✓ 0.41"]
    assert np.array_equal(grid.data[2:18, 2:18], layer.data[1])  # the first cell holds the near-copy
    r.sort_box.setChecked(False)  # back to the folder's order, in the grid too
    assert np.array_equal(grid.data[2:18, 2:18], layer.data[0])
    assert list(viewer.layers[f"classes: {grid.name}"].features["label"])[0] == "TUM ✓ 0.41"

    # the nearest real tile of the current tile, under the layer, in its scale and units; it follows the tile
    viewer.layers.selection.active = layer
    viewer.dims.set_current_step(0, 1)
    near = r.show_nearest()
    assert near.name == "nearest real: review: s" and np.array_equal(near.data, pixels[1])
    assert np.allclose(near.scale, layer.scale[-2:]) and [str(u) for u in near.units] == ["micrometer"] * 2
    box, tiles_box = near.extent.world[:, -2:], layer.extent.world[:, -2:]
    assert box[0, 0] > tiles_box[1, 0] and np.isclose(box[0, 1], tiles_box[0, 1])  # under the tiles, aligned
    viewer.dims.set_current_step(0, 2)
    assert np.array_equal(viewer.layers["nearest real: review: s"].data, pixels[2])
    assert viewer.layers.selection.active.name == layer.name  # showing it never takes the selection

    # Export with "leave out near-copies" (the default): the flagged tile is not in the set
    assert r.leave_out.isChecked()
    r.out.value = str(tmp_path / "set")
    r.export()
    wait_export(qtbot, r)
    _, rows = read_export(tmp_path / "set")
    assert sorted(row["id"] for row in rows) == ["TUM_00000", "TUM_00002"]
    assert {row["similarity"] for row in rows} == {0.41, 0.63}
    audit = json.loads((tmp_path / "set" / "export.json").read_text())["audit"]
    assert audit["near_copies_left_out"] == 1 and audit["folders"] == [str(audit_folder_for(samples))]
    assert "not audited" not in told[-1]
    # unchecked: every accepted tile, the near-copy flagged
    r.leave_out.setChecked(False)
    r.out.value = str(tmp_path / "all")
    r.export()
    wait_export(qtbot, r)
    _, rows = read_export(tmp_path / "all")
    assert {row["id"]: row["near_copy"] for row in rows} == {"TUM_00000": False, "TUM_00001": True,
                                                             "TUM_00002": False}
    # removing the tiles removes their nearest real tile
    viewer.layers.remove(layer)
    assert "nearest real: review: s" not in viewer.layers
    assert not shown, shown


def test_without_an_audit_export_says_so_and_stale_audits_are_not_shown(make_napari_viewer, qtbot, tmp_path,
                                                                        monkeypatch):
    import os

    from napari_histodiff.core.generate.export import read_export
    from napari_histodiff.widgets.review import audit_folder_for

    shown, told = errors_shown(monkeypatch), infos(monkeypatch)
    samples = sample_folder(tmp_path / "s", "TUM", [0.9, 0.8, 0.7])
    write(audit_folder_for(samples), audit_rows(samples, tmp_path / "real"))
    tile = samples / "TUM" / "TUM_00001.tif"
    later = os.stat(audit_folder_for(samples) / "audit.json").st_mtime_ns + 10**9
    os.utime(tile, ns=(later, later))  # a tile rewritten after the audit: that audit is not its own
    r = dock(make_napari_viewer(), "Review & export")
    layer = r.open_folder(samples)
    assert list(r.viewer.layers[f"classes: {layer.name}"].features["label"]) == ["TUM", "TUM", "TUM"]
    assert "not audited" in r.audit_status.text() and not r.sort_box.isEnabled()
    assert r.show_nearest() is None and "press Audit" in shown.pop()
    r.accept_all()
    r.out.value = str(tmp_path / "set")
    r.export()
    wait_export(qtbot, r)
    assert len(read_export(tmp_path / "set")[1]) == 3
    assert "3 tiles exported" in told[-1] and "not audited" in told[-1]
    assert not shown, shown


def test_the_audit_button_runs_the_job_beside_the_sample_folder(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import napari_histodiff.core.jobs.audit as job
    from napari_histodiff.core.base.events import Progress

    shown, told = errors_shown(monkeypatch), infos(monkeypatch)
    samples = sample_folder(tmp_path / "s", "TUM", [0.9, 0.8, 0.7])
    real = tmp_path / "real"
    real_tiles(real)
    given = []

    def stand_in(opts):  # the job's contract without training: options in, audit folder and message out
        given.append(opts)
        for k in range(3):
            yield Progress("synthetic tiles", k + 1, 3)
        opts.out.mkdir()
        write(opts.out, audit_rows(samples, real))
        return {"message": "1 of 3 synthetic tiles are near-copies", "near_copies": 1}

    monkeypatch.setattr(job, "audit", stand_in)
    r = dock(make_napari_viewer(), "Review & export")
    layer = r.open_folder(samples)
    r.audit()  # no real tiles chosen: one message, no job
    assert len(shown) == 1 and "real tiles" in shown.pop() and not given
    r.real.value = str(real)
    r.audit_button.click()
    qtbot.waitUntil(lambda: not r.audit_job.busy and r.audit_button.text() == "Audit", timeout=30_000)
    opts = given[0]
    assert opts.samples == [samples] and opts.against == [real] and opts.out == tmp_path / "s-audit"
    assert opts.intent == "new"
    assert list(r.viewer.layers[f"classes: {layer.name}"].features["label"]) == [
        "TUM 0.41", "TUM 0.97 copy?", "TUM 0.63"]
    assert told[-1].startswith("1 of 3 synthetic tiles are near-copies") and r.audit_progress.isHidden()
    assert r.options().audit == [tmp_path / "s-audit"] and r.options().keep_near_copies is False
    # the real tiles' folder is remembered for the next time the panel opens
    again = dock(make_napari_viewer(), "Review & export")
    assert again.real.line_edit.native.text() == str(real) and again.leave_out.isChecked()
    assert not shown, shown


def test_the_quality_report_opens_in_a_panel_with_its_plots(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """Issue 28, item 3: the audit's report.html is shown inside napari, its embedded plots included."""
    import io

    from PIL import Image
    from qtpy.QtCore import QUrl
    from qtpy.QtGui import QTextDocument
    from qtpy.QtWidgets import QDockWidget

    import napari_histodiff.core.jobs.audit as job
    from napari_histodiff.core.evaluate.report import _img
    from napari_histodiff.widgets.report import _VIEWS, TITLE, ReportView

    infos(monkeypatch)
    shown = errors_shown(monkeypatch)
    samples = sample_folder(tmp_path / "s", "TUM", [0.9, 0.8, 0.7])
    real = tmp_path / "real"
    real_tiles(real)
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 90)).save(png, format="PNG")

    def stand_in(opts):
        yield from ()
        write(opts.out, audit_rows(samples, real))
        (opts.out / "report.html").write_text(f"<h1>Quality report: 3 synthetic tiles</h1>{_img(png.getvalue(), 'gap')}",
                                              encoding="utf-8")
        return {"message": "1 of 3 synthetic tiles are near-copies"}

    monkeypatch.setattr(job, "audit", stand_in)
    r = dock(make_napari_viewer(), "Review & export")
    r.open_folder(samples)
    assert not r.report_button.isEnabled()  # no audit yet
    r.real.value = str(real)
    r.audit_button.click()
    qtbot.waitUntil(lambda: not r.audit_job.busy and r.audit_button.text() == "Audit", timeout=30_000)
    assert r.report_button.isEnabled()
    r.report_button.click()
    view = _VIEWS[r.viewer]
    assert isinstance(view, ReportView) and view.path == tmp_path / "s-audit" / "report.html" and r.report_button.isEnabled()
    assert "Quality report: 3 synthetic tiles" in view.toPlainText()
    src = view.toHtml().split('src="', 1)[1].split('"', 1)[0]
    image = view.loadResource(QTextDocument.ResourceType.ImageResource, QUrl(src))
    assert (image.width(), image.height()) == (40, 30)
    # closed, then asked for again: one panel, showing the report
    docks = [d for d in r.viewer.window._qt_window.findChildren(QDockWidget) if d.name == TITLE]
    assert len(docks) == 1 and not docks[0].isHidden()
    r.viewer.window.remove_dock_widget(docks[0])
    r.report_button.click()
    again = _VIEWS[r.viewer]
    assert again is not view and again.path == view.path and again.parent() is not None and not shown, shown

"""napari widgets through the manifest, with the real workers on tiny models (pytest-qt, xvfb)."""

import json
import time

import numpy as np
import pytest

from napari_histodiff.core.jobs.load import open_handle

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

PLUGIN = "napari-histodiff"


@pytest.fixture(autouse=True)
def fresh_model():
    from napari_histodiff.widgets._state import MODEL

    MODEL.model, MODEL.training, MODEL.labeled = None, False, None
    yield MODEL
    MODEL.model, MODEL.training, MODEL.labeled = None, False, None


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def sample_with(widget, qtbot, target, n, steps, batch_size, out):
    """Run the Sample widget to the end."""
    from napari_histodiff.widgets._common import State

    widget.target.setCurrentText(target)
    assert widget.target.currentText() == target
    widget.form["n"].value, widget.form["steps"].value, widget.form["batch_size"].value = n, steps, batch_size
    widget.out.value = str(out)
    widget.start()
    qtbot.waitUntil(lambda: widget.state in (State.DONE, State.FAILED), timeout=60_000)
    assert widget.state == State.DONE


def open_annotated_sample(viewer):
    from napari_histodiff._sample_data import demo_tissue_annotated

    for data, kwargs, kind in demo_tissue_annotated():
        getattr(viewer, f"add_{kind}")(data, **kwargs)


def test_every_widget_is_created_through_the_manifest(make_napari_viewer):
    from napari_histodiff.widgets.classes import ClassesWidget
    from napari_histodiff.widgets.finetune import FinetuneWidget
    from napari_histodiff.widgets.load import LoadWidget
    from napari_histodiff.widgets.review import ReviewWidget
    from napari_histodiff.widgets.sample import SampleWidget

    viewer = make_napari_viewer()
    for name, cls in (("Load model", LoadWidget), ("Annotate", ClassesWidget), ("Fine-tune", FinetuneWidget),
                      ("Sample", SampleWidget), ("Review & export", ReviewWidget)):
        assert isinstance(dock(viewer, name), cls)


def test_tiles_from_labels_shapes_and_points_layers(make_napari_viewer):
    from napari_histodiff.widgets._layers import extract

    viewer = make_napari_viewer()
    yy, xx = np.mgrid[:128, :128]
    image = viewer.add_image(np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8), rgb=True)
    labels = np.zeros((128, 128), np.uint8)
    labels[:64, :64] = 1
    labels[96:, :] = 2
    lab = viewer.add_labels(labels, features={"index": [0, 1, 2], "class": ["", "TUM", "STR"]})
    tiles, _ = extract(image, lab, 32, 32, 0.5)
    assert tiles.class_names == ["STR", "TUM"]
    assert list(np.bincount(tiles.labels)) == [4, 4]  # STR: one row of 4 tiles; TUM: 2x2 tiles
    t = tiles.tiles[list(tiles.labels).index(1)]
    assert t[0, 0, 0] == 0 and t[0, 0, 1] == 0  # the first TUM tile starts at (0, 0)

    shapes = viewer.add_shapes([np.array([[0, 0], [0, 63], [63, 63], [63, 0]]),
                                np.array([[64, 64], [64, 127], [127, 127], [127, 64]])],
                               shape_type="polygon", features={"class": ["TUM", "STR"]})
    tiles, _ = extract(image, shapes, 32, 32, 0.5)
    assert dict(zip(tiles.class_names, np.bincount(tiles.labels))) == {"STR": 4, "TUM": 4}

    points = viewer.add_points(np.array([[40, 40], [80, 80], [2, 2]]), features={"class": ["TUM", "STR", "TUM"]})
    tiles, skipped = extract(image, points, 32, 32, 0.5)
    assert len(tiles) == 2 and skipped == 1
    centre = tiles.tiles[0][16, 16]
    assert (centre[0], centre[1]) == (40, 40)  # the tile is centred on the point


def test_bad_inputs_keep_start_disabled(make_napari_viewer, qtbot, trained_bundle, fresh_model):
    from napari_histodiff import load_bundle

    viewer = make_napari_viewer()
    w = dock(viewer, "Fine-tune")
    assert not w.start_button.isEnabled() and "load a model" in w.status.text()
    fresh_model.set(open_handle(trained_bundle, "cpu"))
    w.extract()  # no image layer: a notification, still disabled
    assert w.tiles is None and not w.start_button.isEnabled()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="grey")  # not RGB: not offered
    assert w.image.count() == 0
    open_annotated_sample(viewer)
    w.extract()  # on a worker thread
    qtbot.waitUntil(lambda: w.tiles is not None, timeout=30_000)
    assert w.start_button.isEnabled()
    fresh_model.training = True  # another training is running
    w._update()
    assert not w.start_button.isEnabled() and "another training" in w.status.text()


def run_finetune(qtbot, viewer, trained_bundle, fresh_model, out, **steps):
    from napari_histodiff import load_bundle

    fresh_model.set(open_handle(trained_bundle, "cpu"))
    open_annotated_sample(viewer)
    w = dock(viewer, "Fine-tune")
    w.out.value = str(out)
    for name, value in steps.items():
        w.form[name].value = value
    w.extract()
    qtbot.waitUntil(lambda: w.tiles is not None, timeout=30_000)
    w.start()
    return w


def test_finetune_worker_runs_to_completion_and_loop_stays_responsive(make_napari_viewer, qtbot, trained_bundle,
                                                                       fresh_model, tmp_path):
    from qtpy.QtCore import QTimer

    from napari_histodiff.widgets._common import State

    viewer = make_napari_viewer()
    stamps = []
    timer = QTimer()
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start(10)
    w = run_finetune(qtbot, viewer, trained_bundle, fresh_model, tmp_path / "ft", classifier_steps=30,
                     selection_steps=20, unet_steps=10)
    qtbot.waitUntil(lambda: w.state == State.DONE, timeout=120_000)
    timer.stop()
    assert fresh_model.model.class_names == ["DAB-rich", "hematoxylin-rich"]
    assert fresh_model.model.path == tmp_path / "ft" and not fresh_model.training
    assert len(w.plot.values) > 0
    # the verdict in plain words, the figures one click away
    verdict = w.verdict.text()
    assert verdict.startswith("<b>Good enough to sample.") or verdict.startswith("<b>Not good enough yet: "), verdict
    assert "add tiles" in verdict or "train it longer" in verdict or "Good enough" in verdict  # what to do next
    assert not w.figures.isVisible() and "held-out tiles recognised" in w.figures.text()
    w.figures_button.click()
    assert w.figures.isVisibleTo(w)
    stall = max(np.diff(stamps)) * 1000
    print(f"\nlongest event-loop stall during a tiny fine-tune: {stall:.0f} ms over {len(stamps)} ticks")
    assert len(stamps) > 20  # the loop kept ticking while training ran


def test_finetune_with_a_folder_of_unlabelled_tiles_reports_pseudo_labels(make_napari_viewer, qtbot, trained_bundle,
                                                                          fresh_model, labeled_tiles, tmp_path):
    import imageio.v3 as iio

    from napari_histodiff import load_bundle
    from napari_histodiff.widgets._common import State

    unl = tmp_path / "unlabelled"
    unl.mkdir()
    for i in range(0, len(labeled_tiles), 3):
        iio.imwrite(unl / f"u{i}.png", labeled_tiles.tiles[i])
    viewer = make_napari_viewer()
    fresh_model.set(open_handle(trained_bundle, "cpu"))
    open_annotated_sample(viewer)
    w = dock(viewer, "Fine-tune")
    assert w.options().unlabeled == []  # empty: off
    w.out.value = str(tmp_path / "ft")
    w.unlabeled.value = str(unl)
    for name, value in dict(classifier_steps=5, selection_steps=20, unet_steps=0).items():
        w.form[name].value = value
    assert w.options().unlabeled == [unl]
    w.extract()
    qtbot.waitUntil(lambda: w.tiles is not None, timeout=30_000)
    w.start()
    qtbot.waitUntil(lambda: w.state == State.DONE, timeout=120_000)
    per_class = w.result["pseudo_labels"]["per_class"]
    assert w.result["pseudo_labels"]["scored"] == len(list(unl.iterdir()))
    assert "pseudo-labelled: " + ", ".join(f"{c} {n}" for c, n in per_class.items()) in w.summary


def test_cancel_leaves_a_resumable_checkpoint(make_napari_viewer, qtbot, trained_bundle, fresh_model, tmp_path):
    from napari_histodiff import load_bundle
    from napari_histodiff.widgets._common import State

    viewer = make_napari_viewer()
    out = tmp_path / "ft"
    w = run_finetune(qtbot, viewer, trained_bundle, fresh_model, out, classifier_steps=100000, unet_steps=10)
    qtbot.waitUntil(lambda: w.progress.format().startswith("latent_classifier") and w.overall.steps["latent_classifier"] > 3,
                    timeout=60_000)
    w.cancel()
    qtbot.waitUntil(lambda: w.state == State.STOPPED, timeout=60_000)
    from napari_histodiff.core.train.loop import checkpoints

    ckpt = json.loads((checkpoints(out / "training" / "latent_classifier")[0] / "checkpoint.json").read_text())
    assert 3 <= ckpt["step"] < 100000
    assert load_bundle(out, device="cpu").unet is not None  # the partly fine-tuned bundle loads
    assert w.start_button.isEnabled() and not fresh_model.training


def test_sample_review_export(make_napari_viewer, qtbot, finetuned_bundle, fresh_model, tmp_path):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.generate.export import read_export

    viewer = make_napari_viewer()
    fresh_model.set(open_handle(finetuned_bundle[0], "cpu"))
    s = dock(viewer, "Sample")
    sample_with(s, qtbot, "DAB-rich", 5, 5, 2, tmp_path / "samples")
    layer = viewer.layers["synthetic: DAB-rich"]
    assert layer.data.shape == (5, 32, 32, 3)
    feats = layer.metadata["features"]
    assert list(feats.columns) == ["target_class", "predicted_class", "confidence", "centroid_distance", "kept"]
    assert (feats["target_class"] == "DAB-rich").all() and feats["confidence"].between(0, 1).all()

    r = dock(viewer, "Review & export")
    r.layers.setCurrentText(layer.name)
    for keep in (True, False, True, False, True):
        r.decide(keep)  # decides the current tile and moves on
    assert list(layer.metadata["features"]["kept"]) == [True, False, True, False, True]
    r.out.value = str(tmp_path / "set")
    r.export()
    qtbot.waitUntil(lambda: (tmp_path / "set" / "manifest.csv").is_file(), timeout=30_000)
    tiles, rows = read_export(tmp_path / "set")
    assert len(rows) == 3
    assert np.array_equal(tiles, layer.data[[0, 2, 4]])


def test_sample_variations_of_the_annotated_tiles(make_napari_viewer, qtbot, finetuned_bundle, fresh_model,
                                                  labeled_tiles, tmp_path, monkeypatch):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.formats.records import read_records
    from napari_histodiff.widgets import sample as S

    errors = []
    monkeypatch.setattr(S, "notify_error", lambda exc, labels=None: errors.append(exc))
    viewer = make_napari_viewer()
    fresh_model.set(open_handle(finetuned_bundle[0], "cpu"))
    s = dock(viewer, "Sample")
    s.start_from.setCurrentText(S.ANNOTATED)
    s.start()  # nothing extracted yet: a message, no worker
    assert s.worker is None and "Fine-tune widget" in str(errors[-1])
    fresh_model.labeled = labeled_tiles
    assert not s.form["strength"].enabled or s.variations
    s.form["strength"].value = 0.3
    sample_with(s, qtbot, "hematoxylin-rich", 4, 10, 4, tmp_path / "samples")
    layer = viewer.layers["variations: hematoxylin-rich"]
    assert layer.data.shape == (4, 32, 32, 3)
    records = read_records(layer.metadata["histodiff"]["folder"])
    sources = {labeled_tiles.origin(i): labeled_tiles[i] for i in range(len(labeled_tiles))
               if labeled_tiles.label(i) == 1}
    assert [r.strength for r in records] == [0.3] * 4 and all(r.source_tile in sources for r in records)
    # at strength 0.3 each variation resembles its source more than the average hematoxylin-rich tile does
    mean_dist = np.mean([[np.abs(t.astype(float) - src).mean() for src in sources.values()] for t in layer.data])
    own = np.mean([np.abs(t.astype(float) - sources[r.source_tile]).mean() for t, r in zip(layer.data, records)])
    assert own < mean_dist, (own, mean_dist)


def test_reader_opens_an_exported_set(tmp_path, finetuned_bundle):
    from napari_histodiff import load_bundle
    from napari_histodiff._reader import get_reader
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.generate.export import ExportOptions, export_set
    from napari_histodiff.core.generate.sample_set import write_samples
    from napari_histodiff.core.generate.sampling import SampleOptions
    from napari_histodiff.core.generate.selection import SelectionRule

    b = load_bundle(finetuned_bundle[0], device="cpu")
    run_to_end(write_samples(b, SampleOptions(n=2, classes=b.class_names, steps=5), tmp_path / "s",
                             SelectionRule(rule="none")))
    run_to_end(export_set([tmp_path / "s"], tmp_path / "set", ExportOptions()))
    assert get_reader(str(tmp_path / "s")) is None
    (data, meta, kind), = get_reader(str(tmp_path / "set"))(str(tmp_path / "set"))
    assert data.shape == (4, 32, 32, 3) and kind == "image"
    assert list(meta["metadata"]["features"]["class"]) == ["DAB-rich"] * 2 + ["hematoxylin-rich"] * 2


def test_quitting_a_worker_runs_the_generators_clean_up(make_napari_viewer, qtbot):
    from napari_histodiff.core.base.events import Progress
    from napari_histodiff.widgets._common import start_worker

    make_napari_viewer()
    cleaned = []

    def job():
        try:
            for i in range(10**6):
                yield Progress("x", i, 10**6)
        finally:
            cleaned.append(True)

    worker = start_worker(job)
    qtbot.waitUntil(lambda: worker.is_running, timeout=5000)
    worker.quit()  # what napari does when the viewer closes
    qtbot.waitUntil(lambda: cleaned == [True], timeout=10_000)


# -- the widgets run the jobs (core.jobs), as the CLI does --------------------------------------

def compvis_fixture(name: str):
    import os
    from pathlib import Path

    env = os.environ.get("HISTODIFF_SHARED_FIXTURES")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    path = base / "compvis" / name
    if not path.is_file():
        pytest.skip(f"fixture {path} not available")
    return path


def errors_shown(monkeypatch):
    """The texts of the error notifications shown from now on."""
    import napari.utils.notifications as N

    shown = []
    monkeypatch.setattr(N, "show_error", shown.append)
    return shown


def test_finetune_a_compvis_checkpoint_opened_in_the_load_widget(make_napari_viewer, qtbot, fresh_model, tmp_path):
    from napari_histodiff import load_bundle
    from napari_histodiff.widgets._common import State

    ckpt = compvis_fixture("public.ckpt")
    assert ckpt.with_suffix(".yaml").is_file()
    viewer = make_napari_viewer()
    load = dock(viewer, "Load model")
    load.ckpt.value = str(ckpt)
    load.device.setCurrentText("cpu")
    load.load()
    qtbot.waitUntil(lambda: fresh_model.model is not None, timeout=60_000)
    # converted once into the user's cache; the GUI holds its description, not its weights
    assert fresh_model.model.source == ckpt and not hasattr(fresh_model.model, "unet")
    assert fresh_model.model.path.parent.name == "converted" and (fresh_model.model.path / "histodiff.json").is_file()
    open_annotated_sample(viewer)
    w = dock(viewer, "Fine-tune")
    out = tmp_path / "ft"
    w.out.value = str(out)
    for name, value in dict(classifier_steps=3, selection_steps=3, unet_steps=2).items():
        w.form[name].value = value
    w.extract()
    qtbot.waitUntil(lambda: w.tiles is not None, timeout=30_000)
    assert w.tiles.tile_size == 32
    w.start()
    qtbot.waitUntil(lambda: w.state in (State.DONE, State.FAILED), timeout=180_000)
    assert w.state == State.DONE
    assert fresh_model.model.path == out and fresh_model.model.class_names == ["DAB-rich", "hematoxylin-rich"]
    again = load_bundle(out, device="cpu")
    assert again.class_names == ["DAB-rich", "hematoxylin-rich"] and again.selection_classifier is not None
    assert "public.ckpt" in again.meta["provenance"]["pretrained_from"]


def test_finetuning_a_vq_model_is_refused_before_anything_is_written(make_napari_viewer, qtbot, fresh_model,
                                                                      tmp_path, monkeypatch):
    from test_convert import vq_bundle

    from napari_histodiff.widgets._common import State

    shown = errors_shown(monkeypatch)
    viewer = make_napari_viewer()
    from napari_histodiff.core.formats.bundle import save_bundle

    fresh_model.set(open_handle(save_bundle(vq_bundle(), tmp_path / "vq"), "cpu"))
    open_annotated_sample(viewer)
    w = dock(viewer, "Fine-tune")
    out = tmp_path / "ft"
    w.out.value = str(out)
    w.extract()
    qtbot.waitUntil(lambda: w.tiles is not None, timeout=30_000)
    w.start()
    qtbot.waitUntil(lambda: w.state == State.FAILED and w.worker is None, timeout=30_000)
    assert "VQ first stage" in shown[-1] and "KL" in shown[-1]
    assert not out.exists() and not fresh_model.training and w.start_button.isEnabled()


def test_sample_class_choices_mean_what_the_cli_means(make_napari_viewer, finetuned_bundle, fresh_model):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.generate.sampling import SampleOptions
    from napari_histodiff.widgets import sample as S

    viewer = make_napari_viewer()
    fresh_model.set(open_handle(finetuned_bundle[0], "cpu"))
    s = dock(viewer, "Sample")
    items = [s.target.itemText(i) for i in range(s.target.count())]
    assert items == ["DAB-rich", "hematoxylin-rich", S.ALL_CLASSES, S.UNGUIDED]
    assert not s.form["strength"].enabled
    s.target.setCurrentText(S.UNGUIDED)  # from noise, no class: unguided (the job samples unguided)
    opts = s.options()
    assert opts.classes == [] and opts.strength is None and opts.guidance == SampleOptions().guidance
    s.target.setCurrentText(S.ALL_CLASSES)
    assert s.options().classes == ["DAB-rich", "hematoxylin-rich"]
    s.start_from.setCurrentText(S.ANNOTATED)
    items = [s.target.itemText(i) for i in range(s.target.count())]
    assert items == [S.EACH_SOURCE, "DAB-rich", "hematoxylin-rich"] and s.form["strength"].enabled
    s.target.setCurrentText(S.EACH_SOURCE)  # as `histodiff sample --from DIR`: each toward its source's class
    opts = s.options()
    assert opts.classes == [] and opts.guidance == SampleOptions().guidance and opts.strength is None
    s.form["strength"].value = 0.3
    assert s.options().strength == 0.3
    s.start_from.setCurrentText(S.NOISE)  # strength returns to its default and is disabled
    assert s.options().strength is None and not s.form["strength"].enabled


def test_review_exports_only_into_its_own_folders_and_appends(make_napari_viewer, qtbot, finetuned_bundle,
                                                              fresh_model, tmp_path, monkeypatch):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.generate.export import read_export

    shown = errors_shown(monkeypatch)
    viewer = make_napari_viewer()
    fresh_model.set(open_handle(finetuned_bundle[0], "cpu"))
    s = dock(viewer, "Sample")
    s.form["rule"].value = "none"  # keep every tile
    sample_with(s, qtbot, "DAB-rich", 3, 4, 3, tmp_path / "samples")
    first = s.folder
    sample_with(s, qtbot, "DAB-rich", 3, 4, 3, tmp_path / "samples")  # same class and seed: a fresh folder
    assert s.folder != first and first.name == "DAB-rich-seed0" and s.folder.name == "DAB-rich-seed0-2"
    assert (first / "samples.csv").is_file()  # the older layer's folder is untouched
    sample_with(s, qtbot, "hematoxylin-rich", 2, 4, 2, tmp_path / "samples")
    r = dock(viewer, "Review & export")

    def accept_all(name):
        r.layers.setCurrentText(name)
        for _ in r.records:
            r.decide(True)

    accept_all("synthetic: DAB-rich")
    # a folder with a user's file is never an export target, whatever the intent
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.docx").write_text("years of work")
    r.out.value = str(documents)
    assert r.intent.value == "new"
    for intent in ("new", "overwrite"):
        r.intent.value = intent
        r.export()
        qtbot.waitUntil(lambda: r.worker is None and r.export_button.isEnabled(), timeout=30_000)
        assert "is never replaced or changed" in shown[-1]
    assert (documents / "thesis.docx").read_text() == "years of work"
    assert sorted(p.name for p in documents.iterdir()) == ["thesis.docx"]

    out = tmp_path / "set"
    r.out.value = str(out)
    assert r.intent.value == "new"
    r.export()
    qtbot.waitUntil(lambda: (out / "export.json").is_file() and r.worker is None, timeout=30_000)
    assert r.intent.value == "append"  # the folder now holds our export: the next export adds to it
    accept_all("synthetic: hematoxylin-rich")
    r.export()
    qtbot.waitUntil(lambda: r.worker is None and r.export_button.isEnabled(), timeout=30_000)
    tiles, rows = read_export(out)
    assert sorted({row["class"] for row in rows}) == ["DAB-rich", "hematoxylin-rich"]
    assert len(rows) == 3 + 2 and not shown[2:], shown

"""Review & export for real sets: bulk decisions and undo, reopening sample folders, one set from several
layers, append / overwrite, and a layer never writing onto tiles it does not show (pytest-qt, xvfb)."""

import json

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_widgets import dock, errors_shown, fresh_model  # noqa: F401 (fresh_model: an autouse fixture)


def sample_folder(folder, cls, confidences, seed=0):
    """A sample folder as `histodiff sample` writes it (tiles ``<class>/<id>.tif`` + samples.csv), undecided."""
    from napari_histodiff.core.formats.images import write_tile
    from napari_histodiff.core.formats.records import (
        RECORDS_FILE,
        TileRecord,
        write_records,
    )

    rng = np.random.default_rng(seed)
    records = []
    for i, conf in enumerate(confidences):
        r = TileRecord(id=f"{cls}_{i:05d}", file=f"{cls}/{cls}_{i:05d}.tif", target_class=cls, index=i, seed=seed,
                       sample_seed=seed * 1000 + i, sampler="ddim", steps=5, eta=1.0, guidance=10.0,
                       bundle_hash="abc", predicted_class=cls, confidence=conf)
        (folder / cls).mkdir(parents=True, exist_ok=True)
        write_tile(folder / r.file, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), r.as_row())
        records.append(r)
    write_records(folder / RECORDS_FILE, records)
    return folder


def kept_on_disk(folder):
    from napari_histodiff.core.formats.records import read_records

    return [r.kept for r in read_records(folder)]


def wait_export(qtbot, r):
    qtbot.waitUntil(lambda: r.worker is None and r.export_button.isEnabled(), timeout=30_000)


def test_accept_all_reject_below_and_undo_write_the_decisions(make_napari_viewer, tmp_path, monkeypatch):
    shown = errors_shown(monkeypatch)
    folder = sample_folder(tmp_path / "s", "TUM", [0.9, 0.2, 0.6, 0.1])
    r = dock(make_napari_viewer(), "Review & export")
    texts = {b.text() for b in r.findChildren(type(r.undo_button))}
    assert {"Accept (A)", "Reject (R)", "Undo (U)", "Next (N)", "Previous (P)"} <= texts  # keys shown
    layer = r.open_folder(folder)
    assert r.layers.layer().name == layer.name and not r.undo_button.isEnabled()
    r.accept_all()
    assert kept_on_disk(folder) == [True] * 4
    r.threshold.setValue(0.5)
    r.bulk_reject()
    assert kept_on_disk(folder) == [True, False, True, False]
    r.viewer.dims.set_current_step(0, 2)
    r.decide(False)  # the current tile (3rd), then the next one
    assert kept_on_disk(folder) == [True, False, False, False] and r.index() == 3
    assert list(layer.metadata["features"]["kept"]) == [True, False, False, False]
    r.undo()
    assert kept_on_disk(folder) == [True, False, True, False] and r.index() == 2
    r.undo()
    assert kept_on_disk(folder) == [True] * 4
    r.reject_all()
    assert kept_on_disk(folder) == [False] * 4
    r.undo()
    r.undo()
    assert kept_on_disk(folder) == [None] * 4 and [x.kept for x in r.records] == [None] * 4
    assert not r.undo_button.isEnabled()
    r.undo()  # nothing left to undo: nothing changes
    assert kept_on_disk(folder) == [None] * 4 and not shown


def test_a_sample_folder_reopens_with_its_decisions_after_a_restart(make_napari_viewer, tmp_path, monkeypatch):
    shown = errors_shown(monkeypatch)
    folder = sample_folder(tmp_path / "s", "STR", [0.8, 0.7, 0.3])
    r = dock(make_napari_viewer(), "Review & export")
    first = r.open_folder(folder)
    for keep in (False, True, False):
        r.decide(keep)
    r2 = dock(make_napari_viewer(), "Review & export")  # napari was closed and opened again
    again = r2.open_folder(folder)
    assert again.name == "review: s" and r2.layers.currentText() == again.name
    assert [x.kept for x in r2.records] == [False, True, False]
    assert np.array_equal(again.data, first.data)
    assert "1 accepted, 2 rejected, 0 undecided" in r2.counts.text()
    r2.open_folder(tmp_path / "nothing-here")  # not a sample folder: one message, no layer
    assert len(shown) == 1 and "samples.csv" in shown[0]
    assert [layer.name for layer in r2.viewer.layers] == ["review: s", "classes: review: s"]


def test_several_layers_export_into_one_set_and_append(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_histodiff.core.generate.export import read_export

    shown = errors_shown(monkeypatch)
    tum = sample_folder(tmp_path / "tum", "TUM", [0.9, 0.8, 0.1])
    stroma = sample_folder(tmp_path / "str", "STR", [0.9, 0.9], seed=1)
    more = sample_folder(tmp_path / "tum2", "TUM", [0.95], seed=2)
    r = dock(make_napari_viewer(), "Review & export")
    for folder in (tum, stroma, more):
        r.open_folder(folder)
        r.accept_all()
    r.layers.setCurrentText("review: tum")
    r.threshold.setValue(0.5)
    r.bulk_reject()
    r.check_for_export("review: tum", "review: str")
    out = tmp_path / "set"
    r.out.value = str(out)
    assert r.intent.value == "new"
    r.export()
    wait_export(qtbot, r)
    _, rows = read_export(out)
    assert sorted((row["class"], row["id"]) for row in rows) == [
        ("STR", "STR_00000"), ("STR", "STR_00001"), ("TUM", "TUM_00000"), ("TUM", "TUM_00001")]
    assert json.loads((out / "export.json").read_text())["sources"] == [str(tum), str(stroma)]
    assert r.intent.value == "append"  # the folder holds our set now: the next export adds to it
    r.check_for_export("review: tum2")
    r.export()
    wait_export(qtbot, r)
    _, rows = read_export(out)
    assert len(rows) == 5 and sum(row["class"] == "TUM" for row in rows) == 3
    assert json.loads((out / "export.json").read_text())["sources"] == [str(tum), str(stroma), str(more)]
    assert not shown, shown


def test_overwriting_a_set_asks_first(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_histodiff.core.generate.export import read_export
    from napari_histodiff.widgets import review as R

    shown = errors_shown(monkeypatch)
    asked = []
    answer = {"value": R.QMessageBox.StandardButton.No}

    def question(parent, title, text, *args):
        asked.append(text)
        return answer["value"]

    monkeypatch.setattr(R.QMessageBox, "question", staticmethod(question))
    r = dock(make_napari_viewer(), "Review & export")
    for folder in (sample_folder(tmp_path / "a", "TUM", [0.9, 0.9]), sample_folder(tmp_path / "b", "STR", [0.9])):
        r.open_folder(folder)
        r.accept_all()
    out = tmp_path / "set"
    r.out.value = str(out)
    r.check_for_export("review: a")
    r.export()
    wait_export(qtbot, r)
    assert not asked  # a new folder: nothing to replace, nothing asked
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r.check_for_export("review: b")
    r.intent.value = "overwrite"
    r.export()  # declined: nothing is written
    assert len(asked) == 1 and str(out) in asked[0] and r.worker is None
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [row["class"] for row in read_export(out)[1]] == ["TUM", "TUM"]
    answer["value"] = R.QMessageBox.StandardButton.Yes
    r.intent.value = "overwrite"
    r.export()
    wait_export(qtbot, r)
    assert len(asked) == 2 and [row["class"] for row in read_export(out)[1]] == ["STR"]
    assert not shown, shown


def test_a_layer_never_writes_onto_tiles_it_does_not_show(make_napari_viewer, qtbot, trained_bundle, tmp_path,
                                                         monkeypatch):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.generate.sample_set import write_samples
    from napari_histodiff.core.generate.sampling import SampleOptions

    shown = errors_shown(monkeypatch)
    bundle = load_bundle(trained_bundle, device="cpu")
    folder = tmp_path / "unguided-seed0"
    opts = SampleOptions(n=3, classes=[], steps=2, batch_size=3, device="cpu")
    run_to_end(write_samples(bundle, opts, folder))
    r = dock(make_napari_viewer(), "Review & export")
    old = r.open_folder(folder)
    r.decide(True)
    assert kept_on_disk(folder) == [True, None, None]
    # the same class and seed sampled again into the same folder (`histodiff sample --overwrite`)
    run_to_end(write_samples(bundle, opts, folder, intent="overwrite"))
    csv_before = (folder / "samples.csv").read_bytes()
    r.decide(False)
    r.accept_all()
    r.undo()
    assert len(shown) == 3 and all("was replaced" in s and "nothing was written" in s for s in shown), shown
    assert (folder / "samples.csv").read_bytes() == csv_before and kept_on_disk(folder) == [None] * 3
    assert [x.kept for x in old.metadata["histodiff"]["records"]] == [True, None, None]  # unchanged in memory too
    r.export()  # exporting it would export tiles nobody reviewed
    assert len(shown) == 4 and "was replaced" in shown[-1] and r.worker is None
    # opened again, the folder is reviewed as it is now; a second layer on it sees the first's writes
    new = r.open_folder(folder)
    other = r.open_folder(folder)
    r.layers.setCurrentText(new.name)
    r.accept_all()
    r.layers.setCurrentText(other.name)
    r.reject_all()
    assert "samples.csv" in shown[-1] and "changed" in shown[-1]
    assert kept_on_disk(folder) == [True] * 3

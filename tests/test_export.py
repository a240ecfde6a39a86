"""Export of augmentation sets: exact pixels, manifest and export.json, real tiles, atomic writes."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from napari_histodiff.core.base.owner import MARKER, read_owner

from napari_histodiff.core.generate import export as export_mod
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.generate.export import EXPORT_JSON, MANIFEST, ExportOptions, export_set, read_export
from napari_histodiff.core.formats.images import read_tile_record, write_tile
from napari_histodiff.core.formats.records import RECORDS_FILE, TileRecord, write_records
from napari_histodiff.core.data.tiles import TileFolder

T = 16


def make_samples(folder, specs, seed=0):
    """A sample folder like `histodiff sample` writes; specs: (target_class, kept, predicted_class)."""
    rng = np.random.default_rng(seed)
    records, tiles = [], {}
    for i, (target, kept, predicted) in enumerate(specs):
        rid = f"{target or 'any'}_{i:05d}"
        rec = TileRecord(id=rid, file=f"{target or 'unguided'}/{rid}.tif", target_class=target, index=i,
                         seed=seed, sample_seed=1000 * seed + i, sampler="ddim", steps=50, eta=1.0,
                         guidance=10.0 if target else 0.0, bundle_hash="abc123", predicted_class=predicted,
                         confidence=round(0.5 + i / 100, 4), centroid_distance=1.5 + i, nearest_centroid=predicted,
                         kept=kept)
        tile = rng.integers(0, 256, (T, T, 3), dtype=np.uint8)
        (folder / rec.file).parent.mkdir(parents=True, exist_ok=True)
        write_tile(folder / rec.file, tile, rec.as_row())
        records.append(rec)
        tiles[rid] = tile
    write_records(folder / RECORDS_FILE, records)
    return records, tiles


SPECS = [("TUM", True, "TUM"), ("TUM", False, "STR"), ("STR", True, "STR"), ("STR", True, "TUM"),
         ("TUM", True, "TUM"), ("STR", False, "TUM")]


@pytest.fixture()
def samples(tmp_path):
    folder = tmp_path / "samples"
    records, tiles = make_samples(folder, SPECS)
    return folder, records, tiles


def real_folder(tmp_path, labeled=True):
    rng = np.random.default_rng(7)
    root = tmp_path / ("real" if labeled else "real_flat")
    tiles = {}
    for cls, n in (("STR", 2), ("TUM", 3)):
        for k in range(n):
            path = root / cls / f"t{k}.png" if labeled else root / f"{cls}_{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            tile = rng.integers(0, 256, (T, T, 3), dtype=np.uint8)
            iio.imwrite(path, tile)
            tiles[str(path)] = (cls, tile)
    return TileFolder(root, T), tiles


def events_and_result(gen):
    events = []
    return events, run_to_end(gen, events.append)


@pytest.mark.parametrize("fmt", ["tif", "png"])
def test_round_trip_copies_exactly_the_kept_tiles(samples, tmp_path, fmt):
    folder, records, tiles = samples
    out = tmp_path / "set"
    events, summary = events_and_result(export_set([folder], out, ExportOptions(fmt=fmt), params={"rule": "both"}))
    kept = [r for r in records if r.kept]
    assert [e.step for e in events] == list(range(1, len(kept) + 1)) and events[-1].total == len(kept)
    assert summary["total"] == 4 and summary["out"] == str(out) and summary["skipped"] == 0
    assert summary["counts"] == {"TUM": {"synthetic": 2, "real": 0}, "STR": {"synthetic": 2, "real": 0}}

    data, rows = read_export(out)
    assert data.dtype == np.uint8 and data.shape == (4, T, T, 3)
    assert [r["id"] for r in rows] == [r.id for r in kept]
    for tile, row, rec in zip(data, rows, kept):
        assert np.array_equal(tile, tiles[rec.id])
        assert row["file"] == f"{rec.target_class}/{rec.id}.{fmt}" and (out / row["file"]).is_file()
        assert row["class"] == rec.target_class and row["source"] == "synthetic" and row["kept"] is True
        assert row["confidence"] == rec.confidence and row["centroid_distance"] == rec.centroid_distance
        assert (row["seed"], row["sample_seed"], row["steps"]) == (rec.seed, rec.sample_seed, rec.steps)
        assert (row["sampler"], row["guidance"], row["eta"]) == ("ddim", 10.0, 1.0)
        assert row["predicted_class"] == rec.predicted_class and row["bundle_hash"] == "abc123"
        if fmt == "tif":
            desc = read_tile_record(out / row["file"])
            assert desc["id"] == rec.id and desc["target_class"] == rec.target_class
            assert desc["confidence"] == rec.confidence and desc["sample_seed"] == rec.sample_seed
            assert desc["class"] == rec.target_class and desc["file"] == row["file"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["STR", "TUM", MANIFEST, EXPORT_JSON, MARKER])
    listed = read_owner(out)["files"]  # the ownership record lists exactly the files written
    assert sorted(listed) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                                    if p.is_file() and p.name != MARKER)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())

    meta = json.loads((out / EXPORT_JSON).read_text())
    assert meta["format"] == "napari-histodiff-export" and meta["version"] == 1
    assert meta["counts"] == summary["counts"] and meta["parameters"] == {"rule": "both"}
    assert meta["options"] == {"samples": [str(folder)], "out": str(out), "intent": "new", "include_real": None,
                               "fmt": fmt, "only_kept": True, "audit": [], "keep_near_copies": False}
    assert meta["sources"] == [str(folder)] and "numpy" in meta["versions"] and meta["created"]
    assert meta["tile_size"] == T and meta["real_sources"] == []


def test_all_exports_every_tile_with_its_kept_flag(samples, tmp_path):
    folder, records, tiles = samples
    summary = run_to_end(export_set(folder, tmp_path / "set", ExportOptions(only_kept=False)))
    data, rows = read_export(tmp_path / "set")
    assert summary["total"] == len(records) == len(rows)
    assert [r["kept"] for r in rows] == [r.kept for r in records]
    assert all(np.array_equal(t, tiles[r["id"]]) for t, r in zip(data, rows))


def test_include_real_adds_labeled_real_tiles(samples, tmp_path):
    folder, records, tiles = samples
    real, real_tiles = real_folder(tmp_path)
    out = tmp_path / "set"
    summary = run_to_end(export_set([folder], out, ExportOptions(include_real=real.root)))  # opened at 16 px
    assert summary["counts"] == {"TUM": {"synthetic": 2, "real": 3}, "STR": {"synthetic": 2, "real": 2}}
    data, rows = read_export(out)
    real_rows = [(t, r) for t, r in zip(data, rows) if r["source"] == "real"]
    assert len(real_rows) == 5 and len(rows) == 9
    for k, (tile, row) in enumerate(real_rows):
        cls, expected = real_tiles[real.origin(k)]
        assert row["class"] == cls and row["kept"] is True and row["file"] == f"{cls}/real_{k:05d}.tif"
        assert row["confidence"] is None and row["seed"] is None and row["sampler"] == ""
        assert np.array_equal(tile, expected)
        assert read_tile_record(out / row["file"])["origin"] == real.origin(k)
    meta = json.loads((out / EXPORT_JSON).read_text())
    assert meta["counts"] == summary["counts"] and meta["real_sources"] == [str(real.root)]
    assert meta["options"]["include_real"] == str(real.root)


def test_unlabeled_real_tiles_are_refused(samples, tmp_path):
    real, _ = real_folder(tmp_path, labeled=False)
    with pytest.raises(HistodiffError, match="sub-folder per class"):
        run_to_end(export_set([samples[0]], tmp_path / "set", ExportOptions(include_real=real.root)))
    assert not (tmp_path / "set").exists()


def test_unguided_tiles_go_under_their_predicted_class(tmp_path):
    folder = tmp_path / "unguided"
    records, tiles = make_samples(folder, [("", True, "TUM"), ("", True, "STR"), ("", True, ""), ("", False, "TUM")])
    summary = run_to_end(export_set([folder], tmp_path / "set"))
    assert summary["skipped"] == 1 and summary["total"] == 2
    assert summary["counts"] == {"TUM": {"synthetic": 1, "real": 0}, "STR": {"synthetic": 1, "real": 0}}
    data, rows = read_export(tmp_path / "set")
    assert [(r["class"], r["file"]) for r in rows] == [("TUM", "TUM/any_00000.tif"), ("STR", "STR/any_00001.tif")]
    assert np.array_equal(data, np.stack([tiles["any_00000"], tiles["any_00001"]]))


def test_several_folders_with_clashing_ids_are_prefixed(tmp_path):
    _, tiles_a = make_samples(tmp_path / "a", SPECS[:3], seed=1)
    _, tiles_b = make_samples(tmp_path / "b", SPECS[:3], seed=2)
    summary = run_to_end(export_set([tmp_path / "a", tmp_path / "b"], tmp_path / "set"))
    data, rows = read_export(tmp_path / "set")
    assert summary["total"] == 4
    assert [r["id"] for r in rows] == ["TUM_00000", "STR_00002", "b_TUM_00000", "b_STR_00002"]
    assert np.array_equal(data, np.stack([tiles_a["TUM_00000"], tiles_a["STR_00002"],
                                          tiles_b["TUM_00000"], tiles_b["STR_00002"]]))


def test_not_selected_tiles_need_histodiff_select(tmp_path):
    folder = tmp_path / "s"
    make_samples(folder, [("TUM", None, ""), ("STR", True, "STR")])
    with pytest.raises(HistodiffError, match="histodiff select.*only_kept=false"):
        run_to_end(export_set([folder], tmp_path / "set"))
    assert run_to_end(export_set([folder], tmp_path / "set", ExportOptions(only_kept=False)))["total"] == 2


def test_bad_options_and_nothing_kept(samples, tmp_path):
    with pytest.raises(HistodiffError, match="tif.*png"):
        run_to_end(export_set([samples[0]], tmp_path / "set", ExportOptions(fmt="jpg")))
    assert not (tmp_path / "set").exists()
    folder = tmp_path / "none"
    make_samples(folder, [("TUM", False, "TUM")])
    with pytest.raises(HistodiffError, match="nothing to export"):
        run_to_end(export_set([folder], tmp_path / "set"))
    with pytest.raises(HistodiffError, match="would replace the sample folder"):
        run_to_end(export_set([samples[0]], samples[0], ExportOptions(intent="overwrite")))


def _leftovers(tmp_path):
    return [p.name for p in tmp_path.iterdir() if ".partial" in p.name or ".old" in p.name]


def test_failure_midway_leaves_no_partial_set(samples, tmp_path, monkeypatch):
    written = []

    def failing_write(path, tile, description, fmt):
        if len(written) == 3:
            raise OSError("disk full")
        written.append(path)
        real_write(path, tile, description, fmt)

    real_write = export_mod._write
    monkeypatch.setattr(export_mod, "_write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        run_to_end(export_set([samples[0]], tmp_path / "set"))
    assert len(written) == 3 and ".partial-" in str(written[0])
    assert not (tmp_path / "set").exists() and _leftovers(tmp_path) == []


def test_closing_the_generator_early_leaves_nothing(samples, tmp_path):
    gen = export_set([samples[0]], tmp_path / "set")
    assert next(gen).step == 1 and next(gen).step == 2
    assert any(".partial-" in p.name for p in tmp_path.iterdir())  # written so far, out of sight
    gen.close()
    assert not (tmp_path / "set").exists() and _leftovers(tmp_path) == []


def test_existing_set_refused_without_overwrite_and_replaced_with_it(samples, tmp_path):
    out = tmp_path / "set"
    run_to_end(export_set([samples[0]], out, ExportOptions(only_kept=False)))
    before = read_export(out)
    with pytest.raises(HistodiffError, match=f"{out} already holds an? exported set.*intent=overwrite"):
        run_to_end(export_set([samples[0]], out))
    assert len(read_export(out)[1]) == 6 and _leftovers(tmp_path) == []

    gen = export_set([samples[0]], out, ExportOptions(intent="overwrite"))
    next(gen)
    gen.close()  # an interrupted overwrite keeps the old set
    data, rows = read_export(out)
    assert np.array_equal(data, before[0]) and rows == before[1] and _leftovers(tmp_path) == []

    assert run_to_end(export_set([samples[0]], out, ExportOptions(intent="overwrite")))["total"] == 4
    assert len(read_export(out)[1]) == 4 and _leftovers(tmp_path) == []
    (tmp_path / "empty").mkdir()  # an empty folder is fine without overwrite
    assert run_to_end(export_set([samples[0]], tmp_path / "empty"))["total"] == 4


def test_a_folder_that_is_not_an_export_is_never_replaced(samples, tmp_path):
    out = tmp_path / "documents"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for intent in ("new", "overwrite", "append"):
        with pytest.raises(HistodiffError, match=f"{out} holds files and is not a folder napari-histodiff wrote"):
            run_to_end(export_set([samples[0]], out, ExportOptions(intent=intent)))
        assert [p.name for p in out.iterdir()] == ["precious.txt"] and _leftovers(tmp_path) == []
    assert (out / "precious.txt").read_text() == "keep me"


def test_read_export_refuses_what_is_not_an_export(samples, tmp_path):
    with pytest.raises(HistodiffError, match="not an exported set.*histodiff export"):
        read_export(samples[0])
    run_to_end(export_set([samples[0]], tmp_path / "set"))
    _, rows = read_export(tmp_path / "set")
    (tmp_path / "set" / rows[1]["file"]).unlink()
    with pytest.raises(HistodiffError, match=f"names '{rows[1]['file']}', which is missing"):
        read_export(tmp_path / "set")


def test_export_json_reports_kept_per_class_and_classes_without_tiles(tmp_path):
    """A class whose tiles were all rejected is named in export.json with the reason, and warned about."""
    from napari_histodiff.core.generate.sample_set import write_selection
    from napari_histodiff.core.generate.selection import SelectionRule

    folder = tmp_path / "samples"
    records, _ = make_samples(folder, [("TUM", True, "TUM"), ("STR", False, "TUM"), ("STR", False, "TUM")])
    write_selection(folder, records, SelectionRule(threshold=0.9))
    events, summary = events_and_result(export_set(folder, tmp_path / "out"))
    meta = json.loads((tmp_path / "out" / EXPORT_JSON).read_text())
    assert meta["kept_per_class"] == {"TUM": 1, "STR": 0} == summary["kept_per_class"]
    assert meta["classes_without_tiles"] == {"STR": "the selection classifier was never confident on it "
                                             "(highest confidence 0.52 < threshold 0.90, over 2 tiles)"}
    assert [e.message for e in events if e.stage == "warning"][0].startswith("class STR kept no synthetic tile")
    from napari_histodiff.core.jobs.export import export

    result = run_to_end(export(ExportOptions(samples=[folder], out=tmp_path / "o2")))
    assert "WARNING: no synthetic tile of class STR" in result["message"]


def test_a_manifest_saved_again_by_a_spreadsheet_reads_the_same(tmp_path):
    from test_outputs import sample_folder

    samples = tmp_path / "samples"
    sample_folder(samples, "TUM")
    out = tmp_path / "set"
    run_to_end(export_set([samples], out))
    _, rows = read_export(out)
    text = (out / MANIFEST).read_text(encoding="utf-8").replace(",True,", ",TRUE,")
    (out / MANIFEST).write_text("\ufeff" + text, encoding="utf-8")  # a byte-order mark, as Excel saves it
    _, again = read_export(out)
    assert [r["kept"] for r in again] == [True] * 3 and [r["id"] for r in again] == [r["id"] for r in rows]
    (out / MANIFEST).write_text(text.replace(",TRUE,", ",maybe,", 1), encoding="utf-8")
    with pytest.raises(HistodiffError, match=r"manifest\.csv row 2, column kept.*'maybe'"):
        read_export(out)

"""Memorisation audit: planted copies are caught, genuine tiles mostly not; its files, reuse and CLI."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from napari_histodiff.cli import main
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.evaluate.copies import copy_tiles
from napari_histodiff.core.evaluate.neighbours import NearestIndex
from napari_histodiff.core.evaluate.verify import aligned_correlation
from napari_histodiff.core.formats.audit import AUDIT_CSV, AUDIT_JSON, read_audit, tile_key
from napari_histodiff.core.jobs.audit import AuditOptions, audit

S = 32


def tissue(n, seed):
    """H&E-like tiles: smoothed random blobs of haematoxylin purple and eosin pink on white."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = ndi.gaussian_filter(rng.random((S, S)), 1.5)
        e = ndi.gaussian_filter(rng.random((S, S)), 3)
        h, e = (h - h.min()) / np.ptp(h), (e - e.min()) / np.ptp(e)
        rgb = 255 - h[..., None] * [90, 160, 60] - e[..., None] * [20, 110, 60]
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(out)


def save(folder, tiles, prefix):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, t in enumerate(tiles):
        paths.append(folder / f"{prefix}_{i:03d}.png")
        Image.fromarray(t).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Real tiles in two classes; synthetic: copies of 12 real tiles and 12 unseen genuine tiles."""
    root = tmp_path_factory.mktemp("audit")
    real = tissue(48, seed=1)
    real_paths = save(root / "real" / "A", real[:24], "a") + save(root / "real" / "B", real[24:], "b")
    pick = np.arange(0, 48, 4)
    copies = copy_tiles(real[pick], seed=7)
    copy_paths = save(root / "synthetic" / "copy", copies, "copy")
    save(root / "synthetic" / "genuine", tissue(12, seed=2), "new")
    opts = AuditOptions(samples=[root / "synthetic"], against=[root / "real"], out=root / "out", feature_size=S,
                        feature_steps=40, feature_batch=16, calibration_tiles=48, false_flag_rate=0.05)
    result = run_to_end(audit(opts))
    sources = {str(p): str(real_paths[i]) for p, i in zip(copy_paths, pick)}
    return root, result, sources


def rows_of(folder):
    with open(folder / AUDIT_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_planted_copies_are_flagged_and_genuine_tiles_mostly_not(planted):
    root, result, sources = planted
    rows = rows_of(root / "out")
    copies = [r for r in rows if r["class"] == "copy"]
    genuine = [r for r in rows if r["class"] == "genuine"]
    assert len(copies) == len(genuine) == 12
    recall = np.mean([r["near_copy"] == "true" for r in copies])
    assert recall >= 11 / 12, [(r["tile"], r["similarity"]) for r in copies]
    assert np.mean([r["near_copy"] == "true" for r in genuine]) <= 2 / 12
    assert np.mean([r["nearest_real"] == sources[r["tile"]] for r in copies]) >= 11 / 12
    assert min(float(r["similarity"]) for r in copies) > np.median([float(r["similarity"]) for r in genuine])
    assert result["near_copies"] == sum(r["near_copy"] == "true" for r in rows)
    assert "near-copies" in result["message"] and str(root / "out" / AUDIT_CSV) in result["message"]


def test_audit_files_hold_the_columns_threshold_and_class_summaries(planted):
    root, _, _ = planted
    rows = rows_of(root / "out")
    assert {"tile", "nearest_real", "similarity", "near_copy", "nearest_real_2", "similarity_2"} <= set(rows[0])
    assert {r["near_copy"] for r in rows} <= {"true", "false"}
    summary = json.loads((root / "out" / AUDIT_JSON).read_text())
    t = summary["threshold"]
    assert all((float(r["similarity"]) > t) == (r["near_copy"] == "true") for r in rows)
    assert "calibrated" in summary["how"] and summary["false_flag_rate_target"] == 0.05
    cal = summary["calibration"]
    assert cal["negatives"] == cal["positives"] == 48 and cal["negative_flag_rate_at_threshold"] <= 0.05
    assert summary["classes"]["copy"]["tiles"] == 12 and summary["classes"]["copy"]["near_copies"] >= 11
    enc = summary["feature_encoder"]
    assert enc["steps"] == 40 and enc["training_seconds"] > 0 and enc["tile_size"] == S
    features = root / "out" / "features"
    assert (features / "config.json").is_file() and list(features.glob("*.safetensors"))
    # read_audit: keyed by absolute path, whatever the path was given as
    audit_map = read_audit(root / "out")
    some = rows[0]
    near, sim, nearest = audit_map[tile_key(root / "synthetic" / some["file"])]
    assert (near, sim, nearest) == (some["near_copy"] == "true", float(some["similarity"]), some["nearest_real"])


def test_a_saved_encoder_is_reused_and_sample_folders_are_read_by_their_records(planted, tmp_path):
    from napari_histodiff.core.formats.records import RECORDS_FILE, TileRecord, write_records

    root, _, _ = planted
    folder = tmp_path / "samples"
    tiles = copy_tiles(tissue(48, seed=1)[[0, 30]], seed=3)
    records = []
    for i, (cls, t) in enumerate(zip(("A", "B"), tiles)):
        rec = TileRecord(id=f"{cls}_{i}", file=f"{cls}/{cls}_{i}.png", target_class=cls, index=i, seed=0,
                         sample_seed=i, sampler="ddim", steps=5, eta=0.0, guidance=1.0, bundle_hash="x")
        save(folder / cls, [t], f"{cls}_{i}")[0].rename(folder / rec.file)
        records.append(rec)
    write_records(folder / RECORDS_FILE, records)
    Image.fromarray(tiles[0]).save(folder / "contact_A.png")  # not a tile of the sample set
    opts = AuditOptions(samples=[folder], against=[root / "real"], out=tmp_path / "again", feature_size=S,
                        features=root / "out", calibration_tiles=48, false_flag_rate=0.05)
    run_to_end(audit(opts))
    rows = rows_of(tmp_path / "again")
    assert [(r["class"], r["file"]) for r in rows] == [("A", "A/A_0.png"), ("B", "B/B_1.png")]
    assert all(r["near_copy"] == "true" for r in rows)
    summary = json.loads((tmp_path / "again" / AUDIT_JSON).read_text())
    first = json.loads((root / "out" / AUDIT_JSON).read_text())
    assert summary["feature_encoder"]["loaded_from"] == str(root / "out" / "features")
    assert summary["feature_encoder"]["training_seconds"] == first["feature_encoder"]["training_seconds"]
    assert (tmp_path / "again" / "features" / "config.json").is_file()


def test_cli_refuses_a_missing_folder_with_exit_2(planted, tmp_path, capsys):
    root, _, _ = planted
    code = main(["audit", str(tmp_path / "nothing"), "--against", str(root / "real"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no such sample folder" in err and str(tmp_path / "nothing") in err
    code = main(["audit", str(root / "synthetic"), "--against", str(root / "real"), "--out", str(tmp_path / "o"),
                 "--features", str(tmp_path)])
    assert code == 2 and "holds no audit feature encoder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_audit_end_to_end_and_an_existing_audit_needs_overwrite(planted, tmp_path, capsys):
    root, _, _ = planted
    argv = ["audit", str(root / "synthetic" / "copy"), "--against", str(root / "real"), "--out", str(tmp_path / "o"),
            "--features", str(root / "out"), "--feature-size", str(S), "--calibration-tiles", "20",
            "--false-flag-rate", "0.05"]
    assert main(argv) == 0
    assert "near-copies" in capsys.readouterr().out
    assert len(rows_of(tmp_path / "o")) == 12
    assert main(argv) == 2 and "overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_pixel_check_prefers_the_source_of_a_copy():
    real = tissue(6, seed=5)
    copy = copy_tiles(real[:1], seed=11)[0]
    scores = aligned_correlation(copy, real)
    assert scores.argmax() == 0 and scores[0] > 0.6 and scores[1:].max() < scores[0] - 0.2
    assert aligned_correlation(real[0], real[:1])[0] > 0.99


def test_chunked_search_equals_brute_force():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(50, 8)).astype(np.float32)
    q = rng.normal(size=(5, 8)).astype(np.float32)
    index = NearestIndex(8, use_faiss=False, chunk=7)
    index.add(data[:20])
    index.add(data[20:])
    s, i = index.search(q, 4)
    want = np.argsort(-(q @ data.T), axis=1)[:, :4]
    assert (i == want).all() and np.allclose(s, np.take_along_axis(q @ data.T, want, 1), atol=1e-5)


def test_faiss_search_when_installed_agrees_with_numpy():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    data = rng.normal(size=(300, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    q = data[:20] + 0.01 * rng.normal(size=(20, 16)).astype(np.float32)
    exact, fast = NearestIndex(16, use_faiss=False), NearestIndex(16)
    exact.add(data), fast.add(data)
    assert fast.kind.startswith("faiss") and (fast.search(q, 3)[1] == exact.search(q, 3)[1]).all()

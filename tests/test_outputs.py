"""Output folders have an owner: a folder holding the user's files is never replaced or changed,
whatever the intent; our own output of the right kind is replaced (overwrite) or added to (append);
a run that fails before writing leaves nothing behind."""

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest

from napari_histodiff.core.base.owner import MARKER
import torch

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.formats.bundle import META_FILE, Bundle, load_bundle, new_meta, save_bundle
from napari_histodiff.core.formats.compvis import YAML_MARKER, check_compvis_output, write_compvis
from napari_histodiff.core.formats.convert import convert_to_bundle
from napari_histodiff.core.formats.images import write_tile
from napari_histodiff.core.formats.records import RECORDS_FILE, TileRecord, read_records, write_records
from napari_histodiff.core.generate import export as export_mod
from napari_histodiff.core.generate.export import EXPORT_JSON, ExportOptions, export_set, read_export
from napari_histodiff.core.generate.sample_set import write_samples
from napari_histodiff.core.generate.sampling import SampleOptions
from napari_histodiff.core.models.presets import tiny
from napari_histodiff.core.train.loop import prepare_out_dir
from test_convert import vq_bundle

T = 16


# -- helpers ------------------------------------------------------------------------------------

def user_folder(folder):
    """A folder of the user's own: notes and a labelled tile."""
    (folder / "labelled").mkdir(parents=True)
    (folder / "my_notes.txt").write_text("slide 12: ask about the stroma\n")
    iio.imwrite(folder / "labelled" / "tile.png", np.arange(T * T * 3, dtype=np.uint8).reshape(T, T, 3))
    return snapshot(folder)


def snapshot(folder) -> dict:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def sample_folder(folder, cls, n=3, seed=0, size=T):
    """A sample folder as `histodiff sample` writes it, every tile kept; returns {id: tile}."""
    rng = np.random.default_rng(seed)
    records, tiles = [], {}
    for i in range(n):
        rid = f"{cls}_{i:05d}"
        rec = TileRecord(id=rid, file=f"{cls}/{rid}.tif", target_class=cls, index=i, seed=seed, sample_seed=i,
                         sampler="ddim", steps=10, eta=1.0, guidance=5.0, bundle_hash="h", predicted_class=cls,
                         confidence=0.9, centroid_distance=1.0, nearest_centroid=cls, kept=True)
        tile = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        (folder / cls).mkdir(parents=True, exist_ok=True)
        write_tile(folder / rec.file, tile, rec.as_row())
        records.append(rec)
        tiles[rid] = tile
    write_records(folder / RECORDS_FILE, records)
    return tiles


def real_folder(folder, seed=7):
    rng = np.random.default_rng(seed)
    tiles = {}
    for cls in ("STR", "TUM"):
        (folder / cls).mkdir(parents=True)
        tiles[cls] = rng.integers(0, 256, (T, T, 3), dtype=np.uint8)
        iio.imwrite(folder / cls / "r0.png", tiles[cls])
    return tiles


def tiny_bundle():
    """An untrained tiny bundle in memory: enough to sample and save."""
    torch.manual_seed(0)
    p = tiny()
    meta = new_meta(p)
    meta["latent_scale_factor"] = 1.0
    return Bundle(vae=p.build_vae().eval(), unet=p.build_unet().eval(), scheduler=p.build_scheduler(), meta=meta)


def sample_opts(out, **kw):
    return SampleOptions(**{"model": out.parent / "model", "out": out, "n": 2, "steps": 2, "batch_size": 2,
                            "guidance": 0.0, "select": False, **kw})


# -- export ------------------------------------------------------------------------------------

@pytest.fixture()
def two_sample_folders(tmp_path):
    a, b = tmp_path / "samples_tum", tmp_path / "samples_str"
    return a, sample_folder(a, "TUM", seed=1), b, sample_folder(b, "STR", n=2, seed=2)


@pytest.mark.parametrize("intent", ["new", "overwrite", "append"])
def test_export_never_touches_a_users_folder(two_sample_folders, tmp_path, intent):
    a, *_ = two_sample_folders
    out = tmp_path / "Documents"
    before = user_folder(out)
    with pytest.raises(HistodiffError) as info:
        run_to_end(export_set([a], out, ExportOptions(intent=intent)))
    assert f"{out} holds files and is not a folder napari-histodiff wrote" in str(info.value)
    assert "--" not in str(info.value)
    assert snapshot(out) == before and hidden(tmp_path) == []


def test_export_overwrite_replaces_only_our_export(two_sample_folders, tmp_path):
    a, tiles_a, b, tiles_b = two_sample_folders
    out = tmp_path / "set"
    run_to_end(export_set([a], out))
    with pytest.raises(HistodiffError, match=f"{out} already holds an? exported set.*intent=overwrite"):
        run_to_end(export_set([b], out))
    assert [r["class"] for r in read_export(out)[1]] == ["TUM"] * 3
    summary = run_to_end(export_set([b], out, ExportOptions(intent="overwrite")))
    data, rows = read_export(out)
    assert summary["counts"] == {"STR": {"synthetic": 2, "real": 0}}
    assert np.array_equal(data, np.stack([tiles_b[r["id"]] for r in rows]))
    assert json.loads((out / EXPORT_JSON).read_text())["sources"] == [str(b)]
    assert hidden(tmp_path) == []


def test_append_builds_a_two_class_set(two_sample_folders, tmp_path):
    a, tiles_a, b, tiles_b = two_sample_folders
    out = tmp_path / "set"
    run_to_end(export_set([a], out))
    events = []
    summary = run_to_end(export_set([b], out, ExportOptions(intent="append"), params={"run": 2}), events.append)
    assert [e.step for e in events] == [1, 2]  # progress counts the new tiles
    assert summary["total"] == 5
    assert summary["counts"] == {"TUM": {"synthetic": 3, "real": 0}, "STR": {"synthetic": 2, "real": 0}}
    data, rows = read_export(out)
    assert [r["class"] for r in rows] == ["TUM"] * 3 + ["STR"] * 2
    assert len({r["id"] for r in rows}) == 5
    expected = {**tiles_a, **tiles_b}
    assert all(np.array_equal(t, expected[r["id"]]) for t, r in zip(data, rows))
    meta = json.loads((out / EXPORT_JSON).read_text())
    assert meta["sources"] == [str(a), str(b)] and meta["counts"] == summary["counts"] and meta["total"] == 5
    assert meta["options"]["intent"] == "new" and meta["appended"][0]["options"]["intent"] == "append"
    assert meta["appended"][0]["parameters"] == {"run": 2} and meta["appended"][0]["sources"] == [str(b)]
    json.dumps(meta)  # JSON-safe throughout
    assert hidden(tmp_path) == []


def test_append_keeps_ids_unique(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    tiles_a, tiles_b = sample_folder(a, "TUM", n=2, seed=1), sample_folder(b, "TUM", n=2, seed=2)  # same ids
    run_to_end(export_set([a], tmp_path / "set"))
    run_to_end(export_set([b], tmp_path / "set", ExportOptions(intent="append")))
    data, rows = read_export(tmp_path / "set")
    assert [r["id"] for r in rows] == ["TUM_00000", "TUM_00001", "b_TUM_00000", "b_TUM_00001"]
    assert np.array_equal(data, np.stack([*tiles_a.values(), *tiles_b.values()]))


def test_appending_the_same_sample_folder_twice_is_refused(two_sample_folders, tmp_path):
    a, _, b, _ = two_sample_folders
    out = tmp_path / "set"
    run_to_end(export_set([a, b], out))
    before = snapshot(out)
    same = tmp_path / "elsewhere" / ".." / a.name  # another spelling of the same folder
    with pytest.raises(HistodiffError, match=f"already holds the tiles of sample folder {same}"):
        run_to_end(export_set([same], out, ExportOptions(intent="append")))
    assert snapshot(out) == before and hidden(tmp_path) == []
    with pytest.raises(HistodiffError, match="given twice"):
        run_to_end(export_set([a, a], tmp_path / "other"))
    assert not (tmp_path / "other").exists()


def test_appending_the_same_real_tiles_twice_is_refused(two_sample_folders, tmp_path):
    a, _, b, _ = two_sample_folders
    real = tmp_path / "real"
    real_tiles = real_folder(real)
    out = tmp_path / "set"
    run_to_end(export_set([a], out, ExportOptions(include_real=real)))
    before = snapshot(out)
    with pytest.raises(HistodiffError, match=f"already holds the real tiles of {real}.*include_real"):
        run_to_end(export_set([b], out, ExportOptions(intent="append", include_real=real)))
    assert snapshot(out) == before
    summary = run_to_end(export_set([b], out, ExportOptions(intent="append")))  # synthetic tiles only: fine
    assert summary["counts"] == {"TUM": {"synthetic": 3, "real": 1}, "STR": {"synthetic": 2, "real": 1}}
    data, rows = read_export(out)
    for tile, row in zip(data, rows):
        if row["source"] == "real":
            assert np.array_equal(tile, real_tiles[row["class"]])
    real2 = tmp_path / "real2"
    real_folder(real2, seed=8)
    sample_folder(tmp_path / "c", "TUM", n=1)
    run_to_end(export_set([tmp_path / "c"], out, ExportOptions(intent="append", include_real=real2)))
    rows = read_export(out)[1]
    assert sorted(r["id"] for r in rows if r["source"] == "real") == [f"real_{k:05d}" for k in range(4)]


def test_append_refuses_another_tile_size_and_keeps_the_export(two_sample_folders, tmp_path):
    a, *_ = two_sample_folders
    big = tmp_path / "big"
    sample_folder(big, "STR", n=1, size=2 * T)
    out = tmp_path / "set"
    run_to_end(export_set([a], out))
    before = snapshot(out)
    with pytest.raises(HistodiffError, match=f"32x32 px, the tiles already in {out} 16x16 px"):
        run_to_end(export_set([big], out, ExportOptions(intent="append")))
    assert snapshot(out) == before and hidden(tmp_path) == []


def test_an_interrupted_append_leaves_the_old_export(two_sample_folders, tmp_path, monkeypatch):
    a, _, b, _ = two_sample_folders
    out = tmp_path / "set"
    run_to_end(export_set([a], out))
    before = snapshot(out)
    real_write = export_mod._write

    def failing(path, tile, description, fmt):
        if "STR_00001" in str(path):
            raise OSError("disk full")
        real_write(path, tile, description, fmt)

    monkeypatch.setattr(export_mod, "_write", failing)
    with pytest.raises(OSError, match="disk full"):
        run_to_end(export_set([b], out, ExportOptions(intent="append")))
    assert snapshot(out) == before and hidden(tmp_path) == []
    gen = export_set([b], out, ExportOptions(intent="append"))
    next(gen)
    gen.close()
    assert snapshot(out) == before and hidden(tmp_path) == []


def test_append_needs_an_export_and_failed_runs_leave_no_folder(two_sample_folders, tmp_path):
    a, *_ = two_sample_folders
    out = tmp_path / "set"
    with pytest.raises(HistodiffError, match=f"no exported set in {out} to append to"):
        run_to_end(export_set([a], out, ExportOptions(intent="append")))
    with pytest.raises(HistodiffError, match="fmt must be one of"):
        run_to_end(export_set([a], out, ExportOptions(fmt="jpg")))
    with pytest.raises(HistodiffError, match="intent must be one of"):
        run_to_end(export_set([a], out, ExportOptions(intent="resume")))
    with pytest.raises(HistodiffError, match="does not exist"):
        run_to_end(export_set([a], out, ExportOptions(include_real=tmp_path / "missing")))
    assert not out.exists() and hidden(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="process ids are checked on POSIX only")
def test_leftovers_of_dead_runs_are_cleared(two_sample_folders, tmp_path):
    a, *_ = two_sample_folders
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{pid}"))
    (tmp_path / f".set.partial-{dead}" / "TUM").mkdir(parents=True)
    (tmp_path / f".set.partial-{os.getppid()}").mkdir()  # a running process: kept
    run_to_end(export_set([a], tmp_path / "set"))
    assert hidden(tmp_path) == [f".set.partial-{os.getppid()}"]


# -- sample folders -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


@pytest.mark.parametrize("intent", ["new", "overwrite"])
def test_samples_never_touch_a_users_folder(bundle, tmp_path, intent):
    out = tmp_path / "Documents"
    before = user_folder(out)
    with pytest.raises(HistodiffError, match=f"{out} holds files and is not a folder napari-histodiff wrote"):
        run_to_end(write_samples(bundle, sample_opts(out), out, intent=intent))
    assert snapshot(out) == before and hidden(tmp_path) == []


def test_samples_overwrite_replaces_only_our_sample_folder(bundle, tmp_path):
    out = tmp_path / "s"
    first = run_to_end(write_samples(bundle, sample_opts(out, seed=1), out))
    assert [r.strength for r in first] == [1.0, 1.0]  # the strength in effect, not None
    before = snapshot(out)
    with pytest.raises(HistodiffError, match=f"{out} already holds a sample folder.*intent=overwrite"):
        run_to_end(write_samples(bundle, sample_opts(out, seed=2), out))
    assert snapshot(out) == before
    gen = write_samples(bundle, sample_opts(out, seed=2), out, intent="overwrite")
    next(gen)
    gen.close()  # interrupted: the old folder stays
    assert snapshot(out) == before and hidden(tmp_path) == []
    run_to_end(write_samples(bundle, sample_opts(out, seed=2), out, intent="overwrite"))
    assert [r.seed for r in read_records(out)] == [2, 2] and snapshot(out) != before
    assert hidden(tmp_path) == []
    with pytest.raises(TypeError):
        write_samples(bundle, sample_opts(out), out, overwrite=True)


def test_samples_that_fail_early_leave_no_folder(bundle, tmp_path):
    out = tmp_path / "s"
    with pytest.raises(HistodiffError, match="strength.*sources"):
        run_to_end(write_samples(bundle, sample_opts(out, strength=0.5), out))
    with pytest.raises(HistodiffError, match="steps must be at least 1"):
        run_to_end(write_samples(bundle, sample_opts(out, steps=0), out))
    with pytest.raises(HistodiffError, match="intent must be one of"):
        run_to_end(write_samples(bundle, sample_opts(out), out, intent="append"))
    assert not out.exists() and hidden(tmp_path) == []


# -- bundles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("intent", ["new", "overwrite"])
def test_save_bundle_never_touches_a_users_folder(bundle, tmp_path, intent):
    out = tmp_path / "Documents"
    before = user_folder(out)
    with pytest.raises(HistodiffError, match=f"{out} holds files and is not a folder napari-histodiff wrote"):
        save_bundle(bundle, out, intent=intent)
    assert snapshot(out) == before and hidden(tmp_path) == []


def test_save_bundle_overwrites_only_our_bundle(bundle, tmp_path, monkeypatch):
    from napari_histodiff.core.formats import bundle as bundle_mod

    out = tmp_path / "b"
    save_bundle(bundle, out)
    with pytest.raises(HistodiffError, match=f"{out} already holds a model bundle.*intent=overwrite"):
        save_bundle(bundle, out)
    (out / "stale.txt").write_text("the user's notes")
    with pytest.raises(HistodiffError, match=r"holds files napari-histodiff did not write.*stale\.txt"):
        save_bundle(bundle, out, intent="overwrite")
    assert (out / "stale.txt").read_text() == "the user's notes"
    (out / "stale.txt").unlink()
    before = snapshot(out)

    def failing(model, folder, name):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod, "save_part", failing)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(bundle, out, intent="overwrite")
    assert snapshot(out) == before and hidden(tmp_path) == []
    monkeypatch.undo()
    save_bundle(bundle, out, intent="overwrite")
    assert not (out / "stale.txt").exists() and load_bundle(out, device="cpu").tile_size == bundle.tile_size
    assert hidden(tmp_path) == []


def test_a_checkpoint_file_alone_does_not_make_a_folder_ours(bundle, tmp_path):
    out = tmp_path / "b"
    (out / "training" / "diffusion").mkdir(parents=True)
    (out / "training" / "diffusion" / "checkpoint.json").write_text("{}")
    before = snapshot(out)
    with pytest.raises(HistodiffError, match="is not a folder napari-histodiff wrote"):
        save_bundle(bundle, out, intent="overwrite")
    assert snapshot(out) == before


def test_save_bundle_that_fails_early_leaves_no_folder(bundle, tmp_path):
    with pytest.raises(HistodiffError, match="intent must be one of"):
        save_bundle(bundle, tmp_path / "b", intent="append")
    assert list(tmp_path.iterdir()) == []


def test_convert_to_bundle_follows_the_rule(tmp_path):
    ckpt = write_compvis(vq_bundle(), tmp_path / "model.ckpt")
    docs = tmp_path / "Documents"
    before = user_folder(docs)
    for intent in ("new", "overwrite"):
        with pytest.raises(HistodiffError, match=f"{docs} holds files and is not a folder napari-histodiff wrote"):
            convert_to_bundle(ckpt, docs, intent=intent)
        assert snapshot(docs) == before
    out = tmp_path / "b"
    convert_to_bundle(ckpt, out)
    with pytest.raises(HistodiffError, match=f"{out} already holds a model bundle.*intent=overwrite"):
        convert_to_bundle(ckpt, out)
    again = convert_to_bundle(ckpt, out, intent="overwrite")
    assert again.meta["provenance"]["converted"]["format"] == "compvis"
    with pytest.raises(HistodiffError, match="does not exist"):
        convert_to_bundle(tmp_path / "missing.ckpt", tmp_path / "b2", format="compvis")
    assert not (tmp_path / "b2").exists()
    assert hidden(tmp_path) == []


def test_compvis_output_is_replaced_only_when_we_wrote_it(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"someone else's checkpoint")
    for intent in ("new", "overwrite"):
        with pytest.raises(HistodiffError, match=f"{ckpt} already exists and napari-histodiff did not write it"):
            check_compvis_output(ckpt, intent)
    ckpt.with_suffix(".yaml").write_text("model:\n  target: x\n")
    with pytest.raises(HistodiffError, match="did not write it"):
        write_compvis(vq_bundle(), ckpt, intent="overwrite")
    assert ckpt.read_bytes() == b"someone else's checkpoint"
    assert ckpt.with_suffix(".yaml").read_text() == "model:\n  target: x\n"

    ours = tmp_path / "ours.ckpt"
    check_compvis_output(ours, "new")
    write_compvis(vq_bundle(), ours)
    assert ours.with_suffix(".yaml").read_text().splitlines()[0] == YAML_MARKER
    with pytest.raises(HistodiffError, match=f"{ours} already holds a CompVis checkpoint.*intent=overwrite"):
        check_compvis_output(ours, "new")
    check_compvis_output(ours, "overwrite")
    write_compvis(vq_bundle(), ours, intent="overwrite")
    assert hidden(tmp_path) == []


# -- training output ----------------------------------------------------------------------------

@pytest.mark.parametrize("intent", ["new", "resume", "overwrite"])
def test_prepare_out_dir_never_touches_a_users_folder(tmp_path, intent):
    out = tmp_path / "Documents"
    before = user_folder(out)
    with pytest.raises(HistodiffError, match=f"{out} holds files and is not a folder napari-histodiff wrote"):
        prepare_out_dir(out, intent)
    assert snapshot(out) == before


def test_prepare_out_dir_on_our_bundle(bundle, tmp_path):
    out = tmp_path / "b"
    save_bundle(bundle, out)
    with pytest.raises(HistodiffError, match=f"{out} already holds a model bundle.*intent=resume.*intent=overwrite"):
        prepare_out_dir(out)
    assert prepare_out_dir(out, "resume") == out and (out / META_FILE).is_file()
    assert prepare_out_dir(out, "overwrite") == out and [p.name for p in out.iterdir()] == [MARKER]
    with pytest.raises(HistodiffError, match="intent must be one of"):
        prepare_out_dir(tmp_path / "new", "append")
    assert not (tmp_path / "new").exists()
    assert prepare_out_dir(tmp_path / "new").is_dir()

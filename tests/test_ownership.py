"""Ownership that cannot be faked (issue 30, item 1): a decoy marker (``export.json`` holding ``{}``)
and a foreign file survive every overwrite and append, in a user's folder and inside a real output
of every kind; only what our ownership record lists is removed or replaced."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from napari_histodiff.core.base import owner
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.base.outdir import output_folder, prepare_output
from napari_histodiff.core.base.owner import MARKER, foreign, read_owner
from napari_histodiff.core.formats.bundle import load_bundle, save_bundle
from napari_histodiff.core.generate.export import ExportOptions, export_set, read_export
from napari_histodiff.core.generate.sample_set import write_samples
from test_outputs import sample_folder, sample_opts, snapshot, tiny_bundle

CLI = [sys.executable, "-m", "napari_histodiff"]


def plant(folder):
    """A decoy marker of every kind and a foreign file and sub-folder, as a user might have them."""
    folder.mkdir(parents=True, exist_ok=True)
    for decoy in ("export.json", "samples.csv", "tiles.csv", "histodiff.json"):
        if not (folder / decoy).exists():
            (folder / decoy).write_text("{}")
    (folder / "results.txt").write_text("the user's results\n")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "keep.txt").write_text("mine\n")
    return snapshot(folder)


def plant_foreign(folder):
    (folder / "results.txt").write_text("the user's results\n")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "keep.txt").write_text("mine\n")
    return {"results.txt": b"the user's results\n", "sub/keep.txt": b"mine\n"}


def kept(folder, files):
    return all((folder / name).read_bytes() == data for name, data in files.items())


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


@pytest.fixture()
def samples(tmp_path):
    a = tmp_path / "samples_tum"
    sample_folder(a, "TUM", seed=1)
    return a


# -- the record itself ---------------------------------------------------------------------------

def test_record_lists_files_and_finds_what_is_not_ours(tmp_path):
    out = tmp_path / "o"
    with output_folder(out, "evaluation"):
        (out / "results.json").write_text("{}")
    rec = read_owner(out)
    assert rec["kind"] == "evaluation" and set(rec["files"]) == {"results.json"}
    assert rec["files"]["results.json"]["sha256"] == owner.sha256_file(out / "results.json")
    assert foreign(out) == []
    (out / "notes.txt").write_text("x")
    (out / "results.json").write_text('{"edited": 1}')
    assert sorted(foreign(out)) == ["notes.txt", "results.json (changed since it was written)"]


def test_a_record_that_is_not_ours_or_is_broken_proves_nothing(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / MARKER).write_text("{}")  # a file with our marker's name but not our record
    (out / "export.json").write_text("{}")
    assert read_owner(out) is None
    with pytest.raises(HistodiffError, match="is not a folder napari-histodiff wrote"):
        prepare_output(out, "export", "overwrite")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "export.json"]


def test_remove_owned_leaves_foreign_files_of_a_nested_output(tmp_path):
    demo = tmp_path / "demo"
    with output_folder(demo, "demo", "overwrite", allowed=("resume", "overwrite")):
        with output_folder(demo / "bundle", "evaluation"):
            (demo / "bundle" / "results.json").write_text("{}")
        (demo / "report.md").write_text("# report")
    (demo / "bundle" / "mine.txt").write_text("x")
    assert foreign(demo) == ["bundle/mine.txt"]
    with pytest.raises(HistodiffError, match="bundle/mine.txt"):
        prepare_output(demo, "demo", "overwrite", allowed=("resume", "overwrite"))
    assert (demo / "report.md").is_file() and (demo / "bundle" / "mine.txt").is_file()


# -- every kind, every intent --------------------------------------------------------------------

@pytest.mark.parametrize("intent", ["overwrite", "append"])
def test_export_into_a_users_folder_with_a_decoy_marker_changes_nothing(samples, tmp_path, intent):
    out = tmp_path / "it"
    before = plant(out)
    with pytest.raises(HistodiffError, match="is not a folder napari-histodiff wrote"):
        run_to_end(export_set([samples], out, ExportOptions(intent=intent)))
    assert snapshot(out) == before


@pytest.mark.parametrize("intent", ["overwrite", "append"])
def test_export_keeps_files_a_user_added_to_a_real_export(samples, tmp_path, intent):
    out = tmp_path / "set"
    run_to_end(export_set([samples], out))
    files = plant_foreign(out)
    before = snapshot(out)
    b = tmp_path / "samples_str"
    sample_folder(b, "STR", n=2, seed=2)
    with pytest.raises(HistodiffError, match=r"did not write.*results\.txt.*sub/"):
        run_to_end(export_set([b], out, ExportOptions(intent=intent)))
    assert snapshot(out) == before and kept(out, files)
    (out / "results.txt").unlink()
    (out / "sub" / "keep.txt").unlink()
    (out / "sub").rmdir()
    run_to_end(export_set([b], out, ExportOptions(intent=intent)))
    classes = {r["class"] for r in read_export(out)[1]}
    assert classes == ({"STR"} if intent == "overwrite" else {"STR", "TUM"}) and foreign(out) == []


def test_export_refuses_a_tile_changed_since_it_was_exported(samples, tmp_path):
    out = tmp_path / "set"
    run_to_end(export_set([samples], out))
    tile = next(out.glob("TUM/*.tif"))
    tile.write_bytes(tile.read_bytes()[:-1] + b"\0")
    before = snapshot(out)
    with pytest.raises(HistodiffError, match="changed since it was written"):
        run_to_end(export_set([samples], out, ExportOptions(intent="overwrite")))
    assert snapshot(out) == before


def test_samples_overwrite_keeps_foreign_files(bundle, tmp_path):
    out = tmp_path / "s"
    run_to_end(write_samples(bundle, sample_opts(out, seed=1), out))
    files = plant_foreign(out)
    with pytest.raises(HistodiffError, match=r"results\.txt"):
        run_to_end(write_samples(bundle, sample_opts(out, seed=2), out, intent="overwrite"))
    assert kept(out, files)
    decoy = tmp_path / "d"
    before = plant(decoy)
    with pytest.raises(HistodiffError, match="is not a folder napari-histodiff wrote"):
        run_to_end(write_samples(bundle, sample_opts(decoy), decoy, intent="overwrite"))
    assert snapshot(decoy) == before


def test_bundle_overwrite_and_resume_keep_foreign_files(bundle, tmp_path):
    out = tmp_path / "b"
    save_bundle(bundle, out)
    (out / "vae" / "my-notes.txt").write_text("inside a part")
    files = {"vae/my-notes.txt": b"inside a part", **plant_foreign(out)}
    for intent in ("overwrite", "resume"):
        with pytest.raises(HistodiffError, match=r"my-notes\.txt"):
            prepare_output(out, "bundle", intent, allowed=("new", "resume", "overwrite"))
    with pytest.raises(HistodiffError, match=r"results\.txt"):
        save_bundle(bundle, out, intent="overwrite")
    assert kept(out, files) and load_bundle(out, device="cpu") is not None


def test_an_in_place_bundle_lists_its_files_when_done(tmp_path):
    out = tmp_path / "b"
    with output_folder(out, "bundle", allowed=("new", "resume", "overwrite")):
        (out / "training" / "unet").mkdir(parents=True)
        (out / "training" / "unet" / "checkpoint.json").write_text("{}")
        (out / "histodiff.json").write_text("{}")
    assert set(read_owner(out)["files"]) == {"histodiff.json", "training/unet/checkpoint.json"}
    (out / "training" / "unet" / "notes.txt").write_text("x")
    with pytest.raises(HistodiffError, match="training/unet/notes.txt"):
        prepare_output(out, "bundle", "overwrite", allowed=("new", "resume", "overwrite"))
    (out / "training" / "unet" / "notes.txt").unlink()
    prepare_output(out, "bundle", "overwrite", allowed=("new", "resume", "overwrite"))
    assert [p.name for p in out.iterdir()] == [MARKER]


def test_a_mount_point_is_written_into_not_renamed(samples, tmp_path, monkeypatch):
    out = tmp_path / "drive"
    run_to_end(export_set([samples], out))
    inode = out.stat().st_ino
    real_replace = os.replace

    def no_rename_of_mount(src, dst):
        if str(src) == str(out):
            raise OSError(16, "Device or resource busy", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", no_rename_of_mount)
    b = tmp_path / "samples_str"
    sample_folder(b, "STR", n=2, seed=2)
    run_to_end(export_set([b], out, ExportOptions(intent="overwrite")))
    assert out.stat().st_ino == inode and foreign(out) == []
    assert {r["class"] for r in read_export(out)[1]} == {"STR"}


@pytest.mark.subprocess
def test_cli_export_overwrite_of_a_decoy_folder_exits_2_and_keeps_it(samples, tmp_path):
    out = tmp_path / "it"
    before = plant(out)
    r = subprocess.run([*CLI, "export", str(samples), "--out", str(out), "--overwrite"], capture_output=True, text=True)
    assert r.returncode == 2 and "is not a folder napari-histodiff wrote" in r.stderr
    assert "Traceback" not in r.stderr and snapshot(out) == before

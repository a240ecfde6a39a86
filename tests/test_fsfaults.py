"""File-system faults are named, not thrown (issue 27, item 10): a read-only output, a fault in the
middle of a job and an output folder that is a mount point each end in one line and exit 2 (or work),
with nothing left behind that blocks a rerun."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from napari_histodiff.cli import main
from napari_histodiff.core.base import fsfaults
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.outdir import check_output
from napari_histodiff.core.generate.export import read_export
from test_outputs import sample_folder


@pytest.fixture()
def samples(tmp_path):
    sample_folder(tmp_path / "samples", "TUM")
    return tmp_path / "samples"


def mount_tmpfs(path: Path, *options) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=8m", *options]), "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture()
def mounted(tmp_path):
    made = []

    def mount(name, *options):
        path = tmp_path / name
        if os.geteuid() != 0 or not mount_tmpfs(path, *options):
            pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
        made.append(path)
        return path

    yield mount
    for path in made:
        subprocess.run(["umount", str(path)], capture_output=True)


@pytest.mark.parametrize("kind", ["export", "samples", "bundle", "tiles", "evaluation"])
def test_a_read_only_output_is_refused_before_anything_runs(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(fsfaults, "_read_only", lambda path: True)
    with pytest.raises(HistodiffError, match=r"cannot write .*new/out: .* is on a read-only file system; choose"):
        check_output(tmp_path / "new" / "out", kind, "new")


def test_a_fault_during_a_job_is_one_line_and_leaves_nothing(samples, tmp_path, monkeypatch, capsys):
    from napari_histodiff.core.generate import export as export_mod

    def read_only(path, tile, description, fmt):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(export_mod, "_write", read_only)
    assert main(["export", str(samples), "--out", str(tmp_path / "set")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("histodiff: error: cannot write ") and "read-only file system" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]  # no partial folder left
    monkeypatch.undo()
    assert main(["export", str(samples), "--out", str(tmp_path / "set")]) == 0


def test_a_real_read_only_drive(samples, mounted, capsys):
    drive = mounted("ro", "ro")
    assert main(["export", str(samples), "--out", str(drive / "set")]) == 2
    assert "is on a read-only file system" in capsys.readouterr().err


def test_a_mounted_drive_as_output_folder_is_written_into(samples, tmp_path, mounted):
    drive = mounted("drive")
    assert main(["export", str(samples), "--out", str(drive)]) == 0
    other = tmp_path / "more"
    sample_folder(other, "STR", seed=3)
    assert main(["export", str(other), "--out", str(drive), "--overwrite"]) == 0
    assert {r["class"] for r in read_export(drive)[1]} == {"STR"} and os.path.ismount(drive)

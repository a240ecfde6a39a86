"""One writer per output folder (issue 31, item 1): a second job that writes a folder being written is
refused at once, naming the running one; the lock of a dead process never blocks."""

import os
import signal
import subprocess
import sys
import time

import pytest

from napari_histodiff.cli import main
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.base.lock import folder_lock, locked
from napari_histodiff.core.generate.export import ExportOptions
from test_outputs import sample_folder, snapshot

HOLD = """import sys, time
from napari_histodiff.core.base.lock import folder_lock
with folder_lock(sys.argv[1], "histodiff sample"):
    print("held", flush=True)
    time.sleep(60)
"""


def commands(tmp_path, out):
    samples = tmp_path / "samples"
    sample_folder(samples, "TUM")
    return {
        "export": ["export", str(samples), "--out", str(out), "--append"],
        "sample": ["sample", str(tmp_path / "no-bundle"), "--out", str(out), "-n", "2"],
        "finetune": ["finetune", str(tmp_path / "no-bundle"), "--labeled", str(samples), "--out", str(out)],
        "tiles": ["tiles", str(tmp_path / "no-slide.svs"), "--out", str(out)],
        "select": ["select", str(out), "--model", str(tmp_path / "no-bundle")],
    }


@pytest.mark.parametrize("command", ["export", "sample", "finetune", "tiles", "select"])
def test_a_second_writer_is_refused_naming_the_first(tmp_path, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    argv = commands(tmp_path, out)[command]
    with folder_lock(out, "histodiff export"):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out} is being written by histodiff export (process {os.getpid()}" in err
    assert snapshot(out) == {"mine.txt": b"x"}
    assert main(argv) == 2 and "is being written" not in capsys.readouterr().err  # free again: its own checks


def test_the_lock_is_held_for_the_whole_job_and_released_after(tmp_path):
    out = tmp_path / "out"

    def job(opts):
        yield 1
        with pytest.raises(HistodiffError, match="is being written by histodiff export"):
            with folder_lock(out):
                pass
        return "done"

    assert run_to_end(locked(job(None), ExportOptions(out=out), "histodiff export")) == "done"
    with folder_lock(out):  # released
        pass


@pytest.mark.subprocess
def test_a_lock_of_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                             env=os.environ)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(HistodiffError, match=rf"histodiff sample \(process {child.pid}"):
            with folder_lock(out):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    time.sleep(0.1)
    with folder_lock(out, "histodiff export"):  # the dead process's lock is gone with it
        pass


def test_review_decisions_wait_for_no_one_and_are_refused_while_a_job_writes(tmp_path):
    from napari_histodiff.core.formats.records import folder_fingerprint, read_records
    from napari_histodiff.core.generate.review import save_decisions

    samples = tmp_path / "samples"
    sample_folder(samples, "TUM")
    records = read_records(samples)
    fingerprint = folder_fingerprint(samples, [r.file for r in records])
    records[0].kept = False
    with folder_lock(samples, "histodiff select"):
        with pytest.raises(HistodiffError, match="is being written by histodiff select"):
            save_decisions(samples, records, fingerprint)
    assert read_records(samples)[0].kept is True  # nothing written while the job held the folder
    save_decisions(samples, records, fingerprint)
    assert read_records(samples)[0].kept is False

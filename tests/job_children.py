"""Core-style job generators that tests run in spawned processes (they must be importable there).

A gated job's step ``i`` waits for the file ``go-i`` in its folder, so a test decides when each step
ends (as ``Script`` does for worker threads in test_job_control.py); its clean-up writes ``cleaned``."""

import os
import signal
import sys
import time
from pathlib import Path


def _wait_for(path: Path, timeout=60.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.005)


def gated(folder, steps):
    from napari_histodiff.core.base.events import Progress

    folder = Path(folder)
    try:
        for i in range(steps):
            _wait_for(folder / f"go-{i}")
            (folder / f"ran-{i}").touch()
            yield Progress("x", i + 1, steps)
        _wait_for(folder / f"go-{steps}")  # the last step (no progress event)
        return {"result": steps, "pid": os.getpid()}
    finally:
        (folder / "cleaned").write_text(str(len(list(folder.glob("ran-*")))))  # a resumable checkpoint


def crashing(folder):
    """Prints (Python and native output both reach the log), reports once, then dies by SIGKILL."""
    from napari_histodiff.core.base.events import Progress

    print("python says hello")
    os.write(2, b"native says hello\n")
    yield Progress("x", 1, 2)
    _wait_for(Path(folder) / "go-1")
    os.kill(os.getpid(), signal.SIGKILL)
    yield Progress("x", 2, 2)


def failing(message):
    from napari_histodiff.core.base.errors import HistodiffError
    from napari_histodiff.core.base.events import Progress

    yield Progress("x", 1, 2)
    if message == "unpicklable":
        class Local(Exception):  # a class that cannot be pickled
            pass
        raise Local("a local error class")
    raise HistodiffError(message)


def threads_seen():
    """The torch threads of the job's process and whether Qt or napari were imported there."""
    import torch

    yield from ()
    return {"threads": torch.get_num_threads(), "gui": [m for m in ("qtpy", "napari", "PyQt6") if m in sys.modules]}

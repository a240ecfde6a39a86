"""One writer per output folder: every job that writes a folder holds its lock while it runs.

The lock is an OS file lock (``filelock``) on a file named after the folder's real path, in a per-user
folder of the temporary directory, so it works for folders not yet created, read-only parents and mount
points alike. The OS releases it when its process ends, however it ends, so a lock of a dead process
never blocks. Beside it a small JSON file names the job that holds it, for the message a second writer gets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .errors import HistodiffError


def lock_folder() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    folder = Path(os.environ.get("HISTODIFF_LOCKS") or Path(tempfile.gettempdir()) / f"napari-histodiff-{uid}-locks")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _paths(out) -> tuple[Path, Path]:
    key = hashlib.sha256(str(Path(out).expanduser().resolve()).encode("utf-8", "surrogatepass")).hexdigest()[:24]
    base = lock_folder() / key
    return base.with_suffix(".lock"), base.with_suffix(".json")


def _holder(info: Path) -> str:
    try:
        h = json.loads(info.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started"]))
        return f"{h['job']} (process {h['pid']}, started {started})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another job"


@contextlib.contextmanager
def folder_lock(out, job: str = ""):
    """Hold the lock of output folder ``out`` (refused at once, naming the running job, when another
    job holds it). Only the main process of a launcher takes it: the others do not write."""
    from filelock import FileLock, Timeout

    from .devices import is_main_process

    if out is None or not is_main_process():
        yield
        return
    path, info = _paths(out)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise HistodiffError(f"{out} is being written by {_holder(info)}; two jobs never write one folder: "
                             "wait for that one to finish (or stop it), or choose another folder") from None
    try:
        info.write_text(json.dumps({"job": job or Path(sys.argv[0]).name, "pid": os.getpid(),
                                    "started": time.time(), "folder": str(out)}), encoding="utf-8")
        yield
    finally:
        info.unlink(missing_ok=True)
        lock.release()


def written_folder(opts):
    """The folder a job's options write: ``out``, or the field its class names in ``WRITES``."""
    return getattr(opts, getattr(type(opts), "WRITES", "out"), None)


def locked(gen, opts, job: str = ""):
    """Run the job generator ``gen`` holding the lock of the folder ``opts`` writes."""
    with folder_lock(written_folder(opts), job):
        return (yield from gen)

"""Disk space: checked before a job writes, and named in one line when the disk fills during it.

Before its first write a job estimates what it will write and calls :func:`check_free_space`, which
refuses at once, naming the disk, the space needed and the space free. A disk that fills later (``ENOSPC``
at a write, or what torch, safetensors and shutil make of it) becomes :class:`DiskFull`: the file, the
disk, the space needed (the write's own size, else the job's estimate) and free, and a fix that suggests
only an intent the job accepts (:func:`..memory.guard_memory` knows the job's options).
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

from .errors import HistodiffError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what libraries say instead of raising OSError: safetensors ("os error 28"), shutil.Error (a list of
# "[Errno 28] ..." texts), torch's zip writer ("unexpected pos", "file write failed")
FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122", "storagefull",
             "[errno 28]", "[errno 122]")
TORCH_WRITE_TEXT = ("unexpected pos", "file write failed", "pytorchstreamwriter failed")

_job = threading.local()  # the estimate of the job running in this thread (see check_free_space)


def size_text(n: int) -> str:
    size, unit = float(n), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            break
        size /= 1024
    return f"{int(n)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


def existing_parent(path) -> Path:
    """``path`` itself when it exists, else its nearest existing parent."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path) -> int:
    """Bytes free for this user on the disk that holds (or will hold) ``path``."""
    return shutil.disk_usage(existing_parent(path)).free


def mount_point(path) -> Path:
    """The mount point of the disk that holds (or will hold) ``path``."""
    path = Path(os.path.realpath(existing_parent(path)))
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


TILE_OVERHEAD = 2048  # per tile: the file's header, its record (JSON in a TIFF, a CSV row), file-system slack
PNG_RATIO = 0.5  # PNG of H&E tissue: 0.57-0.63 of the raw pixels (demo image, 256 px); less is estimated so
# that a job that fits is never refused (a disk that fills anyway is named when it does)


def tile_bytes(size: int, fmt: str = "tif") -> int:
    """About the bytes one RGB tile of ``size`` x ``size`` px takes on disk as ``fmt`` (tif: uncompressed)."""
    raw = int(size) * int(size) * 3
    return int(raw * (PNG_RATIO if fmt == "png" else 1)) + TILE_OVERHEAD


def check_free_space(folder, needed_bytes: int, what: str,
                     fix: str = "free some space or write to another disk ({opt:out})") -> None:
    """Refuse, before anything is written, a job whose output (about ``needed_bytes``) cannot fit on the
    disk of ``folder`` (which need not exist yet). ``what``: the output, for the message ("1000 tiles of
    256 px"). The estimate is kept for this thread's job, so a disk that fills later can say it."""
    folder, needed = Path(folder), max(0, int(needed_bytes))
    _job.estimate = (folder, needed)
    try:
        free = free_bytes(folder)
    except OSError:
        return  # cannot tell (a permission, a vanished drive): the first write will say
    if needed > free:
        raise HistodiffError(f"not enough space for {what} in {folder}: it needs about {size_text(needed)} and "
                             f"the disk mounted at {mount_point(folder)} has {size_text(free)} free; {fix}")


def forget_estimate() -> None:
    """Start a job in this thread without an estimate (a new job, not the previous one's)."""
    _job.estimate = None


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, HistodiffError):
        return False
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return True
    text = str(exc).lower()
    if any(t in text for t in FULL_TEXT):
        return True
    return isinstance(exc, RuntimeError) and any(t in text for t in TORCH_WRITE_TEXT)


def written_path(exc: BaseException) -> str | None:
    """The file a failed write names (``OSError.filename``, or the destination of ``shutil.Error``)."""
    if getattr(exc, "filename", None):
        return str(exc.filename)
    entries = exc.args[0] if isinstance(exc, shutil.Error) and exc.args else None
    if isinstance(entries, list) and entries and isinstance(entries[0], tuple) and len(entries[0]) == 3:
        return str(entries[0][1])
    return None


class DiskFull(HistodiffError):
    """The disk filled during a write; made by :meth:`build` (or :meth:`of` from the failed write's error).
    Keeps ``path``, ``needed``, ``free``, ``disk``, ``stage`` and ``intents`` so that a job can add what
    only it knows (:meth:`for_job`)."""

    @classmethod
    def build(cls, path=None, needed: int | None = None, stage: str = "", intents=(), what: str = "") -> "DiskFull":
        """``path``: what was being written (``what``: its name in the message, default the path); ``needed``: its size in bytes (None: the job's estimate, if it
        made one); ``stage``: the job's stage; ``intents``: the job's accepted intents (the fix suggests
        resume only when it is one)."""
        estimate = getattr(_job, "estimate", None)
        info = {"path": None if path is None else str(path), "what": what,
                "needed": needed if needed is not None else (estimate[1] if estimate else None),
                "stage": stage, "intents": tuple(intents or ()), "free": None, "disk": None}
        where = info["path"] or (str(estimate[0]) if estimate else None)
        if where:
            try:
                info["free"], info["disk"] = free_bytes(where), str(mount_point(where))
            except OSError:
                pass
        return cls._made(info)

    @classmethod
    def of(cls, exc: BaseException, path=None, needed: int | None = None, stage: str = "", intents=()) -> "DiskFull":
        """The :class:`DiskFull` for a failed write ``exc`` (``path``: the file, when ``exc`` does not name it)."""
        return cls.build(written_path(exc) or path, needed, stage, intents)

    def for_job(self, stage: str, intents) -> "DiskFull":
        """The same full disk, with the job's stage (when none was known) and accepted intents."""
        info = {k: getattr(self, k, None) for k in ("path", "what", "needed", "free", "disk")}
        return DiskFull._made({**info, "stage": getattr(self, "stage", "") or stage, "intents": tuple(intents or ())})

    @classmethod
    def _made(cls, info: dict) -> "DiskFull":
        error = cls(_text(**info))
        error.__dict__.update(info)
        return error


def _text(path, what, needed, free, disk, stage, intents) -> str:
    disk = f" mounted at {disk}" if disk else ""
    what = f" while writing {what or path}" if what or path else ""
    when = f" during {stage}" if stage else ""
    sizes = [f"about {size_text(needed)} needed"] if needed else []
    sizes += [f"{size_text(free)} free"] if free is not None else []
    sizes_text = f" ({', '.join(sizes)})" if sizes else ""
    if "resume" in intents:
        again = " with {opt:intent=resume} (finished checkpoints are kept)"
    else:
        again = " (earlier outputs were left as they were)"
    return (f"no space left on the disk{disk}{what}{when}{sizes_text}; free some space, then run the same "
            f"command again{again}")


def job_intents(options) -> tuple:
    """The intents a job accepts: the choices of its options' ``intent`` field (``options``: a dataclass
    instance or class; anything else: none known)."""
    import dataclasses

    if not dataclasses.is_dataclass(options):
        return ()
    for f in dataclasses.fields(options):
        if f.name == "intent":
            return tuple(f.metadata.get("choices") or ())
    return ()

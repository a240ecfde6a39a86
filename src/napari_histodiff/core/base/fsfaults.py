"""File-system faults named, not thrown: a read-only drive, a folder without permission, a busy mount
point. :func:`check_writable` refuses such an output before a job starts; :func:`guard_filesystem` turns
the same faults during a job into one clear :class:`HistodiffError` (the job's own clean-up has run)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import HistodiffError

FAULTS = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not writable by you (permission denied)",
    errno.EPERM: "may not be changed (operation not permitted)",
    errno.EBUSY: "is busy (in use by another program, or a mount point)",
}


def nearest_existing(path) -> Path:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(out) -> None:
    """Refuse an output folder that cannot be written: the folder itself, or where it would be created."""
    where = nearest_existing(out)
    if where.is_dir() and not os.access(where, os.W_OK | os.X_OK):
        why = FAULTS[errno.EROFS] if _read_only(where) else FAULTS[errno.EACCES]
        raise HistodiffError(f"cannot write {out}: {where} {why}; choose a folder you can write to")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def guard_filesystem(gen):
    """Run the job generator ``gen``; a file-system fault becomes one line naming the path and the fix."""
    try:
        return (yield from gen)
    except OSError as e:
        if e.errno not in FAULTS:
            raise
        what = e.filename or "a file of the output"
        raise HistodiffError(f"cannot write {what}: it {FAULTS[e.errno]}; choose a folder you can write to "
                             "(what was complete is kept; run the same command again once it is fixed)") from None

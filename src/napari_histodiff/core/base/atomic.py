"""Folders written whole: built in a hidden sibling ``.NAME.partial-PID``, then swapped in.

An interrupted run leaves the previous folder as it was; :func:`swap_in` replaces it only once the
new one is complete (the old one is moved aside first and removed after). Whether ``out`` may be
replaced at all is decided before, by :mod:`.outdir`.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


def partial_path(out) -> Path:
    """The hidden sibling this process builds ``out`` in."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial-{os.getpid()}")


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_dead_partials(out) -> None:
    """Remove ``.NAME.partial-PID`` siblings of ``out`` left by processes that no longer run (POSIX only;
    folders moved aside as ``.NAME.old-PID`` are kept: they may be the only copy of an old output)."""
    out = Path(out)
    if os.name != "posix" or not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def swap_in(tmp, out, kind: str) -> None:
    """List what ``tmp`` holds as ours (:func:`.owner.seal`), then put it in place of ``out``: renamed onto
    it, the old ``out`` moved aside first and removed only after. ``out`` must hold nothing but what our
    record lists (checked again here, just before). A mount point (a drive mounted there) cannot be
    renamed: its contents are replaced instead."""
    from .outdir import check_foreign
    from .owner import seal

    tmp, out = Path(tmp), Path(out)
    seal(tmp, kind)
    if not out.exists():
        return os.replace(tmp, out)
    if any(out.iterdir()):
        check_foreign(out, kind)
    if os.path.ismount(out):
        return _replace_contents(tmp, out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(out, old)
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES):
            return _replace_contents(tmp, out)
        raise
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _replace_contents(tmp: Path, out: Path) -> None:
    """Replace what we wrote in ``out`` by the contents of ``tmp``, the ownership record last."""
    from .owner import MARKER, remove_owned

    remove_owned(out)
    for path in sorted(tmp.iterdir()):
        if path.name != MARKER:
            shutil.move(str(path), str(out / path.name))
    shutil.move(str(tmp / MARKER), str(out / MARKER))  # last: a rename on one disk, a copy across disks

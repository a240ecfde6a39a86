"""Folders written whole: built in a hidden sibling ``.NAME.partial-PID``, then swapped in.

An interrupted run leaves the previous folder as it was; :func:`swap_in` replaces it only once the
new one is complete (the old one is moved aside first and removed after). Whether ``out`` may be
replaced at all is decided before, by :mod:`.outdir`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def partial_path(out) -> Path:
    """The hidden sibling this process builds ``out`` in."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial-{os.getpid()}")


def _alive(pid: int) -> bool:
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
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def swap_in(tmp, out) -> None:
    """Rename ``tmp`` onto ``out``; an old ``out`` is moved aside first and removed only after."""
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        return os.replace(tmp, out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)

"""Out of memory (host or GPU) or out of disk as one plain error naming the stage, the size and the fix.

numpy raises ``MemoryError`` (``_ArrayMemoryError``), torch ``torch.OutOfMemoryError`` on a GPU and a
``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory") on the host. torch is never imported
here: an error from torch means torch is loaded already.
"""

from __future__ import annotations

import errno
import re
import sys

from .errors import HistodiffError

SIZE = re.compile(r"allocate\s+(\d+(?:\.\d+)?\s*[KMGTPE]i?B)\b", re.IGNORECASE)
BYTES = re.compile(r"allocate\s+(\d+)\s+bytes", re.IGNORECASE)
HOST_TEXT = ("can't allocate memory", "not enough memory", "defaultcpuallocator")


class OutOfMemory(HistodiffError):
    """An allocation failed; the message names the stage, the size and what to change."""


def _torch_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(exc, oom)


def memory_kind(exc: BaseException) -> str | None:
    """``"host"`` or ``"GPU"`` when ``exc`` is an out-of-memory error, else None."""
    text = str(exc).lower()
    if _torch_oom(exc) or (isinstance(exc, RuntimeError) and "out of memory" in text):
        return "host" if any(t in text for t in HOST_TEXT) else "GPU"
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(t in text for t in HOST_TEXT)):
        return "host"
    return None


def _bytes_text(n: int) -> str:
    size, unit = float(n), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            break
        size /= 1024
    return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


def requested_size(text: str) -> str | None:
    """The size an allocation error says it tried to allocate ("26.8 GiB"), if it says."""
    m = SIZE.search(text)
    if m:
        return m.group(1)
    m = BYTES.search(text)
    return _bytes_text(int(m.group(1))) if m else None


def oom_message(exc: BaseException, stage: str, options=("batch_size", "device")) -> str:
    """One line for an out-of-memory ``exc`` during ``stage``; the fix names those of ``options`` the job has."""
    kind = memory_kind(exc) or "host"
    size = requested_size(str(exc))
    where = f"during {stage}" if stage else "before the first step"
    what = f" (it tried to allocate {size} of {kind} memory)" if size else f" ({kind} memory)"
    fixes = [f for name, f in (("batch_size", "a smaller {opt:batch_size}"), ("device", "another {opt:device}"))
             if name in options]
    return f"out of memory {where}{what}; try {', '.join(fixes + ['fewer tiles at once'])}"


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(exc: OSError, stage: str, options=()) -> str:
    """One line for a full disk (``ENOSPC``) during ``stage``: what was being written and the fix."""
    what = f" while writing {exc.filename}" if exc.filename else ""
    where = f" during {stage}" if stage else ""
    again = " with {opt:intent=resume}" if "intent" in options else ""
    return (f"no space left on the disk{what}{where}; free some space, then run the same command again{again} "
            "(finished checkpoints and earlier outputs are kept)")


def free_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def guard_memory(gen, options=("batch_size", "device")):
    """``yield from gen`` (a job's progress generator; returns its result), turning out-of-memory errors
    into :class:`OutOfMemory` and a full disk into a ``HistodiffError``, naming the last progress stage.
    ``options``: the job's option names."""
    stage, error = "", None
    try:
        event = next(gen)
        while True:
            if getattr(event, "stage", "warning") != "warning":
                stage = event.stage
            try:
                sent = yield event
            except GeneratorExit:
                raise
            except BaseException as e:  # noqa: BLE001 - forwarded like yield from
                event = gen.throw(e)
            else:
                event = gen.send(sent)
    except StopIteration as stop:
        return stop.value
    except (MemoryError, RuntimeError) as e:
        if memory_kind(e) is None:
            raise
        error = OutOfMemory(oom_message(e, stage, options))
    except OSError as e:
        if not disk_full(e):
            raise
        error = HistodiffError(disk_full_message(e, stage, options))
    finally:
        gen.close()
    # raised outside the handler: the failed frames (and their tensors) are released first
    if error is not None:
        free_gpu_memory()
        raise error

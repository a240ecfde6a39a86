"""Out of memory (host or GPU) or out of disk as one plain error naming the stage, the size and the fix.

numpy raises ``MemoryError`` (``_ArrayMemoryError``), torch ``torch.OutOfMemoryError`` on a GPU and a
``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory") on the host. torch is never imported
here: an error from torch means torch is loaded already.
"""

from __future__ import annotations

import re
import sys

from .disk import DiskFull, forget_estimate, is_disk_full, job_intents, size_text
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


_bytes_text = size_text


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


disk_full = is_disk_full


def disk_full_message(exc: BaseException, stage: str, options=()) -> str:
    """One line for a full disk during ``stage`` (see :class:`.disk.DiskFull`); ``options``: the job's
    options (a dataclass), so that the fix suggests only an intent the job accepts."""
    return DiskFull.of(exc, stage=stage, intents=job_intents(options)).raw


def free_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def guard_memory(gen, options=("batch_size", "device")):
    """``yield from gen`` (a job's progress generator; returns its result), turning out-of-memory errors
    into :class:`OutOfMemory` and a full disk into :class:`.disk.DiskFull`, naming the last progress stage.
    ``options``: the job's options (a dataclass instance: its fields name the fixes and its ``intent``
    choices the intent a full disk suggests), or just their names."""
    import dataclasses

    from .events import relay

    intents = job_intents(options)
    if dataclasses.is_dataclass(options):
        options = [f.name for f in dataclasses.fields(options)]
    forget_estimate()
    error = None
    last = {"stage": ""}

    def note_stage(event):
        if getattr(event, "stage", "warning") != "warning":
            last["stage"] = event.stage

    try:
        return (yield from relay(gen, note_stage))
    except DiskFull as e:
        error = e.for_job(last["stage"], intents)
    except (MemoryError, RuntimeError) as e:
        if memory_kind(e) is not None:
            error = OutOfMemory(oom_message(e, last["stage"], options))
        elif is_disk_full(e):  # torch's writer
            error = DiskFull.of(e, stage=last["stage"], intents=intents)
        else:
            raise
    except Exception as e:  # noqa: BLE001 - OSError, shutil.Error, safetensors' error: only a full disk
        if not is_disk_full(e):
            raise
        error = DiskFull.of(e, stage=last["stage"], intents=intents)
    finally:
        gen.close()
    # raised outside the handler: the failed frames (and their tensors) are released first
    if error is not None:
        free_gpu_memory()
        raise error

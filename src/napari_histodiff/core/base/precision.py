"""Numeric precision in one place: ``auto`` picks what is faster *and* equal in quality on the device.

- sampling: bf16 autocast on CPUs with native bf16 instructions (AVX512-BF16 or AMX) and on CUDA GPUs
  that support bf16; fp32 elsewhere (MPS, older CPUs and GPUs);
- training: bf16 on CUDA GPUs that support it; fp32 on CPUs (a whole bf16 training step measured no
  faster there, 0.87x) and elsewhere.
- the guidance gradient (the latent classifier's backward pass while sampling): as sampling on CUDA, fp32
  on CPUs (there its bf16 backward costs 1.3-2x the fp32 one: docs/benchmarks.md).

``fp16`` needs a CUDA GPU. The old spelling ``no`` (``--mixed-precision no``) means ``fp32``.
"""

from __future__ import annotations

import contextlib
import sys
from functools import lru_cache

from .errors import HistodiffError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ALIASES = {"no": "fp32"}  # the old --mixed-precision spelling
HELP = ("auto (what is faster and equal in quality on the device: bf16 on GPUs and CPUs with bf16 "
        "instructions, else fp32), fp32, bf16 or fp16 (CUDA only)")


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (x86 AVX512-BF16 or AMX-BF16; ARM bf16), so bf16 autocast is
    faster rather than emulated."""
    flags = _cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _cpu_flags() -> set[str]:
    if not sys.platform.startswith("linux"):
        return set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str | None, device, purpose: str = "sample") -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16`` or ``no``)
    on ``device`` (a ``torch.device`` or its name); ``purpose``: ``sample``, ``guidance`` or ``train``."""
    name = ALIASES.get(precision or "auto", precision or "auto")
    if name not in PRECISIONS:
        raise HistodiffError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if name == "fp16" and kind != "cuda":
        raise HistodiffError(f"fp16 needs a CUDA GPU (the device is {kind}); use {{opt:precision=auto}} or bf16")
    if name != "auto":
        return name
    if kind == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if kind == "cpu" and purpose == "sample" and cpu_has_bf16():
        return "bf16"
    return "fp32"


def accelerate_precision(resolved: str) -> str:
    """The ``mixed_precision`` name accelerate uses: ``no``, ``bf16`` or ``fp16``."""
    return "no" if resolved == "fp32" else resolved


def torch_dtype(resolved: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[resolved]


def autocast(device, resolved: str):
    """An autocast context for ``resolved`` precision on ``device`` (nothing for fp32)."""
    if resolved == "fp32":
        return contextlib.nullcontext()
    import torch

    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return torch.autocast(kind, dtype=torch_dtype(resolved))

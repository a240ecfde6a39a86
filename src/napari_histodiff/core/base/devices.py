"""Device choice in one place: ``auto`` picks cuda > mps > cpu."""

from __future__ import annotations

import os

from .errors import HistodiffError


def is_main_process() -> bool:
    """Rank 0 under a launcher (``accelerate launch``, ``torchrun``), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def available_devices() -> list[str]:
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        names.append("mps")
    return names


def pick_device(name: str | None = "auto"):
    """Return a ``torch.device`` for ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    import torch

    name = (name or "auto").strip().lower()
    have = available_devices()
    if name == "auto":
        return torch.device(have[1] if len(have) > 1 else "cpu")
    if name == "cuda" and any(d.startswith("cuda") for d in have):
        return torch.device("cuda:0")
    if name not in have:
        raise HistodiffError(
            f"device {name!r} is not available on this machine; available: {', '.join(have)} "
            "(use {opt:device=auto} to pick the best one)"
        )
    return torch.device(name)

"""Device choice in one place: ``auto`` picks cuda > mps > cpu."""

from __future__ import annotations

import os

from .errors import HistodiffError


def is_main_process() -> bool:
    """Rank 0 under a launcher (``accelerate launch``, ``torchrun``), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """How many processes a launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def wait_for_everyone() -> None:
    """Under a launcher, wait until every process gets here (e.g. until the main process has written
    what the others read); nothing in a single process."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState(cpu=launcher_cpu()).wait_for_everyone()


def launcher_cpu(device: str | None = "auto") -> bool:
    """Whether the processes of a launcher run on the CPU (over gloo): asked for, or no CUDA."""
    import torch

    return (device or "auto").startswith("cpu") or not torch.cuda.is_available() or \
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")


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
    if world_size() > 1 and name in ("auto", "cuda") and any(d.startswith("cuda") for d in have):
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")  # each process its own GPU
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

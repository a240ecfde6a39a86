"""Losses kept on the device and read back only every few steps (one host sync per read).

On a GPU every ``.item()`` waits for the step's kernels to finish; the loops add each step's losses here
and read their means when they report. On the CPU a read costs nothing, so they read every step.
"""

from __future__ import annotations


def log_every(device, given: int | None = None) -> int:
    """Steps between loss reports: ``given``, else 1 on the CPU and 10 on accelerators."""
    if given is not None:
        return max(1, int(given))
    return 1 if str(getattr(device, "type", device)).startswith("cpu") else 10


def loader_options(device, num_workers: int | None) -> dict:
    """DataLoader options of a training loop on ``device``: ``num_workers`` (None: 4 reader processes on
    CUDA, at most the CPUs less one; inline elsewhere) and ``pin_memory`` on CUDA."""
    import os

    cuda = str(getattr(device, "type", device)).startswith("cuda")
    if num_workers is None:
        num_workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if cuda else 0
    return {"num_workers": num_workers, "pin_memory": cuda}


class LossMeter:
    """Sums of named scalar tensors since the last :meth:`read`."""

    def __init__(self):
        self.sums: dict = {}
        self.count = 0

    def add(self, **values) -> None:
        for name, value in values.items():
            v = value.detach().float()
            self.sums[name] = v if name not in self.sums else self.sums[name] + v
        self.count += 1

    def read(self) -> dict[str, float]:
        """The means since the last read, as floats (one transfer), and start again."""
        import torch

        if not self.count:
            return {}
        names = list(self.sums)
        values = (torch.stack([self.sums[n] for n in names]) / self.count).tolist()
        self.sums, self.count = {}, 0
        return dict(zip(names, values))

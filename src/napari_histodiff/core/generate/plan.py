"""What each tile of a sampling run is: its target class and, for variations, its source tile.

Computed on demand from a few numbers, never listed: a plan for 10^9 tiles takes the memory of one
for 10^3 (``histodiff sample -n 1000000000`` starts at once, or is refused by the disk check)."""

from __future__ import annotations

from collections.abc import Sequence


class TilePlan(Sequence):
    """``n`` tiles of each of ``classes`` in order (``n`` unguided tiles, class "", when there is none).
    ``plan[i]`` is tile ``i``'s target class. ``pools``: for variations, the source tile indices of each
    class (one pool for unlabelled sources); tile ``j`` of a class uses its pool's ``j % len(pool)``-th."""

    def __init__(self, classes, n: int, pools=None):
        self.classes = list(classes)
        self.n = int(n)
        self.pools = None if pools is None else [p if isinstance(p, range) else list(p) for p in pools]

    def __len__(self) -> int:
        return self.n * max(1, len(self.classes))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = self._index(i)
        return self.classes[i // self.n] if self.classes else ""

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"tile {i} is not in a plan of {len(self)} tiles")
        return i

    @property
    def guided(self) -> bool:
        """Whether any tile has a target class."""
        return any(self.classes)

    def source(self, i: int) -> int | None:
        """The source tile index of variation ``i`` (None without sources)."""
        if self.pools is None:
            return None
        i = self._index(i)
        pool = self.pools[i // self.n if self.classes else 0]
        return pool[(i % self.n) % len(pool)]


class Sources(Sequence):
    """``plan.source(i)`` as a sequence (what the sampler indexes as ``picks[i]``)."""

    def __init__(self, plan: TilePlan):
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i):
        return self.plan.source(i)

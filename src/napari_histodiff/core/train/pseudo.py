"""Pseudo-labels: unlabelled tiles of the same tissue, labelled by the fine-tuned bundle's calibrated
selection classifier where it is confident, join the labeled tiles to train the noisy latent classifier.
They only train: the held-out tiles that measure the classifier are labeled ones (``WithPseudoLabels``).
Measured on crc5 in docs/results.md ("Pseudo-labels for the guidance classifier")."""

from __future__ import annotations

import numpy as np

from ..base.errors import HistodiffError
from ..base.events import Progress, warning
from ..data.tiles import TileSet

STAGE = "pseudo_labels"


class PseudoLabelled(TileSet):
    """Tiles ``indices`` of ``tiles`` with ``labels`` (indices into ``class_names``); holds indices only."""

    def __init__(self, tiles: TileSet, indices, labels, class_names):
        self.tiles, self.tile_size = tiles, tiles.tile_size
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.description = f"pseudo-labelled: {tiles.description}"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tiles[int(self.indices[self._index(i)])]

    def label(self, i: int) -> int:
        return int(self.labels[self._index(i)])

    def origin(self, i: int) -> str:
        return self.tiles.origin(int(self.indices[self._index(i)]))


class WithPseudoLabels(TileSet):
    """The labeled tiles followed by the pseudo-labelled ones, in the labeled tiles' class order (which
    the bundle's class names follow; ``ConcatTiles`` would sort the names). ``labeled_count``: tiles from
    this index on carry pseudo-labels, so they may train but are never held out to measure a classifier
    (``classifiers.heldout_split``)."""

    def __init__(self, labeled: TileSet, pseudo: PseudoLabelled):
        if pseudo.class_names != list(labeled.class_names):
            raise HistodiffError(f"pseudo-labels name classes {pseudo.class_names}, the labeled tiles "
                                 f"{labeled.class_names}")
        self.labeled, self.pseudo, self.tile_size = labeled, pseudo, labeled.tile_size
        self.labeled_count = len(labeled)
        self.class_names = list(labeled.class_names)
        self.description = f"{labeled.description}; {pseudo.description}"

    def __len__(self) -> int:
        return len(self.labeled) + len(self.pseudo)

    def _part(self, i: int):
        j = self._index(i)
        n = len(self.labeled)
        return (self.labeled, j) if j < n else (self.pseudo, j - n)

    def __getitem__(self, i: int) -> np.ndarray:
        part, j = self._part(i)
        return part[j]

    def label(self, i: int) -> int | None:
        part, j = self._part(i)
        return part.label(j)

    def origin(self, i: int) -> str:
        part, j = self._part(i)
        return part.origin(j)


def pseudo_label(bundle, unlabeled: TileSet, threshold: float, max_tiles: int, seed: int = 0, batch_size: int = 64):
    """Score at most ``max_tiles`` of ``unlabeled`` (a seeded random choice) with ``bundle``'s selection
    classifier; yield progress, return ``(PseudoLabelled, report)`` with the tiles whose calibrated
    confidence is at least ``threshold`` and the count kept per class."""
    import torch

    from ..models.pixels import to_model_input

    clf = bundle.selection_classifier
    if clf is None:
        raise HistodiffError("the bundle has no selection classifier to pseudo-label with")
    if unlabeled.tile_size != bundle.tile_size:
        raise HistodiffError(f"unlabelled tiles are {unlabeled.tile_size} px; the bundle needs {bundle.tile_size} px")
    n = len(unlabeled)
    if n == 0:
        raise HistodiffError("the unlabelled folders or slides hold no tiles; check {opt:unlabeled}")
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:max_tiles]) if n > max_tiles else np.arange(n)
    probs = []
    for i in range(0, len(idx), batch_size):
        part = idx[i : i + batch_size]
        x = torch.from_numpy(np.stack([unlabeled[int(j)] for j in part]))
        with torch.no_grad():
            probs.append(clf.score(to_model_input(x, bundle.device))["probs"].cpu().numpy())
        yield Progress(STAGE, i + len(part), len(idx))
    probs = np.concatenate(probs)
    pred, keep = probs.argmax(1), probs.max(1) >= threshold
    names = bundle.class_names
    per_class = {c: int((pred[keep] == k).sum()) for k, c in enumerate(names)}
    report = {"scored": len(idx), "of": n, "threshold": threshold, "per_class": per_class}
    yield Progress(STAGE, len(idx), len(idx), message=_per_class_text(per_class))
    empty = [c for c, k in per_class.items() if k == 0]
    if empty:
        yield warning(f"no unlabelled tile reached confidence {threshold} for class {', '.join(empty)}; the latent "
                      "classifier learns those from the labeled tiles only")
    return PseudoLabelled(unlabeled, idx[keep], pred[keep], names), report


def _per_class_text(per_class: dict) -> str:
    return "pseudo-labelled: " + ", ".join(f"{c} {n}" for c, n in per_class.items())


def pseudo_summary(result: dict) -> str:
    """``"; pseudo-labelled: A 3, B 5"`` for a fine-tuning result that pseudo-labelled tiles, else ``""``."""
    per_class = (result.get("pseudo_labels") or {}).get("per_class")
    return "; " + _per_class_text(per_class) if per_class else ""

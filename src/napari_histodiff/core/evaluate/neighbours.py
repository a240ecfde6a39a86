"""Nearest real tiles by inner product of unit embeddings: faiss when it is installed (exact
``IndexFlatIP``, or an inverted-file index above :data:`IVF_ABOVE` tiles), else numpy in chunks so that
no more than ``chunk`` x queries similarities exist at once."""

from __future__ import annotations

import numpy as np

IVF_ABOVE = 50_000


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class NearestIndex:
    """Add real embeddings in batches, then :meth:`search` queries for their ``k`` most similar."""

    def __init__(self, dim: int, use_faiss: bool | None = None, chunk: int = 65536):
        self.dim, self.chunk, self._parts = dim, chunk, []
        self.faiss = _faiss() if use_faiss in (None, True) else None
        self._data = None

    @property
    def kind(self) -> str:
        if self.faiss is None:
            return "numpy (exact, chunked)"
        return "faiss IVF (approximate)" if len(self) > IVF_ABOVE else "faiss IndexFlatIP (exact)"

    def add(self, emb: np.ndarray) -> None:
        self._parts.append(np.ascontiguousarray(emb, dtype=np.float32))
        self._data = None

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def _matrix(self) -> np.ndarray:
        if self._data is None:
            self._data = np.concatenate(self._parts) if self._parts else np.zeros((0, self.dim), np.float32)
            self._parts = [self._data]
        return self._data

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, indices), each (Q, k), most similar first (k at most the number of real tiles)."""
        data, q = self._matrix(), np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(data))
        if self.faiss is not None:
            return self._search_faiss(data, q, k)
        best_s = np.full((len(q), k), -np.inf, np.float32)
        best_i = np.zeros((len(q), k), np.int64)
        for start in range(0, len(data), self.chunk):
            s = q @ data[start : start + self.chunk].T
            cat_s = np.concatenate([best_s, s], axis=1)
            cat_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)], axis=1)
            top = np.argpartition(-cat_s, k - 1, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(cat_s, top, 1), np.take_along_axis(cat_i, top, 1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)

    def _search_faiss(self, data, q, k):
        faiss = self.faiss
        if len(data) > IVF_ABOVE:
            nlist = int(4 * np.sqrt(len(data)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            index.train(data[rng.choice(len(data), min(len(data), 64 * nlist), replace=False)])
            index.add(data)
            index.nprobe = max(1, nlist // 8)
        else:
            index = faiss.IndexFlatIP(self.dim)
            index.add(data)
        s, i = index.search(q, k)
        return s, i.astype(np.int64)

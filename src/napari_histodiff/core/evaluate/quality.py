"""Quality of a synthetic set against real tiles, measured on feature vectors (N, D):

- :func:`precision_recall`: Kynkäänniemi et al. 2019, "Improved precision and recall metric for
  assessing generative models": the real manifold is the union of balls around each real vector with
  the distance to its k-th nearest real neighbour as radius; precision is the share of synthetic
  vectors inside it, recall the share of real vectors inside the synthetic manifold built the same way.
- :func:`frechet_distance`: the Fréchet distance between Gaussians fitted to both sets (the formula of
  FID; on other features than Inception's it is not comparable to published FIDs).
- :func:`diversity_ratio`: mean pairwise cosine distance of the synthetic vectors over that of the
  real ones (1: as spread as the real tiles; near 0: a few textures repeated).
- :func:`fit_softmax` / :func:`cross_validated_accuracy`: a small L2-regularised multinomial logistic
  regression, the report's cheap independent classifier.
"""

from __future__ import annotations

import numpy as np

K = 3  # Kynkäänniemi et al. use k = 3
CHUNK = 2048


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0)


def knn_radii(x: np.ndarray, k: int = K) -> np.ndarray:
    """Distance of each row of ``x`` to its k-th nearest other row (needs more than ``k`` rows)."""
    x = np.asarray(x, np.float64)
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} vectors (got {len(x)})")
    out = np.empty(len(x))
    for s in range(0, len(x), CHUNK):
        d = _sq_dist(x[s : s + CHUNK], x)
        # the k-th smallest after the row itself (distance 0 at position 0)
        out[s : s + CHUNK] = np.sqrt(np.partition(d, k, axis=1)[:, k])
    return out


def coverage_of(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Share of ``queries`` within ``radii`` of at least one vector of ``manifold``."""
    manifold, queries = np.asarray(manifold, np.float64), np.asarray(queries, np.float64)
    inside = 0
    r2 = radii**2
    for s in range(0, len(queries), CHUNK):
        inside += int((_sq_dist(queries[s : s + CHUNK], manifold) <= r2[None, :] + 1e-12).any(1).sum())
    return inside / len(queries)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = K) -> tuple[float, float]:
    """(precision, recall) of ``fake`` against ``real`` (Kynkäänniemi et al. 2019, k-NN radii)."""
    precision = coverage_of(real, knn_radii(real, k), fake)
    recall = coverage_of(fake, knn_radii(fake, k), real)
    return precision, recall


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))`` of Gaussians fitted to rows of ``a`` and ``b``.

    ``Tr (C_a C_b)^(1/2)`` is computed as the sum of the square roots of the eigenvalues of the symmetric
    ``C_a^(1/2) C_b C_a^(1/2)`` (the same eigenvalues): exact for singular covariances (fewer tiles than
    dimensions) and far faster than ``scipy.linalg.sqrtm`` of the product."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cb @ root_a), 0, None)).sum()
    return float(max(0.0, ((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * trace_root))


def mean_pairwise_cosine_distance(x: np.ndarray) -> float:
    """Mean of ``1 - cos`` over all pairs of different rows (O(N D), from the sum of unit vectors)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 2:
        raise ValueError("pairwise distances need at least 2 vectors")
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    s = u.sum(0)
    mean_cos = (s @ s - (u * u).sum()) / (n * (n - 1))
    return float(max(0.0, 1 - mean_cos))


def diversity_ratio(real: np.ndarray, fake: np.ndarray) -> float:
    """Spread of ``fake`` over spread of ``real``: ratio of their mean pairwise cosine distances."""
    return mean_pairwise_cosine_distance(fake) / max(mean_pairwise_cosine_distance(real), 1e-12)


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-2):
    """Weights (D + 1, C) of a multinomial logistic regression (L-BFGS, L2 penalty ``l2`` on the weights)."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    x = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])
    onehot = np.eye(n_classes)[np.asarray(y)]
    shape = (x.shape[1], n_classes)

    def loss(w):
        w = w.reshape(shape)
        logp = log_softmax(x @ w, axis=1)
        penalty = 0.5 * l2 * (w[:-1] ** 2).sum()
        grad = x.T @ (np.exp(logp) - onehot) / len(x)
        grad[:-1] += l2 * w[:-1]
        return -(onehot * logp).sum() / len(x) + penalty, grad.ravel()

    res = minimize(loss, np.zeros(np.prod(shape)), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x.reshape(shape)


def predict_softmax(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x @ w[:-1] + w[-1]).argmax(1)


def cross_validated_accuracy(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0):
    """Accuracy of :func:`fit_softmax` on held-out folds (None when there are too few tiles)."""
    y = np.asarray(y)
    folds = min(folds, len(y))
    if folds < 2:
        return None
    part = np.random.default_rng(seed).permutation(len(y)) % folds
    right = 0
    for f in range(folds):
        test = part == f
        w = fit_softmax(x[~test], y[~test], n_classes)
        right += int((predict_softmax(w, x[test]) == y[test]).sum())
    return right / len(y)

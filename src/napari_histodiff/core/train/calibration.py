"""Confidence calibration: temperature scaling (Guo et al. 2017) and expected calibration error.

One scalar ``T`` divides a classifier's logits; it is fitted by LBFGS on the negative log-likelihood of
held-out tiles, so a confidence of 0.8 means about 80% of such tiles are right. The accuracy does not
change (the argmax is the same); only how sure the classifier says it is.

Fit ``T`` on the logits of the model that is thresholded (an ensemble's mean logits, not its members'),
on tiles that neither trained it nor chose its training step. :func:`calibrate` reports the calibration
error out of fold: each tile's probabilities use a ``T`` fitted without that tile, so the figure is not
the fit's own optimism.
"""

from __future__ import annotations

import math

ECE_BINS = 15


def expected_calibration_error(probs, labels, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width confidence bins: sum over bins of |accuracy - confidence|
    weighted by the fraction of samples in the bin (Guo et al. 2017, eq. 3)."""
    import torch

    probs, labels = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels)
    if len(labels) == 0:
        return 0.0
    conf, pred = probs.max(-1)
    right = (pred == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            ece += float(inside.double().mean() * (right[inside].mean() - conf[inside].mean()).abs())
    return ece


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """The temperature ``T > 0`` that minimises the NLL of ``softmax(logits / T)`` on (held-out) ``labels``.
    Optimised over ``log T`` (so it stays positive) with LBFGS; 1.0 when there is nothing to fit."""
    import torch
    import torch.nn.functional as F

    logits = torch.as_tensor(logits, dtype=torch.float64).detach().cpu()
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if len(labels) < 2 or logits.shape[-1] < 2:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may score under no_grad
        opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    return min(max(t, 0.05), 100.0)  # a separable held-out set drives T -> 0: keep it in a sane range


CROSSFIT_FOLDS = 5


def crossfit_probs(logits, labels, groups=None, folds: int = CROSSFIT_FOLDS, seed: int = 0):
    """Temperature-scaled probabilities in which each row's temperature is fitted on the other folds only
    (rows of one ``groups`` value, e.g. one tile at several timesteps, stay in one fold)."""
    import numpy as np
    import torch

    logits = torch.as_tensor(logits, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    ids = np.unique(groups)
    fold_of = dict(zip(np.random.default_rng([seed, 17]).permutation(ids).tolist(), np.arange(len(ids)) % folds))
    fold = torch.as_tensor([fold_of[g] for g in groups.tolist()])
    probs = logits.softmax(-1)
    for f in fold.unique():
        out = fold == f
        probs[out] = (logits[out] / fit_temperature(logits[~out], labels[~out])).softmax(-1)
    return probs


def calibrate(logits, labels, groups=None, seed: int = 0) -> dict:
    """Temperature of ``logits`` (fitted on all of them) and the calibration error before (T = 1) and
    after, the latter out of fold (:func:`crossfit_probs`). ``logits`` must come from tiles used for
    nothing else; with fewer than 2 tiles nothing is fitted (T = 1) and no error is reported."""
    import torch

    logits = torch.as_tensor(logits, dtype=torch.float64)
    n = len(set(groups)) if groups is not None else len(logits)
    if n < 2:
        return {"temperature": 1.0, "ece_before": None, "ece_after": None, "calibration_tiles": n}
    return {"temperature": fit_temperature(logits, labels),
            "ece_before": expected_calibration_error(logits.softmax(-1), labels),
            "ece_after": expected_calibration_error(crossfit_probs(logits, labels, groups, seed=seed), labels),
            "calibration_tiles": n}

"""Confidence calibration: temperature scaling (Guo et al. 2017) and expected calibration error.

One scalar ``T`` divides a classifier's logits; it is fitted by LBFGS on the negative log-likelihood of
held-out tiles, so a confidence of 0.8 means about 80% of such tiles are right. The accuracy does not
change (the argmax is the same); only how sure the classifier says it is.
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


def calibration_metrics(logits, labels, temperature: float, prefix: str = "") -> dict:
    """ECE before (T = 1) and after temperature scaling, and the temperature."""
    import torch

    logits = torch.as_tensor(logits, dtype=torch.float64)
    return {f"{prefix}temperature": temperature,
            f"{prefix}ece_before": expected_calibration_error(logits.softmax(-1), labels),
            f"{prefix}ece_after": expected_calibration_error((logits / temperature).softmax(-1), labels)}

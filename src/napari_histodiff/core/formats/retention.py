"""How a bundle records its first stage's class retention (``metrics.autoencoder_*``) and the line that
shows it; measured in :mod:`..train.retention`."""

from __future__ import annotations

PREFIX = "autoencoder_"  # meta["metrics"] keys: autoencoder_retention, autoencoder_psnr, ...
KEYS = ("retention", "acc_original", "acc_reconstructed", "psnr", "ssim", "tiles")


def retention_line(res: dict | None) -> str | None:
    """The figures in one line (``0.78 (selection classifier on 20 held-out tiles: ...``); None without them."""
    if not res or res.get("acc_original") is None:
        return None
    r = res.get("retention")
    head = "n/a (the classifier got no original right)" if r is None else f"{r:.2f}"
    return (f"{head} (selection classifier on {res['tiles']} held-out tiles: {100 * res['acc_original']:.0f}% "
            f"right on the tiles, {100 * res['acc_reconstructed']:.0f}% on the autoencoder's reconstructions); "
            f"PSNR {res['psnr']:.1f} dB, SSIM {res['ssim']:.3f}")


def from_metrics(metrics: dict) -> dict | None:
    """The figures :func:`record_retention` stored in a bundle's ``metrics``, or None."""
    if not isinstance(metrics, dict) or PREFIX + "acc_original" not in metrics:
        return None
    return {k: metrics.get(PREFIX + k) for k in KEYS}

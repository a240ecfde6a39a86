"""How much of the class an autoencoder keeps (issue 29): one fixed image classifier scores the same
labelled tiles before and after the autoencoder, ``retention = accuracy on reconstructions / accuracy on
originals``, beside the reconstructions' PSNR and SSIM (scikit-image).

Everything downstream of the first stage (the guidance classifier, the UNet, the kept tiles) sees only
what survives it, so a retention well below 1 caps what guidance can do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..formats.retention import KEYS, PREFIX, from_metrics, retention_line  # noqa: F401 - one place for both


def image_quality(originals: np.ndarray, reconstructions: np.ndarray) -> dict:
    """PSNR (dB, over all pixels of the set) and SSIM (mean over tiles, RGB) of uint8 NHWC tiles."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = np.asarray(originals), np.asarray(reconstructions)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"need two uint8 NHWC stacks of one shape, got {a.shape} and {b.shape}")
    psnr = float("inf") if np.array_equal(a, b) else float(peak_signal_noise_ratio(a, b, data_range=255))
    side = min(a.shape[1:3])
    win = min(7, side if side % 2 else side - 1)
    ssim = float(np.mean([structural_similarity(x, y, channel_axis=-1, data_range=255, win_size=win)
                          for x, y in zip(a, b)]))
    return {"psnr": psnr, "ssim": ssim}


def class_retention(predict, reconstruct, tiles: np.ndarray, labels, batch_size: int = 256) -> dict:
    """Retention of the autoencoder ``reconstruct`` (uint8 NHWC -> uint8 NHWC) measured by the classifier
    ``predict`` (uint8 NHWC -> class indices) on labelled ``tiles``: ``acc_original``, ``acc_reconstructed``,
    ``retention`` (None when the classifier gets no original right), ``psnr``, ``ssim`` and ``tiles``."""
    tiles, labels = np.asarray(tiles), np.asarray(labels)
    if not len(tiles) or len(tiles) != len(labels):
        raise ValueError(f"need labelled tiles, got {len(tiles)} tiles and {len(labels)} labels")
    rec = np.concatenate([reconstruct(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)])
    acc_o = float(np.mean(np.asarray(predict(tiles)) == labels))
    acc_r = float(np.mean(np.asarray(predict(rec)) == labels))
    return {"retention": acc_r / acc_o if acc_o > 0 else None, "acc_original": acc_o, "acc_reconstructed": acc_r,
            **image_quality(tiles, rec), "tiles": int(len(tiles))}


def bundle_retention(bundle, tiles: np.ndarray, labels) -> dict:
    """:func:`class_retention` of a fine-tuned bundle's autoencoder, scored by its selection classifier."""
    from .autoencoder import reconstruct

    return class_retention(lambda x: _predict(bundle, x),
                           lambda x: reconstruct(bundle.vae, x, bundle.device, batch_size=_batch(bundle.device)),
                           tiles, labels)


def _predict(bundle, tiles: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The selection classifier's class of each uint8 NHWC tile."""
    import torch

    from ..models.pixels import to_model_input

    out = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch_size):
            x = to_model_input(torch.from_numpy(tiles[i : i + batch_size]), bundle.device)
            out.append(bundle.selection_classifier.score(x)["probs"].argmax(1).cpu().numpy())
    return np.concatenate(out)


def _batch(device) -> int:
    return 256 if str(device).startswith("cuda") else 32


def record_retention(out_dir, tiles, indices, device="cpu") -> dict | None:
    """Measure the bundle in ``out_dir`` on its labelled ``tiles[indices]`` (the held-out tiles that trained
    neither classifier) and store the figures in its ``histodiff.json`` (``metrics.autoencoder_*``).
    Returns them, or None when no tile is held out."""
    from ..formats.bundle import load_bundle, read_meta, write_meta

    indices = [int(i) for i in indices]
    if not indices:
        return None
    bundle = load_bundle(out_dir, device=device, require_unet=False)
    x = np.stack([tiles[i] for i in indices])
    res = bundle_retention(bundle, x, [tiles.label(i) for i in indices])
    res["classifier"] = "selection classifier, held-out labelled tiles"
    meta = read_meta(Path(out_dir))
    meta.setdefault("metrics", {}).update({PREFIX + k: res[k] for k in KEYS})
    write_meta(Path(out_dir), meta)
    return res

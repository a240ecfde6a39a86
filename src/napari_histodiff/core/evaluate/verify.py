"""Pixel-level confirmation of candidate copies: the best normalised cross-correlation of two tiles'
band-passed grey levels over the 8 flips / rotations, three zooms (a crop to 85-100% of the side) and
shifts up to a fifth of the side, by FFT. Stain changes, blur and JPEG barely move it; two different
tiles of the same tissue stay well below a copy (``docs/audit.md``)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

ZOOMS = (1.0, 0.92, 0.85)  # fraction of the side kept around the centre of the real tile
MAX_SHIFT = 0.2  # of the side
BAND = (0.7, 4.0)  # difference of Gaussians (px at 64 px), scaled with the tile size


def _prepare(grey: np.ndarray) -> np.ndarray:
    """Band-pass, standardise and window (N, S, S) grey levels."""
    s = grey.shape[-1] / 64
    g = grey.astype(np.float32)
    g = ndi.gaussian_filter(g, (0, BAND[0] * s, BAND[0] * s)) - ndi.gaussian_filter(g, (0, BAND[1] * s, BAND[1] * s))
    g = (g - g.mean(axis=(1, 2), keepdims=True)) / (g.std(axis=(1, 2), keepdims=True) + 1e-6)
    win = np.hanning(grey.shape[-1]).astype(np.float32)
    return g * np.outer(win, win)


def _zoomed(tiles: np.ndarray) -> np.ndarray:
    """(N, Z, S, S) grey levels of uint8 NHWC tiles, each zoom a centre crop resized back."""
    from PIL import Image

    n, size = len(tiles), tiles.shape[1]
    grey = tiles.astype(np.float32).mean(-1)
    out = np.empty((n, len(ZOOMS), size, size), np.float32)
    for z, keep in enumerate(ZOOMS):
        c = int(round(size * keep))
        o = (size - c) // 2
        for i in range(n):
            crop = Image.fromarray(grey[i, o : o + c, o : o + c])
            out[i, z] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR)) if c != size else grey[i]
    return out


def _shift_mask(size: int) -> np.ndarray:
    m = int(round(MAX_SHIFT * size))
    d = np.minimum(np.arange(size), size - np.arange(size)) <= m
    return d[:, None] & d[None, :]


def aligned_correlation(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Scores in [-1, 1] (1: the same pixels) of uint8 (S, S, 3) ``query`` against each of (K, S, S, 3)."""
    size = query.shape[0]
    q = _prepare(query.astype(np.float32).mean(-1)[None])[0]
    views = np.stack([np.rot90(np.flip(q, 1) if k >= 4 else q, k % 4) for k in range(8)])  # (8, S, S)
    cand = _zoomed(candidates)
    k, z = cand.shape[:2]
    cand = _prepare(cand.reshape(k * z, size, size)).reshape(k, z, size, size)
    fq = np.fft.rfft2(views)[:, None, None]  # (8, 1, 1, S, S/2+1)
    fc = np.conj(np.fft.rfft2(cand))[None]  # (1, K, Z, S, S/2+1)
    cc = np.fft.irfft2(fq * fc, s=(size, size))[..., _shift_mask(size)].max(-1)  # (8, K, Z)
    norms = np.sqrt((views**2).sum((1, 2)))[:, None, None] * np.sqrt((cand**2).sum((2, 3)))[None]
    return (cc / np.maximum(norms, 1e-6)).max(axis=(0, 2))

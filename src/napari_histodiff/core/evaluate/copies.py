"""What a generator or a careless pipeline does to a copied tile, as one random transform: one of the 8
flips / rotations, H&E stain jitter, a crop down to 85% of the side resized back, a small translation,
mild blur and JPEG compression.

The audit's encoder learns to ignore exactly these (:mod:`.features`), its threshold is calibrated on
them (:mod:`.audit`), and the tests and benchmarks plant copies with them.
"""

from __future__ import annotations

import io

import numpy as np

STAIN_SIGMA = 0.08  # HED scale and shift, see train.augment.stain_jitter
CROP_MIN = 0.85  # the crop keeps this fraction of the side, at least
SHIFT = 0.08  # translation, as a fraction of the side
BLUR_P = 0.5
JPEG_P, JPEG_QUALITY = 0.5, (50, 95)


def crop_shift(x, gen, crop_min: float = CROP_MIN, shift: float = SHIFT):
    """A square crop of ``crop_min``..1 of the side anywhere in the tile, shifted by up to ``shift`` of the
    side (the border filled by reflection), resized back; x float NCHW."""
    import torch
    import torch.nn.functional as F

    n = len(x)
    keep = crop_min + torch.rand(n, generator=gen) * (1 - crop_min)
    place = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - keep)[:, None]  # normalised coordinates: side = 2
    move = (torch.rand(n, 2, generator=gen) * 2 - 1) * 2 * shift
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = keep
    theta[:, :, 2] = place + move
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def jpeg(x, gen, p: float = JPEG_P, quality=JPEG_QUALITY):
    """JPEG-compress a fraction ``p`` of the tiles (x float NCHW in [-1, 1]) at a random quality."""
    import torch
    from PIL import Image

    on = (torch.rand(len(x), generator=gen) < p).tolist()
    q = torch.randint(quality[0], quality[1] + 1, (len(x),), generator=gen).tolist()
    if not any(on):
        return x
    out = x.clone()
    u8 = to_uint8(x)
    for i in (i for i, o in enumerate(on) if o):
        buf = io.BytesIO()
        Image.fromarray(u8[i]).save(buf, format="JPEG", quality=q[i])
        out[i] = from_uint8(np.asarray(Image.open(buf).convert("RGB"))[None])[0].to(x)
    return out


def copy_batch(x, gen):
    """Each tile of ``x`` (float NCHW in [-1, 1]) as a random copy of itself."""
    from ..train.augment import blur, dihedral, stain_jitter

    x = stain_jitter(dihedral(x, gen), gen, STAIN_SIGMA)
    x = blur(crop_shift(x, gen), gen, p=BLUR_P)
    return jpeg(x.clamp(-1, 1), gen)


def to_uint8(x) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC."""
    return ((x.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def from_uint8(tiles):
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    import torch

    return torch.tensor(np.asarray(tiles)).permute(0, 3, 1, 2).float() / 127.5 - 1


def copy_tiles(tiles: np.ndarray, seed: int = 0) -> np.ndarray:
    """Copies of uint8 (N, H, W, 3) tiles, one random transform each (for tests, benchmarks and calibration)."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    return to_uint8(copy_batch(from_uint8(tiles), gen))

"""Pixel-space augmentation of labeled tiles for the classifiers: the 8 flips / rotations, HED stain
jitter (Tellez et al. 2018, with scikit-image's ``rgb2hed`` / ``hed2rgb`` matrices, computed in torch
on the batch's device) and a mild Gaussian blur. Tiles are float NCHW in [-1, 1]."""

from __future__ import annotations

import math

STAIN_SIGMA = 0.05  # HED channels scaled by U(1 - s, 1 + s) and shifted by U(-s, s) (in the channel's OD units)
BLUR_P, BLUR_SIGMA = 0.3, (0.1, 0.8)


def _matrices(device, dtype):
    import torch
    from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

    return (torch.as_tensor(hed_from_rgb, device=device, dtype=dtype),
            torch.as_tensor(rgb_from_hed, device=device, dtype=dtype))


def rgb2hed(rgb, clip: bool = True):
    """``skimage.color.rgb2hed`` for float NHWC-last ``rgb`` in [0, 1] (torch); ``clip=False`` keeps
    the negative parts, so that :func:`hed2rgb` gives the tile back exactly."""
    import torch

    to_hed, _ = _matrices(rgb.device, rgb.dtype)
    hed = torch.log(rgb.clamp_min(1e-6)) / math.log(1e-6) @ to_hed
    return hed.clamp_min(0) if clip else hed


def hed2rgb(hed):
    """``skimage.color.hed2rgb`` (torch): RGB in [0, 1]."""
    import torch

    _, to_rgb = _matrices(hed.device, hed.dtype)
    return torch.exp(-(hed * -math.log(1e-6)) @ to_rgb).clamp(0, 1)


def dihedral(x, gen):
    """Each tile flipped and rotated by one of the 8 symmetries of the square."""
    import torch

    k = torch.randint(0, 8, (len(x),), generator=gen).tolist()
    return torch.stack([torch.rot90(t.flip(-1) if i >= 4 else t, i % 4, dims=(-2, -1)) for t, i in zip(x, k)])


def stain_jitter(x, gen, sigma: float = STAIN_SIGMA):
    """HED stain jitter of tiles in [-1, 1]."""
    import torch

    n = len(x)
    alpha = (1 + (torch.rand(n, 1, 1, 3, generator=gen) * 2 - 1) * sigma).to(x.device, x.dtype)
    beta = ((torch.rand(n, 1, 1, 3, generator=gen) * 2 - 1) * sigma).to(x.device, x.dtype)
    hed = rgb2hed(((x + 1) / 2).permute(0, 2, 3, 1), clip=False)
    # rgb2hed gives OD / -log(1e-6) units (about 0..0.2 on tissue): scale the shift to the tile's amount of stain
    hed = hed * alpha + beta * hed.abs().mean(dim=(1, 2), keepdim=True).clamp_min(1e-3)
    return hed2rgb(hed).permute(0, 3, 1, 2) * 2 - 1


def blur(x, gen, p: float = BLUR_P, sigma=BLUR_SIGMA):
    """A 3x3 Gaussian blur of random strength on a fraction ``p`` of the tiles."""
    import torch
    import torch.nn.functional as F

    n = len(x)
    on = torch.rand(n, generator=gen) < p
    if not on.any():
        return x
    s = (sigma[0] + torch.rand(n, generator=gen) * (sigma[1] - sigma[0])).to(x.device, x.dtype)
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], device=x.device, dtype=x.dtype)[None] / (2 * s[:, None] ** 2))
    g = g / g.sum(-1, keepdim=True)
    k = (g[:, :, None] * g[:, None, :])[:, None].repeat_interleave(x.shape[1], 0)  # (n*C, 1, 3, 3)
    out = F.conv2d(F.pad(x.reshape(1, -1, *x.shape[2:]), (1, 1, 1, 1), mode="reflect"), k, groups=k.shape[0])
    out = out.reshape(x.shape)
    return torch.where(on.to(x.device)[:, None, None, None], out, x)


def colour_jitter(x, amount: float, gen):
    """Per-tile contrast, then brightness scaling by factors in 1 +- ``amount``; x in [-1, 1]."""
    import torch

    c, b = (1 + amount * (2 * torch.rand(2, x.shape[0], 1, 1, 1, generator=gen) - 1)).to(x.device)
    x01 = (x + 1) / 2
    mean = x01.mean(dim=(1, 2, 3), keepdim=True)
    return (((x01 - mean) * c + mean) * b).clamp(0, 1) * 2 - 1


def augment(x, gen):
    """Flips / rotations, HED stain jitter and mild blur of a batch in [-1, 1] (random draws from ``gen``)."""
    return blur(stain_jitter(dihedral(x, gen), gen), gen)

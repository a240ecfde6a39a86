"""Autoencoder losses: patch-GAN discriminator, hinge/KL terms and an optional LPIPS distance.

Follows CompVis latent-diffusion's ``LPIPSWithDiscriminator`` (taming-transformers). LPIPS is
written by hand (no torchvision) and only ever loaded from a local weights file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from ..base.errors import HistodiffError

# ---------------------------------------------------------------- discriminator


def _disc_out_size(size: int, n_layers: int) -> int:
    for _ in range(n_layers):
        size = (size + 2 - 4) // 2 + 1  # k4 s2 p1
    return size - 2  # two k4 s1 p1 convs


class PatchDiscriminator(nn.Module):
    """pix2pix NLayerDiscriminator (taming-transformers), giving a map of real/fake logits.

    ``n_layers=None`` picks the largest n <= 3 whose output map is at least 2x2 for ``tile_size``.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int | None = 3, tile_size: int = 256):
        super().__init__()
        if n_layers is None:
            fits = [n for n in (1, 2, 3) if _disc_out_size(tile_size, n) >= 2]
            if not fits:
                raise HistodiffError(
                    f"Tiles of {tile_size} px are too small for the patch discriminator; use tiles of at least 8 px."
                )
            n_layers = fits[-1]
        if n_layers < 1:
            raise HistodiffError(f"n_layers must be at least 1, got {n_layers}.")
        self.n_layers = n_layers
        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*layers)
        self.apply(_weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _weights_init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0.0)


# ---------------------------------------------------------------- loss terms


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def kl_loss(posterior) -> torch.Tensor:
    """KL to N(0, I), summed over latent dims and averaged over the batch (as CompVis)."""
    return torch.sum(posterior.kl()) / posterior.mean.shape[0]


def adaptive_gan_weight(rec_loss, g_loss, last_layer, max_weight: float = 1e4) -> torch.Tensor:
    """taming's calculate_adaptive_weight: balance GAN and reconstruction gradients at the last layer."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(rec_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(weight, 0.0, max_weight).detach()


# ---------------------------------------------------------------- LPIPS (VGG16)

# VGG16 "features" config; "M" is a max-pool. Slices end at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_SLICE_ENDS = [4, 9, 16, 23, 30]
_CHANNELS = [64, 128, 256, 512, 512]


class _ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x):
        return (x - self.shift) / self.scale


class _VGG16Features(nn.Module):
    """VGG16 conv features in five slices, module indices as torchvision's vgg16().features."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for v in _VGG_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
                c_in = v
        start = 0
        for i, end in enumerate(_SLICE_ENDS, 1):
            s = nn.Sequential()
            for k in range(start, end):
                s.add_module(str(k), layers[k])
            setattr(self, f"slice{i}", s)
            start = end

    def forward(self, x):
        feats = []
        for i in range(1, 6):
            x = getattr(self, f"slice{i}")(x)
            feats.append(x)
        return feats


class _NetLinLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


def _normalize(x, eps=1e-10):
    # as lpips; the tiny term under the sqrt keeps the gradient finite where all channels are 0
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True) + 1e-20) + eps)


class LPIPS(nn.Module):
    """Perceptual distance (Zhang et al. 2018, VGG16). Frozen and always in eval mode.

    Parameter names match the ``lpips`` / taming-transformers state dict. A fresh instance is
    random (lin weights set to 1/channels); load real weights with :func:`load_lpips`.
    """

    def __init__(self):
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = _VGG16Features()
        for i, c in enumerate(_CHANNELS):
            lin = _NetLinLayer(c)
            nn.init.constant_(lin.model[1].weight, 1.0 / c)  # non-negative, so a random net is still a distance
            setattr(self, f"lin{i}", lin)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # a frozen metric: dropout stays off

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net(self.scaling_layer(x)), self.net(self.scaling_layer(y))
        total = 0
        for i, (a, b) in enumerate(zip(fx, fy)):
            d = (_normalize(a) - _normalize(b)) ** 2
            total = total + getattr(self, f"lin{i}").model(d).mean(dim=(2, 3), keepdim=True)
        return total


_OPTIONAL_KEYS = {"scaling_layer.shift", "scaling_layer.scale"}
_LAYOUT_HINT = (
    "The file must hold VGG16 features + LPIPS linear layers (keys 'net.slice1.0.weight' ... "
    "'lin4.model.1.weight': the taming-transformers 'vgg_lpips' file combined with VGG16 weights)."
)


def load_lpips(path, device=None) -> LPIPS:
    """Build :class:`LPIPS` from a local .safetensors or .pt/.pth/.ckpt file (never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise HistodiffError(f"LPIPS weights file not found: {path}. Pass an existing file or leave LPIPS off.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights only load failed" in str(e).lower():  # weights_only refused an object: never load it with code
            why = "it holds Python objects other than tensors, refused because loading them could run code"
        else:
            why = f"{type(e).__name__}: {str(e)[:200]}"
        raise HistodiffError(
            f"Could not read LPIPS weights from {path} ({why}). "
            "Use a .safetensors file or a plain PyTorch state dict of tensors (.pt/.pth/.ckpt)."
        ) from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise HistodiffError(f"LPIPS weights file {path} does not hold a state dict. {_LAYOUT_HINT}")
    # the lpips package also stores the lin layers a second time as "lins.N..."
    state = {k: v for k, v in state.items() if not str(k).startswith("lins.")}

    model = LPIPS()
    expected = set(model.state_dict())
    missing = sorted(expected - set(state) - _OPTIONAL_KEYS)
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise HistodiffError(
            f"LPIPS weights file {path} does not fit: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)}). {_LAYOUT_HINT}"
        )
    try:
        model.load_state_dict(state, strict=False)
    except Exception as e:  # wrong shapes or non-tensor values
        raise HistodiffError(f"LPIPS weights file {path} does not fit: {str(e)[:300]} {_LAYOUT_HINT}") from e
    return model.to(device) if device is not None else model

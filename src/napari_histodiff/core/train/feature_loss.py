"""A perceptual loss with no download: distances between the feature maps of the audit's encoder
(:mod:`..evaluate.features`, trained on the user's own tiles), computed as LPIPS does (unit-normalised
channels, squared differences, averaged over space, summed over layers; no learned weights)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class FeatureDistance(nn.Module):
    """Per-tile distance between ``x`` and ``y`` (N, 3, S, S) in [-1, 1], through a frozen ``CopyEncoder`` trunk."""

    def __init__(self, encoder):
        super().__init__()
        self.trunk = encoder.trunk.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # batch norms stay in eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, dist = torch.cat([x, y]).to(next(self.trunk.parameters()).dtype), 0
        for layer in self.trunk:
            h = layer(h)
            a, b = nn.functional.normalize(h, dim=1, eps=1e-10).chunk(2)
            dist = dist + (a - b).pow(2).sum(1).mean((1, 2))
        return dist


def load_perceptual(path, device=None) -> nn.Module:
    """The perceptual loss that ``path`` names: an audit feature encoder folder (:class:`FeatureDistance`) or
    an LPIPS-VGG16 weights file (:class:`.losses.LPIPS`)."""
    from ..base.errors import HistodiffError
    from .losses import load_lpips

    if not Path(path).exists():
        raise HistodiffError(f"perceptual loss weights not found: {path}. Give an LPIPS-VGG16 weights file or the "
                             "features/ folder of an audit, or leave the perceptual loss off")
    if Path(path).is_dir():
        from ..models.copy_encoder import CopyEncoder

        folder = Path(path) / "features" if (Path(path) / "features" / "config.json").is_file() else Path(path)
        try:
            encoder = CopyEncoder.from_pretrained(folder)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign folder, named for the user
            raise HistodiffError(f"cannot load an audit feature encoder from {folder} ({type(e).__name__}); give "
                                 "the features/ folder of an audit (config.json + .safetensors)") from e
        return FeatureDistance(encoder).to(device)
    return load_lpips(path, device)

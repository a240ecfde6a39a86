"""Downstream classifiers for ``histodiff evaluate``: the small ResNet of the selection classifier, or a
small Vision Transformer (torch's own transformer encoder layers; no weights to download)."""

from __future__ import annotations

import torch
from torch import nn

from . import DOWNSTREAM_ARCHS as ARCHS


class SmallViT(nn.Module):
    """Patch embedding, learned position embeddings, a class token, pre-norm transformer encoder."""

    def __init__(self, num_classes: int, tile_size: int, patch: int = 8, dim: int = 96, depth: int = 4,
                 heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if tile_size % patch:
            raise ValueError(f"tile size {tile_size} is not a multiple of the ViT patch size {patch}")
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (tile_size // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], 1) + self.pos
        return self.norm(self.encoder(h)[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(arch: str, num_classes: int, tile_size: int, channels=(32, 64, 128)) -> nn.Module:
    from .classifiers import SelectionClassifier

    if arch == "resnet":
        return SelectionClassifier(num_classes=num_classes, channels=tuple(channels))
    if arch == "vit":
        return SmallViT(num_classes, tile_size, patch=max(4, tile_size // 8))
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")

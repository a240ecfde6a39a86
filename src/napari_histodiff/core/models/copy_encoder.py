"""The feature encoder of the memorisation audit: a small CNN whose L2-normalised embeddings place a
tile and its copies (flipped, rotated, re-stained, cropped, blurred, JPEG-compressed) close together.

Trained by :mod:`..evaluate.features` on the user's own real tiles; saved diffusers style
(``config.json`` + ``*.safetensors``), so nothing is downloaded and nothing is unpickled.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CopyEncoder(ModelMixin, ConfigMixin):
    """Strided 3x3 convolutions, global average pooling and a two-layer projection; ``forward`` gives
    unit-length embeddings of tiles in [-1, 1] (N, 3, size, size)."""

    @register_to_config
    def __init__(self, tile_size: int = 64, channels: tuple[int, ...] = (16, 32, 64, 128), dim: int = 128):
        super().__init__()
        layers, cin = [], 3
        for i, c in enumerate(channels):
            layers += [_block(cin, c, 2), _block(c, c, 1)] if i == len(channels) - 1 else [_block(cin, c, 2)]
            cin = c
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(cin, 2 * dim), nn.ReLU(inplace=True), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x).mean(dim=(2, 3))
        return F.normalize(self.head(h), dim=1)

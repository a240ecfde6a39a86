"""The two classifiers of the method, as diffusers ``ModelMixin`` models (config.json + safetensors).

- :class:`LatentClassifier`: timestep-aware ("noisy") classifier on latents ``z_t``: the encoder
  half of a UNet (diffusers down blocks and mid block, timestep embedding) with an attention
  pooling head. Its gradient guides sampling.
- :class:`SelectionClassifier`: a small image-space ResNet that scores synthetic tiles; it
  keeps class centroids of its features for the nearest-centroid rule.
- :class:`SelectionEnsemble`: several of those, each trained on other folds of the labeled tiles.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import AttentionPooling, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
from torch import nn
from torch.nn import functional as F


class LatentClassifier(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        block_out_channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        attention_levels: tuple[bool, ...] = (False, True),
        attention_head_dim: int = 16,
        norm_num_groups: int = 16,
        scale_shift_norm: bool = True,
    ):
        super().__init__()
        ch = block_out_channels
        temb = ch[0] * 4
        shift = "scale_shift" if scale_shift_norm else "default"
        self.time_proj = Timesteps(ch[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        prev = ch[0]
        for i, (out, attn) in enumerate(zip(ch, attention_levels)):
            self.down_blocks.append(get_down_block(
                "AttnDownBlock2D" if attn else "DownBlock2D", num_layers=layers_per_block,
                in_channels=prev, out_channels=out, temb_channels=temb, add_downsample=i < len(ch) - 1,
                resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=norm_num_groups,
                attention_head_dim=attention_head_dim, downsample_padding=1, resnet_time_scale_shift=shift,
            ))
            prev = out
        self.mid_block = UNetMidBlock2D(
            in_channels=prev, temb_channels=temb, resnet_eps=1e-5, resnet_groups=norm_num_groups,
            attention_head_dim=attention_head_dim, resnet_time_scale_shift=shift,
        )
        self.norm_out = nn.GroupNorm(norm_num_groups, prev)
        self.pool = AttentionPooling(max(1, prev // attention_head_dim), prev)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, z: torch.Tensor, t) -> torch.Tensor:
        """Logits (B, num_classes) for latents ``z`` (already multiplied by the scale factor)."""
        t = torch.as_tensor(t, device=z.device)
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(z.dtype))
        h = self.conv_in(z)
        for block in self.down_blocks:
            h, _ = block(h, emb)
        h = F.silu(self.norm_out(self.mid_block(h, emb)))
        return self.head(self.pool(h.flatten(2).transpose(1, 2)))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class SelectionClassifier(ModelMixin, ConfigMixin):
    """A small ResNet (one basic block per stage) on RGB tiles in [-1, 1].

    ``temperature``: the calibration temperature fitted on held-out tiles after training (1: none;
    older bundles have none); :meth:`score` divides the logits by it, :meth:`forward` does not.
    ``tissue_floor``: per class, the least tissue fraction a synthetic tile of it may have (half that of
    the class's least-stained labelled tile; None in older bundles)."""

    @register_to_config
    def __init__(self, num_classes: int = 2, channels: tuple[int, ...] = (32, 64, 128), dropout: float = 0.1,
                 temperature: float = 1.0, tissue_floor: list | None = None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU())
        stages, prev = [], channels[0]
        for i, c in enumerate(channels):
            stages.append(_BasicBlock(prev, c, 1 if i == 0 else 2))
            prev = c
        self.stages = nn.Sequential(*stages)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(prev, num_classes)
        self.register_buffer("centroids", torch.zeros(num_classes, prev))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))

    def score(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return score_tiles(self, x)


class SelectionEnsemble(ModelMixin, ConfigMixin):
    """Selection classifiers trained on different folds of the labeled tiles (cross-fitting): the logits
    are the members' mean; the features are the members' features side by side (for the centroids)."""

    @register_to_config
    def __init__(self, num_classes: int = 2, channels: tuple[int, ...] = (32, 64, 128), dropout: float = 0.1,
                 temperature: float = 1.0, members: int = 5, tissue_floor: list | None = None):
        super().__init__()
        self.nets = nn.ModuleList(SelectionClassifier(num_classes, tuple(channels), dropout) for _ in range(members))
        self.register_buffer("centroids", torch.zeros(num_classes, channels[-1] * members))

    @classmethod
    def of(cls, members: list) -> "SelectionEnsemble":
        c = members[0].config
        ens = cls(c.num_classes, tuple(c.channels), c.dropout, members=len(members))
        for mine, given in zip(ens.nets, members):
            mine.load_state_dict(given.state_dict())
        return ens

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.features(x) for m in self.nets], 1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        parts = feats.chunk(len(self.nets), 1)
        return torch.stack([m.head(m.drop(f)) for m, f in zip(self.nets, parts)]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def score(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return score_tiles(self, x)


def score_tiles(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class probabilities (logits divided by the model's temperature), features and distance to every
    class centroid of a selection classifier (``features``, ``head``, ``centroids``), for selection."""
    feats = model.features(x)
    t = float(getattr(model.config, "temperature", None) or 1.0)
    return {"probs": (model.head(feats).float() / t).softmax(-1), "features": feats,
            "distances": torch.cdist(feats, model.centroids)}

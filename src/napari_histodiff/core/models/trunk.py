"""Classifiers on the pre-trained models' encoders: the guidance classifier on the diffusion UNet's
(``classifier_trunk: unet``) and the selection classifier on the autoencoder's (``selection_trunk: autoencoder``).

The trunk is the UNet's ``time_proj``, ``time_embedding``, ``conv_in``, down blocks and mid block,
with the pre-trained weights: timestep-aware by construction, and already trained to read noisy
latents of tissue. It is frozen by default; only the small head learns: the mean and standard deviation
over space of every channel of conv_in, each down block and the mid block, a LayerNorm and one linear layer. The gradient with
respect to the noisy latent flows through the frozen trunk, so it guides sampling like
:class:`.classifiers.LatentClassifier`. Saved with the bundle as ``latent_classifier/``
(config.json with the UNet's config + safetensors with the trunk's and the head's weights).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

_DROPPED = ("up_blocks", "conv_norm_out", "conv_act", "conv_out")


class UNetTrunkClassifier(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, unet_class: str = "UNet2DModel", unet_config: dict | None = None, num_classes: int = 2,
                 frozen_trunk: bool = True):
        super().__init__()
        from .unet import unet_class as find_class

        unet = find_class(unet_class).from_config(dict(unet_config or {}))
        if getattr(unet, "class_embedding", None) is not None:
            raise ValueError("a class-conditional UNet cannot be a classifier trunk")
        for name in _DROPPED:
            setattr(unet, name, None if name != "up_blocks" else nn.ModuleList())
        self.trunk = unet
        widths = [unet.config.block_out_channels[0]] + [b.resnets[-1].out_channels for b in unet.down_blocks] \
            + [unet.config.block_out_channels[-1]]
        self.norm = nn.LayerNorm(2 * sum(widths))
        self.head = nn.Linear(2 * sum(widths), num_classes)
        self.trunk.requires_grad_(not frozen_trunk)

    @classmethod
    def from_unet(cls, unet, num_classes: int, frozen_trunk: bool = True) -> "UNetTrunkClassifier":
        """A classifier whose trunk holds a copy of ``unet``'s encoder weights."""
        config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        model = cls(unet_class=type(unet).__name__, unet_config=config, num_classes=num_classes,
                    frozen_trunk=frozen_trunk)
        state = {k: v for k, v in unet.state_dict().items() if not k.startswith(_DROPPED)}
        missing, unexpected = model.trunk.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"the UNet's encoder does not fit the trunk (missing {missing}, unexpected {unexpected})")
        return model.to(next(unet.parameters()).device)

    def features(self, z: torch.Tensor, t) -> torch.Tensor:
        u = self.trunk
        t = torch.as_tensor(t, device=z.device)
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        if u.config.center_input_sample:
            z = 2 * z - 1.0
        emb = u.time_embedding(u.time_proj(t).to(dtype=z.dtype))
        h, skip = u.conv_in(z), z
        pooled = [h]
        for block in u.down_blocks:
            if hasattr(block, "skip_conv"):
                h, _, skip = block(hidden_states=h, temb=emb, skip_sample=skip)
            else:
                h, _ = block(hidden_states=h, temb=emb)
            pooled.append(h)
        pooled.append(u.mid_block(h, emb))
        # mean and standard deviation of every channel at every level: the level of a feature and its texture
        stats = [s for f in pooled for s in (f.mean(dim=(2, 3)), f.std(dim=(2, 3)))]
        return self.norm(torch.cat(stats, dim=1))

    def forward(self, z: torch.Tensor, t) -> torch.Tensor:
        """Logits (B, num_classes) for noisy latents ``z_t`` (already multiplied by the scale factor)."""
        return self.head(self.features(z, t))


def latent_classifier_class(name: str | None):
    """The latent classifier class named by a config's ``_class_name``."""
    from .classifiers import LatentClassifier

    return UNetTrunkClassifier if name == "UNetTrunkClassifier" else LatentClassifier


class AutoencoderTrunkClassifier(ModelMixin, ConfigMixin):
    """A selection classifier on the pre-trained autoencoder's encoder (``selection_trunk: autoencoder``).

    The trunk is a frozen copy of the KL autoencoder's ``Encoder``; the features are the mean and standard
    deviation over space of every channel of conv_in, each down block, the mid block and the posterior
    moments, standardised with the mean and spread of the labeled tiles' features (:meth:`standardize`,
    a linear probe's usual scaling); the head is dropout + one linear layer. Like
    :class:`.classifiers.SelectionClassifier` it keeps class centroids of its features and a temperature."""

    @register_to_config
    def __init__(self, vae_config: dict | None = None, num_classes: int = 2, dropout: float = 0.1,
                 temperature: float = 1.0, tissue_floor: list | None = None):
        super().__init__()
        from diffusers import AutoencoderKL

        self.trunk = AutoencoderKL.from_config(dict(vae_config or {})).encoder
        e = self.trunk
        widths = [e.conv_in.out_channels] + [b.resnets[-1].out_channels for b in e.down_blocks] \
            + [e.mid_block.resnets[-1].out_channels, e.conv_out.out_channels]
        n = 2 * sum(widths)
        self.register_buffer("shift", torch.zeros(n))
        self.register_buffer("scale", torch.ones(n))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(n, num_classes)
        self.register_buffer("centroids", torch.zeros(num_classes, n))
        self.trunk.requires_grad_(False)

    @classmethod
    def from_vae(cls, vae, num_classes: int) -> "AutoencoderTrunkClassifier":
        """A classifier whose trunk holds a copy of ``vae``'s encoder weights (a KL autoencoder)."""
        if type(vae).__name__ != "AutoencoderKL":
            raise ValueError(f"selection trunk autoencoder needs a KL autoencoder, not {type(vae).__name__}")
        config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
        model = cls(vae_config=config, num_classes=num_classes)
        model.trunk.load_state_dict(vae.encoder.state_dict())
        return model.to(next(vae.parameters()).device)

    @torch.no_grad()
    def standardize(self, batches) -> None:
        """Set the feature scaling from tiles (an iterable of (N, 3, H, W) batches in [-1, 1])."""
        f = torch.cat([self.pooled(x) for x in batches])
        self.shift.copy_(f.mean(0))
        self.scale.copy_(f.std(0) + 1e-6 if len(f) > 1 else torch.ones_like(self.scale))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised pooled features of RGB tiles in [-1, 1] (N, 3, H, W)."""
        return (self.pooled(x) - self.shift) / self.scale

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        e = self.trunk
        h = e.conv_in(x)
        levels = [h]
        for block in e.down_blocks:
            h = block(h)
            levels.append(h)
        h = e.mid_block(h)
        levels += [h, e.conv_out(e.conv_act(e.conv_norm_out(h)))]
        return torch.cat([s for f in levels for s in (f.mean(dim=(2, 3)), f.std(dim=(2, 3)))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))

    def score(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from .classifiers import score_tiles

        return score_tiles(self, x)


def selection_classifier_class(name: str | None):
    """The selection classifier class named by a config's ``_class_name``."""
    from .classifiers import SelectionClassifier, SelectionEnsemble

    return {"AutoencoderTrunkClassifier": AutoencoderTrunkClassifier,
            "SelectionEnsemble": SelectionEnsemble}.get(name, SelectionClassifier)

"""A noisy latent classifier on the pre-trained diffusion UNet's encoder (``classifier_trunk: unet``).

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

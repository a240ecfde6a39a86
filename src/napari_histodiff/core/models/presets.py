"""Model and training presets: ``tiny`` (tests), ``small`` (laptop CPU), ``paper`` (reference).

Each preset is one :class:`Preset` dataclass, serialisable to JSON, that builds the diffusers
``AutoencoderKL``, ``UNet2DModel`` and ``DDPMScheduler`` it describes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ..base.errors import HistodiffError


@dataclass
class AutoencoderConfig:
    block_out_channels: tuple[int, ...] = (128, 256, 512)
    layers_per_block: int = 2
    latent_channels: int = 3
    norm_num_groups: int = 32
    kl_weight: float = 1e-6
    disc_start: int = 50001  # patch-GAN hinge loss starts after this many steps
    disc_weight: float = 0.5
    disc_channels: int = 64
    perceptual_weight: float = 1.0  # used only with a user-supplied LPIPS weights file
    learning_rate: float = 4.5e-6
    batch_size: int = 8

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class UNetConfig:
    block_out_channels: tuple[int, ...] = (192, 384, 384, 768, 768)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, True, False)
    attention_head_dim: int = 24  # one head size for all levels (used when num_heads is 0)
    norm_num_groups: int = 32
    scale_shift_norm: bool = True
    resnet_updown: bool = True
    num_heads: int = 0  # > 0: this many heads at every level, as CompVis num_heads (HistodiffUNet2DModel)
    mid_attention_norm: bool = False  # group norm in the middle attention block (always there in CompVis)


@dataclass
class ScheduleConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0155


@dataclass
class DiffusionTrainConfig:
    learning_rate: float = 5e-5
    warmup_steps: int = 10000
    ema_decay: float = 0.9999
    batch_size: int = 8
    loss: str = "l1"


@dataclass
class ClassifierConfig:
    """The noisy latent classifier (guidance) and the image-space selection classifier."""

    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (False, True, True, True)  # latent 32/16/8
    attention_head_dim: int = 64
    norm_num_groups: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 0.05
    batch_size: int = 16
    selection_channels: tuple[int, ...] = (64, 128, 256)
    selection_learning_rate: float = 1e-3


@dataclass
class Preset:
    name: str
    tile_size: int
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    diffusion: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    @property
    def latent_size(self) -> int:
        return self.tile_size // self.autoencoder.downsample_factor

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "Preset":
        def build(kind, values):
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise HistodiffError(f"unknown preset field(s) {sorted(unknown)} for {kind.__name__}")
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        d = dict(d)
        missing = [k for k in ("name", "tile_size", "autoencoder", "unet", "schedule", "diffusion", "classifier")
                   if k not in d]
        if missing:
            raise HistodiffError(
                f"preset is missing {', '.join(missing)}; start from a complete one, e.g. "
                "`python -c \"from napari_histodiff.core.presets import small; print(small().to_json())\"`"
            )
        parts = {
            "autoencoder": AutoencoderConfig,
            "unet": UNetConfig,
            "schedule": ScheduleConfig,
            "diffusion": DiffusionTrainConfig,
            "classifier": ClassifierConfig,
        }
        for key, kind in parts.items():
            if not isinstance(d[key], dict):
                raise HistodiffError(f"preset field {key!r} must be an object")
            d[key] = build(kind, d[key])
        return build(cls, d)

    # -- model builders (diffusers classes) -------------------------------------------------
    def build_vae(self):
        from diffusers import AutoencoderKL

        a = self.autoencoder
        n = len(a.block_out_channels)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=a.block_out_channels,
            layers_per_block=a.layers_per_block,
            latent_channels=a.latent_channels,
            norm_num_groups=a.norm_num_groups,
            sample_size=self.tile_size,
            scaling_factor=1.0,
        )

    def build_unet(self):
        from diffusers import UNet2DModel

        u = self.unet
        n = len(u.block_out_channels)
        if len(u.attention_levels) != n:
            raise HistodiffError("unet.attention_levels needs one entry per block_out_channels level")
        plain_down = "ResnetDownsampleBlock2D" if u.resnet_updown else "DownBlock2D"
        plain_up = "ResnetUpsampleBlock2D" if u.resnet_updown else "UpBlock2D"
        down = tuple("AttnDownBlock2D" if a else plain_down for a in u.attention_levels)
        up = tuple("AttnUpBlock2D" if a else plain_up for a in reversed(u.attention_levels))
        kwargs = dict(
            sample_size=self.latent_size,
            in_channels=self.autoencoder.latent_channels,
            out_channels=self.autoencoder.latent_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=u.block_out_channels,
            layers_per_block=u.layers_per_block,
            attention_head_dim=u.attention_head_dim,
            norm_num_groups=u.norm_num_groups,
            resnet_time_scale_shift="scale_shift" if u.scale_shift_norm else "default",
            downsample_type="resnet" if u.resnet_updown else "conv",
            upsample_type="resnet" if u.resnet_updown else "conv",
        )
        if u.mid_attention_norm:
            kwargs["attn_norm_num_groups"] = u.norm_num_groups
        if u.num_heads:
            from .unet import HistodiffUNet2DModel

            heads = [u.num_heads if a else 0 for a in u.attention_levels]
            kwargs.update(attention_head_dim=None, attention_heads=heads + [u.num_heads] + heads[::-1])
            return HistodiffUNet2DModel(**kwargs)
        return UNet2DModel(**kwargs)

    def build_latent_classifier(self, num_classes: int):
        from .classifiers import LatentClassifier

        c = self.classifier
        return LatentClassifier(
            in_channels=self.autoencoder.latent_channels, num_classes=num_classes,
            block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
            attention_levels=c.attention_levels, attention_head_dim=c.attention_head_dim,
            norm_num_groups=c.norm_num_groups, scale_shift_norm=self.unet.scale_shift_norm,
        )

    def build_selection_classifier(self, num_classes: int):
        from .classifiers import SelectionClassifier

        return SelectionClassifier(num_classes=num_classes, channels=self.classifier.selection_channels)

    def build_scheduler(self):
        from diffusers import DDPMScheduler

        s = self.schedule
        return DDPMScheduler(
            num_train_timesteps=s.num_train_timesteps,
            beta_schedule=s.beta_schedule,
            beta_start=s.beta_start,
            beta_end=s.beta_end,
            prediction_type="epsilon",
            clip_sample=False,
            timestep_spacing="leading",
            steps_offset=1,
        )


def paper() -> Preset:
    """The reference configuration of the HistoDiffusion code (DESIGN.md).

    The UNet has 8 attention heads at every level (head size 24, 48 and 96), as the original
    ``num_heads: 8``, and a group norm in its middle attention block: a ``HistodiffUNet2DModel``,
    which writes back to the CompVis layout exactly (``convert_compvis.to_compvis``).
    """
    return Preset(
        name="paper",
        tile_size=256,
        autoencoder=AutoencoderConfig(),
        unet=UNetConfig(num_heads=8, mid_attention_norm=True),
        schedule=ScheduleConfig(),
        diffusion=DiffusionTrainConfig(),
    )


def small() -> Preset:
    """64 px tiles (16x16 latents) for a laptop CPU; UNet about 18 M parameters.

    Eight latent channels keep more of the tissue class through the autoencoder than three
    (retention 0.44 vs 0.41 at 600 steps, SSIM 0.70 vs 0.66; docs/results.md, issue 29).
    """
    return Preset(
        name="small",
        tile_size=64,
        autoencoder=AutoencoderConfig(
            block_out_channels=(64, 128, 128), layers_per_block=2, latent_channels=8, disc_start=2000, disc_channels=32,
            learning_rate=1e-4, batch_size=16,
        ),
        unet=UNetConfig(
            block_out_channels=(96, 192, 192), layers_per_block=2,
            attention_levels=(False, True, True), attention_head_dim=32,
        ),
        diffusion=DiffusionTrainConfig(learning_rate=2e-4, warmup_steps=500, batch_size=16),
        # guidance classifier: as accurate on crc5 as (64, 128, 128) x 2 layers, at a quarter of the gradient's
        # cost (benchmarks/classifier_options.py, docs/results.md)
        classifier=ClassifierConfig(
            block_out_channels=(32, 64, 64), layers_per_block=1, attention_levels=(False, True, True),
            attention_head_dim=32, selection_channels=(32, 64, 128),
        ),
    )


def tiny() -> Preset:
    """32 px tiles (8x8 latents), about one million parameters in all: for tests and demos."""
    return Preset(
        name="tiny",
        tile_size=32,
        autoencoder=AutoencoderConfig(
            block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
            disc_start=300, disc_weight=0.1, disc_channels=16, learning_rate=1e-3, batch_size=16,
        ),
        unet=UNetConfig(
            block_out_channels=(32, 64), layers_per_block=1, attention_levels=(False, True),
            attention_head_dim=16, norm_num_groups=16, resnet_updown=False,
        ),
        diffusion=DiffusionTrainConfig(learning_rate=1e-3, warmup_steps=50, batch_size=16),
        classifier=ClassifierConfig(
            block_out_channels=(32, 64), layers_per_block=1, attention_levels=(False, True),
            attention_head_dim=16, norm_num_groups=16, learning_rate=1e-3, selection_channels=(16, 32, 64),
        ),
    )


PRESETS = {"tiny": tiny, "small": small, "paper": paper}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]()
    except KeyError:
        raise HistodiffError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}"
        ) from None

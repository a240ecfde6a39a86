"""Plain diffusers pipeline folders (``LDMPipeline`` style) -> our bundle.

An ``LDMPipeline`` folder has ``vqvae/`` (``VQModel``), ``unet/`` (``UNet2DModel``), ``scheduler/``
and ``model_index.json``; folders with ``vae/`` (``AutoencoderKL``) load the same way. The
pipeline decodes ``vqvae.decode(latents)`` without any scaling, so a ``vqvae/`` gets scale factor
1.0; a ``vae/`` keeps its ``scaling_factor``. Weights are read by diffusers (safetensors, or
``.bin`` with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..base.errors import HistodiffError

PIXEL_SPACE = ("DDPMPipeline", "DDIMPipeline", "PNDMPipeline", "ScoreSdeVePipeline", "KarrasVePipeline")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
              "EulerDiscreteScheduler", "LMSDiscreteScheduler")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HistodiffError(f"{path} is unreadable or not JSON ({e})") from None
    if not isinstance(data, dict):
        raise HistodiffError(f"{path} does not hold a JSON object")
    return data


def convert(folder):
    """A diffusers LDM pipeline folder as an in-memory :class:`bundle.Bundle`."""
    from diffusers import AutoencoderKL, DDPMScheduler, VQModel

    from .bundle import Bundle
    from .compvis import converted_meta, file_sha256
    from ..models.unet import unet_class

    folder = Path(folder)
    index = _json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    pipeline = index.get("_class_name", "")
    if pipeline in PIXEL_SPACE or (not (folder / "vqvae").is_dir() and not (folder / "vae").is_dir()
                                   and (folder / "unet").is_dir()):
        raise HistodiffError(
            f"{folder} is a pixel-space diffusion pipeline ({pipeline or 'unet/ without vae/ or vqvae/'}): its UNet "
            "denoises images, not latents. napari-histodiff samples in the latent space of an autoencoder and "
            "guides it with a latent classifier, so it cannot use this model; use a latent diffusion model "
            "(LDMPipeline, or a CompVis LatentDiffusion .ckpt), or train one with `histodiff pretrain`.")
    problems = []
    parts = {p: folder / p for p in ("unet", "scheduler")}
    ae_name = "vqvae" if (folder / "vqvae").is_dir() else "vae"
    parts[ae_name] = folder / ae_name
    for name, path in parts.items():
        cfg = path / ("scheduler_config.json" if name == "scheduler" else "config.json")
        if not cfg.is_file():
            problems.append(f"{name}/ has no {cfg.name}")
    if problems:
        raise HistodiffError(f"{folder} is not a complete diffusers LDM pipeline: " + "; ".join(problems))
    unet_cfg = _json(parts["unet"] / "config.json")
    if unet_cfg.get("_class_name") not in ("UNet2DModel", "HistodiffUNet2DModel"):
        problems.append(f"unet/ is a {unet_cfg.get('_class_name')}; only unconditional UNet2DModel is supported "
                        "(text- or image-conditioned UNets need a conditioning input this pipeline does not have)")
    if unet_cfg.get("num_class_embeds") or unet_cfg.get("class_embed_type"):
        problems.append("unet/ is class-conditional (class embedding); napari-histodiff guides with a classifier")
    ae_cfg = _json(parts[ae_name] / "config.json")
    ae_cls = {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}.get(ae_cfg.get("_class_name"))
    if ae_cls is None:
        problems.append(f"{ae_name}/ is a {ae_cfg.get('_class_name')}; expected VQModel or AutoencoderKL")
    sched_cfg = _json(parts["scheduler"] / "scheduler_config.json")
    if sched_cfg.get("_class_name") not in SCHEDULERS:
        problems.append(f"scheduler/ is a {sched_cfg.get('_class_name')}, not a DDPM-family scheduler")
    if sched_cfg.get("prediction_type", "epsilon") != "epsilon":
        problems.append(f"the scheduler predicts {sched_cfg['prediction_type']!r}; only epsilon is supported")
    if problems:
        raise HistodiffError(f"{folder} cannot be converted: " + "; ".join(problems))
    try:
        unet = unet_class(unet_cfg.get("_class_name")).from_pretrained(parts["unet"])
        vae = ae_cls.from_pretrained(parts[ae_name])
    except HistodiffError:
        raise
    except Exception as e:  # diffusers raises many kinds (missing weights, shape mismatches)
        raise HistodiffError(f"{folder}: the weights do not load: {type(e).__name__}: {e}") from None
    keep = {k: v for k, v in sched_cfg.items() if not k.startswith("_")}
    scheduler = DDPMScheduler.from_config({**keep, "clip_sample": False})
    scale = 1.0 if ae_name == "vqvae" else float(vae.config.scaling_factor)
    vae.register_to_config(scaling_factor=scale)
    latent = vae.config.get("vq_embed_dim") or vae.config.latent_channels
    if unet.config.in_channels != latent:
        raise HistodiffError(f"{folder}: the UNet takes {unet.config.in_channels} channels, the autoencoder makes "
                             f"{latent}")
    weights = sorted(p for p in folder.glob("*/*") if p.suffix in (".safetensors", ".bin"))
    meta = converted_meta(_preset(unet, vae, scheduler), scale, {
        "source": str(folder.resolve()), "format": "diffusers", "pipeline": pipeline or None,
        "sha256": {str(p.relative_to(folder)): file_sha256(p) for p in weights}, "ema": None,
    })
    return Bundle(vae=vae.eval(), unet=unet.eval(), scheduler=scheduler, meta=meta, path=None)


def _preset(unet, vae, scheduler):
    import math

    from ..models.presets import AutoencoderConfig, ClassifierConfig, Preset, ScheduleConfig, UNetConfig
    from ..models.unet import head_counts

    u, a, s = unet.config, vae.config, scheduler.config
    size = u.sample_size if isinstance(u.sample_size, int) else u.sample_size[0]
    factor = 2 ** (len(a.block_out_channels) - 1)
    ch = tuple(u.block_out_channels)
    attn = tuple(t.startswith("Attn") for t in u.down_block_types)
    heads = head_counts(unet)
    return Preset(
        name="converted", tile_size=size * factor,
        autoencoder=AutoencoderConfig(block_out_channels=tuple(a.block_out_channels),
                                      layers_per_block=a.layers_per_block,
                                      latent_channels=a.get("vq_embed_dim") or a.latent_channels,
                                      norm_num_groups=a.norm_num_groups),
        unet=UNetConfig(block_out_channels=ch, layers_per_block=u.layers_per_block, attention_levels=attn,
                        attention_head_dim=u.attention_head_dim or ch[0] // max(heads[0], 1),
                        norm_num_groups=u.norm_num_groups, scale_shift_norm=u.resnet_time_scale_shift == "scale_shift",
                        resnet_updown=u.downsample_type == "resnet",
                        mid_attention_norm=u.attn_norm_num_groups is not None),
        schedule=ScheduleConfig(num_train_timesteps=s.num_train_timesteps, beta_schedule=s.beta_schedule,
                                beta_start=s.beta_start, beta_end=s.beta_end),
        classifier=ClassifierConfig(block_out_channels=ch, layers_per_block=u.layers_per_block, attention_levels=attn,
                                    attention_head_dim=min(math.gcd(*ch), 64), norm_num_groups=u.norm_num_groups),
    )

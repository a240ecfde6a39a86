"""CompVis / HistoDiffusion ``LatentDiffusion`` ``.ckpt`` + YAML <-> our bundle.

Reading: the checkpoint is loaded by :func:`foreign.safe_load_checkpoint` (weights only), the
YAML with ``yaml.safe_load``; the UNet, the first stage, the scale factor and the noise schedule
are converted, and every key and shape is checked. Writing (:func:`to_compvis`) gives the
CompVis layout of a bundle, so models trained here can run in the original code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import compvis_unet, compvis_vae
from ..base.errors import HistodiffError
from .foreign import find_config, read_yaml_config, safe_load_checkpoint, unet_state_dict
from .keymap import apply, apply_backward

LDM_TARGETS = ("ldm.models.diffusion.ddpm.LatentDiffusion",)
UNET_PREFIX, FS_PREFIX = "model.diffusion_model.", "first_stage_model."
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")
# CompVis beta_schedule -> diffusers beta_schedule
SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "squaredcos_cap_v2"}
SCHEDULE_TOLERANCE = 1e-6


def read_ldm_config(cfg: dict, where) -> tuple[dict, compvis_unet.CompVisUNet, compvis_vae.CompVisFirstStage]:
    """The LatentDiffusion params, UNet and first stage of a YAML config; one error for every problem."""
    problems = []
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or "target" not in model:
        raise HistodiffError(f"{where} is not a latent-diffusion config: it has no model.target. "
                             "Pass the YAML the checkpoint was trained with ({opt:config}).")
    if model["target"] not in LDM_TARGETS:
        raise HistodiffError(f"{where} describes {model['target']}, not a LatentDiffusion model "
                             f"({LDM_TARGETS[0]}); pixel-space or other models cannot be converted.")
    params = model.get("params") or {}
    cond = params.get("cond_stage_config", "__is_unconditional__")
    if cond != "__is_unconditional__" or params.get("conditioning_key") not in (None, "none"):
        target = cond.get("target", cond) if isinstance(cond, dict) else cond
        problems.append(f"the model is conditioned on {target}; only unconditional models (classifier-guided, "
                        "as HistoDiffusion) can be converted")
    if params.get("parameterization", "eps") != "eps":
        problems.append(f"the UNet predicts {params['parameterization']!r}; only eps prediction is supported")
    if params.get("beta_schedule", "linear") not in SCHEDULES and params.get("given_betas") is None:
        problems.append(f"beta_schedule {params['beta_schedule']!r} has no diffusers equivalent "
                        f"(supported: {', '.join(SCHEDULES)})")
    ucfg = params.get("unet_config")
    unet = None
    if not isinstance(ucfg, dict) or ucfg.get("target") != compvis_unet.TARGET:
        problems.append(f"unet_config.target is {ucfg.get('target') if isinstance(ucfg, dict) else None!r}, "
                        f"expected {compvis_unet.TARGET}")
    else:
        unet = compvis_unet.read_unet_params(ucfg.get("params") or {}, problems)
    first = compvis_vae.read_first_stage(params.get("first_stage_config"), problems)
    if unet and first:
        if unet.in_channels != first.embed_dim:
            problems.append(f"the UNet takes {unet.in_channels} channels, the first stage makes {first.embed_dim}")
        if params.get("image_size", unet.image_size) != unet.image_size:
            problems.append(f"image_size {params['image_size']} differs from the UNet's {unet.image_size}")
    if problems:
        raise HistodiffError(f"{where} cannot be converted: " + "; ".join(problems))
    return params, unet, first


def make_scheduler(params: dict, sd: dict, where):
    """diffusers ``DDPMScheduler`` for the CompVis schedule, checked against the stored ``alphas_cumprod``."""
    from diffusers import DDPMScheduler

    n = int(params.get("timesteps", 1000))
    name = params.get("beta_schedule", "linear")
    start, end = float(params.get("linear_start", 1e-4)), float(params.get("linear_end", 2e-2))
    sched = DDPMScheduler(num_train_timesteps=n, beta_schedule=SCHEDULES.get(name, "linear"), beta_start=start,
                          beta_end=end, prediction_type="epsilon", clip_sample=False, timestep_spacing="leading",
                          steps_offset=1)
    stored = sd.get("alphas_cumprod")
    if stored is None:
        return sched, None
    if stored.shape != (n,):
        raise HistodiffError(f"{where}: the stored alphas_cumprod has shape {tuple(stored.shape)}, the config "
                             f"says {n} timesteps; pass the config this checkpoint was trained with")
    err = float((sched.alphas_cumprod.double() - stored.double()).abs().max())
    if err > SCHEDULE_TOLERANCE:
        raise HistodiffError(
            f"{where}: the noise schedule of the config ({name}, {start}..{end}, {n} steps = diffusers "
            f"{sched.config.beta_schedule}) differs from the checkpoint's stored alphas_cumprod by {err:.2e} "
            f"(allowed {SCHEDULE_TOLERANCE}); the config does not belong to this checkpoint")
    return sched, err


def _scale_factor(params: dict, sd: dict) -> float:
    if "scale_factor" in sd:
        return float(sd["scale_factor"])
    return float(params.get("scale_factor", 1.0))


def _known_key(k: str) -> bool:
    return (k.startswith((UNET_PREFIX, FS_PREFIX, "model_ema.")) or k in SCHEDULE_BUFFERS
            or k in ("scale_factor", "logvar"))


def convert(ckpt_path, config=None, ema: bool | None = None):
    """A CompVis LatentDiffusion checkpoint as an in-memory :class:`bundle.Bundle` (not yet saved)."""
    from .bundle import Bundle

    ckpt_path = Path(ckpt_path)
    ckpt = safe_load_checkpoint(ckpt_path)
    from .classifier_keys import is_encoder_unet, refuse

    if "state_dict" not in ckpt and is_encoder_unet(ckpt):
        raise refuse(ckpt_path, ckpt)
    cfg_path = find_config(ckpt_path, config)
    params, u, f = read_ldm_config(read_yaml_config(cfg_path), cfg_path)
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict):
        raise HistodiffError(f"{ckpt_path}: state_dict is not a dictionary of tensors")
    problems = []
    stray = [k for k in sd if not _known_key(k)]
    if stray:
        problems.append(f"keys that belong to no part of an unconditional LatentDiffusion: {', '.join(stray[:8])}"
                        + (f" and {len(stray) - 8} more" if len(stray) > 8 else ""))
    fs_sd = {k[len(FS_PREFIX):]: v for k, v in sd.items() if k.startswith(FS_PREFIX)}
    if not fs_sd:
        problems.append("the checkpoint has no first stage (autoencoder) weights: no first_stage_model.* keys "
                        "(it may be a UNet-only checkpoint; the autoencoder is needed to make tiles)")
    scale = _scale_factor(params, sd)
    unet = compvis_unet.build_unet(u)
    vae = compvis_vae.build_first_stage(f, scale)
    used_ema = False
    try:
        weights, used_ema = unet_state_dict(ckpt, ema)
        unet.load_state_dict(apply(compvis_unet.key_table(u), weights, _shapes(unet), "the UNet (model.diffusion_model)"))
    except HistodiffError as e:
        problems.append(str(e))
    if fs_sd:
        try:
            table = compvis_vae.key_table(f.levels, f.num_res_blocks, f.kind)
            vae.load_state_dict(apply(table, fs_sd, _shapes(vae), "the first stage (first_stage_model)"))
        except HistodiffError as e:
            problems.append(str(e))
    try:
        scheduler, schedule_err = make_scheduler(params, sd, ckpt_path)
    except HistodiffError as e:
        problems.append(str(e))
    if problems:
        raise HistodiffError(f"{ckpt_path} (config {cfg_path}) cannot be converted: " + "; ".join(problems))
    meta = converted_meta(preset_for(u, f, params, scheduler), scale, {
        "source": str(ckpt_path.resolve()), "format": "compvis", "config": str(Path(cfg_path).resolve()),
        "sha256": file_sha256(ckpt_path), "ema": used_ema, "global_step": ckpt.get("global_step"),
        "lightning_version": ckpt.get("pytorch-lightning_version"), "schedule_max_abs_error": schedule_err,
    })
    return Bundle(vae=vae.eval(), unet=unet.eval(), scheduler=scheduler, meta=meta, path=None)


def _shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def file_sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def converted_meta(preset, scale: float, provenance: dict) -> dict:
    from .bundle import new_meta, package_versions

    meta = new_meta(preset)
    meta["latent_scale_factor"] = scale
    meta["provenance"]["converted"] = {**provenance, "versions": package_versions()}
    return meta


def preset_for(u, f, params: dict, scheduler):
    """Our preset describing the converted models (used by fine-tuning and shown by `histodiff info`)."""
    import math

    from ..models.presets import AutoencoderConfig, ClassifierConfig, Preset, ScheduleConfig, UNetConfig

    heads = u.block_heads()
    dims = {c // h for c, h in zip(compvis_unet._block_channels(u), heads) if h}
    ch = tuple(u.channels)
    head_dim = next(iter(dims)) if len(dims) == 1 else ch[0] // u.num_heads
    cfg = scheduler.config
    return Preset(
        name="converted", tile_size=u.image_size * f.factor,
        autoencoder=AutoencoderConfig(block_out_channels=tuple(f.ch * m for m in f.ch_mult),
                                      layers_per_block=f.num_res_blocks, latent_channels=f.embed_dim,
                                      norm_num_groups=32),
        unet=UNetConfig(block_out_channels=ch, layers_per_block=u.num_res_blocks,
                        attention_levels=tuple(u.attention_levels),
                        attention_head_dim=head_dim, num_heads=0 if len(dims) == 1 else u.num_heads,
                        norm_num_groups=32,
                        scale_shift_norm=u.use_scale_shift_norm, resnet_updown=u.resblock_updown,
                        mid_attention_norm=True),
        schedule=ScheduleConfig(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                beta_start=cfg.beta_start, beta_end=cfg.beta_end),
        classifier=ClassifierConfig(block_out_channels=ch, layers_per_block=u.num_res_blocks,
                                    attention_levels=tuple(u.attention_levels), attention_head_dim=min(math.gcd(*ch), 64),
                                    norm_num_groups=32),
    )


# -- bundle -> CompVis ----------------------------------------------------------------------

def schedule_buffers(scheduler) -> dict:
    """The 12 schedule buffers of CompVis ``DDPM.register_schedule`` (v_posterior 0)."""
    import numpy as np

    betas = scheduler.betas.double().numpy()
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    out = {"betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev, "sqrt_alphas_cumprod": np.sqrt(ac),
           "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac), "log_one_minus_alphas_cumprod": np.log(1 - ac),
           "sqrt_recip_alphas_cumprod": np.sqrt(1 / ac), "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1),
           "posterior_variance": post_var, "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
           "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1 - ac),
           "posterior_mean_coef2": (1 - ac_prev) * np.sqrt(alphas) / (1 - ac)}
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}


def to_compvis(bundle) -> tuple[dict, dict]:
    """(state_dict, YAML config dict) of a bundle in the CompVis LatentDiffusion layout (UNet weights as model)."""
    u = compvis_unet.compvis_params(bundle.unet)
    f = compvis_vae.first_stage_params(bundle.vae)
    s = bundle.scheduler.config
    back = {v: k for k, v in SCHEDULES.items()}
    if s.beta_schedule not in back or s.prediction_type != "epsilon":
        raise HistodiffError(f"the scheduler ({s.beta_schedule}, {s.prediction_type}) has no CompVis equivalent")
    sd = {UNET_PREFIX + k: v for k, v in apply_backward(
        compvis_unet.key_table(u), bundle.unet.state_dict(), "the UNet").items()}
    table = compvis_vae.key_table(f.levels, f.num_res_blocks, f.kind)
    sd.update({FS_PREFIX + k: v for k, v in apply_backward(table, bundle.vae.state_dict(), "the autoencoder").items()})
    sd.update(schedule_buffers(bundle.scheduler))
    sd["scale_factor"] = torch.tensor(float(bundle.scale_factor))
    params = {"linear_start": s.beta_start, "linear_end": s.beta_end, "timesteps": s.num_train_timesteps,
              "beta_schedule": back[s.beta_schedule], "first_stage_key": "image", "image_size": u.image_size,
              "channels": u.in_channels, "scale_by_std": True, "parameterization": "eps",
              "unet_config": {"target": compvis_unet.TARGET, "params": u.to_params()},
              "first_stage_config": f.to_config(), "cond_stage_config": "__is_unconditional__"}
    config = {"model": {"target": LDM_TARGETS[0], "params": params}}
    return {k: v.detach().cpu().clone() for k, v in sd.items()}, config


YAML_MARKER = "# written by napari-histodiff"


def check_compvis_output(path, intent: str = "new") -> None:
    """Refuse a ``.ckpt`` output that may not be written; touches nothing. ``new``: neither the .ckpt
    nor its .yaml may exist; ``overwrite``: they are replaced only when the .yaml beside the .ckpt is
    one napari-histodiff wrote (its first line is :data:`YAML_MARKER`)."""
    path = Path(path)
    yaml_path = path.with_suffix(".yaml")
    if intent not in ("new", "overwrite"):
        raise HistodiffError(f"intent must be one of new, overwrite for a CompVis checkpoint (got {intent!r})")
    for p in (path, yaml_path):
        if p.is_dir():
            raise HistodiffError(f"{p} is a folder; give the path of the .ckpt file to write")
    if not path.exists() and not yaml_path.exists():
        return
    if not _ours(yaml_path):
        found = [str(p) for p in (path, yaml_path) if p.exists()]
        raise HistodiffError(f"{' and '.join(found)} already {'exist' if len(found) > 1 else 'exists'} and "
                             "napari-histodiff did not write it (it marks the .yaml it writes); it is never "
                             "replaced. Choose another .ckpt path")
    if intent != "overwrite":
        raise HistodiffError(f"{path} already holds a CompVis checkpoint written by napari-histodiff; choose "
                             "another path, or pass {opt:intent=overwrite}")


def _ours(yaml_path: Path) -> bool:
    try:
        with open(yaml_path, encoding="utf-8") as f:
            return f.readline().strip() == YAML_MARKER
    except (OSError, UnicodeDecodeError):
        return False


def write_compvis(bundle, ckpt_path, intent: str = "new") -> Path:
    """Write ``ckpt_path`` (tensors only, loads with ``weights_only=True``) and the YAML beside it
    (first line :data:`YAML_MARKER`). Existing files follow :func:`check_compvis_output`; each file is
    written to a hidden sibling and renamed into place."""
    import os

    import yaml

    ckpt_path = Path(ckpt_path)
    check_compvis_output(ckpt_path, intent)
    sd, config = to_compvis(bundle)
    yaml_path = ckpt_path.with_suffix(".yaml")
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_ckpt = ckpt_path.with_name(f".{ckpt_path.name}.partial-{os.getpid()}")
    tmp_yaml = yaml_path.with_name(f".{yaml_path.name}.partial-{os.getpid()}")
    try:
        torch.save({"state_dict": sd, "global_step": 0}, tmp_ckpt)
        tmp_yaml.write_text(f"{YAML_MARKER}\n" + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        os.replace(tmp_yaml, yaml_path)  # the marked .yaml first: an interrupted run can be overwritten
        os.replace(tmp_ckpt, ckpt_path)
    finally:
        for p in (tmp_ckpt, tmp_yaml):
            p.unlink(missing_ok=True)
    return ckpt_path

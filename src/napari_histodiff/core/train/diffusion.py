"""Unconditional latent diffusion pre-training: diffusers ``UNet2DModel`` + ``EMAModel``.

The autoencoder is frozen; the latent scale factor (1 / std of latents) is computed from
the data once and stored in the bundle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import latents as L
from . import loop as T
from ..formats.bundle import (load_bundle, package_versions, read_meta, save_part, set_vae_scaling_factor,
                     write_meta)
from ..base.errors import HistodiffError
from ..base.events import Progress, warning
from ..models.presets import Preset

STAGE = "diffusion"
# speed settings of the UNet step, measured in benchmarks/train_speed.py (--try); kept only if faster
FUSED_ADAMW = True  # torch.optim.AdamW(fused=True) on CPU and CUDA: the same update, 1.06x steps/s here
CHANNELS_LAST = False  # UNet weights and inputs in channels_last memory format


@dataclass
class DiffusionOptions:
    steps: int = 10000
    batch_size: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    ema_decay: float | None = None
    seed: int = 0
    checkpoint_every: int = 1000
    scale_tiles: int = 256  # tiles encoded to estimate the latent scale factor
    device: str = "auto"
    precision: str = "auto"  # auto, fp32, bf16, fp16 (base.precision)
    num_workers: int | None = None  # None: reader processes on CUDA, inline elsewhere (meter.loader_options)
    log_every: int | None = None  # steps between loss reports (None: 1 on the CPU, 10 on GPUs; meter.log_every)
    init_weights: bool = False  # fine-tuning: start from the bundle's UNet and keep its scale factor
    stage: str = STAGE
    latent_cache: str = "auto"  # encode each tile once per augmentation: auto (when it pays), on, off

    def validate(self) -> None:
        if self.steps < 1:
            raise HistodiffError("{opt:steps} must be at least 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise HistodiffError("{opt:batch_size} must be at least 1")


def latent_scale_factor(vae, tiles, n: int, seed: int, device, batch_size: int = 32) -> float:
    """1 / std of posterior samples of the first ``n`` tiles (evenly spread over the set). The batches stay
    at 32 on every device: the samples draw from one generator in order, so the factor does not depend on it."""
    import torch

    idx = np.linspace(0, len(tiles) - 1, min(n, len(tiles))).round().astype(int)
    gen = torch.Generator().manual_seed(seed)
    zs = []
    with torch.no_grad():
        for i in range(0, len(idx), batch_size):
            x = T.to_model_input(torch.from_numpy(np.stack([tiles[int(j)] for j in idx[i : i + batch_size]])), device)
            zs.append(vae.encode(x).latent_dist.sample(generator=gen).cpu())
    std = float(torch.cat(zs).flatten().std())
    if not np.isfinite(std) or std <= 0:
        raise HistodiffError("latents have zero or non-finite spread; the autoencoder is broken, retrain it")
    return 1.0 / std


def train_diffusion(tiles, out_dir, preset: Preset, options: DiffusionOptions | None = None):
    """Train (or resume) the latent diffusion UNet; yields :class:`Progress`, returns metrics.

    Needs ``out_dir/vae`` (from :func:`train_autoencoder`). Writes ``unet/`` (EMA weights),
    ``scheduler/`` and the scale factor at the end; checkpoints under ``training/diffusion``.
    """
    import torch
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from .meter import LossMeter, loader_options, log_every

    opts = options or DiffusionOptions()
    opts.validate()
    cfg = preset.diffusion
    out_dir = Path(out_dir)
    stage = opts.stage
    ckpt_dir = out_dir / "training" / stage
    if len(tiles) < 1:
        raise HistodiffError("no tiles to train on")
    if tiles.tile_size != preset.tile_size:
        raise HistodiffError(f"tiles are {tiles.tile_size} px but preset {preset.name} needs {preset.tile_size} px")

    acc = T.make_accelerator(opts.device, opts.precision)
    device = acc.device
    base = load_bundle(out_dir, device="cpu", require_unet=opts.init_weights)
    vae = base.vae.to(device).requires_grad_(False)
    noise_sched = base.scheduler if opts.init_weights else preset.build_scheduler()  # fine-tuning keeps the bundle's
    torch.manual_seed(opts.seed)
    unet = base.unet.train() if opts.init_weights else preset.build_unet()
    ema = EMAModel(unet.parameters(), decay=T.given(opts.ema_decay, cfg.ema_decay))
    if CHANNELS_LAST:
        unet = unet.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(unet.parameters(), lr=T.given(opts.learning_rate, cfg.learning_rate),
                            **(T.fused(device) if FUSED_ADAMW else {}))
    lr_sched = get_scheduler("constant_with_warmup", opt,
                             num_warmup_steps=T.given(opts.warmup_steps, cfg.warmup_steps))

    start, losses = 0, []
    scale = base.scale_factor if opts.init_weights else None
    if T.has_checkpoint(ckpt_dir):
        state, info = T.load_checkpoint(ckpt_dir, {"unet": unet})
        for text in info["warnings"]:
            yield warning(text)
        opt.load_state_dict(state["opt"])
        lr_sched.load_state_dict(state["lr_sched"])
        ema.load_state_dict(state["ema"])
        T.check_resume(info, opts.steps)
        start, scale = info["step"], info["scale_factor"]
        if start >= opts.steps and T.stage_written(out_dir, stage, start):  # finished before: nothing to write
            return {"steps": start, "latent_scale_factor": scale, "losses": []}
    if scale is None:
        scale = latent_scale_factor(vae, tiles, opts.scale_tiles, opts.seed, device)
    if start >= opts.steps:
        return _finish(out_dir, preset, unet, ema, noise_sched, scale, opts, tiles, start, acc)

    unet_p, opt = acc.prepare(unet, opt)
    ema.to(device)
    batch = T.given(opts.batch_size, cfg.batch_size)
    stream = T.BatchStream(tiles, np.arange(len(tiles)), batch, opts.seed, acc.process_index, acc.num_processes)
    cache = None
    if L.wanted(opts.latent_cache, opts.steps, batch, len(stream.indices)):  # the frozen encoder, once per tile
        cache = yield from L.encode_all(vae, tiles, stream.indices, device,
                                        ckpt_dir / f"latents-rank{acc.process_index}", f"{stage} latents")
        stream.latents = cache
    n_t = noise_sched.config.num_train_timesteps
    latent_shape = (preset.autoencoder.latent_channels, preset.latent_size, preset.latent_size)
    step = start
    report_every, meter = log_every(device, opts.log_every), LossMeter()
    ckpt = T.Checkpointer(ckpt_dir, acc, start, lambda: (
        {"unet": unet},
        {"opt": opt.state_dict(), "lr_sched": lr_sched.state_dict(), "ema": ema.state_dict()},
        {"stage": stage, "total": opts.steps, "scale_factor": scale, "options": asdict(opts),
         "preset": preset.name}))

    try:
        for raw in T.batch_loader(stream, start, opts.steps, **loader_options(device, opts.num_workers)):
            seed = T.step_seed(opts.seed, step, acc.process_index)
            gen = torch.Generator(device=device).manual_seed(seed)  # drawn on the device; on the CPU, as before
            torch.manual_seed(seed)  # UNet dropout: the same on resume
            b = len(raw[0]) if cache is not None else len(raw)
            eps_z = torch.randn((b, *latent_shape), generator=gen, device=device)
            noise = torch.randn((b, *latent_shape), generator=gen, device=device)
            t = torch.randint(0, n_t, (b,), generator=gen, device=device)
            with torch.no_grad():
                if cache is None:
                    post = vae.encode(T.to_model_input(raw, device)).latent_dist
                    mean, std = post.mean, post.std
                else:  # the posterior of the same tiles in the same augmentations, encoded once
                    mean, std = raw[0].to(device), raw[1].to(device)
                z = (mean + std * eps_z) * scale
            noisy = noise_sched.add_noise(z, noise, t)
            if CHANNELS_LAST:
                noisy = noisy.contiguous(memory_format=torch.channels_last)
            with acc.autocast():
                pred = unet_p(noisy, t).sample
                diff = pred.float() - noise
                loss = diff.abs().mean() if cfg.loss == "l1" else diff.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            lr_sched.step()
            ema.step(unet.parameters())
            step += 1
            meter.add(loss=loss)  # read back (a host sync) only when reported
            value = None
            if step % report_every == 0 or step == opts.steps:
                value = meter.read()["loss"]
                losses.append(value)
            yield Progress(stage, step, opts.steps, value, {"lr": lr_sched.get_last_lr()[0]})
            if step % opts.checkpoint_every == 0:
                ckpt.save(step)
    finally:
        if cache is not None:
            cache.close()
        ckpt.save(step)
    return _finish(out_dir, preset, unet, ema, noise_sched, scale, opts, tiles, step, acc, losses)


def _finish(out_dir, preset, unet, ema, noise_sched, scale, opts, tiles, step, acc, losses=()):
    result = {"steps": step, "latent_scale_factor": scale, "losses": list(losses)}
    if acc.is_main_process:  # the others wait until the outputs are on disk
        import copy

        processes = acc.num_processes
        final = copy.deepcopy(unet).to("cpu")
        ema.to("cpu")
        ema.copy_to(final.parameters())
        save_part(final, out_dir, "unet")
        if not opts.init_weights:  # fine-tuning leaves the bundle's own scheduler/ as it is
            save_part(noise_sched, out_dir, "scheduler")
        set_vae_scaling_factor(out_dir, scale)
        meta = read_meta(out_dir)
        meta["latent_scale_factor"] = scale
        meta["provenance"][opts.stage] = {
            "data": getattr(tiles, "description", type(tiles).__name__),
            "tiles": len(tiles), "steps": step, "seed": opts.seed, "processes": processes,
            "batch_size": T.given(opts.batch_size, preset.diffusion.batch_size),
            "ema_decay": T.given(opts.ema_decay, preset.diffusion.ema_decay), "versions": package_versions(),
        }
        write_meta(out_dir, meta)
    acc.wait_for_everyone()
    return result

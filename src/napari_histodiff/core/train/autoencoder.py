"""Autoencoder pre-training: diffusers ``AutoencoderKL`` with L1 + KL + patch-GAN hinge loss.

A perceptual term is added only when the user gives one: a local LPIPS weights file, or an audit feature encoder
folder (trained on their own tiles; .feature_loss).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import loop as T
from ..formats.bundle import load_bundle, new_meta, package_versions, read_meta, save_part, write_meta
from ..base.errors import HistodiffError
from ..base.events import Progress, warning
from ..models.presets import Preset

STAGE = "autoencoder"


@dataclass
class AutoencoderOptions:
    steps: int = 2000
    batch_size: int | None = None  # None: the preset's
    learning_rate: float | None = None  # None: the preset's
    seed: int = 0
    checkpoint_every: int = 500
    eval_every: int | None = None  # None: five times per run
    holdout: float = 0.05
    perceptual_weights: str | None = None
    device: str = "auto"
    precision: str = "auto"  # auto, fp32, bf16, fp16 (base.precision)
    num_workers: int | None = None  # None: reader processes on CUDA, inline elsewhere (meter.loader_options)
    log_every: int | None = None  # steps between loss reports (None: 1 on the CPU, 10 on GPUs; meter.log_every)
    decoder_only: bool = False  # fine-tuning: start from the bundle's autoencoder, train the decoder only
    stage: str = STAGE

    def validate(self) -> None:
        if self.steps < 1:
            raise HistodiffError("{opt:steps} must be at least 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise HistodiffError("{opt:batch_size} must be at least 1")
        if not 0 <= self.holdout < 0.5:
            raise HistodiffError("{opt:holdout} must be a fraction in [0, 0.5)")


def psnr(tiles_a: np.ndarray, tiles_b: np.ndarray) -> float:
    mse = np.mean((tiles_a.astype(np.float64) - tiles_b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def reconstruct(vae, tiles: np.ndarray, device, batch_size: int | None = None) -> np.ndarray:
    """Encode (posterior mode) and decode uint8 NHWC tiles (``batch_size`` None: 32 on the CPU, 256 on CUDA)."""
    import torch

    batch_size = batch_size or (256 if str(device).startswith("cuda") else 32)
    out = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch_size):
            x = T.to_model_input(torch.from_numpy(tiles[i : i + batch_size]), device)
            z = vae.encode(x).latent_dist.mode()
            out.append(T.to_uint8(vae.decode(z).sample))
    return np.concatenate(out)


def autoencoder_step(vae):
    """Wrap the VAE so that one ``forward`` (the call DDP synchronises) encodes and decodes."""
    import torch

    class AutoencoderStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, x, noise):
            posterior = self.vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * noise
            return posterior.mean, posterior.logvar, self.vae.decode(z).sample

    return AutoencoderStep()


def train_autoencoder(tiles, out_dir, preset: Preset, options: AutoencoderOptions | None = None):
    """Train (or resume) the autoencoder; yields :class:`Progress`, returns a metrics dict.

    Writes ``out_dir/vae`` and ``histodiff.json`` at the end and a resumable checkpoint under
    ``out_dir/training/autoencoder`` every ``checkpoint_every`` steps, at the end, and when
    stopped early (the generator closed, an error, Ctrl-C).
    """
    import torch

    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from .feature_loss import load_perceptual
    from .losses import PatchDiscriminator, adaptive_gan_weight, generator_loss, hinge_d_loss, kl_loss
    from .meter import LossMeter, loader_options, log_every

    opts = options or AutoencoderOptions()
    opts.validate()
    cfg = preset.autoencoder
    out_dir = Path(out_dir)
    stage = opts.stage
    ckpt_dir = out_dir / "training" / stage
    if len(tiles) < 2:
        raise HistodiffError(f"need at least 2 tiles to train the autoencoder, got {len(tiles)}")
    if tiles.tile_size != preset.tile_size:
        raise HistodiffError(f"tiles are {tiles.tile_size} px but preset {preset.name} needs {preset.tile_size} px")

    acc = T.make_accelerator(opts.device, opts.precision)
    device = acc.device
    torch.manual_seed(opts.seed)
    vae = preset.build_vae()
    if opts.decoder_only:
        vae = load_bundle(out_dir, device="cpu", require_unet=False).vae.train()
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    disc = PatchDiscriminator(in_channels=3, ndf=cfg.disc_channels, n_layers=None, tile_size=preset.tile_size)
    lr = T.given(opts.learning_rate, cfg.learning_rate)
    batch = T.given(opts.batch_size, cfg.batch_size)
    opt_g = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=lr, betas=(0.5, 0.9),
                             **T.fused(device))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9), **T.fused(device))
    perceptual = load_perceptual(opts.perceptual_weights, device) if opts.perceptual_weights else None

    from ..data.tiles import split_indices

    train_idx, hold_idx = split_indices(len(tiles), opts.holdout, opts.seed, max_holdout=64)
    held = np.stack([tiles[int(i)] for i in hold_idx]) if len(hold_idx) else None

    start, history = 0, {"psnr": []}
    if T.has_checkpoint(ckpt_dir):
        state, info = T.load_checkpoint(ckpt_dir, {"vae": vae, "disc": disc})
        for text in info["warnings"]:
            yield warning(text)
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        T.check_resume(info, opts.steps)
        start, history = info["step"], info.get("history", history)
    if start >= opts.steps and T.stage_written(out_dir, stage, start):  # finished before: nothing to write
        return _result(history, start)
    if start >= opts.steps:
        return _finish(out_dir, preset, vae, opts, history, tiles, start, acc)
    if (out_dir / "unet").is_dir() and not opts.decoder_only:
        raise HistodiffError(
            f"{out_dir} already has a diffusion UNet trained on this autoencoder; training the "
            "autoencoder further would invalidate it. Write to a new {opt:out} folder instead"
        )

    step_p, disc_p, opt_g, opt_d = acc.prepare(autoencoder_step(vae), disc, opt_g, opt_d)
    latent_shape = (cfg.latent_channels, preset.latent_size, preset.latent_size)
    stream = T.BatchStream(tiles, train_idx, batch, opts.seed, acc.process_index, acc.num_processes)
    eval_every = opts.eval_every or max(1, opts.steps // 5)
    report_every, meter = log_every(device, opts.log_every), LossMeter()
    last_layer = vae.decoder.conv_out.weight
    pixels = 3 * preset.tile_size**2
    step = start
    ckpt = T.Checkpointer(ckpt_dir, acc, start, lambda: (
        {"vae": vae, "disc": acc.unwrap_model(disc_p)},
        {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()},
        {"stage": stage, "total": opts.steps, "history": history, "options": asdict(opts), "preset": preset.name}))

    try:
        for raw in T.batch_loader(stream, start, opts.steps, **loader_options(device, opts.num_workers)):
            # drawn on the device from the step's own seed: the same on resume (on the CPU, as before)
            gen = torch.Generator(device=device).manual_seed(T.step_seed(opts.seed, step, acc.process_index))
            x = T.to_model_input(raw, device)
            gan_on = step >= cfg.disc_start
            noise = torch.randn((x.shape[0], *latent_shape), generator=gen, device=device)
            with acc.autocast():
                mean, logvar, rec = step_p(x, noise)
                rec_loss = (x - rec).abs().mean()
                if perceptual is not None:
                    rec_loss = rec_loss + cfg.perceptual_weight * perceptual(x, rec).mean()
                kl = kl_loss(DiagonalGaussianDistribution(torch.cat([mean, logvar], 1))) / pixels
                loss = rec_loss + cfg.kl_weight * kl
                g_loss = torch.zeros((), device=device)
                if gan_on:
                    g_loss = generator_loss(disc_p(rec))
                    w = adaptive_gan_weight(rec_loss, g_loss, last_layer) * cfg.disc_weight
                    loss = loss + w * g_loss
            opt_g.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt_g.step()
            d_loss = torch.zeros((), device=device)
            if gan_on:
                with acc.autocast():
                    d_loss = hinge_d_loss(disc_p(x.detach()), disc_p(rec.detach()))
                opt_d.zero_grad(set_to_none=True)
                acc.backward(d_loss)
                opt_d.step()
            step += 1
            meter.add(loss=loss, rec=rec_loss, kl=kl, g=g_loss, d=d_loss)  # no host sync here
            metrics, loss_value = {}, None
            if step % report_every == 0 or step == opts.steps:  # means since the last report
                metrics = meter.read()
                loss_value = metrics.pop("loss")
            if held is not None and (step % eval_every == 0 or step == opts.steps):
                value = psnr(held, reconstruct(vae, held, device))
                history["psnr"].append([step, value])
                metrics["psnr"] = value
            yield Progress(stage, step, opts.steps, loss_value, metrics)
            if step % opts.checkpoint_every == 0:
                ckpt.save(step)
    finally:
        ckpt.save(step)
    return _finish(out_dir, preset, vae, opts, history, tiles, step, acc)


def _result(history: dict, step: int) -> dict:
    psnr_hist = history.get("psnr") or []
    return {"steps": step, "psnr": psnr_hist[-1][1] if psnr_hist else None, "psnr_history": psnr_hist}


def _finish(out_dir, preset, vae, opts, history, tiles, step, acc) -> dict:
    """Write ``vae/`` and ``histodiff.json``; return the stage's metrics."""
    result = _result(history, step)
    if acc.is_main_process:  # the others wait until the outputs are on disk
        processes = acc.num_processes
        vae = vae.to("cpu")
        if not opts.decoder_only:  # a new autoencoder: its scale factor is not known yet
            vae.register_to_config(scaling_factor=1.0)
        save_part(vae, out_dir, "vae")
        try:
            meta = read_meta(out_dir)
        except HistodiffError:
            meta = new_meta(preset)
        meta["provenance"][opts.stage] = {
            "data": getattr(tiles, "description", type(tiles).__name__),
            "tiles": len(tiles), "steps": step, "seed": opts.seed, "processes": processes,
            "batch_size": T.given(opts.batch_size, preset.autoencoder.batch_size),
            "perceptual_weights": opts.perceptual_weights, "versions": package_versions(),
        }
        meta["metrics"][f"{opts.stage}_psnr_heldout"] = result["psnr"]
        write_meta(out_dir, meta)
    acc.wait_for_everyone()
    return result

"""Unconditional DDIM sampling in latent space, streaming tiles batch by batch.

Tile ``i`` of a run with seed ``s`` draws all its noise from its own generator seeded by
``(s, i)``, so it is the same whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import HistodiffError
from .events import Progress

STAGE = "sample"


@dataclass
class SampleOptions:
    n: int = 16
    steps: int = 50
    eta: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def validate(self, train_steps: int = 1000) -> None:
        if self.n < 1:
            raise HistodiffError("-n must be at least 1")
        if not 1 <= self.steps <= train_steps:
            raise HistodiffError(f"--steps must be between 1 and the model's {train_steps} training timesteps")
        if self.eta < 0:
            raise HistodiffError("--eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like)")
        if self.batch_size < 1:
            raise HistodiffError("--batch-size must be at least 1")


def sample_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def ddim_scheduler(bundle, steps: int):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(bundle.scheduler.config, set_alpha_to_one=False, clip_sample=False)
    sched.set_timesteps(steps)
    return sched


def sample_tiles(bundle, options: SampleOptions | None = None):
    """Yield :class:`Progress` per denoising step; finished tiles arrive in ``event.data``
    as ``{"start": i, "tiles": uint8 (b, H, W, 3), "seeds": [...]}``. Returns the count."""
    import torch

    from .training import to_uint8

    opts = options or SampleOptions()
    if bundle.unet is None:
        raise HistodiffError("this bundle has no diffusion UNet yet; run `histodiff pretrain` first")
    opts.validate(bundle.scheduler.config.num_train_timesteps)
    device = bundle.device
    unet, vae = bundle.unet, bundle.vae
    cfg = unet.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    batches = list(range(0, opts.n, opts.batch_size))
    total, done = len(batches) * opts.steps, 0
    for start in batches:
        idx = range(start, min(start + opts.batch_size, opts.n))
        seeds = [sample_seed(opts.seed, i) for i in idx]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        z = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
        sched = ddim_scheduler(bundle, opts.steps)
        with torch.no_grad():
            for t in sched.timesteps:
                eps = unet(z, t).sample
                z = sched.step(eps, t, z, eta=opts.eta, generator=gens).prev_sample
                done += 1
                yield Progress(STAGE, done, total)
            tiles = to_uint8(vae.decode(z / bundle.scale_factor).sample)
        yield Progress(STAGE, done, total, data={"start": start, "tiles": tiles, "seeds": seeds})
    return opts.n


def write_samples(bundle, options: SampleOptions, out, overwrite: bool = False, sheet_max: int = 64):
    """Sample into ``out`` as TIFF tiles + ``contact_sheet.png``; yields progress, returns the
    sheet's path. Written to a temporary folder first: an interrupted run leaves nothing."""
    import shutil
    from pathlib import Path

    from .outputs import contact_sheet, write_png, write_tile

    out = Path(out)
    if out.exists() and not overwrite:
        raise HistodiffError(f"output folder {out} already exists; pass --overwrite to replace it")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shown = []
    try:
        for event in sample_tiles(bundle, options):
            if event.data:
                for k, tile in enumerate(event.data["tiles"]):
                    i = event.data["start"] + k
                    record = {"index": i, "seed": options.seed, "sample_seed": event.data["seeds"][k],
                              "sampler": "ddim", "steps": options.steps, "eta": options.eta,
                              "bundle": str(bundle.path) if bundle.path else None}
                    write_tile(tmp / f"sample_{i:05d}.tif", tile, record)
                    if len(shown) < sheet_max:
                        shown.append(tile)
            yield event
        write_png(tmp / "contact_sheet.png", contact_sheet(np.stack(shown)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out / "contact_sheet.png"

"""Sampling in latent space, unguided or class-guided, streaming tiles batch by batch.

Guidance (DESIGN.md step 3) uses the noisy latent classifier's gradient
``g = grad_z log p(y | z_t, t)``:

- DDIM and DPM-Solver++ (eps form): ``eps_hat = eps - s * sqrt(1 - alpha_bar_t) * g`` with the
  scheduler's own ``alphas_cumprod[t]`` at the actual timestep, so any step count is right;
- DDPM ancestral (mean shift): ``mu_hat = mu + s * sigma_t^2 * g``.

Scale 0 skips the gradient entirely and is exactly unguided sampling. Tile ``i`` of a run with
seed ``s`` draws all its noise from its own generator seeded by ``(s, i)``.

Variations (``strength < 1`` with source tiles, SDEdit): the source tile's latent is noised to
the timestep ``strength`` of the way through the sampler's schedule and denoised from there, so
tissue architecture of the source survives; the tile keeps the source's class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import HistodiffError
from .events import Progress

STAGE = "sample"
SAMPLERS = ("ddim", "dpm", "ddpm")


@dataclass
class SampleOptions:
    n: int = 16  # tiles per class (or in all when unguided)
    classes: list[str] = field(default_factory=list)  # target classes; empty: unguided
    guidance: float = 10.0
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 1.0  # DDIM only
    seed: int = 0
    batch_size: int = 16
    strength: float = 1.0  # < 1: variations of source tiles (1: from pure noise)

    def validate(self, train_steps: int = 1000) -> None:
        if self.n < 1:
            raise HistodiffError("-n must be at least 1")
        if not 1 <= self.steps < train_steps:
            raise HistodiffError(f"--steps must be between 1 and {train_steps - 1} "
                                 f"(the model has {train_steps} training timesteps)")
        if self.eta < 0:
            raise HistodiffError("--eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like)")
        if self.batch_size < 1:
            raise HistodiffError("--batch-size must be at least 1")
        if self.guidance < 0:
            raise HistodiffError("--guidance must be >= 0 (0: unguided)")
        if self.sampler not in SAMPLERS:
            raise HistodiffError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not 0 < self.strength <= 1:
            raise HistodiffError("--strength must be in (0, 1] (1: from pure noise; 0.5: half-way noised sources)")

    def first_step(self) -> int:
        """Index of the first of the sampler's ``steps`` timesteps that is run (0 unless variations)."""
        return self.steps - min(self.steps, max(1, round(self.steps * self.strength)))

    def plan(self) -> list[str]:
        """Target class of every tile in order ("" for unguided)."""
        return [c for c in self.classes for _ in range(self.n)] if self.classes else [""] * self.n


def sample_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def make_scheduler(bundle, sampler: str, steps: int):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    cfg = bundle.scheduler.config
    if sampler == "ddim":
        sched = DDIMScheduler.from_config(cfg, set_alpha_to_one=False, clip_sample=False)
    elif sampler == "dpm":
        sched = DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2)
    else:
        sched = DDPMScheduler.from_config(cfg, clip_sample=False)
    sched.set_timesteps(steps)
    return sched


def classifier_grad(classifier, z, t, y):
    """grad_z log p(y | z_t, t), one class per sample."""
    import torch

    with torch.enable_grad():
        z_in = z.detach().requires_grad_(True)
        logp = classifier(z_in, t).log_softmax(-1)
        picked = logp[torch.arange(len(y), device=z.device), y].sum()
        return torch.autograd.grad(picked, z_in)[0]


def denoise(bundle, z, y, gens, opts: SampleOptions, sched):
    """Run the sampler from ``z`` (noise, or noised sources at ``opts.first_step()``); yields after
    each step, returns the final latents."""
    import torch

    guided = opts.guidance > 0 and y is not None
    for t in sched.timesteps[opts.first_step():]:
        with torch.no_grad():
            eps = bundle.unet(z, t).sample
        grad = classifier_grad(bundle.latent_classifier, z, t, y) if guided else None
        if guided and opts.sampler != "ddpm":
            alpha_bar = sched.alphas_cumprod[int(t)].to(z.device)
            eps = eps - opts.guidance * (1 - alpha_bar).sqrt() * grad
        kwargs = {"eta": opts.eta} if opts.sampler == "ddim" else {}
        z = sched.step(eps, t, z, generator=gens, **kwargs).prev_sample
        if guided and opts.sampler == "ddpm" and int(t) > 0:
            z = z + opts.guidance * sched._get_variance(int(t)).to(z.device) * grad
        yield
    return z


def plan_variations(opts: SampleOptions, sources) -> tuple[list[str], list[int]]:
    """Class and source tile of every variation: ``opts.n`` per class (of ``opts.classes``, or of every
    class in ``sources``), cycling through that class's source tiles; ``n`` in all for unlabelled sources."""
    if len(sources) == 0:
        raise HistodiffError(f"no source tiles in {sources.description}")
    names = list(getattr(sources, "class_names", None) or [])
    labels = [sources.label(i) for i in range(len(sources))] if names else [None] * len(sources)
    if not names or any(lab is None for lab in labels):
        if opts.classes:
            raise HistodiffError(f"the source tiles in {sources.description} have no classes; put them in "
                                 "class sub-folders or sample without --class")
        return [""] * opts.n, [i % len(sources) for i in range(opts.n)]
    present = set(labels)
    classes = opts.classes or [c for k, c in enumerate(names) if k in present]
    plan, picks = [], []
    for c in classes:
        mine = [i for i, lab in enumerate(labels) if names[lab] == c] if c in names else []
        if not mine:
            raise HistodiffError(f"no source tiles of class {c!r} in {sources.description} "
                                 f"(it has {', '.join(names[k] for k in sorted(present))})")
        plan += [c] * opts.n
        picks += [mine[j % len(mine)] for j in range(opts.n)]
    return plan, picks


def source_latents(bundle, tiles, gens, sched, start: int):
    """Encode source tiles (KL: posterior mean; VQ: latents before quantisation, as its decoder
    quantises) and noise them to the timestep at index ``start``."""
    import torch

    from .training import to_model_input

    with torch.no_grad():
        enc = bundle.vae.encode(to_model_input(torch.from_numpy(tiles), bundle.device))
    z0 = (enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents) * bundle.scale_factor
    noise = torch.stack([torch.randn(z0.shape[1:], generator=g) for g in gens]).to(z0.device)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start * getattr(sched, "order", 1))
    t = sched.timesteps[start : start + 1].repeat(len(z0))
    return sched.add_noise(z0, noise, t)


def sample_tiles(bundle, options: SampleOptions | None = None, sources=None):
    """Yield :class:`Progress` per denoising step; finished tiles arrive in ``event.data`` as
    ``{"start": i, "tiles": uint8 (b, H, W, 3), "seeds": [...], "classes": [...], "sources": [...]}``.
    With ``sources`` (a tile set, e.g. :class:`TileFolder`) and ``options.strength < 1`` the tiles
    are variations of the sources. Memory does not grow with the number of tiles. Returns the count."""
    import torch

    from .training import to_uint8

    opts = options or SampleOptions()
    if bundle.unet is None:
        raise HistodiffError("this bundle has no diffusion UNet yet; run `histodiff pretrain` first")
    opts.validate(bundle.scheduler.config.num_train_timesteps)
    if opts.strength < 1 and sources is None:
        raise HistodiffError("--strength below 1 makes variations of source tiles; give them with --from DIR")
    plan, picks = plan_variations(opts, sources) if sources is not None else (opts.plan(), None)
    guided = opts.guidance > 0 and any(plan)
    targets = [bundle.class_index(c) if c and (guided or picks is None) else -1 for c in plan]
    if guided and bundle.latent_classifier is None:
        raise HistodiffError("this bundle has no latent classifier for guidance; run `histodiff finetune` first")
    device = bundle.device
    cfg = bundle.unet.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    if picks is not None and sources[0].shape[:2] != (bundle.tile_size, bundle.tile_size):
        raise HistodiffError(f"source tiles are {sources[0].shape[1]} px, the model makes {bundle.tile_size} px "
                             "tiles; open them at the model's tile size")
    starts = range(0, len(plan), opts.batch_size)
    total, done = len(starts) * (opts.steps - opts.first_step()), 0
    for start in starts:
        idx = range(start, min(start + opts.batch_size, len(plan)))
        seeds = [sample_seed(opts.seed, i) for i in idx]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        sched = make_scheduler(bundle, opts.sampler, opts.steps)
        if picks is None:
            z = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
        else:
            z = source_latents(bundle, np.stack([sources[picks[i]] for i in idx]), gens, sched, opts.first_step())
        y = torch.tensor([targets[i] for i in idx], device=device) if guided else None
        steps = denoise(bundle, z, y, gens, opts, sched)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                z = stop.value
                break
            done += 1
            yield Progress(STAGE, done, total)
        with torch.no_grad():
            tiles = to_uint8(bundle.vae.decode(z / bundle.scale_factor).sample)
        origins = [sources.origin(picks[i]) for i in idx] if picks is not None else [""] * len(idx)
        yield Progress(STAGE, done, total, data={"start": start, "tiles": tiles, "seeds": seeds,
                                                 "classes": [plan[i] for i in idx], "sources": origins})
    return len(plan)

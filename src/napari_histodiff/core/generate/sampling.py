"""Sampling in latent space, unguided or class-guided, streaming tiles batch by batch.

Guidance (DESIGN.md step 3) uses the noisy latent classifier's gradient
``g = grad_z log p(y | z_t, t)``:

- DDIM and DPM-Solver++ (eps form): ``eps_hat = eps - s * sqrt(1 - alpha_bar_t) * g`` with the
  scheduler's own ``alphas_cumprod[t]`` at the actual timestep, so any step count is right;
- DDPM ancestral (mean shift, Dhariwal & Nichol): ``mu_hat = mu + s * sigma_t^2 * g`` with the
  step's variance from ``alphas_cumprod`` (:func:`ddpm_variance`).

Scale 0 skips the gradient entirely and is exactly unguided sampling. Tile ``i`` of a run with
seed ``s`` draws all its noise from its own generator seeded by ``(s, i)``.

Variations (``strength < 1`` with source tiles, SDEdit): the source tile's latent is noised to
the timestep ``strength`` of the way through the sampler's schedule and denoised from there, so
tissue architecture of the source survives; the tile keeps the source's class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.errors import HistodiffError
from ..base.options import OptionError, check, device_option, option, precision_option
from ..formats.convert import ModelSource
from .plan import Sources, TilePlan
from .selection import SelectionRule
from ..base.events import Progress

STAGE = "sample"
SAMPLERS = ("ddim", "dpm", "ddpm")


@dataclass
class SampleOptions:
    """``histodiff sample``: tiles from a model, unguided or guided toward classes, scored and selected."""

    model: Path | None = option(None, positional=True, required=True, metavar="BUNDLE", gui=False,
                                help="bundle folder, CompVis .ckpt or diffusers LDM pipeline folder")
    out: Path | None = option(None, required=True, gui=False, help="sample folder to write")
    intent: str = option("new", choices=("new", "overwrite"), consts={"--overwrite": "overwrite"}, gui=False,
                         help="new folder, or overwrite our sample folder there")
    n: int = option(16, min=1, label="tiles (per class)",
                    help="tiles per class (in all when unguided)")
    classes: list[str] = option(factory=list, flags=("--class",), metavar="NAME", gui=False,
                                help="target classes; none: unguided, or with source tiles every class "
                                "they have")
    per_class: int | None = option(None, min=1, metavar="N", gui=False,
                                   help="N tiles of every class of the bundle (instead of --class and -n)")
    guidance: float = option(10.0, min=0, help="classifier guidance scale: how strongly sampling is steered "
                             "toward the class (0: none)")
    sampler: str = option("ddim", choices=SAMPLERS, help="ddim (the paper's), dpm (DPM-Solver++, fewer steps) "
                          "or ddpm (ancestral)")
    steps: int = option(50, min=1, help="denoising steps (fewer: faster, coarser)")
    eta: float = option(1.0, min=0, help="DDIM noise: 0 deterministic, 1 as the paper")
    sources: Path | None = option(None, flags=("--from",), metavar="DIR", gui=False,
                                  help="make variations of these tiles (class sub-folders; each variation "
                                  "keeps its source's class) instead of sampling from pure noise")
    strength: float | None = option(None, min=0, max=1, min_open=True,
                                    help="how far variations are noised, in (0, 1] (1: pure noise); default 0.5 "
                                    "with source tiles, else 1")
    seed: int = option(0, min=0, help="random seed; tile i of seed s is always the same tile")
    batch_size: int = option(16, min=1, help="tiles denoised at once")
    device: str = device_option()
    precision: str = precision_option()
    select: bool = option(True, label="select tiles", help="score and select the tiles (needs a fine-tuned bundle)")
    selection: SelectionRule = option(factory=SelectionRule, help="selection rule")
    foreign: ModelSource = option(factory=ModelSource, gui=False, help="how to read a foreign model")

    def validate(self, train_steps: int = 1000) -> None:
        check(self)
        if self.steps >= train_steps:
            raise OptionError("steps", f"must be below {train_steps} (the model has {train_steps} training "
                              "timesteps)")
        if self.per_class is not None and self.classes:
            raise HistodiffError("give either {opt:classes} (with {opt:n}) or {opt:per_class}, not both")

    def resolved(self, has_sources: bool) -> "SampleOptions":
        """A copy with the strength in effect: as given, else 0.5 for variations and 1 from noise."""
        if self.strength is not None and self.strength < 1 and not has_sources:
            raise HistodiffError("{opt:strength} below 1 makes variations of source tiles; give them with "
                                 "{opt:sources}")
        strength = self.strength if self.strength is not None else 0.5 if has_sources else 1.0
        return dataclasses.replace(self, strength=strength)

    def first_step(self) -> int:
        """Index of the first of the sampler's ``steps`` timesteps that is run (0 unless variations)."""
        return self.steps - min(self.steps, max(1, round(self.steps * self.strength)))

    def plan(self) -> TilePlan:
        """Target class of every tile in order ("" for unguided), computed on demand."""
        return TilePlan(self.classes, self.n)


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
        sched = DDPMScheduler.from_config(cfg, clip_sample=False, variance_type=ddpm_variance_type(cfg))
    sched.set_timesteps(steps)
    return sched


# The UNet predicts no variance, so DDPM uses a fixed one: the log forms are the same variances, and
# learned / learned_range fall back to the posterior variance (diffusers' step fails or gives NaN for
# learned* and fixed_large_log without a predicted variance).
FIXED_VARIANCE = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
                  "fixed_large_log": "fixed_large", "learned": "fixed_small", "learned_range": "fixed_small"}


def ddpm_variance_type(cfg) -> str:
    """The fixed variance type DDPM sampling uses for a scheduler config (see ``FIXED_VARIANCE``)."""
    kind = cfg.get("variance_type") or "fixed_small"
    if kind not in FIXED_VARIANCE:
        raise HistodiffError(f"the model's scheduler has variance_type {kind!r}, which DDPM sampling does not know; "
                             "sample with {opt:sampler=ddim} or {opt:sampler=dpm}")
    return FIXED_VARIANCE[kind]


def ddpm_variance(sched, t):
    """Variance sigma_t^2 of the DDPM step ``t -> prev_t`` (the next of ``sched.timesteps``, -1 after the
    last), from ``alphas_cumprod``: posterior variance (fixed_small) or ``beta_t`` (fixed_large)."""
    import torch

    times = [int(x) for x in sched.timesteps]
    k = times.index(int(t))
    prev = times[k + 1] if k + 1 < len(times) else -1
    a_t = sched.alphas_cumprod[int(t)]
    a_prev = sched.alphas_cumprod[prev] if prev >= 0 else torch.ones_like(a_t)
    beta = 1 - a_t / a_prev
    if ddpm_variance_type(sched.config) == "fixed_large":
        return beta
    return (beta * (1 - a_prev) / (1 - a_t)).clamp(min=1e-20)


def classifier_grad(classifier, z, t, y, precision: str = "fp32"):
    """grad_z log p(y | z_t, t), one class per sample, in fp32; the classifier runs in ``precision``
    (``fp32``, ``bf16``, ``fp16``: autocast) with its weights frozen for the call, so only the gradient
    with respect to ``z`` is built (about 15% less work than with the weights' gradients)."""
    import torch

    from ..base.precision import autocast

    params = list(classifier.parameters()) if hasattr(classifier, "parameters") else []
    wanted = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), autocast(z.device, precision):
            z_in = z.detach().float().requires_grad_(True)
            logp = classifier(z_in, t).float().log_softmax(-1)
            picked = logp[torch.arange(len(y), device=z.device), y].sum()
            return torch.autograd.grad(picked, z_in)[0]
    finally:
        for p, w in zip(params, wanted):
            p.requires_grad_(w)


def denoise(bundle, z, y, gens, opts: SampleOptions, sched, precision: str = "fp32", guide_precision=None):
    """Run the sampler from ``z`` (noise, or noised sources at ``opts.first_step()``); yields the
    latents after each step, returns the final latents. The UNet runs in ``precision`` (resolved: ``fp32``,
    ``bf16``, ``fp16``), the classifier in ``guide_precision`` (default: the same); latents and the
    sampler's update stay fp32."""
    import torch

    from ..base.precision import autocast

    guided = opts.guidance > 0 and y is not None
    guide_precision = guide_precision or precision
    for t in sched.timesteps[opts.first_step():]:
        with torch.no_grad(), autocast(z.device, precision):
            eps = bundle.unet(z, t).sample.float()
        grad = classifier_grad(bundle.latent_classifier, z, t, y, guide_precision) if guided else None
        if guided and opts.sampler != "ddpm":
            alpha_bar = sched.alphas_cumprod[int(t)].to(z.device)
            eps = eps - opts.guidance * (1 - alpha_bar).sqrt() * grad
        kwargs = {"eta": opts.eta} if opts.sampler == "ddim" else {}
        z = sched.step(eps, t, z, generator=gens, **kwargs).prev_sample
        if guided and opts.sampler == "ddpm" and int(t) > 0:
            z = z + opts.guidance * ddpm_variance(sched, t).to(z.device) * grad
        yield z
    return z


def plan_variations(opts: SampleOptions, sources) -> tuple[TilePlan, Sources]:
    """Class and source tile of every variation: ``opts.n`` per class (of ``opts.classes``, or of every
    class in ``sources``), cycling through that class's source tiles; ``n`` in all for unlabelled sources.
    Both computed on demand (memory does not grow with ``n``)."""
    if len(sources) == 0:
        raise HistodiffError(f"no source tiles in {sources.description}")
    names = list(getattr(sources, "class_names", None) or [])
    labels = [sources.label(i) for i in range(len(sources))] if names else [None] * len(sources)
    if not names or any(lab is None for lab in labels):
        if opts.classes:
            raise HistodiffError(f"the source tiles in {sources.description} have no classes; put them in "
                                 "class sub-folders or sample without {opt:classes}")
        plan = TilePlan([], opts.n, [range(len(sources))])
        return plan, Sources(plan)
    present = set(labels)
    classes = opts.classes or [c for k, c in enumerate(names) if k in present]
    pools = []
    for c in classes:
        mine = [i for i, lab in enumerate(labels) if names[lab] == c] if c in names else []
        if not mine:
            raise HistodiffError(f"no source tiles of class {c!r} in {sources.description} "
                                 f"(it has {', '.join(names[k] for k in sorted(present))})")
        pools.append(mine)
    plan = TilePlan(classes, opts.n, pools)
    return plan, Sources(plan)


def source_latents(bundle, tiles, gens, sched, start: int, precision: str = "fp32"):
    """Encode source tiles (KL: posterior mean; VQ: latents before quantisation, as its decoder
    quantises) and noise them to the timestep at index ``start``."""
    import torch

    from ..base.precision import autocast
    from ..models.pixels import to_model_input

    with torch.no_grad(), autocast(bundle.device, precision):
        enc = bundle.vae.encode(to_model_input(torch.from_numpy(tiles), bundle.device))
    z0 = (enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents).float() * bundle.scale_factor
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

    from ..base.precision import autocast, resolve_precision
    from ..models.pixels import to_uint8

    opts = (options or SampleOptions()).resolved(sources is not None)
    if bundle.unet is None:
        raise HistodiffError("this bundle has no diffusion UNet yet; run `histodiff pretrain` first")
    opts.validate(bundle.scheduler.config.num_train_timesteps)
    plan, picks = plan_variations(opts, sources) if sources is not None else (opts.plan(), None)
    guided = opts.guidance > 0 and plan.guided
    targets = {c: bundle.class_index(c) if c and (guided or picks is None) else -1 for c in plan.classes or [""]}
    if guided and bundle.latent_classifier is None:
        raise HistodiffError("this bundle has no latent classifier for guidance; run `histodiff finetune` first")
    device = bundle.device
    precision = resolve_precision(opts.precision, device, "sample")
    guide_precision = resolve_precision(opts.precision, device, "guidance")
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
            z = source_latents(bundle, np.stack([sources[picks[i]] for i in idx]), gens, sched, opts.first_step(),
                               precision)
        y = torch.tensor([targets[plan[i]] for i in idx], device=device) if guided else None
        steps = denoise(bundle, z, y, gens, opts, sched, precision, guide_precision)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                z = stop.value
                break
            done += 1
            yield Progress(STAGE, done, total)
        with torch.no_grad(), autocast(device, precision):
            tiles = to_uint8(bundle.vae.decode(z / bundle.scale_factor).sample.float())
        origins = [sources.origin(picks[i]) for i in idx] if picks is not None else [""] * len(idx)
        yield Progress(STAGE, done, total, data={"start": start, "tiles": tiles, "seeds": seeds,
                                                 "classes": [plan[i] for i in idx], "sources": origins})
    return len(plan)

"""Training the noisy latent classifier and the image-space selection classifier.

Both are resumable generators like the pre-training loops; each writes its model folder
(``latent_classifier/``, ``selection_classifier/``) into the bundle at the end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from . import latents as L
from . import loop as T
from .augment import augment, colour_jitter
from ..formats.bundle import load_bundle, package_versions, read_meta, save_part, write_meta
from ..base.errors import HistodiffError
from ..base.events import Progress, warning

EVAL_TIMESTEPS = (0, 250, 500, 750)
TRUNKS = ("scratch", "unet", "autoencoder")  # unet: latent classifier only; autoencoder: selection only
TRUNK_LEARNING_RATE = 1e-3  # a head on a frozen trunk: a linear layer learns fast
SELECTION_JITTER = 0.05  # the downstream classifier's mild contrast / brightness jitter (evaluate)


@dataclass
class ClassifierOptions:
    steps: int = 2000
    batch_size: int | None = None
    learning_rate: float | None = None
    clean_latents: bool = False  # the original code's clean-only training, for comparison
    holdout: float = 0.2
    eval_every: int | None = None  # None: ten times per run
    seed: int = 0
    checkpoint_every: int = 500
    device: str = "auto"
    precision: str = "auto"  # auto, fp32, bf16, fp16 (base.precision)
    num_workers: int = 0
    latent_cache: str = "auto"  # latent classifier: encode each tile once per augmentation (auto, on, off)
    trunk: str = "scratch"  # "scratch", or a frozen pre-trained encoder: "unet" (latent), "autoencoder" (selection)
    augment: bool = False  # flips / rotations, HED stain jitter and mild blur of the labeled tiles (train/augment.py)
    folds: int = 1  # selection: one ResNet per fold of the labeled tiles, kept as an ensemble (1: one ResNet)

    def validate(self) -> None:
        if self.trunk not in TRUNKS:
            raise HistodiffError(f"classifier trunk must be one of {', '.join(TRUNKS)}, not {self.trunk!r}")
        if self.steps < 1:
            raise HistodiffError("classifier steps must be at least 1")
        if self.folds < 1:
            raise HistodiffError("selection folds must be at least 1")
        if not 0 <= self.holdout < 0.9:
            raise HistodiffError("{opt:holdout} must be a fraction in [0, 0.9)")


def _check_trunk(trunk: str, allowed: tuple, what: str) -> None:
    if trunk not in allowed:
        raise HistodiffError(f"the {what} classifier's trunk must be one of {', '.join(allowed)}, not {trunk!r}")


def tile_labels(tiles) -> np.ndarray:
    labels = [tiles.label(i) for i in range(len(tiles))]
    if any(label is None for label in labels):
        raise HistodiffError("some tiles have no class; put every labeled tile in a sub-folder named after its class")
    return np.asarray(labels, dtype=np.int64)


def _batches(tiles, idx, device, batch_size=64):
    import torch

    for i in range(0, len(idx), batch_size):
        yield T.to_model_input(torch.from_numpy(np.stack([tiles[int(j)] for j in idx[i : i + batch_size]])), device)


def _loop(stage, model, loss_fn, eval_fn, tiles, labels, train_idx, out_dir, opts, acc, lr, wd, batch, best=None,
          encode=None, shown=None):
    """Shared training loop: yields Progress, checkpoints, returns the history of evaluations.
    ``best``: ``{"acc": float, "loss": float, "model": module}`` kept by ``eval_fn``, saved with the checkpoints.
    ``encode``: a generator function ``(indices, folder) -> LatentCache`` (or None): the batches are
    then the cached ``(mean, std)`` of the tiles, and ``loss_fn`` gets that pair instead of pixels.
    ``shown``: ``(stage, offset, total)`` for the progress of a run that is one part of a larger one."""
    import torch

    ckpt_dir = out_dir / "training" / stage
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=wd,
                            **T.fused(acc.device))
    start, history = 0, []
    kept = {"best": best["model"]} if best else {}
    if T.has_checkpoint(ckpt_dir):
        state, info = T.load_checkpoint(ckpt_dir, {"model": model, **kept})
        for text in info["warnings"]:
            yield warning(text)
        T.check_resume(info, opts.steps)
        opt.load_state_dict(state["opt"])
        start, history = info["step"], info["history"]
        if best:
            best["acc"], best["loss"] = info["best_acc"], info.get("best_loss", float("inf"))
    if start >= opts.steps:
        return history, start
    model_p, opt = acc.prepare(model, opt)
    stream = T.BatchStream(tiles, train_idx, batch, opts.seed, acc.process_index, acc.num_processes, labels=labels)
    cache = None
    if encode is not None and L.wanted(opts.latent_cache, opts.steps, batch, len(stream.indices)):
        cache = yield from encode(stream.indices, ckpt_dir / f"latents-rank{acc.process_index}")
        stream.latents = cache
    eval_every = opts.eval_every or max(1, opts.steps // 10)
    step = start
    ckpt = T.Checkpointer(ckpt_dir, acc, start, lambda: (
        {"model": model, **kept}, {"opt": opt.state_dict()},
        {"stage": stage, "total": opts.steps, "history": history, "options": asdict(opts),
         **({"best_acc": best["acc"], "best_loss": best["loss"]} if best else {})}))

    try:
        for raw, y in T.batch_loader(stream, start, opts.steps, opts.num_workers):
            gen = T.torch_generator(opts.seed, step, acc.process_index)
            torch.manual_seed(T.step_seed(opts.seed, step, acc.process_index))  # dropout: the same on resume
            model_p.train()
            x = T.to_model_input(raw, acc.device) if cache is None else tuple(a.to(acc.device) for a in raw)
            with acc.autocast():
                loss = loss_fn(model_p, x, y.to(acc.device), gen)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            step += 1
            metrics = {}
            if step % eval_every == 0 or step == opts.steps:
                model.eval()
                metrics = eval_fn(model)
                history.append([step, metrics])
            label, offset, total = shown or (stage, 0, opts.steps)
            yield Progress(label, offset + step, total, loss.item(), metrics)
            if step % opts.checkpoint_every == 0:
                ckpt.save(step)
    finally:
        if cache is not None:
            cache.close()
        ckpt.save(step)
    return history, step


def train_latent_classifier(tiles, out_dir, preset, options: ClassifierOptions | None = None):
    """Noisy latent classifier on latents noised with the bundle's own scheduler at uniform t."""
    import torch
    import torch.nn.functional as F

    opts = options or ClassifierOptions()
    opts.validate()
    _check_trunk(opts.trunk, ("scratch", "unet"), "latent")
    labels = tile_labels(tiles)
    stage = "latent_classifier"
    acc = T.make_accelerator(opts.device, opts.precision)
    base = load_bundle(out_dir, device="cpu", require_unet=opts.trunk == "unet")  # a scratch trunk needs no UNet
    vae = base.vae.to(acc.device).requires_grad_(False)
    sched, scale = base.scheduler, base.scale_factor
    n_t = sched.config.num_train_timesteps
    train_idx, held_idx = heldout_split(tiles, labels, opts.holdout, opts.seed)
    torch.manual_seed(opts.seed)
    if opts.trunk == "unet":
        from ..models.trunk import UNetTrunkClassifier

        if base.unet is None:
            raise HistodiffError("classifier trunk unet needs the bundle's diffusion UNet; this bundle has none")
        model = UNetTrunkClassifier.from_unet(base.unet, len(tiles.class_names)).to("cpu")
    else:
        model = preset.build_latent_classifier(len(tiles.class_names))
    base.unet = None  # only the trunk's copy is needed

    def latents(x, gen):
        """A posterior sample of pixels ``x``, or of a cached posterior ``x = (mean, std)``."""
        if isinstance(x, tuple):
            mean, std = x
        else:
            post = vae.encode(x).latent_dist
            mean, std = post.mean, post.std
        return (mean + std * torch.randn(mean.shape, generator=gen).to(mean.device)) * scale

    def loss_fn(m, x, y, gen):
        with torch.no_grad():
            z = latents(augment(x, gen) if opts.augment else x, gen)
        if opts.clean_latents:  # the original code: clean latents, t = 0
            t = torch.zeros(len(z), dtype=torch.long, device=z.device)
            return F.cross_entropy(m(z, t), y)
        noise = torch.randn(z.shape, generator=gen).to(z.device)
        t = torch.randint(0, n_t, (len(z),), generator=gen).to(z.device)
        return F.cross_entropy(m(sched.add_noise(z, noise, t), t), y)

    gen = torch.Generator().manual_seed(opts.seed + 1)
    with torch.no_grad():  # held-out labeled tiles only (none: nothing is measured)
        held_z = torch.cat([latents(x, gen) for x in _batches(tiles, held_idx, acc.device)] or
                           [torch.zeros(0, device=acc.device)])
    held_noise = torch.randn(held_z.shape, generator=gen).to(acc.device)
    held_y = torch.from_numpy(labels[held_idx]).to(acc.device)

    def eval_fn(m):
        out = {}
        with torch.no_grad():
            for t in EVAL_TIMESTEPS if len(held_idx) else ():
                tt = torch.full((len(held_z),), t, device=acc.device)
                pred = m(sched.add_noise(held_z, held_noise, tt), tt).argmax(-1)
                out[f"acc_t{t}"] = float((pred == held_y).float().mean())
        return out

    def encode(indices, folder):
        return (yield from L.encode_all(vae, tiles, indices, acc.device, folder, f"{stage} latents"))

    c = preset.classifier
    lr = T.given(opts.learning_rate, TRUNK_LEARNING_RATE if opts.trunk == "unet" else c.learning_rate)
    history, step = yield from _loop(
        stage, model, loss_fn, eval_fn, tiles, labels, train_idx, out_dir, opts, acc,
        lr, c.weight_decay, T.given(opts.batch_size, c.batch_size),
        encode=None if opts.augment else encode)  # augmentation is in pixel space: nothing to cache
    model.eval()
    with torch.no_grad():  # calibration of the held-out logits over the evaluated timesteps (reported, not applied:
        logits = []        # a temperature would only rescale the guidance gradient, which the guidance scale sets)
        for t in EVAL_TIMESTEPS if len(held_idx) else ():
            tt = torch.full((len(held_z),), t, device=acc.device)
            logits.append(model(sched.add_noise(held_z, held_noise, tt), tt).double().cpu())
    from .calibration import calibrate

    tile_of = np.tile(np.arange(len(held_z)), len(EVAL_TIMESTEPS))  # one tile's timesteps stay in one fold
    calib = calibrate(torch.cat(logits), held_y.cpu().repeat(len(EVAL_TIMESTEPS)), tile_of, opts.seed) \
        if len(held_idx) else calibrate([], [])
    extra = {"clean_latents": opts.clean_latents, "trunk": opts.trunk, "augment": opts.augment,
             "heldout_tiles": len(held_idx)}
    result = _save(out_dir, stage, model, history, step, opts, tiles, acc, extra, calib)
    return {**result, "splits": {"heldout": held_idx.tolist(), "train": train_idx.tolist()}}


def heldout_split(tiles, labels, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices into ``tiles``: ``holdout`` of every class of the labeled tiles is held out
    and trains nothing. Pseudo-labelled tiles (from ``tiles.labeled_count`` on, :mod:`.pseudo`) only ever
    train. The same labeled tiles, ``holdout`` and ``seed`` hold out the same tiles for both classifiers."""
    n = getattr(tiles, "labeled_count", len(labels))
    train, held = T.stratified_split(labels[:n], holdout, seed)
    return np.concatenate([train, np.arange(n, len(labels), dtype=np.int64)]), held


def train_selection_classifier(tiles, out_dir, preset, options: ClassifierOptions | None = None):
    """Small ResNet on the labeled tiles; the best weights on validation tiles are kept (early stopping).
    With ``folds`` > 1 one ResNet per fold (trained on the others, stopped on its own), kept as a
    :class:`SelectionEnsemble`. Three kinds of tiles, never mixed: training, validation (choose the step),
    and held out (``holdout`` of each class: the temperature of the model actually used, the ensemble's
    mean logits, is fitted on these, and its accuracy, confusion and out-of-fold calibration error are
    measured on them). Class centroids of the features over all labeled tiles are stored with it."""
    import torch

    opts = options or ClassifierOptions()
    opts.validate()
    _check_trunk(opts.trunk, ("scratch", "autoencoder"), "selection")
    if opts.folds > 1 and opts.trunk != "scratch":
        raise HistodiffError("selection folds > 1 train an ensemble of from-scratch ResNets; use selection trunk "
                             "scratch, or one fold")
    labels = tile_labels(tiles)
    rest, held = heldout_split(tiles, labels, opts.holdout, opts.seed)
    if opts.folds > len(rest):
        raise HistodiffError(f"{opts.folds} selection folds need at least {opts.folds} labeled tiles besides the "
                             f"held-out ones, there are {len(rest)}; choose fewer {{opt:selection_folds}}")
    stage = "selection_classifier"
    acc = T.make_accelerator(opts.device, opts.precision)
    parts = ([T.stratified_split(labels[rest], opts.holdout, opts.seed + 1)] if opts.folds <= 1
             else T.stratified_folds(labels[rest], opts.folds, opts.seed))
    splits = [(rest[a], rest[b]) for a, b in parts]
    members, histories, bests, step = [], [], [], 0  # step: summed over folds
    for k, (train_idx, val_idx) in enumerate(splits):
        sub = stage if len(splits) == 1 else f"{stage}-fold{k}"
        fold_opts = opts if len(splits) == 1 else replace(opts, seed=opts.seed + k)
        model, history, done, best_acc = yield from _fit_selection(
            tiles, labels, train_idx, val_idx, out_dir, preset, fold_opts, acc, sub,
            (stage, k * opts.steps, len(splits) * opts.steps))
        step += done
        members.append(model)
        histories.append(history)
        bests.append(best_acc if best_acc >= 0 else None)
    if len(members) == 1:
        model, history, extra = members[0], histories[0], {"validation_acc": bests[0]}
    else:
        from ..models.classifiers import SelectionEnsemble

        model = SelectionEnsemble.of(members).to(acc.device).eval()
        history = [[step, {}]]
        extra = {"folds": len(members), "fold_validation_acc": bests, "fold_histories": histories}
    calib, confusion = _calibrate_selection(model, tiles, labels, held, acc.device, opts.seed)
    if not len(held):
        yield warning("no labeled tile is held out (holdout 0): the selection classifier's confidence is not "
                      "calibrated (temperature 1) and its accuracy is not measured")
    with torch.no_grad():
        feats = torch.cat([model.features(x) for x in _batches(tiles, np.arange(len(tiles)), acc.device)])
        y = torch.from_numpy(labels).to(acc.device)
        model.centroids.copy_(torch.stack([feats[y == k].mean(0) for k in range(len(tiles.class_names))]))
    floor = tissue_floor(tiles, labels)
    model.register_to_config(temperature=calib["temperature"], tissue_floor=floor)
    history = history or [[step, {}]]
    history[-1][1].update(heldout_acc=calib["heldout_acc"])
    extra = {**extra, "best_heldout_acc": calib["heldout_acc"], "trunk": opts.trunk, **calib,
             "confusion": confusion, "tissue_floor": floor}
    result = _save(out_dir, stage, model, history, step, opts, tiles, acc, extra, calib)
    return {**result, "splits": {"heldout": held.tolist(), "folds": [(a.tolist(), b.tolist()) for a, b in splits]}}


def tissue_floor(tiles, labels, share: float = 0.5) -> list[float]:
    """Per class, ``share`` of the tissue fraction of its least-stained labelled tile: the least tissue a
    kept synthetic tile of that class may have (a class of mostly white tissue, e.g. fat, gets a low bound)."""
    from ..data.tiles import tissue_fractions

    frac = tissue_fractions(tiles[i] for i in range(len(tiles)))  # one tile in memory at a time
    return [round(share * float(frac[labels == k].min()), 4) if (labels == k).any() else 0.0
            for k in range(len(tiles.class_names))]


def _calibrate_selection(model, tiles, labels, held, device, seed) -> tuple[dict, list | None]:
    """Temperature, calibration error, accuracy and confusion (rows true class, columns predicted) of
    ``model``'s own logits on the held-out tiles ``held``."""
    import torch

    from .calibration import calibrate

    if not len(held):
        return {**calibrate([], []), "heldout_acc": None}, None
    with torch.no_grad():
        logits = torch.cat([model(x).double().cpu() for x in _batches(tiles, held, device)])
    ys = torch.from_numpy(labels[held])
    n = len(tiles.class_names)
    confusion = np.bincount(ys.numpy() * n + logits.argmax(-1).numpy(), minlength=n * n).reshape(n, n)
    return ({**calibrate(logits, ys, seed=seed), "heldout_acc": float((logits.argmax(-1) == ys).double().mean())},
            confusion.tolist())


def _fit_selection(tiles, labels, train_idx, val_idx, out_dir, preset, opts, acc, stage, shown):
    """One selection classifier: returns the best weights on the validation tiles ``val_idx`` (eval mode),
    history, steps and best validation accuracy (-1: no evaluation)."""
    import copy

    import torch
    import torch.nn.functional as F

    torch.manual_seed(opts.seed)
    if opts.trunk == "autoencoder":
        from ..models.trunk import AutoencoderTrunkClassifier

        try:
            model = AutoencoderTrunkClassifier.from_vae(load_bundle(out_dir, device="cpu").vae, len(tiles.class_names))
        except ValueError as e:
            raise HistodiffError(f"{e}; use selection trunk scratch") from None
    else:
        model = preset.build_selection_classifier(len(tiles.class_names))
    model = model.to(acc.device)
    if opts.trunk == "autoencoder":
        model.standardize(_batches(tiles, train_idx, acc.device))
    best = {"acc": -1.0, "loss": float("inf"), "model": copy.deepcopy(model)}  # best validation weights (-1: none)
    val = val_idx if len(val_idx) else train_idx
    val_x = torch.cat(list(_batches(tiles, val, acc.device)))
    val_y = torch.from_numpy(labels[val]).to(acc.device)

    def loss_fn(m, x, y, gen):
        return F.cross_entropy(m(augment(x, gen) if opts.augment else colour_jitter(x, SELECTION_JITTER, gen)), y)

    def eval_fn(m):
        """Keeps the best weights by validation accuracy, ties broken by validation loss (20 tiles give
        accuracies 5 points apart: the first best alone often stopped at an undertrained step)."""
        with torch.no_grad():
            logits = m(val_x).float()
        accuracy, loss = float((logits.argmax(-1) == val_y).float().mean()), float(F.cross_entropy(logits, val_y))
        if (accuracy, -loss) > (best["acc"], -best["loss"]):
            best.update(acc=accuracy, loss=loss)
            best["model"].load_state_dict(m.state_dict())
        return {"validation_acc": accuracy, "validation_loss": loss}

    c = preset.classifier
    history, step = yield from _loop(
        stage, model, loss_fn, eval_fn, tiles, labels, train_idx, out_dir, opts, acc,
        T.given(opts.learning_rate, TRUNK_LEARNING_RATE if opts.trunk != "scratch" else c.selection_learning_rate), 1e-4,
        T.given(opts.batch_size, c.batch_size), best, shown=shown)
    if best["acc"] >= 0:
        model.load_state_dict(best["model"].state_dict())
    model.eval()
    return model, history, step, best["acc"]


def _save(out_dir, stage, model, history, step, opts, tiles, acc, extra, metrics=None) -> dict:
    result = {"steps": step, "history": history, **extra}
    if acc.is_main_process and not T.stage_written(out_dir, stage, step):
        save_part(acc.unwrap_model(model).to("cpu"), out_dir, stage)
        meta = read_meta(out_dir)
        meta["provenance"][stage] = {"data": tiles.description, "tiles": len(tiles), "steps": step,
                                     "seed": opts.seed, "versions": package_versions(), **extra}
        if history or metrics:
            meta["metrics"][stage] = {**(history[-1][1] if history else {}), **(metrics or {})}
        write_meta(out_dir, meta)
    acc.wait_for_everyone()
    return result


def latent_accuracy(bundle, tiles, timesteps=EVAL_TIMESTEPS, seed: int = 0, classifier=None) -> dict:
    """Accuracy of the bundle's noisy latent classifier (or ``classifier``) on labeled ``tiles`` it has not
    seen: latents (posterior mean) noised with the bundle's scheduler at each of ``timesteps``."""
    import torch

    clf = classifier if classifier is not None else bundle.latent_classifier
    labels = torch.from_numpy(tile_labels(tiles))
    gen = torch.Generator().manual_seed(seed)
    out, device = {}, bundle.device
    with torch.no_grad():
        z = torch.cat([bundle.vae.encode(x).latent_dist.mean for x in _batches(tiles, np.arange(len(tiles)), device)])
        z = z * bundle.scale_factor
        noise = torch.randn(z.shape, generator=gen).to(device)
        for t in timesteps:
            tt = torch.full((len(z),), t, device=device)
            pred = clf.to(device).eval()(bundle.scheduler.add_noise(z, noise, tt), tt).argmax(-1).cpu()
            out[f"acc_t{t}"] = float((pred == labels).float().mean())
    return out

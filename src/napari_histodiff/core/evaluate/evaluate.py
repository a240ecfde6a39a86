"""``histodiff evaluate``: does the augmentation help? A downstream classifier (the small ResNet of
:class:`SelectionClassifier`) trained from scratch on real tiles only and on real + augmentation tiles,
same initial weights, steps and augmentations per seed; best-validation weights (validation split of
the real training tiles, never the test set) are tested. See docs/evaluate.md. No Qt or napari here."""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..train import loop as T
from ..train.augment import colour_jitter
from ..base.devices import pick_device
from ..models import DOWNSTREAM_ARCHS as ARCHS
from ..base.errors import HistodiffError
from ..base.events import Progress
from ..base.options import OptionError, check, device_option, option, record


@dataclass
class EvaluateOptions:
    """``histodiff evaluate``: does the augmentation help? Downstream classifiers on real vs real + synthetic."""

    train: Path | None = option(None, required=True, metavar="DIR", gui=False,
                                help="labeled training tiles (one sub-folder per class)")
    test: Path | None = option(None, required=True, metavar="DIR", gui=False,
                               help="labeled test tiles (one sub-folder per class)")
    augment: Path | None = option(None, metavar="EXPORT_DIR", gui=False,
                                  help="augmentation set (from `histodiff export`): adds the 'augmented' arm")
    out: Path | None = option(None, required=True, gui=False, help="folder for results.json and results.png")
    intent: str = option("new", choices=("new", "overwrite"), consts={"--overwrite": "overwrite"}, gui=False,
                         help="new folder, or overwrite our results there")
    tile_size: int = option(64, min=8, help="tiles are fitted to this size")
    steps: int = option(1500, min=1, help="optimisation steps per classifier")
    batch_size: int = option(32, min=1, help="tiles per step")
    learning_rate: float = option(1e-3, min=0, min_open=True, flags=("--lr",), help="AdamW learning rate")
    seeds: list[int] = option(factory=lambda: [0, 1, 2], help="seeds: one classifier per arm and seed")
    val_fraction: float = option(0.2, min=0, max=0.89, help="fraction of the training tiles held out for "
                                 "choosing the best step")
    eval_every: int = option(100, min=1, help="validation every N steps")
    colour_jitter: float = option(0.05, min=0, max=0.99, help="colour jitter of the training tiles")
    channels: list[int] = option(factory=lambda: [32, 64, 128], min=1, help="the ResNet's stage widths")
    arch: str = option("resnet", choices=ARCHS, help="downstream classifier: a small ResNet or a small Vision "
                       "Transformer")
    device: str = device_option()

    def validate(self) -> None:
        check(self)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise OptionError("seeds", f"must be distinct and at least one (got {self.seeds})")


def _load(tiles, what: str, size: int):
    """All tiles of a labeled set in memory: (uint8 NHWC at ``size`` px, class-name list per tile)."""
    if len(tiles) == 0:
        raise HistodiffError(f"the {what} set holds no tiles")
    labels = [tiles.label(i) for i in range(len(tiles))]
    if None in labels:
        raise HistodiffError(f"{tiles.origin(labels.index(None))} in the {what} set has no class; put every "
                             "tile in a sub-folder named after its class")
    names = [tiles.class_names[k] for k in labels]
    x = np.stack([tiles[i] for i in range(len(tiles))])
    if x.shape[1] != size:
        warnings.warn(f"the {what} tiles are {x.shape[1]} px, the training tiles {size} px; resizing them",
                      stacklevel=3)
        from ..data.tiles import _fit_square

        x = np.stack([_fit_square(t, size) for t in x])
    return x, names


def _counts(y, classes):
    return {c: int((np.asarray(y) == k).sum()) for k, c in enumerate(classes)}


def _indices(names, classes, what, fix):
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise HistodiffError(f"{what}: {', '.join(unknown)}; {fix}")
    return np.array([classes.index(c) for c in names], dtype=np.int64)


def _predict(model, x, device, batch=256, fn=None):
    import torch

    model.eval()
    fn = fn or model
    with torch.no_grad():
        return torch.cat([fn(T.to_model_input(torch.from_numpy(x[i : i + batch]), device)).float().cpu()
                          for i in range(0, len(x), batch)])


def embed(model, x, device=None) -> np.ndarray:
    """Pooled features (N, channels[-1]) of uint8 NHWC tiles from a downstream classifier."""
    device = device or next(model.parameters()).device
    return _predict(model, x, device, fn=model.features).numpy().astype(np.float64)


def frechet_distance(a, b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows are samples)."""
    import warnings

    from scipy.linalg import sqrtm

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if min(len(a), len(b)) < 2:
        raise HistodiffError("the Frechet distance needs at least 2 tiles on each side")
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # singular covariances are expected with fewer tiles than features
        warnings.simplefilter("ignore")
        root = sqrtm(ca @ cb)
    root = root.real if np.iscomplexobj(root) else root
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))


def train_downstream(x, y, val_x, val_y, n_classes, seed, opts, device, stage):
    """One downstream classifier; yields Progress; returns the best-validation model."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)  # same initial weights for every arm of a seed
    from ..models.downstream import build

    model = build(opts.arch, n_classes, x.shape[1], opts.channels).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=opts.learning_rate, weight_decay=1e-4)
    stream = T.BatchStream(x, np.arange(len(x)), opts.batch_size, seed, labels=y)
    best, best_key, vy = None, None, torch.from_numpy(val_y)
    for step in range(opts.steps):
        raw, yy = stream[step]
        inp = colour_jitter(T.to_model_input(raw, device), opts.colour_jitter, T.torch_generator(seed, step, 1))
        model.train()
        loss = F.cross_entropy(model(inp), yy.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        val = {}
        if (step + 1) % opts.eval_every == 0 or step + 1 == opts.steps:
            logits = _predict(model, val_x, device)
            acc = float((logits.argmax(-1) == vy).float().mean())
            key = (acc, -float(F.cross_entropy(logits, vy)))
            if best_key is None or key > best_key:
                best_key, best = key, copy.deepcopy(model.state_dict())
            val = {"val_acc": acc}
        yield Progress(stage, step + 1, opts.steps, float(loss.item()), val)
    model.load_state_dict(best)
    return model


def metrics(y_true, y_pred, classes) -> dict:
    """Accuracy, macro-F1 (over the classes present in y_true or y_pred, as scikit-learn), per-class
    recall (None for a class absent from the test set) and the confusion matrix (rows: true)."""
    n = len(classes)
    cm = np.bincount(np.asarray(y_true) * n + np.asarray(y_pred), minlength=n * n).reshape(n, n)
    tp, rows, cols = np.diag(cm).astype(float), cm.sum(1), cm.sum(0)
    recall = np.divide(tp, rows, out=np.zeros(n), where=rows > 0)
    precision = np.divide(tp, cols, out=np.zeros(n), where=cols > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=precision + recall > 0)
    present = (rows > 0) | (cols > 0)
    return {"accuracy": float(tp.sum() / max(cm.sum(), 1)), "macro_f1": float(f1[present].mean()),
            "recall": {c: (float(recall[k]) if rows[k] else None) for k, c in enumerate(classes)},
            "confusion": cm.tolist()}


def _summary(per_seed, classes, fn):
    recall = {c: None if per_seed[0]["recall"][c] is None else fn([r["recall"][c] for r in per_seed])
              for c in classes}
    return {**{m: fn([r[m] for r in per_seed]) for m in ("accuracy", "macro_f1")}, "recall": recall}


def paired_difference(real_acc, aug_acc) -> dict:
    """Mean of (augmented - real) accuracy in points over seeds with a t-distribution 95% CI."""
    d = 100.0 * (np.asarray(aug_acc, float) - np.asarray(real_acc, float))
    mean, n = float(d.mean()), len(d)
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    out = {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half, "n": n, "per_seed": d.tolist()}
    if n < 2:
        out["note"] = "one seed only: no interval can be estimated, the CI is [mean, mean]"
    return out


def _augment_sets(augment_tiles) -> dict:
    if augment_tiles is None:
        return {}
    sets = dict(augment_tiles) if isinstance(augment_tiles, dict) else {"augmented": augment_tiles}
    if "real" in sets:
        raise HistodiffError("'real' names the arm without augmentation; give the augmentation set another name")
    return sets


def evaluate(train_tiles, test_tiles, augment_tiles=None, options: EvaluateOptions | None = None):
    """Generator: yields :class:`Progress` while training; returns the results dict (see docs/evaluate.md).

    ``augment_tiles``: one tile set (arm ``augmented``) or ``{arm name: tile set}`` for several arms,
    each trained on the real split plus that set, all against one ``real`` arm per seed."""
    opts = options or EvaluateOptions()
    opts.validate()
    device = pick_device(opts.device)
    size = int(train_tiles.tile_size)
    tx, tnames = _load(train_tiles, "training", size)
    classes = sorted(set(tnames))
    _indices(train_tiles.class_names, classes, "training classes without tiles", "add tiles or remove them")
    sx, snames = _load(test_tiles, "test", size)
    ty = _indices(tnames, classes, "", "")
    sy = _indices(snames, classes, "test classes absent from the training set",
                  "add training tiles of them or remove them from the test set")
    aug = {}
    for arm, tiles in _augment_sets(augment_tiles).items():
        ax, anames = _load(tiles, f"augmentation ({arm})", size)
        aug[arm] = (ax, _indices(anames, classes, f"augmentation classes unknown to the training set ({arm})",
                                 "remove them or add training tiles of them"))
    per_seed = {arm: [] for arm in ["real", *aug]}
    counts = {"train": _counts(ty, classes), "test": _counts(sy, classes)}
    if aug:
        by_arm = {arm: _counts(ay, classes) for arm, (_, ay) in aug.items()}
        counts["augment"] = by_arm["augmented"] if list(by_arm) == ["augmented"] else by_arm
    for seed in opts.seeds:
        tr, va = T.stratified_split(ty, opts.val_fraction, seed)
        va = va if len(va) else tr  # too few tiles to hold any out: select on the training tiles
        counts.setdefault("train_split", _counts(ty[tr], classes))
        counts.setdefault("validation", _counts(ty[va], classes))
        data = {"real": (tx[tr], ty[tr])}
        data.update({arm: (np.concatenate([tx[tr], ax]), np.concatenate([ty[tr], ay])) for arm, (ax, ay) in aug.items()})
        for arm, (x, y) in data.items():
            model = yield from train_downstream(x, y, tx[va], ty[va], len(classes), seed, opts, device,
                                                f"{arm} seed {seed}")
            pred = _predict(model, sx, device).argmax(-1).numpy()
            per_seed[arm].append({"seed": seed, **metrics(sy, pred, classes)})
    results = {"classes": classes, "options": record(opts), "counts": counts, "tile_size": size,
               "device": str(device), "arms": {arm: {"per_seed": runs} for arm, runs in per_seed.items()}}
    return summarise(results)


def summarise(results) -> dict:
    """(Re)compute each arm's mean and sd over its seeds and the paired differences to ``real``."""
    classes, arms = results["classes"], results["arms"]
    sd = lambda v: float(np.std(v, ddof=min(1, len(v) - 1)))  # noqa: E731 - sample sd; 0 with one seed
    for arm in arms.values():
        arm["mean"] = _summary(arm["per_seed"], classes, lambda v: float(np.mean(v)))
        arm["sd"] = _summary(arm["per_seed"], classes, sd)
    results.pop("paired_difference", None)
    results.pop("paired_differences", None)
    real = [r["accuracy"] for r in arms["real"]["per_seed"]]
    diffs = {arm: paired_difference(real, [r["accuracy"] for r in arms[arm]["per_seed"]])
             for arm in arms if arm != "real"}
    if diffs:
        results["paired_difference"] = diffs[next(iter(diffs))]
        if len(diffs) > 1:
            results["paired_differences"] = diffs
    return results


def combine(parts: list[dict]) -> dict:
    """One results dict from runs of the same sets with different seeds (e.g. one run per seed)."""
    if not parts:
        raise HistodiffError("nothing to combine")
    out = copy.deepcopy(parts[0])
    for part in parts[1:]:
        if part["classes"] != out["classes"] or list(part["arms"]) != list(out["arms"]):
            raise HistodiffError("these results are of different classes or arms; combine runs of one experiment")
        for arm, runs in part["arms"].items():
            out["arms"][arm]["per_seed"] += copy.deepcopy(runs["per_seed"])
    seeds = [r["seed"] for r in out["arms"]["real"]["per_seed"]]
    if len(set(seeds)) != len(seeds):
        raise HistodiffError(f"seeds repeat across the runs ({seeds}); combine runs of different seeds")
    out["options"]["seeds"] = seeds
    return summarise(out)


PALETTE = [(70, 110, 200), (230, 130, 40), (90, 170, 90), (200, 80, 80), (150, 110, 190), (140, 100, 80),
           (220, 120, 190), (130, 130, 130), (190, 190, 60), (60, 190, 200)]


def figure(results) -> np.ndarray:
    """RGB uint8 figure, numpy only: left, a bar per arm in ``arms`` order (colours: PALETTE; mean accuracy
    0..1, black +- sd error bar); right, the real arm's confusion matrix summed over seeds, row-normalised
    (white 0 .. dark blue 1; rows true)."""
    h, pad = 240, 20
    bar_w = 60 if len(results["arms"]) <= 3 else 30
    arms = list(results["arms"])
    cm = np.sum([r["confusion"] for r in results["arms"]["real"]["per_seed"]], axis=0).astype(float)
    n, base, top = len(cm), h - pad, pad
    cell, left_w = max(4, (h - 2 * pad) // n), pad + len(arms) * (bar_w + pad)
    img = np.full((h, left_w + n * cell + 2 * pad, 3), 255, np.uint8)
    img[top:base + 1, pad - 2], img[base, pad - 2:left_w] = 0, 0  # axes

    def y(v):  # accuracy -> image row
        return int(round(base - np.clip(v, 0, 1) * (base - top)))

    for i, arm in enumerate(arms):
        m, s = results["arms"][arm]["mean"]["accuracy"], results["arms"][arm]["sd"]["accuracy"]
        x0 = pad + i * (bar_w + pad)
        img[y(m):base, x0:x0 + bar_w] = PALETTE[i % len(PALETTE)]
        xc = x0 + bar_w // 2
        img[y(m + s):y(m - s) + 1, xc - 1:xc + 2] = 0
        for v in (m - s, m + s):
            img[max(y(v) - 1, 0):y(v) + 1, xc - 10:xc + 11] = 0
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    shade = (255 - rows[..., None] * np.array([225.0, 185.0, 75.0])).astype(np.uint8)
    grid = np.repeat(np.repeat(shade, cell, 0), cell, 1)
    grid[::cell], grid[:, ::cell], grid[-1], grid[:, -1] = 200, 200, 200, 200  # cell borders
    img[pad:pad + n * cell, left_w + pad:left_w + pad + n * cell] = grid
    return img


def write_results(results, out_dir) -> Path:
    """``results.json`` (atomic) and ``results.png`` in ``out_dir``; returns the JSON path."""
    import imageio.v3 as iio

    (out := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    tmp, tmp_png = out / f".results.json.tmp-{os.getpid()}", out / f".results.tmp-{os.getpid()}.png"
    tmp.write_text(json.dumps(results, indent=2), encoding="utf-8")
    os.replace(tmp, out / "results.json")
    iio.imwrite(tmp_png, figure(results))
    os.replace(tmp_png, out / "results.png")
    return out / "results.json"


def open_labeled(path, tile_size: int):
    """A labeled tile folder (``<class>/<tile>``; other files such as manifest.csv are ignored)."""
    from ..data.tiles import TileFolder

    return TileFolder(path, tile_size)

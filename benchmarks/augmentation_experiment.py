"""The paper's experiment on real data: does class-guided synthetic augmentation help a downstream
classifier when labels are scarce? (issue 6; results in docs/results.md)

    python benchmarks/augmentation_experiment.py [--out experiment] [--quick | --profile gpu] [--data ../shared/data]
                                                 [--dry-run]

Profiles: ``cpu`` (the default; hours on a 2-core CPU), ``--quick`` (minutes, tiny step counts) and
``--profile gpu`` (far more pre-training on one GPU, in fp32 as the CPU results; it first times short
bursts of its own training loops on the device (about a minute), then scales its training step counts so
that the whole run is estimated to finish within ``--budget-min`` (9) minutes with a 15% margin, and records
the measured costs, the factor and the precision in OUT/gpu_sizing.json; ``--dry-run`` prints the plan and
the arithmetic of the estimate from assumed costs).

Stages (each caches its output under --out and is skipped when present, so a re-run resumes):
  data       crc5 tiles at 64 px: k labeled tiles per class (seeded; the k=20 set is inside the k=100
             set), every other crc5 tile is test material; written as <class>/<tile>.png folders
  pretrain   `small` preset autoencoder + latent diffusion on pretrain/ (breast_ucsb, monuseg; scaled
             by --pretrain-scale towards the magnification of the 64 px crc5 tiles); more folders of
             shared/data with --set 'pretrain_extra=[["glas", 0.15, 8]]' (subdir, scale, stride)
  finetune   per k: UNet on the labeled tiles, noisy latent classifier, selection classifier (and the
             decoder with --set decoder_steps=N); ablation
             bundles: pre-trained UNet (no UNet fine-tuning), clean-latent classifier (original code)
  sample     per k: class-guided pools per bundle, an unguided pool, variations of the labeled tiles
             (`histodiff sample --from`); all scored by the selection classifier
  evaluate   per k and seed: real-only against real + synthetic arms (core.evaluate), then combined
  frechet    per class feature-space Frechet distance, real test tiles vs synthetic, in the features of a
             real-only downstream classifier (not comparable to Inception FID)
Writes OUT/summary.md, OUT/summary.json and OUT/k*/results.{json,png}; --docs DIR copies them.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_histodiff.core.evaluate import evaluate as E
from napari_histodiff.core.base.events import run_to_end  # noqa: E402
from napari_histodiff.core.data.opening import open_tiles  # noqa: E402
from napari_histodiff.core.data.tiles import ArrayTiles, ConcatTiles, TileFolder, _fit_square, read_rgb  # noqa: E402

CLASSES = ["AC", "H", "S", "T", "V"]


@dataclass
class Settings:
    ks: list[int] = field(default_factory=lambda: [20, 100])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    test_per_class: int | None = None  # None: every crc5 tile not in a labeled set
    unlabeled_per_class: int = 0  # crc5 tiles per class set aside without labels (not tested): finetune --unlabeled
    pretrain_scale: float = 0.1
    pretrain_stride: int = 12
    pretrain_extra: list = field(default_factory=list)  # more pre-training folders: [[subdir, scale, stride]]
    ae_steps: int = 600
    ae_batch: int = 4
    ae_lr: float = 2e-4
    ldm_steps: int = 1000
    ldm_batch: int | None = None  # None: the small preset's 16
    ft_batch: int | None = None  # fine-tuning stages (UNet, classifiers); None: the preset's 16
    clf_steps: int = 400
    clf_trunk: str = "scratch"  # guidance classifier trunk (finetune --classifier-trunk)
    clf_augment: bool = False  # flips, HED stain jitter and blur for the guidance classifier (--classifier-augment)
    sel_trunk: str = "scratch"  # selection classifier trunk (finetune --selection-trunk)
    sel_steps: int = 300
    sel_folds: int = 5  # selection classifier ensemble members (finetune --selection-folds; 1: one ResNet)
    unet_steps: int = 300
    unet_lr: float = 5e-5
    decoder_steps: int = 0  # decoder fine-tuning on the labeled tiles (finetune --finetune-decoder-steps)
    decoder_lr: float = 1e-4
    pool: int = 100  # guided samples per class (and 5x this unguided) at the smallest k
    ablation_pool: int = 50  # guided samples per class of the no-UNet-fine-tuning and clean-latent bundles
    pool_large_k: int = 100  # guided samples per class at larger k (main arm only)
    guidance: float = 10.0
    sample_steps: int = 20
    threshold: float = 0.8
    variations: list[float] = field(default_factory=lambda: [0.5])  # strengths of variation pools (labeled tiles)
    variation_guidance: float = 10.0
    balanced: bool = False  # main arm: the n most confident tiles of every class, whatever the threshold
    amounts: list[float] = field(default_factory=lambda: [0.5, 1.0, 3.0])  # synthetic / real tiles
    main_amount: float = 1.0  # the main (exported) arm's synthetic / real tiles
    eval_steps: int = 300
    eval_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    ablations: bool = True  # at the smallest k
    device: str = "auto"
    precision: str = "auto"  # training and sampling precision (base.precision); the GPU profile: fp32


QUICK = dict(ks=[20], seeds=[0, 1], test_per_class=40, ae_steps=30, ldm_steps=40, clf_steps=20, sel_steps=20,
             unet_steps=10, pool=12, ablation_pool=12, pool_large_k=12, sample_steps=4, eval_steps=30)
# One H200: the small preset is launch-bound there, so batches grow (same wall time per step) and
# pre-training sees 24x (autoencoder) and 32x (diffusion) the tiles of the CPU default.
GPU = dict(ae_steps=1800, ae_batch=32, ldm_steps=4000, ldm_batch=128, unet_steps=800, clf_steps=1000, sel_steps=500,
           ft_batch=64, pool=200, ablation_pool=100, pool_large_k=200, sample_steps=20, eval_steps=300,
           precision="fp32")
PROFILES = {"cpu": {}, "quick": QUICK, "gpu": GPU}
# Assumed seconds on one H200 (small preset, 64 px), for --dry-run only: a real GPU run measures its own
# (measure_costs) and sizes itself to the budget (size_to_budget). Per training step at the batch above;
# sampling per tile and DDIM step (batch 32, guided x1.5); evaluation per downstream step; fixed costs per stage.
GPU_COST = {"ae_step": 0.045, "ldm_step": 0.030, "encode_once": 15, "unet_ft_step": 0.030, "clf_step": 0.012,
            "sel_step": 0.008, "sample_tile_step": 0.00015, "eval_step": 0.006, "data": 30, "open_pretrain": 15,
            "per_bundle": 5}


class Timer:
    """Seconds per stage, added up over re-runs (a failed stage's time too), in a JSON file."""

    def __init__(self, path: Path):
        self.path = path
        self.times = json.loads(path.read_text()) if path.is_file() else {}

    def run(self, name, fn):
        t = time.perf_counter()
        try:
            out = fn()
        finally:
            self.times[name] = round(time.perf_counter() - t + self.times.get(name, 0.0), 1)
            self.path.write_text(json.dumps(self.times, indent=1))
        return out


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def drain(gen, label):
    last = [0.0]

    def show(ev):
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            loss = "" if ev.loss is None else f" loss {ev.loss:.4f}"
            log(f"  {label}: {ev.stage} {ev.step}/{ev.total}{loss}")

    return run_to_end(gen, show)


# ---- data ---------------------------------------------------------------------------------------

def make_data(data_root: Path, out: Path, s: Settings) -> None:
    import imageio.v3 as iio

    if (out / "split.json").is_file():
        return
    rng = np.random.default_rng(2023)
    split = {"labeled": {}, "test": {}, "unlabeled": {}}
    kmax, u = max(s.ks), s.unlabeled_per_class
    for c in CLASSES:
        files = sorted(p.name for p in (data_root / "crc5" / c).glob("*.jpg"))
        order = rng.permutation(len(files))
        split["labeled"][c] = [files[i] for i in order[:kmax]]
        split["unlabeled"][c] = [files[i] for i in order[kmax : kmax + u]]
        rest = [files[i] for i in order[kmax + u :]]
        split["test"][c] = rest[: s.test_per_class] if s.test_per_class else rest
    for c in CLASSES:
        for name in split["unlabeled"][c]:  # one folder, no class: only the labels of split.json say it
            _png(iio, out / "unlabeled" / name, _fit_square(read_rgb(data_root / "crc5" / c / name), 64))
        for name in split["labeled"][c] + split["test"][c]:
            tile = _fit_square(read_rgb(data_root / "crc5" / c / name), 64)
            if name in split["test"][c]:
                _png(iio, out / "test" / c / name, tile)
            for k in s.ks:
                if name in split["labeled"][c][:k]:
                    _png(iio, out / f"k{k}" / c / name, tile)
    (out / "split.json").write_text(json.dumps(split, indent=1))


def _png(iio, path: Path, tile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path.with_suffix(".png"), tile)


# ---- models -------------------------------------------------------------------------------------

def pretrain(data_root: Path, bundle: Path, s: Settings):
    from napari_histodiff.core.models.presets import small
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder
    from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion
    from napari_histodiff.core.train.loop import prepare_out_dir

    tiles = open_tiles([data_root / "pretrain"], 64, large_images=True, stride=s.pretrain_stride,
                       scale=s.pretrain_scale)
    extra = [open_tiles([data_root / sub], 64, large_images=True, stride=stride, scale=scale)
             for sub, scale, stride in s.pretrain_extra]
    if extra:
        log(f"pre-training tiles: pretrain/ {len(tiles)}, " + ", ".join(
            f"{sub} {len(t)}" for (sub, _, _), t in zip(s.pretrain_extra, extra)))
        tiles = ConcatTiles([tiles, *extra])
    log(f"pre-training tiles: {len(tiles)}")
    prepare_out_dir(bundle, intent="resume")
    ae = drain(train_autoencoder(tiles, bundle, small(), AutoencoderOptions(
        steps=s.ae_steps, batch_size=s.ae_batch, learning_rate=s.ae_lr, device=s.device, precision=s.precision,
        checkpoint_every=200)),
        "autoencoder")
    ldm = drain(train_diffusion(tiles, bundle, small(), DiffusionOptions(
        steps=s.ldm_steps, batch_size=s.ldm_batch, device=s.device, precision=s.precision, checkpoint_every=250)),
        "diffusion")
    return {"tiles": len(tiles), "ae_psnr": ae.get("psnr"), "scale_factor": ldm.get("latent_scale_factor")}


def finetune_all(pre: Path, kdir: Path, labeled: Path, s: Settings, ablations: bool) -> dict:
    from napari_histodiff.core.train.finetune import FinetuneOptions, finetune
    from napari_histodiff.core.models.presets import small

    tiles = TileFolder(labeled, 64)
    opts = FinetuneOptions(classifier_steps=s.clf_steps, selection_steps=s.sel_steps, unet_steps=s.unet_steps,
                           unet_learning_rate=s.unet_lr, decoder_steps=s.decoder_steps,
                           decoder_learning_rate=s.decoder_lr, device=s.device, precision=s.precision,
                           checkpoint_every=100,
                           min_tiles_per_class=2, batch_size=s.ft_batch, classifier_trunk=s.clf_trunk,
                           classifier_augment=s.clf_augment, selection_trunk=s.sel_trunk,
                           selection_folds=s.sel_folds)
    made = {"finetuned": kdir / "finetuned"}
    unlabeled = None
    if s.unlabeled_per_class:
        opts.unlabeled = [labeled.parent / "unlabeled"]
        unlabeled = TileFolder(opts.unlabeled[0], 64)
    info = drain(finetune(pre, tiles, made["finetuned"], small(), opts, unlabeled), "finetune")
    if not ablations:
        return made
    made["no-unet-ft"] = kdir / "no-unet-ft"  # fine-tuned classifiers, pre-trained UNet
    if not made["no-unet-ft"].is_dir():
        tmp = kdir / ".no-unet-ft.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(made["finetuned"], tmp, ignore=shutil.ignore_patterns("checkpoints*"))
        shutil.rmtree(tmp / "unet")
        shutil.copytree(pre / "unet", tmp / "unet")
        tmp.rename(made["no-unet-ft"])
    made["clean-latent"] = kdir / "clean-latent"  # the original code's classifier on clean latents
    drain(finetune(pre, tiles, made["clean-latent"], small(), replace(opts, unet_steps=0, clean_latents=True)),
          "finetune clean")
    marker = made["clean-latent"] / "unet-from-finetuned"
    if not marker.exists():
        shutil.rmtree(made["clean-latent"] / "unet")
        shutil.copytree(made["finetuned"] / "unet", made["clean-latent"] / "unet")
        marker.write_text("unet/ copied from ../finetuned (fine-tuned UNet; only the guidance classifier differs)\n")
    made["info"] = info
    return made


def sample_pool(bundle_dir: Path, out: Path, n: int, guided: bool, s: Settings, seed: int,
                sources: Path | None = None, strength: float = 1.0):
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.formats.records import read_records
    from napari_histodiff.core.generate.sample_set import write_samples
    from napari_histodiff.core.generate.sampling import SampleOptions
    from napari_histodiff.core.generate.selection import SelectionRule

    if (out / "samples.csv").is_file():
        return read_records(out)
    bundle = load_bundle(bundle_dir, device=s.device)
    guidance = (s.variation_guidance if sources else s.guidance) if guided else 0.0
    opts = SampleOptions(n=n, classes=bundle.class_names if guided else [], guidance=guidance,
                         steps=s.sample_steps, seed=seed, batch_size=32, strength=strength, precision=s.precision)
    tiles = TileFolder(sources, 64) if sources else None
    return drain(write_samples(bundle, opts, out, SelectionRule(threshold=s.threshold), intent="overwrite",
                               sources=tiles), out.name)


def pick(records, n: int, selected: bool) -> list:
    """Up to ``n`` records per class: the most confident kept ones, or (no selection) the first ``n``."""
    groups: dict[str, list] = {}
    for r in records:
        if selected and not r.kept:
            continue
        groups.setdefault(r.target_class or r.predicted_class, []).append(r)
    out = []
    for rs in groups.values():
        if selected:
            rs = sorted(rs, key=lambda r: (-(r.confidence or 0.0), r.index))
        out += rs[:n]
    return out


def as_tiles(folder: Path, records, name: str) -> ArrayTiles:
    import tifffile

    if not records:
        return None
    tiles = np.stack([tifffile.imread(folder / r.file) for r in records])
    labels = [CLASSES.index(r.target_class or r.predicted_class) for r in records]
    return ArrayTiles(tiles, labels, CLASSES, description=name)


def export_main(folder: Path, records, n: int, out: Path, s: Settings, bundle_dir: Path):
    """The main arm through the product path: cap the kept tiles at ``n`` per class, export, reopen.
    With ``s.balanced`` every class gets its ``n`` most confident tiles (rule "none" + cap)."""
    from napari_histodiff.core.generate.export import ExportOptions, export_set
    from napari_histodiff.core.formats.records import write_records
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.generate.selection import SelectionRule, decide, tissue_floors

    if not (out / "manifest.csv").is_file():
        recs = copy.deepcopy(records)
        floors = tissue_floors(load_bundle(bundle_dir, device="cpu"))  # the bundle's tissue check, as sampling
        decide(recs, SelectionRule(rule="none" if s.balanced else "both", threshold=s.threshold, cap=n), floors)
        if not any(r.kept for r in recs):
            return None  # nothing kept (quick runs)
        write_records(folder / "samples.csv", recs)
        try:
            drain(export_set([folder], out, ExportOptions(intent="overwrite", fmt="png")), "export")
        finally:
            write_records(folder / "samples.csv", records)
    return TileFolder(out, 64)


# ---- evaluation ---------------------------------------------------------------------------------

def eval_options(s: Settings, seeds):
    return E.EvaluateOptions(steps=s.eval_steps, seeds=list(seeds), eval_every=max(1, s.eval_steps // 6),
                             channels=tuple(s.eval_channels), device=s.device)


def evaluate_k(kdir: Path, train: Path, test: Path, arms: dict, s: Settings) -> dict:
    parts = []
    for seed in s.seeds:
        cache = kdir / "eval" / f"seed{seed}.json"
        if not cache.is_file():
            res = drain(E.evaluate(TileFolder(train, 64), TileFolder(test, 64), arms, eval_options(s, [seed])),
                        f"{kdir.name} evaluate seed {seed}")
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(res))
        parts.append(json.loads(cache.read_text()))
    results = E.combine(parts)
    E.write_results(results, kdir)
    return results


def frechet(kdir: Path, train: Path, test: Path, arms: dict, s: Settings) -> dict:
    cache = kdir / "frechet.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from napari_histodiff.core.base.devices import pick_device

    device = pick_device(s.device)
    tr, te = TileFolder(train, 64), TileFolder(test, 64)
    tx, ty = E._load(tr, "training", 64)
    sx, sy = E._load(te, "test", 64)
    ty, sy = np.array([CLASSES.index(c) for c in ty]), np.array([CLASSES.index(c) for c in sy])
    model = drain(E.train_downstream(tx, ty, tx, ty, len(CLASSES), 0, eval_options(s, [0]), device, "features"),
                  "features")
    real = E.embed(model, sx, device)
    rng = np.random.default_rng(0)
    out = {"features": f"pooled {s.eval_channels[-1]}-d features of a real-only ResNet trained on {kdir.name}",
           "classes": {}}
    for k, c in enumerate(CLASSES):
        rc = real[sy == k]
        row = {"real_test_tiles": int(len(rc))}
        for arm, tiles in arms.items():
            mine = [i for i in range(len(tiles)) if tiles.class_names[tiles.label(i)] == c]
            if len(mine) >= 2:
                x = np.stack([tiles[i] for i in mine])
                row[arm] = {"n": len(x), "fd": E.frechet_distance(rc, E.embed(model, x, device))}
        # reference: real vs real at the synthetic sample size (the small-sample bias of the estimate)
        n = max((v["n"] for v in row.values() if isinstance(v, dict)), default=20)
        idx = rng.permutation(len(rc))
        if len(rc) >= 2 * n:
            row["real_vs_real"] = {"n": n, "fd": E.frechet_distance(rc[idx[:n]], rc[idx[n:]])}
        out["classes"][c] = row
    cache.write_text(json.dumps(out, indent=1))
    return out


def classifier_checks(kdir: Path, bundle_dir: Path, train: Path, test: Path, pool_dir: Path, records,
                      s: Settings) -> dict:
    """The two classifiers of the fine-tuned bundle on the test tiles (issue 17): the guidance classifier on
    noised latents at t = 0, 250, 500, 750; the selection classifier's accuracy; and the guided pool's
    class agreement with an independent classifier (a real-only downstream ResNet, seed 0)."""
    cache = kdir / "classifiers.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.generate.selection import score
    from napari_histodiff.core.train.classifiers import latent_accuracy

    bundle = load_bundle(bundle_dir, device=s.device)
    te = TileFolder(test, 64)
    x, y = E._load(te, "test", 64)
    y = np.array([CLASSES.index(c) for c in y])
    out = {"test_tiles": int(len(x)), "guidance_acc": latent_accuracy(bundle, te)}
    probs, _ = score(bundle, x)
    out["selection_acc"] = float((probs.argmax(1) == y).mean())
    tr = TileFolder(train, 64)
    tx, ty = E._load(tr, "training", 64)
    ty = np.array([CLASSES.index(c) for c in ty])
    model = drain(E.train_downstream(tx, ty, tx, ty, len(CLASSES), 0, eval_options(s, [0]), bundle.device,
                                     "independent"), "independent classifier")
    pred = E._predict(model, x, bundle.device).argmax(-1).numpy()
    out["independent_test_acc"] = float((pred == y).mean())
    # how much class the autoencoder keeps: both image classifiers on its reconstructions of the test tiles
    from napari_histodiff.core.train.autoencoder import reconstruct

    rx = reconstruct(bundle.vae, x, bundle.device)
    out["selection_acc_reconstructed"] = float((score(bundle, rx)[0].argmax(1) == y).mean())
    out["independent_acc_reconstructed"] = float((E._predict(model, rx, bundle.device).argmax(-1).numpy() == y).mean())
    pool = as_tiles(pool_dir, records, "pool")
    ppred = E._predict(model, pool.tiles, bundle.device).argmax(-1).numpy()
    target = np.array([pool.label(i) for i in range(len(pool))])
    kept = np.array([bool(r.kept) for r in records])
    out["guided_agreement"] = float((ppred == target).mean())
    out["guided_agreement_per_class"] = {c: float((ppred[target == k] == k).mean()) for k, c in enumerate(CLASSES)
                                         if (target == k).any()}
    out["kept_agreement"] = float((ppred[kept] == target[kept]).mean()) if kept.any() else None
    cache.write_text(json.dumps(out, indent=1))
    return out


def classifier_lines(c: dict) -> list[str]:
    g = c["guidance_acc"]
    per = ", ".join(f"{k} {100 * v:.0f}%" for k, v in c["guided_agreement_per_class"].items())
    kept = "" if c["kept_agreement"] is None else f"; kept tiles {100 * c['kept_agreement']:.1f}%"
    return [f"Classifiers on the {c['test_tiles']} test tiles: guidance classifier on noised latents " +
            ", ".join(f"t={k[5:]} {100 * v:.1f}%" for k, v in g.items()) +
            f"; selection classifier {100 * c['selection_acc']:.1f}%; an independent real-only classifier "
            f"{100 * c['independent_test_acc']:.1f}%, which assigns {100 * c['guided_agreement']:.1f}% of the guided "
            f"pool to its target class ({per}){kept}."
            + ("" if "selection_acc_reconstructed" not in c else
               f" On the autoencoder's reconstructions of the test tiles: selection classifier "
               f"{100 * c['selection_acc_reconstructed']:.1f}%, independent classifier "
               f"{100 * c['independent_acc_reconstructed']:.1f}%."), ""]


# ---- report -------------------------------------------------------------------------------------

def grids(kdir: Path, train: Path, pool_dir: Path, records) -> None:
    from napari_histodiff.core.formats.images import contact_sheet, write_png

    tr = TileFolder(train, 64)
    for k, c in enumerate(CLASSES):
        real = np.stack([tr[i] for i in range(len(tr)) if tr.label(i) == k][:16])
        syn_recs = pick([r for r in records if r.target_class == c], 16, selected=True)
        if not syn_recs:
            continue
        syn = as_tiles(pool_dir, syn_recs, c).tiles
        a, b = contact_sheet(real, ncols=4), contact_sheet(syn, ncols=4)
        h = max(a.shape[0], b.shape[0])
        pad = lambda im: np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=255)  # noqa: E731
        gap = np.full((h, 12, 3), 255, np.uint8)
        write_png(kdir / f"grid_{c}.png", np.concatenate([pad(a), gap, pad(b)], 1))


def variation_grid(kdir: Path, strengths, recs: dict) -> None:
    """Per class (rows of 8): labeled tiles, then their variations at each strength."""
    import tifffile

    from napari_histodiff.core.formats.images import write_png

    if not strengths:
        return
    rows = []
    for c in CLASSES:
        per = {st: [r for r in recs[st] if r.target_class == c][:8] for st in strengths}
        first = per[strengths[0]]
        if not first:
            continue
        rows.append(np.concatenate([read_rgb(r.source_tile) for r in first], 1))
        for st in strengths:
            folder = kdir / "samples" / f"variations-{st:g}"
            rows.append(np.concatenate([tifffile.imread(folder / r.file) for r in per[st][: len(first)]], 1))
        rows.append(np.full((14, rows[-1].shape[1], 3), 255, np.uint8))
    write_png(kdir / "variations.png", np.concatenate(rows[:-1], 0))


def tile_psnr(vae, x: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """The autoencoder's reconstructions of ``x`` and their PSNR (dB) per tile."""
    from napari_histodiff.core.train.autoencoder import reconstruct

    y = reconstruct(vae, x, device)
    return y, 10 * np.log10(255.0**2 / ((y.astype(np.float64) - x) ** 2).mean(axis=(1, 2, 3)))


def reconstruction(bundle_dir: Path, train: Path, test: Path, kdir: Path, s: Settings) -> dict:
    """The bundle's autoencoder on the labeled tiles and on every 25th test tile: PSNR, and a
    picture of two labeled tiles per class."""
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.formats.images import write_png

    bundle = load_bundle(bundle_dir, device=s.device)
    out = {"bundle": bundle_dir.name}
    for name, folder, every in (("labeled", train, 1), ("test", test, 25)):
        tiles = TileFolder(folder, 64)
        x = np.stack([tiles[i] for i in range(0, len(tiles), every)])
        y, psnr = tile_psnr(bundle.vae, x, bundle.device)
        key = "" if name == "labeled" else "test_"
        out.update({f"{key}tiles": len(x), f"{key}psnr_db": float(psnr.mean()),
                    f"{key}mean_abs_error": float(np.abs(y.astype(np.float64) - x).mean())})
        if name == "labeled":
            idx = [i for k in range(len(CLASSES)) for i in [j for j in range(len(tiles)) if tiles.label(j) == k][:2]]
            top, bottom = np.concatenate(x[idx], 1), np.concatenate(y[idx], 1)
            gap = np.full((4, top.shape[1], 3), 255, np.uint8)
            write_png(kdir / "reconstruction.png", np.concatenate([top, gap, bottom]))
    return out


def table(results: dict, frechet_: dict | None = None) -> list[str]:
    lines = ["| arm | synthetic tiles | accuracy (mean +- sd) | macro-F1 | difference to real, points [95% CI] |",
             "| --- | --- | --- | --- | --- |"]
    diffs = results.get("paired_differences") or {
        a: results["paired_difference"] for a in results["arms"] if a != "real"}
    counts = results["counts"].get("augment", {})
    for arm, r in results["arms"].items():
        m, sd = r["mean"], r["sd"]
        n = sum(counts.get(arm, {}).values()) if arm != "real" and isinstance(counts.get(arm), dict) else 0
        d = diffs.get(arm)
        dtxt = f"{d['mean']:+.1f} [{d['ci95_low']:+.1f}, {d['ci95_high']:+.1f}]" if d else ""
        lines.append(f"| {arm} | {n} | {100 * m['accuracy']:.1f} +- {100 * sd['accuracy']:.1f} | "
                     f"{100 * m['macro_f1']:.1f} +- {100 * sd['macro_f1']:.1f} | {dtxt} |")
    return lines


def merge(kdirs, arms, out: Path) -> dict:
    """Combine the per-seed evaluations of several runs (different seeds) for the arms they share."""
    parts = []
    for kdir in kdirs:
        for f in sorted((Path(kdir) / "eval").glob("seed*.json")):
            res = json.loads(f.read_text())
            res["arms"] = {a: res["arms"][a] for a in arms}
            parts.append(res)
    results = E.combine(parts)
    E.write_results(results, out)
    (out / "summary.md").write_text("\n".join(table(results)) + "\n")
    print("\n".join(table(results)))
    return results


def plan(s: Settings, profile: str, costs: dict | None = None) -> list[str]:
    """What a run with settings ``s`` trains, samples and evaluates; with the GPU profile, the time estimate."""
    ks = s.ks
    # bundles: finetuned (+ clean-latent: classifiers only); arms: real + main + variations (+ ablations, amounts)
    bundles, pool_tiles, arms = _shape(s)
    lines = [f"profile {profile}; device {s.device}; precision {s.precision}",
             f"pre-training (small preset, 64 px): autoencoder {s.ae_steps} steps x batch {s.ae_batch} "
             f"({s.ae_steps * s.ae_batch:,} tiles); diffusion {s.ldm_steps} steps x batch {s.ldm_batch or 16} "
             f"({s.ldm_steps * (s.ldm_batch or 16):,} tiles)",
             f"fine-tuning per k in {ks}: UNet {s.unet_steps}, latent classifier {s.clf_steps}, selection "
             f"classifier {s.sel_steps} steps x {s.sel_folds} folds x batch {s.ft_batch or 16}; bundles {bundles}",
             f"sampling: DDIM {s.sample_steps} steps; tiles per k {pool_tiles}",
             f"evaluation: {s.eval_steps} steps x {len(s.seeds)} seeds x arms {arms}"]
    if profile != "gpu":
        return lines
    c = costs or GPU_COST
    e = estimate(s, c)
    pre, ft, samp, ev, total = e["pretrain"], e["finetune"], e["sample"], e["evaluate"], e["total"]
    lines += [
        ("estimate on this GPU (per-step costs measured in this run's first minute: gpu_sizing.json):" if costs else
         "estimate on one H200 (assumed per-step costs, not measured; GPU_COST in this script):"),
        f"  data {c['data']} s",
        f"  pre-training {s.ae_steps} x {c['ae_step']} + {s.ldm_steps} x {c['ldm_step']} + encoding once "
        f"{c['encode_once']} + opening tiles {c['open_pretrain']} = {pre:.0f} s",
        f"  fine-tuning per bundle {s.unet_steps} x {c['unet_ft_step']} + {s.clf_steps} x {c['clf_step']} + "
        f"{s.sel_steps} x {s.sel_folds} x {c['sel_step']} + {c['per_bundle']} (clean-latent bundle without the "
        f"UNet) = {ft:.0f} s",
        f"  sampling {sum(pool_tiles.values())} tiles x {s.sample_steps} steps x {c['sample_tile_step']} x 1.5 "
        f"(guided) = {samp:.0f} s",
        f"  evaluation {sum(arms.values())} arms x {len(s.seeds)} seeds x {s.eval_steps} x {c['eval_step']} = "
        f"{ev:.0f} s",
        f"  total about {total:.0f} s = {total / 60:.1f} min"]
    return lines


def _shape(s: Settings) -> tuple[dict, dict, dict]:
    """Bundles, sampled tiles and evaluated arms per k of a run with settings ``s``."""
    ks, k0, ablate = s.ks, min(s.ks), s.ablations
    bundles = {k: 1 + (1 if ablate and k == k0 else 0) for k in ks}
    pool_tiles = {k: (s.pool if k == k0 else s.pool_large_k) * len(CLASSES) * (1 + len(s.variations)) +
                  ((s.pool * len(CLASSES) + 2 * s.ablation_pool * len(CLASSES)) if ablate and k == k0 else 0)
                  for k in ks}
    arms = {k: 1 + 1 + 2 * len(s.variations) + ((4 + sum(a != 1.0 for a in s.amounts)) if ablate and k == k0 else 0)
            for k in ks}
    return bundles, pool_tiles, arms


def estimate(s: Settings, c: dict) -> dict:
    """Seconds of each part of a run with settings ``s`` at per-unit costs ``c`` (keys of GPU_COST)."""
    bundles, pool_tiles, arms = _shape(s)
    pre = s.ae_steps * c["ae_step"] + s.ldm_steps * c["ldm_step"] + c["encode_once"] + c["open_pretrain"]
    ft = sum(n * (s.unet_steps * c["unet_ft_step"] + s.clf_steps * c["clf_step"]
                  + s.sel_steps * s.sel_folds * c["sel_step"] + c["per_bundle"]) for n in bundles.values())
    ft -= (s.unet_steps * c["unet_ft_step"]) * sum(n - 1 for n in bundles.values())  # clean-latent: no UNet
    samp = sum(pool_tiles.values()) * s.sample_steps * c["sample_tile_step"] * 1.5
    ev = sum(arms.values()) * len(s.seeds) * s.eval_steps * c["eval_step"]
    total = c["data"] + pre + ft + samp + ev
    training = total - c["data"] - c["encode_once"] - c["open_pretrain"] - sum(bundles.values()) * c["per_bundle"] \
        - samp - ev  # the part that scales with the step counts of SCALED
    return {"pretrain": pre, "finetune": ft, "sample": samp, "evaluate": ev, "total": total,
            "training": training, "fixed": total - training}


SCALED = ("ae_steps", "ldm_steps", "unet_steps", "clf_steps", "sel_steps")  # what the GPU profile sizes
MARGIN = 0.15  # of the budget, left free


def size_to_budget(s: Settings, costs: dict, budget_s: float, spent_s: float) -> tuple[Settings, dict]:
    """``s`` with its training step counts (:data:`SCALED`) scaled by one factor so that the run is estimated
    to end within ``(1 - MARGIN) x budget_s`` less the ``spent_s`` already spent (the measurement); sampling
    and evaluation keep their sizes. Returns the new settings and the arithmetic."""
    e = estimate(s, costs)
    allowed = (1 - MARGIN) * budget_s - spent_s
    factor = (allowed - e["fixed"]) / e["training"] if e["training"] > 0 else 1.0
    factor = float(min(3.0, max(0.02, factor)))
    new = replace(s, **{k: max(1, int(getattr(s, k) * factor)) for k in SCALED})
    after = estimate(new, costs)
    return new, {"budget_s": budget_s, "margin": MARGIN, "measurement_s": round(spent_s, 1),
                 "allowed_s": round(allowed, 1), "factor": round(factor, 4),
                 "estimate_before_s": round(e["total"], 1), "estimate_after_s": round(after["total"], 1),
                 "fits": bool(after["total"] <= allowed), "steps": {k: getattr(new, k) for k in SCALED}}


def _timed_steps(gen, stage: str, warmup: int, device) -> tuple[float, float]:
    """(seconds from the start to the first ``stage`` event, mean seconds per step after ``warmup`` steps)
    of a training generator, the device synchronised at each event."""
    import torch

    def sync():
        if str(device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.synchronize()

    t0, stamps, first = time.perf_counter(), [], None
    try:
        for ev in gen:
            if ev.stage != stage:
                continue
            sync()
            stamps.append(time.perf_counter())
            first = first if first is not None else stamps[0] - t0
    finally:
        gen.close()
    timed = stamps[warmup:]
    return first, (timed[-1] - timed[0]) / max(1, len(timed) - 1)


def measure_costs(data_root: Path, work: Path, s: Settings, warmup: int = 3, steps: int = 10) -> dict:
    """Per-unit costs (keys of GPU_COST) measured on this device in short bursts of the run's own loops:
    the autoencoder at ``ae_batch``, the diffusion UNet at ``ldm_batch`` (with the latents of every
    pre-training tile encoded once) and at ``ft_batch``, and the downstream classifier at its batch. The
    classifier, selection and sampling costs are the assumed ones scaled by the measured / assumed UNet step;
    ``measured`` names which are which."""
    from napari_histodiff.core.models.presets import small
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder
    from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion

    shutil.rmtree(work, ignore_errors=True)
    c = dict(GPU_COST)
    t = time.perf_counter()
    tiles = open_tiles([data_root / "pretrain"], 64, large_images=True, stride=s.pretrain_stride,
                       scale=s.pretrain_scale)
    c["open_pretrain"] = time.perf_counter() - t
    n = warmup + steps
    common = dict(device=s.device, precision=s.precision, checkpoint_every=10**9, seed=0)
    _, c["ae_step"] = _timed_steps(train_autoencoder(tiles, work / "b", small(), AutoencoderOptions(
        steps=n, batch_size=s.ae_batch, learning_rate=s.ae_lr, log_every=10**9, **common)),
        "autoencoder", warmup, s.device)
    first, c["ldm_step"] = _timed_steps(train_diffusion(tiles, work / "b", small(), DiffusionOptions(
        steps=n, batch_size=s.ldm_batch, latent_cache="on", log_every=10**9, **common)),
        "diffusion", warmup, s.device)
    c["encode_once"] = first
    _, c["unet_ft_step"] = _timed_steps(train_diffusion(tiles, work / "b", small(), DiffusionOptions(
        steps=n, batch_size=s.ft_batch or 16, latent_cache="off", log_every=10**9, stage="ft_probe", **common)),
        "ft_probe", warmup, s.device)
    from napari_histodiff.core.base.devices import pick_device

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (256, 64, 64, 3), dtype=np.uint8)
    y = rng.integers(0, len(CLASSES), 256)
    opts = replace(eval_options(s, [0]), steps=n, eval_every=10**9)
    _, c["eval_step"] = _timed_steps(E.train_downstream(x, y, x[:32], y[:32], len(CLASSES), 0, opts,
                                                        pick_device(s.device), "eval_probe"),
                                     "eval_probe", warmup, s.device)
    ratio = c["unet_ft_step"] / GPU_COST["unet_ft_step"]
    for key in ("clf_step", "sel_step", "sample_tile_step"):
        c[key] = GPU_COST[key] * ratio
    shutil.rmtree(work, ignore_errors=True)
    c["measured"] = ["open_pretrain", "ae_step", "ldm_step", "encode_once", "unet_ft_step", "eval_step"]
    c["scaled_by_unet_step"] = {"keys": ["clf_step", "sel_step", "sample_tile_step"], "ratio": round(ratio, 3)}
    return c


def gpu_sizing(data_root: Path, out: Path, s: Settings, budget_s: float) -> Settings:
    """The GPU profile's settings sized on this device (measured once; OUT/gpu_sizing.json on a re-run)."""
    path = out / "gpu_sizing.json"
    if path.is_file():
        rec = json.loads(path.read_text())
        _refuse_unfit(rec["sizing"], path)
        return replace(s, **rec["sizing"]["steps"])
    from napari_histodiff.core.base.devices import pick_device
    from napari_histodiff.core.base.precision import resolve_precision

    t0 = time.perf_counter()
    costs = measure_costs(data_root, out / "calibration", s)
    spent = time.perf_counter() - t0
    sized, arithmetic = size_to_budget(s, {k: v for k, v in costs.items() if k in GPU_COST}, budget_s, spent)
    device = pick_device(s.device)
    rec = {"device": str(device), "precision": resolve_precision(s.precision, device, "train"),
           "costs_s": costs, "sizing": arithmetic, "plan": plan(sized, "gpu", costs)}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1))
    log(f"GPU profile sized on {device}: factor {arithmetic['factor']}, estimate {arithmetic['estimate_after_s']:.0f} s "
        f"of {arithmetic['allowed_s']:.0f} s allowed; steps {arithmetic['steps']}")
    _refuse_unfit(arithmetic, path)
    return sized


def _refuse_unfit(arithmetic: dict, path: Path) -> None:
    """Stop before training when even the smallest step counts cannot end within the budget."""
    if not arithmetic["fits"]:
        sys.exit(f"error: on this device the GPU profile cannot end within the budget even with its training "
                 f"steps scaled by {arithmetic['factor']} (estimate {arithmetic['estimate_after_s']:.0f} s, "
                 f"{arithmetic['allowed_s']:.0f} s allowed; {path}); raise --budget-min or use fewer --set ks/seeds")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("experiment"))
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--quick", action="store_true", help="a few minutes: tiny step counts, k=20 only, 2 seeds")
    ap.add_argument("--profile", choices=sorted(PROFILES), default=None,
                    help="cpu (default), quick (as --quick) or gpu (one GPU, sized to --budget-min)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (and the GPU profile's time estimate)")
    ap.add_argument("--pretrained", type=Path, default=None, help="reuse this pre-trained bundle (skip stage 2)")
    ap.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                    help="change settings, e.g. --set guidance=5 ks=[20] ablations=false (JSON values)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget-min", type=float, default=9.0, help="GPU profile: minutes the whole run may take")
    ap.add_argument("--docs", type=Path, default=None, help="copy results.json/png, grids and summary here")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="KDIR",
                    help="only combine the seeds of these k folders of earlier runs (with --arms) into --out")
    ap.add_argument("--arms", nargs="+", default=["real", "selected-100%"], help="arms to merge")
    args = ap.parse_args(argv)
    if args.merge:
        merge(args.merge, args.arms, args.out)
        return
    profile = args.profile or ("quick" if args.quick else "cpu")
    s = Settings(**PROFILES[profile], device=args.device)
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in asdict(s):
            sys.exit(f"error: unknown setting {name!r}; known: {', '.join(asdict(s))}")
        try:
            setattr(s, name, json.loads(value))
        except json.JSONDecodeError:
            setattr(s, name, value)
    if args.dry_run:
        print("plan (dry run, nothing computed):")
        print("\n".join("  " + line for line in plan(s, profile)))
        if profile == "gpu":
            _, a = size_to_budget(s, GPU_COST, 60 * args.budget_min, 60.0)
            print(f"  a real run first times its own loops on the GPU (about a minute), then scales {', '.join(SCALED)}"
                  f" to end within {100 * (1 - MARGIN):.0f}% of {args.budget_min:g} min; with the assumed costs and a "
                  f"60 s measurement: factor {a['factor']}, estimate {a['estimate_after_s']:.0f} s of {a['allowed_s']:.0f}"
                  f" s allowed, steps {a['steps']}")
        return
    if not (args.data / "crc5").is_dir() or not (args.data / "pretrain").is_dir():
        sys.exit(f"error: {args.data} lacks crc5/ and pretrain/; pass --data PATH/TO/shared/data")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if profile == "gpu":  # time its own loops on this device first, and size the step counts to the budget
        s = gpu_sizing(args.data, out, s, 60 * args.budget_min)
    settings_file = out / "settings.json"
    old = json.loads(settings_file.read_text()) if settings_file.is_file() else None
    if old is not None and {k: v for k, v in asdict(s).items() if k in old} != old:
        sys.exit(f"error: {out} holds a run with other settings ({settings_file}); choose another --out")
    settings_file.write_text(json.dumps(asdict(s), indent=1))
    timer = Timer(out / "timing.json")
    t0 = time.perf_counter()

    log("stage 1: data")
    timer.run("data", lambda: make_data(args.data, out / "data", s))
    pre = args.pretrained or out / "pretrained"
    log("stage 2: pre-training")
    pre_info = {} if args.pretrained else timer.run("pretrain", lambda: pretrain(args.data, pre, s))
    summary = {"settings": asdict(s), "pretrain": pre_info, "k": {}}
    md = []
    for k in s.ks:
        kdir, train, test = out / f"k{k}", out / "data" / f"k{k}", out / "data" / "test"
        small_k = k == min(s.ks) and s.ablations
        log(f"stage 3: fine-tuning, k={k}")
        made = timer.run(f"k{k} finetune", lambda: finetune_all(pre, kdir, train, s, ablations=small_k))
        log(f"stage 4: sampling, k={k}")
        pool = s.pool if k == min(s.ks) else s.pool_large_k
        pools = {"guided": (made["finetuned"], True)}
        if small_k:
            pools.update({"unguided": (made["finetuned"], False), "no-unet-ft": (made["no-unet-ft"], True),
                          "clean-latent": (made["clean-latent"], True)})
        recs = {}
        sizes = {"guided": pool, "unguided": pool * len(CLASSES)}
        for name, (bdir, guided) in pools.items():
            recs[name] = timer.run(f"k{k} sample", lambda: sample_pool(
                bdir, kdir / "samples" / name, sizes.get(name, s.ablation_pool), guided, s, seed=k))
        for st in s.variations:  # variations of the labeled tiles (each keeps its source's class)
            recs[f"variations-{st:g}"] = timer.run(f"k{k} sample", lambda: sample_pool(
                made["finetuned"], kdir / "samples" / f"variations-{st:g}", pool, True, s, seed=k, sources=train,
                strength=st))
        n100 = k  # synthetic tiles per class at 100% of the real set
        main_name = ("balanced" if s.balanced else "selected") + f"-{s.main_amount:.0%}"
        arms = {main_name: export_main(kdir / "samples" / "guided", recs["guided"], round(s.main_amount * k),
                                         kdir / "export", s, made["finetuned"])}
        for st in s.variations:  # selected, and one variation per labeled tile without selection
            vdir, vrecs = kdir / "samples" / f"variations-{st:g}", recs[f"variations-{st:g}"]
            arms[f"variations-{st:g}-100%"] = as_tiles(vdir, pick(vrecs, n100, True), "")
            arms[f"variations-{st:g}-all-100%"] = as_tiles(vdir, pick(vrecs, n100, False), "")
        if small_k:
            arms["no-selection-100%"] = as_tiles(kdir / "samples" / "guided", pick(recs["guided"], n100, False), "")
            arms["unguided-labeled-100%"] = as_tiles(kdir / "samples" / "unguided",
                                                     pick(recs["unguided"], n100, True), "")
            for name in ("no-unet-ft", "clean-latent"):
                arms[f"{name}-100%"] = as_tiles(kdir / "samples" / name, pick(recs[name], n100, True), "")
            for a in s.amounts:
                if a != 1.0:
                    arms[f"selected-{a:.0%}"] = as_tiles(kdir / "samples" / "guided",
                                                         pick(recs["guided"], round(a * k), True), "")
        arms = {name: tiles for name, tiles in arms.items() if tiles is not None and len(tiles)}
        log(f"stage 5: evaluation, k={k}, arms {list(arms)}")
        results = timer.run(f"k{k} evaluate", lambda: evaluate_k(kdir, train, test, arms, s))
        fr = timer.run(f"k{k} frechet", lambda: frechet(kdir, train, test, arms, s))
        grids(kdir, train, kdir / "samples" / "guided", recs["guided"])
        variation_grid(kdir, s.variations, {st: recs[f"variations-{st:g}"] for st in s.variations})
        recon_of = made["finetuned"] if s.decoder_steps else pre  # the decoder that drew the samples
        recon = reconstruction(recon_of, train, test, kdir, s) if k == min(s.ks) else None
        kept = {c: sum(1 for r in recs["guided"] if r.kept and r.target_class == c) for c in CLASSES}
        checks = timer.run(f"k{k} classifiers", lambda: classifier_checks(
            kdir, made["finetuned"], train, test, kdir / "samples" / "guided", recs["guided"], s))
        summary["k"][k] = {"results": f"k{k}/results.json", "kept_of_pool": {"pool": pool, "kept": kept},
                           "classifiers": checks, "frechet": fr, **({"reconstruction": recon} if recon else {})}
        md += [f"## k = {k} labeled tiles per class", "", *table(results), "",
               f"Guided pool {pool} per class; kept by selection (confidence >= {s.threshold} and nearest "
               "centroid): " + ", ".join(f"{c} {n}" for c, n in kept.items()), "", *classifier_lines(checks)]
    done_before = out / "summary.json"
    earlier = json.loads(done_before.read_text()).get("wall_s", 0.0) if done_before.is_file() else 0.0
    summary["wall_s"] = round(time.perf_counter() - t0 + earlier, 1)  # summed over resumed invocations
    summary["timing_s"] = timer.times
    summary["hardware"] = f"{platform.processor() or platform.machine()}, {_cores()} cores, device {s.device}"
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text("\n".join(md))
    print("\n".join(md))
    log(f"done; stage times (s): {timer.times}")
    if args.docs:
        copy_to_docs(out, args.docs, s)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def copy_to_docs(out: Path, docs: Path, s: Settings) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "summary.md", "timing.json", "settings.json"):
        shutil.copy2(out / name, docs / name)
    for k in s.ks:
        extra = [out / f"k{k}" / n for n in ("variations.png", "reconstruction.png") if (out / f"k{k}" / n).is_file()]
        for f in [*(out / f"k{k}").glob("grid_*.png"), *extra, out / f"k{k}" / "results.json",
                  out / f"k{k}" / "results.png", out / f"k{k}" / "frechet.json",
                  *[out / f"k{k}" / "classifiers.json"] * (out / f"k{k}" / "classifiers.json").is_file()]:
            (docs / f"k{k}").mkdir(exist_ok=True)
            shutil.copy2(f, docs / f"k{k}" / f.name)


if __name__ == "__main__":
    main()

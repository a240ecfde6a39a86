"""Where does an experiment's generator lose the class? Checks on an augmentation_experiment run
(docs/results.md, "Third improvement"), and the class retention of the first stage (issue 29):

    python benchmarks/first_stage_check.py --run experiment [--k 20] [--decoder-steps 300]
    OMP_NUM_THREADS=1 python benchmarks/first_stage_check.py --record docs/results/first-stage/first_stage.json \
        [--work first-stage-work] [--ae-steps 600 --ae-batch 4 --ae-lr 2e-4] [--set latent_channels=4 ...]

``--record``: pre-train the `small` preset's autoencoder on pretrain/ (as the experiment does, its step
count, batch and learning rate by default; preset fields changed with --set), train one fixed image
classifier (the downstream ResNet of core.evaluate) on crc5 tiles at 64 px, and score it on held-out crc5
tiles and on the autoencoder's reconstructions of them (core/train/retention.py): acc_original,
acc_reconstructed, retention, psnr, ssim, autoencoder_steps, cpu_minutes (the training process's CPU time).
The classifier and each autoencoder are kept under --work, so several configurations share one classifier.

1. the pre-trained autoencoder's reconstruction PSNR on the labelled tiles and on every 25th test
   tile, before and after fine-tuning its decoder on the labelled tiles (a copy; the run is not
   changed);
2. the fine-tuned guidance classifier's accuracy on noised latents of every 5th test tile at
   t = 0, 250, 500, 750, against linear models on simple features of the same tiles (the latents'
   per-channel mean and spread; the tiles' colour mean and spread), fitted on the labelled tiles.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from augmentation_experiment import tile_psnr  # noqa: E402
from napari_histodiff.core.data.tiles import TileFolder  # noqa: E402


def stack(tiles, every=1):
    idx = range(0, len(tiles), every)
    return np.stack([tiles[i] for i in idx]), np.array([tiles.label(i) for i in idx])


def psnr(vae, x) -> float:
    import torch

    return float(tile_psnr(vae, x, torch.device("cpu"))[1].mean())


def decoder_check(pre: Path, labeled, x_lab, x_test, steps: int) -> None:
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.models.presets import small
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder

    vae = load_bundle(pre, device="cpu").vae
    print(f"autoencoder PSNR, labelled {psnr(vae, x_lab):.2f} dB, test {psnr(vae, x_test):.2f} dB")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "bundle"
        work.mkdir()
        for part in ("vae", "histodiff.json"):
            (shutil.copytree if (pre / part).is_dir() else shutil.copy2)(pre / part, work / part)
        run_to_end(train_autoencoder(labeled, work, small(), AutoencoderOptions(
            steps=steps, learning_rate=1e-4, decoder_only=True, device="cpu", stage="finetune_decoder",
            checkpoint_every=10**9)), lambda ev: None)
        vae = load_bundle(work, device="cpu", require_unet=False).vae
        print(f"after {steps} decoder steps on the labelled tiles, labelled {psnr(vae, x_lab):.2f} dB, "
              f"test {psnr(vae, x_test):.2f} dB")


def linear_probe(f_train, y_train, f_test, y_test) -> float:
    import torch

    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    a = torch.tensor((f_train - mu) / sd, dtype=torch.float32)
    b = torch.tensor((f_test - mu) / sd, dtype=torch.float32)
    torch.manual_seed(0)
    model = torch.nn.Linear(a.shape[1], int(y_train.max()) + 1)
    opt = torch.optim.AdamW(model.parameters(), 1e-2, weight_decay=1e-2)
    y = torch.from_numpy(y_train)
    for _ in range(500):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(a), y).backward()
        opt.step()
    with torch.no_grad():
        return float((model(b).argmax(1).numpy() == y_test).mean())


def guidance_check(bundle_dir: Path, x_lab, y_lab, x_test, y_test) -> None:
    import torch

    from napari_histodiff.core.formats.bundle import load_bundle

    b = load_bundle(bundle_dir, device="cpu")
    clf = b.latent_classifier.eval()

    def latents(x):
        with torch.no_grad():
            t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
            return b.vae.encode(t).latent_dist.mean * b.scale_factor

    z = latents(x_test)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    accs = []
    with torch.no_grad():
        for t in (0, 250, 500, 750):
            tt = torch.full((len(z),), t)
            pred = clf(b.scheduler.add_noise(z, noise, tt), tt).argmax(-1).numpy()
            accs.append(f"t={t} {100 * (pred == y_test).mean():.1f}%")
    n = sum(p.numel() for p in clf.parameters())
    print(f"guidance classifier ({n / 1e6:.2f} M parameters) on {len(z)} test tiles: " + ", ".join(accs))

    def zstats(x):
        z = latents(x)
        return torch.cat([z.mean((2, 3)), z.std((2, 3))], 1).numpy()

    def colour(x):
        t = torch.from_numpy(x).float() / 255
        return torch.cat([t.mean((1, 2)), t.std((1, 2))], 1).numpy()

    for name, f in (("latent channel mean and spread", zstats), ("tile colour mean and spread", colour)):
        acc = linear_probe(f(x_lab), y_lab, f(x_test), y_test)
        print(f"linear model on {name}: {100 * acc:.1f}%")
    print(f"chance: {100 / len(b.class_names):.1f}%")


CLASSES = ["AC", "H", "S", "T", "V"]
SPLIT = {"classifier": 150, "validation": 30, "test": 100}  # crc5 tiles per class in each part


def _centre_crop(image: np.ndarray, size: int = 64) -> np.ndarray:
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


def crc5_split(data: Path, tiles: str = "fitted") -> dict:
    """uint8 tiles and labels of the seeded classifier / validation / test parts of crc5: 64 px, fitted whole as
    the experiment's (``fitted``) or cut from the centre at the tiles' own scale (``crop``)."""
    from napari_histodiff.core.data.tiles import _fit_square, read_rgb

    fit = _fit_square if tiles == "fitted" else _centre_crop

    rng = np.random.default_rng(29)
    out = {part: ([], []) for part in SPLIT}
    for k, c in enumerate(CLASSES):
        files = sorted((data / "crc5" / c).glob("*.jpg"))
        order = iter(rng.permutation(len(files)))
        for part, n in SPLIT.items():
            for _ in range(n):
                out[part][0].append(fit(read_rgb(files[next(order)]), 64))
                out[part][1].append(k)
        out.setdefault("rest", ([], []))
        for i in order:  # in no part: unlabelled in-domain pre-training tiles (--pretrain-on crc5-rest)
            out["rest"][0].append(fit(read_rgb(files[i]), 64))
            out["rest"][1].append(k)
    return {part: (np.stack(x), np.array(y)) for part, (x, y) in out.items()}


def fixed_classifier(split: dict, work: Path, steps: int, tiles: str = "fitted"):
    """The downstream ResNet (seed 0) trained on the classifier part, chosen on the validation part; cached."""
    import torch

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.evaluate import evaluate as E
    from napari_histodiff.core.models.downstream import build

    opts = E.EvaluateOptions(steps=steps, eval_every=max(1, steps // 10), channels=[32, 64, 128], device="cpu")
    path = work / (f"classifier-{steps}.pt" if tiles == "fitted" else f"classifier-{steps}-{tiles}.pt")
    if path.is_file():
        model = build(opts.arch, len(CLASSES), 64, opts.channels)
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        model = run_to_end(E.train_downstream(*split["classifier"], *split["validation"], len(CLASSES), 0, opts,
                                              torch.device("cpu"), "classifier"))
        work.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return lambda x: E._predict(model, x, "cpu").argmax(-1).numpy()


def classifier_info(args, clf_cpu: float) -> dict:
    return {"model": "downstream ResNet (32, 64, 128), seed 0", "steps": args.classifier_steps,
            "tiles_per_class": SPLIT, "cpu_minutes": round(clf_cpu / 60, 1)}


def emit(args, out: dict) -> None:
    """Print the figures, and write them to --record when given."""
    import json

    print(json.dumps(out, indent=1))
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(out, indent=1) + "\n")


def record(args) -> None:
    import json
    import time

    import torch

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.opening import open_tiles
    from napari_histodiff.core.data.tiles import ArrayTiles
    from napari_histodiff.core.train.retention import class_retention
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.models.presets import Preset, small
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, reconstruct, train_autoencoder
    from napari_histodiff.core.train.loop import prepare_out_dir

    preset = small()
    changed = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if not hasattr(preset.autoencoder, name):
            sys.exit(f"error: the autoencoder config has no field {name!r}")
        setattr(preset.autoencoder, name, json.loads(value))
        changed[name] = json.loads(value)
    preset = Preset.from_dict(preset.to_dict())
    split = crc5_split(args.data, args.tiles)
    t0 = time.process_time()
    predict = fixed_classifier(split, args.work, args.classifier_steps, args.tiles)
    clf_cpu = time.process_time() - t0
    if args.autoencoder:
        return measure_bundle(args, split, predict, clf_cpu)
    tag = "-".join([f"ae{args.ae_steps}x{args.ae_batch}"] + [f"{k}{v}" for k, v in changed.items()]
                   + ([] if args.pretrain_on == "pretrain" else [args.pretrain_on])
                   + ([f"features{args.features}"] if args.features else [])
                   + ([f"lr{args.ae_lr:g}"] if args.ae_lr != 2e-4 else []))
    bundle = args.work / tag
    if args.pretrain_on == "crc5-rest":  # crc5 tiles in no part of the split, labels unused
        tiles = ArrayTiles(split["rest"][0], description="crc5 tiles outside the classifier/validation/test parts")
    else:
        tiles = open_tiles([args.data / "pretrain"], 64, large_images=True, stride=12, scale=0.1)  # the experiment's
    cpu_file = args.work / f"{tag}-cpu_seconds.json"  # beside the bundle: a bundle holds only its own files
    cpu = json.loads(cpu_file.read_text()) if cpu_file.is_file() else {"cpu_s": 0.0, "wall_s": 0.0}
    features, feature_cpu = None, 0.0
    if args.features:  # the perceptual lever: the audit's encoder, trained on the same pre-training tiles
        from napari_histodiff.core.evaluate.features import save_encoder, train_encoder

        features = args.work / f"features-{args.pretrain_on}-{args.features}"
        if not (features / "config.json").is_file():
            t0 = time.process_time()
            real = np.stack([tiles[i] for i in range(len(tiles))])
            encoder, info = run_to_end(train_encoder(real, args.features, 64))
            save_encoder(encoder, features, {**info, "cpu_seconds": time.process_time() - t0})
        feature_cpu = json.loads((features / "features.json").read_text())["cpu_seconds"]
    t0, w0 = time.process_time(), time.perf_counter()
    prepare_out_dir(bundle, intent="resume")  # marked as ours, so the experiment can resume from it (--pretrained)
    ae = run_to_end(train_autoencoder(tiles, bundle, preset, AutoencoderOptions(
        steps=args.ae_steps, batch_size=args.ae_batch, learning_rate=args.ae_lr, device="cpu",
        checkpoint_every=100, perceptual_weights=str(features) if features else None)))
    cpu = {"cpu_s": cpu["cpu_s"] + time.process_time() - t0, "wall_s": cpu["wall_s"] + time.perf_counter() - w0}
    cpu_file.write_text(json.dumps(cpu))
    vae = load_bundle(bundle, device="cpu", require_unet=False).vae
    x, y = split["test"]
    res = class_retention(predict, lambda t: reconstruct(vae, t, torch.device("cpu")), x, y)
    a = preset.autoencoder
    out = {**{k: res[k] for k in ("acc_original", "acc_reconstructed", "retention", "psnr", "ssim")},
           "autoencoder_steps": ae["steps"], "cpu_minutes": round((cpu["cpu_s"] + feature_cpu) / 60, 1),
           "wall_minutes": round(cpu["wall_s"] / 60, 1), "test_tiles": res["tiles"],
           "autoencoder": {"preset": "small", "batch_size": args.ae_batch, "learning_rate": args.ae_lr,
                           "latent_channels": a.latent_channels, "kl_weight": a.kl_weight,
                           "disc_start": a.disc_start, "disc_weight": a.disc_weight, "changed": changed,
                           "pretraining_tiles": len(tiles), "psnr_heldout_pretraining": ae.get("psnr"),
                           "perceptual": f"audit feature encoder, {args.features} steps on the pre-training tiles "
                                         f"({feature_cpu / 60:.1f} CPU minutes, counted in cpu_minutes)"
                                         if features else None},
           "classifier": classifier_info(args, clf_cpu),
           "data": TILE_NOTE[args.tiles],
           "pretraining_data": tiles.description if args.pretrain_on == "crc5-rest" else
           "pretrain/ (breast_ucsb, monuseg) at scale 0.1, stride 12, as the experiment",
           "threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
    if args.guidance:
        work = args.work / f"{tag}-guidance{'-augment' if args.guidance_augment else ''}"
        out["guidance"] = guidance_after(bundle, split, tiles, args.guidance, work, augment=args.guidance_augment)
    emit(args, out)


def guidance_after(bundle: Path, split: dict, pretraining, steps: int, work: Path, k: int = 20,
                   augment: bool = False) -> dict:
    """Item 3's figure on this first stage: the noisy latent classifier (the preset's, as fine-tuning trains it)
    on k labelled crc5 tiles per class (the first k of each class's classifier part), scored on the 500 test
    tiles' latents noised to t = 0, 250, 500, 750. The latent scale factor is measured on the pre-training
    tiles, as pre-training does."""
    import shutil
    import time

    import torch

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.tiles import ArrayTiles
    from napari_histodiff.core.formats.bundle import load_bundle, read_meta, set_vae_scaling_factor, write_meta
    from napari_histodiff.core.models.presets import Preset
    from napari_histodiff.core.train.classifiers import ClassifierOptions, latent_accuracy, train_latent_classifier
    from napari_histodiff.core.train.diffusion import latent_scale_factor

    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("training"))
    meta = read_meta(work)
    vae = load_bundle(work, device="cpu", require_unet=False).vae
    scale = latent_scale_factor(vae, pretraining, 512, 0, torch.device("cpu"))
    meta.update(class_names=CLASSES, latent_scale_factor=scale)
    write_meta(work, meta)
    if not (work / "scheduler").is_dir():  # an autoencoder-only bundle: the preset's noise schedule
        Preset.from_dict(meta["preset"]).build_scheduler().save_pretrained(work / "scheduler")
    set_vae_scaling_factor(work, scale)
    x, y = split["classifier"]
    pick = np.concatenate([np.flatnonzero(y == c)[:k] for c in range(len(CLASSES))])
    labelled = ArrayTiles(x[pick], y[pick], CLASSES, description=f"crc5, {k} per class")
    t0 = time.process_time()
    run_to_end(train_latent_classifier(labelled, work, Preset.from_dict(meta["preset"]), ClassifierOptions(
        steps=steps, device="cpu", checkpoint_every=10**6, augment=augment)))
    cpu = time.process_time() - t0
    test = ArrayTiles(*split["test"], CLASSES, description="crc5 test part")
    acc = latent_accuracy(load_bundle(work, device="cpu", require_unet=False), test)
    return {**acc, "labelled_per_class": k, "classifier_steps": steps, "augment": augment,
            "latent_scale_factor": scale, "cpu_minutes": round(cpu / 60, 1), "test_tiles": len(test)}


def measure_bundle(args, split, predict, clf_cpu) -> None:
    """Class retention of an existing bundle's autoencoder (e.g. he-starter), trained elsewhere."""
    import json

    import torch

    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.formats.starter import resolve_model
    from napari_histodiff.core.train.autoencoder import reconstruct
    from napari_histodiff.core.train.retention import class_retention

    folder = resolve_model(str(args.autoencoder))
    bundle = load_bundle(folder, device="cpu", require_unet=False)
    meta = json.loads((folder / "histodiff.json").read_text())
    x, y = split["test"]
    res = class_retention(predict, lambda t: reconstruct(bundle.vae, t, torch.device("cpu")), x, y)
    recipe = meta.get("starter", {}).get("recipe", {})
    out = {**{k: res[k] for k in ("acc_original", "acc_reconstructed", "retention", "psnr", "ssim")},
           "autoencoder_steps": recipe.get("autoencoder_steps"),
           "cpu_minutes": recipe.get("cpu_minutes_per_stage", {}).get("autoencoder"),
           "test_tiles": res["tiles"], "autoencoder": {"bundle": str(args.autoencoder),
                                                       "latent_channels": bundle.vae.config.latent_channels,
                                                       "pretraining_data": meta.get("starter", {}).get("data")},
           "classifier": classifier_info(args, clf_cpu),
           "data": TILE_NOTE[args.tiles], "threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
    emit(args, out)


TILE_NOTE = {"fitted": "crc5 at 64 px (tiles fitted whole); test = 100 held-out tiles per class",
             "crop": "crc5 at its own scale (64 px centre crops of the 224 px tiles); test = 100 held-out tiles "
                     "per class"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="an augmentation_experiment --out folder")
    ap.add_argument("--record", type=Path, help="measure class retention and write this JSON file")
    ap.add_argument("--measure", action="store_true", help="as --record, printing only")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=Path("first-stage-work"))
    ap.add_argument("--ae-steps", type=int, default=600)
    ap.add_argument("--ae-batch", type=int, default=4)
    ap.add_argument("--ae-lr", type=float, default=2e-4)
    ap.add_argument("--classifier-steps", type=int, default=600)
    ap.add_argument("--pretrain-on", choices=["pretrain", "crc5-rest"], default="pretrain",
                    help="autoencoder pre-training tiles: the experiment's pretrain/ images, or the crc5 tiles in "
                         "no part of the split (unlabelled, in-domain)")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="autoencoder preset fields, e.g. latent_channels=4 disc_start=300 kl_weight=1e-5")
    ap.add_argument("--tiles", choices=["fitted", "crop"], default="fitted",
                    help="crc5 test tiles: fitted whole into 64 px (as the experiment) or 64 px centre crops at "
                         "their own scale")
    ap.add_argument("--autoencoder", help="measure this bundle's (or built-in model's) autoencoder instead of "
                                          "training one")
    ap.add_argument("--features", type=int, default=0, metavar="STEPS",
                    help="perceptual lever: train the audit's feature encoder for STEPS on the pre-training tiles "
                         "and add its feature distance to the autoencoder's loss (0: off)")
    ap.add_argument("--guidance", type=int, default=0, metavar="STEPS",
                    help="also train the noisy latent classifier on 20 crc5 tiles per class for STEPS on this "
                         "first stage and score it at t = 0, 250, 500, 750 (0: off)")
    ap.add_argument("--guidance-augment", action="store_true",
                    help="with --guidance: flips / rotations, HED stain jitter and blur of the labelled tiles")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--decoder-steps", type=int, default=300, help="0: skip the decoder check")
    args = ap.parse_args(argv)
    if args.record or args.measure:
        return record(args)
    if not args.run:
        ap.error("give --run (checks on an experiment) or --record/--measure (class retention)")
    labeled = TileFolder(args.run / "data" / f"k{args.k}", 64)
    test = TileFolder(args.run / "data" / "test", 64)
    x_lab, y_lab = stack(labeled)
    if args.decoder_steps:
        decoder_check(args.run / "pretrained", labeled, x_lab, stack(test, 25)[0], args.decoder_steps)
    guidance_check(args.run / f"k{args.k}" / "finetuned", x_lab, y_lab, *stack(test, 5))


if __name__ == "__main__":
    main()

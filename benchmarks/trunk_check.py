"""Classifier trunks on a generated problem: from scratch vs the pre-trained UNet's encoder (guidance
classifier) and vs the pre-trained autoencoder's encoder (selection classifier, ``--selection``).

Classes differ in nuclear texture (number and size of hematoxylin blobs) and in stain (H and E
amounts), with per-tile stain jitter as large as the class difference, so colour alone is unreliable.
A tiny bundle is pre-trained briefly on unlabeled generated tiles (or the demo image); each latent classifier trains for the same
steps on `--per-class` tiles; accuracy is measured on 40 unseen tiles per class at t = 0/250/500/750.

    python benchmarks/trunk_check.py --steps 60 --per-class 20
    python benchmarks/trunk_check.py --selection --steps 150 --seeds 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

# (blobs, blob radius px, hematoxylin, eosin) per class
CLASSES = {"dense": (14, 1.2, 0.08, 0.035), "sparse": (3, 3.2, 0.08, 0.035), "pink": (7, 2.0, 0.06, 0.05)}


def textured_tiles(per_class: int, size: int = 32, seed: int = 0):
    """An ArrayTiles of H&E-like tiles made in HED stain space (skimage hed2rgb)."""
    from skimage.color import hed2rgb

    from napari_histodiff.core.data.tiles import ArrayTiles

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    tiles, labels = [], []
    for k, (n, r, h, e) in enumerate(CLASSES.values()):
        for _ in range(per_class):
            hmap = np.zeros((size, size))
            for _ in range(rng.poisson(n) + 1):
                cy, cx = rng.uniform(0, size, 2)
                rr = r * rng.uniform(0.7, 1.3)
                hmap += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rr ** 2))
            hmap = np.clip(hmap, 0, 1.5) * h * rng.uniform(0.75, 1.25)
            emap = e * rng.uniform(0.75, 1.25) * (1 + 0.3 * rng.standard_normal((size, size)))
            hed = np.stack([hmap + 0.005, np.clip(emap, 0, None), np.zeros_like(hmap)], -1)
            tiles.append((hed2rgb(hed) * 255).round().astype(np.uint8))
            labels.append(k)
    return ArrayTiles(np.stack(tiles), np.array(labels), list(CLASSES), description=f"generated textures, seed {seed}")


def pretrain(out: Path, steps: int = 60, on: str = "textures"):
    """A tiny bundle pre-trained on unlabeled tiles: 300 generated textures (seed 7, not the labeled or test
    tiles) or the demo image's tiles."""
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.jobs.demo import demo_tiles
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder
    from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion

    from napari_histodiff.core.data.tiles import ArrayTiles

    tiles = demo_tiles(32) if on == "demo" else ArrayTiles(np.stack([t for t in textured_tiles(100, seed=7)]))
    run_to_end(train_autoencoder(tiles, out, tiny(), AutoencoderOptions(steps=steps, device="cpu")))
    run_to_end(train_diffusion(tiles, out, tiny(), DiffusionOptions(steps=steps, device="cpu")))


def labelled_copy(bundle_dir: Path, d: Path, classes) -> Path:
    """A copy of the pre-trained bundle naming the classes (without its training state)."""
    from napari_histodiff.core.formats.bundle import read_meta, write_meta

    shutil.copytree(bundle_dir, d, ignore=shutil.ignore_patterns("training"))
    meta = read_meta(d)
    meta["class_names"] = classes
    write_meta(d, meta)
    return d


def swap_vae(d: Path, vae_dir: Path, tiles) -> None:
    """Put the autoencoder of bundle ``vae_dir`` into bundle ``d``, with its own latent scale factor
    (measured on ``tiles``)."""
    from napari_histodiff.core.formats.bundle import load_bundle, read_meta, set_vae_scaling_factor, write_meta
    from napari_histodiff.core.train.diffusion import latent_scale_factor

    shutil.rmtree(d / "vae")
    shutil.copytree(vae_dir / "vae", d / "vae")
    scale = latent_scale_factor(load_bundle(d, device="cpu").vae, tiles, 512, 0, "cpu")
    set_vae_scaling_factor(d, scale)
    meta = read_meta(d)
    meta["latent_scale_factor"] = scale
    write_meta(d, meta)


def compare(bundle_dir: Path, work: Path, steps: int, per_class: int, seed: int = 0, augment: bool = False,
            trunk_lr: float | None = None):
    """Held-out accuracy per timestep of each trunk after ``steps`` steps: {trunk: {acc_tT: ...}}."""
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.classifiers import ClassifierOptions, latent_accuracy, train_latent_classifier

    train, test = textured_tiles(per_class, seed=seed), textured_tiles(40, seed=seed + 1000)
    out = {}
    for trunk in ("scratch", "unet"):
        d = labelled_copy(bundle_dir, work / f"{trunk}-{seed}", train.class_names)
        t0 = time.perf_counter()
        run_to_end(train_latent_classifier(train, d, tiny(), ClassifierOptions(
            steps=steps, holdout=0.0, device="cpu", seed=seed, trunk=trunk, augment=augment, checkpoint_every=10**6,
            learning_rate=trunk_lr if trunk == "unet" else None)))
        acc = latent_accuracy(load_bundle(d, device="cpu"), test, seed=seed)
        out[trunk] = {**acc, "mean": float(np.mean(list(acc.values()))), "seconds": time.perf_counter() - t0}
    return out


def compare_selection(bundle_dir: Path, work: Path, steps: int, per_class: int, seed: int = 0,
                      augment: bool = False, trunk_lr: float | None = None):
    """Test accuracy and calibration of the selection classifier per trunk after ``steps`` steps."""
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.generate.selection import score
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.classifiers import ClassifierOptions, train_selection_classifier

    train, test = textured_tiles(per_class, seed=seed), textured_tiles(40, seed=seed + 1000)
    x, y = test.tiles, np.asarray(test.labels)
    out = {}
    for trunk in ("scratch", "autoencoder"):
        d = labelled_copy(bundle_dir, work / f"sel-{trunk}-{seed}", train.class_names)
        t0 = time.perf_counter()
        result = run_to_end(train_selection_classifier(train, d, tiny(), ClassifierOptions(
            steps=steps, device="cpu", seed=seed, trunk=trunk, augment=augment, checkpoint_every=10**6,
            learning_rate=trunk_lr if trunk != "scratch" else None)))
        probs, _ = score(load_bundle(d, device="cpu"), x)
        out[trunk] = {"test_acc": float((probs.argmax(1) == y).mean()), "ece_before": result["ece_before"],
                      "ece_after": result["ece_after"], "seconds": time.perf_counter() - t0}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--pretrain-steps", type=int, default=60)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--trunk-lr", type=float, default=None, help="learning rate of the head on the UNet trunk")
    p.add_argument("--pretrain-on", choices=("textures", "demo"), default="textures")
    p.add_argument("--selection", action="store_true", help="compare selection classifier trunks instead")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pretrain(tmp / "pre", a.pretrain_steps, a.pretrain_on)
        for seed in range(a.seeds):
            fn = compare_selection if a.selection else compare
            for trunk, r in fn(tmp / "pre", tmp, a.steps, a.per_class, seed, a.augment, a.trunk_lr).items():
                print(f"seed {seed} {trunk:8s} " + " ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()

"""Fine-tuning a pre-trained bundle on a small labeled tile set (DESIGN.md step 2).

Stages, each resumable and skipped when already done: continued UNet training on the new
tiles at a low learning rate, optional decoder fine-tuning, the noisy latent classifier, and
the selection classifier. The result is a new bundle with class names.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .bundle import read_meta, write_meta
from .errors import HistodiffError
from .events import Progress


@dataclass
class FinetuneOptions:
    classifier_steps: int = 2000
    selection_steps: int = 1000
    unet_steps: int = 1000  # continued diffusion training on the labeled tiles (0: off)
    unet_learning_rate: float = 1e-5
    decoder_steps: int = 0  # decoder fine-tuning (0: off, the default)
    decoder_learning_rate: float = 1e-5
    clean_latents: bool = False
    min_tiles_per_class: int = 5
    holdout: float = 0.2
    batch_size: int | None = None
    seed: int = 0
    checkpoint_every: int = 500
    device: str = "auto"
    mixed_precision: str = "no"
    num_workers: int = 0

    def validate(self) -> None:
        for name in ("classifier_steps", "selection_steps"):
            if getattr(self, name) < 1:
                raise HistodiffError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("unet_steps", "decoder_steps"):
            if getattr(self, name) < 0:
                raise HistodiffError(f"--finetune-{name.split('_')[0]}-steps must be >= 0")
        if not 0 <= self.holdout < 0.9:
            raise HistodiffError("--holdout must be a fraction in [0, 0.9)")
        if self.min_tiles_per_class < 2:
            raise HistodiffError("--min-tiles-per-class must be at least 2 (one to train, one to hold out)")


def class_counts(tiles) -> dict[str, int]:
    """Tiles per class; refuses unlabeled tiles."""
    labels = [tiles.label(i) for i in range(len(tiles))]
    if not tiles.class_names or any(label is None for label in labels):
        raise HistodiffError(
            "labeled tiles must sit in one sub-folder per class (e.g. DIR/TUM/*.png, DIR/STR/*.png); "
            "found tiles without a class"
        )
    counts = Counter(labels)
    return {name: counts.get(k, 0) for k, name in enumerate(tiles.class_names)}


def check_labeled(tiles, minimum: int) -> dict[str, int]:
    counts = class_counts(tiles)
    if len(counts) < 2:
        raise HistodiffError(f"need at least 2 classes to guide sampling; found only {list(counts)}")
    few = {c: n for c, n in counts.items() if n < minimum}
    if few:
        listed = ", ".join(f"{c} ({n})" for c, n in few.items())
        raise HistodiffError(f"too few tiles for class {listed}; each class needs at least {minimum} "
                             "(add tiles or lower --min-tiles-per-class)")
    return counts


def start_bundle(source, out) -> None:
    """Copy a pre-trained bundle's models into ``out`` (no training checkpoints)."""
    source, out = Path(source), Path(out)
    meta = read_meta(source)
    if not (source / "unet").is_dir():
        raise HistodiffError(f"{source} has no diffusion UNet; pre-train it with `histodiff pretrain` first")
    out.mkdir(parents=True, exist_ok=True)
    for part in ("vae", "unet", "scheduler"):
        shutil.copytree(source / part, out / part, dirs_exist_ok=True)
    meta["provenance"]["pretrained_from"] = str(source.resolve())
    write_meta(out, meta)


def finetune(bundle_dir, tiles, out_dir, preset, options: FinetuneOptions | None = None):
    """Yield progress of every stage; return a summary with class counts and metrics."""
    from .train_autoencoder import AutoencoderOptions, train_autoencoder
    from .train_classifiers import ClassifierOptions, train_latent_classifier, train_selection_classifier
    from .train_diffusion import DiffusionOptions, train_diffusion

    opts = options or FinetuneOptions()
    opts.validate()
    if tiles.tile_size != preset.tile_size:
        raise HistodiffError(f"labeled tiles are {tiles.tile_size} px; the bundle needs {preset.tile_size} px")
    counts = check_labeled(tiles, opts.min_tiles_per_class)
    out_dir = Path(out_dir)
    if not (out_dir / "histodiff.json").is_file():
        start_bundle(bundle_dir, out_dir)
    meta = read_meta(out_dir)
    if meta.get("class_names") and meta["class_names"] != tiles.class_names:
        raise HistodiffError(f"{out_dir} was fine-tuned on classes {meta['class_names']}, not "
                             f"{tiles.class_names}; write to a new --out folder")
    meta["class_names"], meta["class_counts"] = tiles.class_names, counts
    meta["provenance"]["finetune"] = {"data": tiles.description, "options": asdict(opts)}
    write_meta(out_dir, meta)
    yield Progress("finetune", 0, 1, message="tiles per class: " + ", ".join(f"{c} {n}" for c, n in counts.items()))

    common = dict(seed=opts.seed, device=opts.device, mixed_precision=opts.mixed_precision,
                  num_workers=opts.num_workers, checkpoint_every=opts.checkpoint_every, batch_size=opts.batch_size)
    result = {"class_counts": counts}
    if opts.unet_steps:
        result["unet"] = yield from train_diffusion(tiles, out_dir, preset, DiffusionOptions(
            steps=opts.unet_steps, learning_rate=opts.unet_learning_rate, warmup_steps=0,
            init_weights=True, stage="finetune_unet", **common))
    if opts.decoder_steps:
        result["decoder"] = yield from train_autoencoder(tiles, out_dir, preset, AutoencoderOptions(
            steps=opts.decoder_steps, learning_rate=opts.decoder_learning_rate, decoder_only=True,
            stage="finetune_decoder", **common))
    clf = dict(holdout=opts.holdout, **common)
    result["latent_classifier"] = yield from train_latent_classifier(tiles, out_dir, preset, ClassifierOptions(
        steps=opts.classifier_steps, clean_latents=opts.clean_latents, **clf))
    result["selection_classifier"] = yield from train_selection_classifier(tiles, out_dir, preset, ClassifierOptions(
        steps=opts.selection_steps, **clf))
    return result

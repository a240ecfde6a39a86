"""Fine-tuning a pre-trained bundle on a small labeled tile set (DESIGN.md step 2).

Stages, each resumable and skipped when already done: continued UNet training on the new
tiles at a low learning rate, optional decoder fine-tuning, the noisy latent classifier, and
the selection classifier. The result is a new bundle with class names.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..base.devices import is_main_process, wait_for_everyone
from ..formats.bundle import load_bundle, read_meta, write_meta
from ..base.errors import HistodiffError
from ..base.names import check_class_name
from ..base.events import Progress
from ..base.options import check, device_option, option, precision_option, seed_option, record
from ..formats.convert import ModelSource


@dataclass
class FinetuneOptions:
    """``histodiff finetune``: a pre-trained model fine-tuned on labeled tiles, written as a new bundle."""

    model: Path | None = option(None, positional=True, required=True, metavar="BUNDLE", gui=False,
                                help="pre-trained bundle (from `histodiff pretrain`), CompVis .ckpt or diffusers "
                                "LDM folder")
    labeled: list[Path] = option(factory=list, required=True, gui=False, metavar="DIR",
                                 help="folders of labeled tiles, one sub-folder per class (DIR/TUM/*.png, ...), "
                                 "or whole-slide images annotated in QuPath (see --annotations)")
    out: Path | None = option(None, required=True, gui=False, help="the new bundle folder")
    intent: str = option("new", choices=("new", "resume", "overwrite"), consts={"--resume": "resume",
                         "--overwrite": "overwrite"}, gui=False,
                         help="new folder, resume the fine-tuning saved in it, or overwrite our bundle there")
    scale: float | None = option(None, min=0, min_open=True, gui=False,
                                 help="magnification factor for the labeled tiles (see pretrain); default: "
                                 "tiles fitted whole to the tile size")
    annotations: list[Path] = option(factory=list, gui=False, metavar="GEOJSON",
                                     help="QuPath GeoJSON files of the slides given in --labeled (matched by name, "
                                     "or in order); default: SLIDE.geojson beside each slide")
    slide_mpp: float | None = option(None, min=0, min_open=True, gui=False,
                                     help="the slides' level-0 microns per pixel, when their files do not say it")
    min_fraction: float = option(0.5, min=0, max=1, gui=False,
                                 help="fraction of a slide tile one class must cover to label it")
    classifier_steps: int = option(2000, min=1, help="training steps of the noisy latent classifier (guidance)")
    selection_steps: int = option(1000, min=1, help="training steps of the selection classifier")
    unet_steps: int = option(1000, min=0, flags=("--finetune-unet-steps",), label="UNet steps",
                             help="continued UNet training on the labeled tiles (0: off)")
    unet_learning_rate: float = option(1e-5, min=0, min_open=True, flags=("--unet-lr",),
                                       help="learning rate of the UNet fine-tuning")
    decoder_steps: int = option(0, min=0, flags=("--finetune-decoder-steps",),
                                help="decoder fine-tuning on the labeled tiles (0: off)")
    decoder_learning_rate: float = option(1e-5, min=0, min_open=True, help="learning rate of the decoder fine-tuning")
    clean_latents: bool = option(False, help="train the latent classifier on clean latents only, as the original "
                                 "code (for comparison)")
    classifier_trunk: str = option("scratch", choices=("scratch", "unet"),
                                   help="trunk of the noisy latent classifier: a small UNet encoder trained from "
                                   "scratch, or the pre-trained diffusion UNet's encoder (frozen; only a pooling + "
                                   "linear head learns, at learning rate 1e-3)")
    selection_trunk: str = option("scratch", choices=("scratch", "autoencoder"),
                                  help="trunk of the selection classifier: a small ResNet trained from scratch, or "
                                  "the pre-trained autoencoder's encoder (frozen; only a pooling + linear head "
                                  "learns, at learning rate 1e-3)")
    classifier_augment: bool = option(False, help="augment the labeled tiles while training the noisy latent "
                                      "classifier: the 8 flips / rotations, HED stain jitter and mild blur")
    selection_augment: bool = option(False, help="the same augmentation for the selection classifier: the 8 flips / "
                                     "rotations, HED stain jitter and mild blur (stain jitter can hide a class "
                                     "told apart by its colour)")
    selection_folds: int = option(5, min=1, max=10, help="selection classifier: one ResNet per fold of the labeled "
                                  "tiles that are not held out, each trained on the other folds and stopped on its "
                                  "own, used together as an ensemble (calibrated on the held-out tiles). 1: one "
                                  "ResNet. Scratch trunk only")
    unlabeled: list[Path] = option(factory=list, gui=False, metavar="DIR",
                                   help="unlabelled tiles of the same tissue (folders, slides): the selection "
                                   "classifier labels those it is confident on, and the noisy latent classifier "
                                   "trains on them beside the labeled tiles")
    pseudo_label_threshold: float = option(0.9, min=0, max=1, gui=False, help="calibrated selection confidence an "
                                           "unlabelled tile needs to be pseudo-labelled")
    unlabeled_max_tiles: int = option(5000, min=1, gui=False, help="unlabelled tiles scored at most (a seeded random "
                                      "choice), which bounds the time a large slide takes")
    min_tiles_per_class: int = option(5, min=2, help="fewest labeled tiles a class may have (one to train, one "
                                      "to hold out)")
    holdout: float = option(0.2, min=0, max=0.89, help="fraction of each class's labeled tiles held out: they train "
                            "neither classifier; the selection classifier's confidence is calibrated on them, and "
                            "both classifiers are measured on them (0: no calibration, no measurement)")
    batch_size: int | None = option(None, min=1, help="tiles per step (default: the preset's)")
    seed: int = seed_option()
    checkpoint_every: int = option(500, min=1, help="save a resumable checkpoint every N steps")
    device: str = device_option()
    precision: str = precision_option()
    num_workers: int = option(0, min=0, help="processes reading tiles (0: inline)")
    foreign: ModelSource = option(factory=ModelSource, gui=False, help="how to read a foreign model")

    PROFILES: ClassVar[dict] = {"interactive": {"classifier_steps": 500, "selection_steps": 300, "unet_steps": 200}}

    def validate(self) -> None:
        check(self)


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
    for name in counts:
        check_class_name(name, tiles.description or "the labeled tiles")
    if len(counts) < 2:
        raise HistodiffError(f"need at least 2 classes to guide sampling; found only {list(counts)}")
    few = {c: n for c, n in counts.items() if n < minimum}
    if few:
        listed = ", ".join(f"{c} ({n})" for c, n in few.items())
        raise HistodiffError(f"too few tiles for class {listed}; each class needs at least {minimum} "
                             "(add tiles or lower {opt:min_tiles_per_class})")
    return counts


def first_stage_kind(source) -> str:
    """``KL`` or ``VQ``: the autoencoder of a bundle folder or of an in-memory bundle."""
    from ..formats.bundle import Bundle, _class_name

    name = type(source.vae).__name__ if isinstance(source, Bundle) else _class_name(Path(source) / "vae")
    return "VQ" if name == "VQModel" else "KL"


def check_source(source) -> None:
    """Refuse a model that fine-tuning cannot use, before anything is written."""
    from ..formats.bundle import Bundle

    if isinstance(source, Bundle) and source.unet is None or not isinstance(source, Bundle) and \
            not (Path(source) / "unet").is_dir():
        raise HistodiffError(f"{getattr(source, 'path', None) or source} has no diffusion UNet; pre-train it with "
                             "`histodiff pretrain` first")
    if first_stage_kind(source) == "VQ":
        raise HistodiffError("this model has a VQ first stage; fine-tuning encodes tiles with a KL autoencoder "
                             "(latent_dist), so it works on KL models only. Sampling works with VQ models.")


FINETUNE_STAGES = ("finetune", "finetune_unet", "finetune_decoder", "latent_classifier", "selection_classifier")
# options that change what fine-tuning computes: a resume with other values would mix two runs
SAME_ON_RESUME = ("scale", "unet_learning_rate", "decoder_learning_rate", "clean_latents", "holdout",
                  "batch_size", "seed", "classifier_trunk", "selection_trunk", "classifier_augment",
                  "selection_augment", "selection_folds", "unlabeled", "pseudo_label_threshold",
                  "unlabeled_max_tiles")


def lineage(provenance: dict, origin: str) -> dict:
    """The provenance a bundle fine-tuned from a model with ``provenance`` (at ``origin``) starts with:
    the pre-training records, where it was pre-trained, and the chain of earlier fine-tunings. A model
    converted from a foreign checkpoint names that checkpoint, not the converted copy."""
    conv = provenance.get("converted")
    if isinstance(conv, dict) and conv.get("source"):
        origin = str(conv["source"])
    prov = {k: v for k, v in provenance.items() if k not in FINETUNE_STAGES and k != "earlier_finetunes"}
    earlier = list(provenance.get("earlier_finetunes") or [])
    if "finetune" in provenance:  # the source was fine-tuned itself: keep its record in the chain
        earlier.append({"bundle": origin, **{k: provenance[k] for k in FINETUNE_STAGES if k in provenance}})
        prov["finetuned_from"] = origin
    else:
        prov.pop("finetuned_from", None)
        prov["pretrained_from"] = origin
    if earlier:
        prov["earlier_finetunes"] = earlier
    return prov


def start_bundle(source, out) -> None:
    """Copy a pre-trained model's autoencoder, UNet and scheduler into ``out`` (no training checkpoints,
    no classes). ``source``: a bundle folder, or an in-memory bundle (e.g. a converted CompVis checkpoint)."""
    from ..formats.bundle import Bundle, save_part

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(source, Bundle):
        meta = {**source.meta}
        for part in ("vae", "unet", "scheduler"):
            save_part(getattr(source, part), out, part)
        origin = str(source.path.resolve()) if source.path else \
            ((meta.get("provenance") or {}).get("converted") or {}).get("source", "in-memory model")
    else:
        from ..formats.bundle import require_intact

        source = Path(source)
        meta = read_meta(source)
        require_intact(source, ("vae", "unet", "scheduler"))
        for part in ("vae", "unet", "scheduler"):
            shutil.copytree(source / part, out / part, dirs_exist_ok=True)
        origin = str(source.resolve())
    meta["class_names"] = []
    meta.pop("class_counts", None)
    meta["metrics"] = {k: v for k, v in (meta.get("metrics") or {}).items()
                       if not k.startswith(("latent_classifier", "selection_classifier"))}
    meta["provenance"] = lineage(dict(meta.get("provenance") or {}), origin)
    write_meta(out, meta)


def selection_folds(opts: FinetuneOptions) -> int:
    """Ensemble members of the selection classifier (one for a pre-trained trunk)."""
    return opts.selection_folds if opts.selection_trunk == "scratch" else 1


def planned(opts: FinetuneOptions) -> list[tuple[str, int]]:
    """The stages this run trains, with their step counts (the selection classifier's over all its folds)."""
    classifiers = [("latent_classifier", opts.classifier_steps),
                   ("selection_classifier", opts.selection_steps * selection_folds(opts))]
    if opts.unlabeled:  # the selection classifier pseudo-labels the unlabelled tiles first
        classifiers.reverse()
    stages = [("finetune_unet", opts.unet_steps), ("finetune_decoder", opts.decoder_steps), *classifiers]
    return [(stage, steps) for stage, steps in stages if steps]


def check_resumable(meta: dict, out_dir: Path, tiles, counts: dict, opts: FinetuneOptions) -> None:
    """Refuse to continue a fine-tuning with other classes, tiles or options than it was started with."""
    if meta.get("class_names") and meta["class_names"] != tiles.class_names:
        raise HistodiffError(f"{out_dir} was fine-tuned on classes {meta['class_names']}, not "
                             f"{tiles.class_names}; write to a new {{opt:out}} folder")
    if meta.get("class_counts") and meta["class_counts"] != counts:
        raise HistodiffError(f"{out_dir} was fine-tuned on other labeled tiles ({meta['class_counts']}, now "
                             f"{counts}); write to a new {{opt:out}} folder or choose {{opt:intent=overwrite}}")
    old = ((meta.get("provenance") or {}).get("finetune") or {}).get("options") or {}
    new = record(opts)
    changed = [f"{{opt:{k}}} {old[k]} (now {new[k]})" for k in SAME_ON_RESUME if k in old and old[k] != new[k]]
    if changed:
        raise HistodiffError(f"the fine-tuning in {out_dir} was started with " + ", ".join(changed) +
                             "; resume it with the same values, or choose {opt:intent=overwrite} to train "
                             "again with the new ones")


def finetune(source, tiles, out_dir, preset, options: FinetuneOptions | None = None, unlabeled=None):
    """Fine-tune ``source`` (a bundle folder or an in-memory bundle) into ``out_dir``, or continue the
    fine-tuning saved there. ``unlabeled``: a tile set of the same tissue, pseudo-labelled for the latent
    classifier (:mod:`.pseudo`). Yield progress of every stage; return a summary with class counts and
    metrics (``nothing_to_do`` when every stage was already trained with these options)."""
    from . import loop as T
    from .autoencoder import AutoencoderOptions, train_autoencoder
    from .classifiers import ClassifierOptions, train_latent_classifier, train_selection_classifier
    from .diffusion import DiffusionOptions, train_diffusion

    opts = options or FinetuneOptions()
    opts.validate()
    if tiles.tile_size != preset.tile_size:
        raise HistodiffError(f"labeled tiles are {tiles.tile_size} px; the bundle needs {preset.tile_size} px")
    counts = check_labeled(tiles, opts.min_tiles_per_class)
    out_dir = Path(out_dir)
    fresh = not (out_dir / "histodiff.json").is_file()
    wait_for_everyone()  # under a launcher: every process decides before the main one writes
    if fresh:
        check_source(source)
        if is_main_process():
            start_bundle(source, out_dir)
        wait_for_everyone()
    meta = read_meta(out_dir)
    check_resumable(meta, out_dir, tiles, counts, opts)
    result = {"class_counts": counts}
    if meta.get("class_names") and all(T.stage_written(out_dir, stage, steps) for stage, steps in planned(opts)):
        return {**result, "nothing_to_do": True}
    meta["class_names"], meta["class_counts"] = tiles.class_names, counts
    meta["provenance"]["finetune"] = {"data": tiles.description, "options": record(opts)}
    if is_main_process():
        write_meta(out_dir, meta)
    wait_for_everyone()
    yield Progress("finetune", 0, 1, message="tiles per class: " + ", ".join(f"{c} {n}" for c, n in counts.items()))

    common = dict(seed=opts.seed, device=opts.device, precision=opts.precision,
                  num_workers=opts.num_workers, checkpoint_every=opts.checkpoint_every, batch_size=opts.batch_size)
    if opts.unet_steps:
        result["unet"] = yield from train_diffusion(tiles, out_dir, preset, DiffusionOptions(
            steps=opts.unet_steps, learning_rate=opts.unet_learning_rate, warmup_steps=0,
            init_weights=True, stage="finetune_unet", **common))
    if opts.decoder_steps:
        result["decoder"] = yield from train_autoencoder(tiles, out_dir, preset, AutoencoderOptions(
            steps=opts.decoder_steps, learning_rate=opts.decoder_learning_rate, decoder_only=True,
            stage="finetune_decoder", **common))
    clf = dict(holdout=opts.holdout, **common)

    def latent(train_tiles):
        return (yield from train_latent_classifier(train_tiles, out_dir, preset, ClassifierOptions(
            steps=opts.classifier_steps, clean_latents=opts.clean_latents, trunk=opts.classifier_trunk,
            augment=opts.classifier_augment, **clf)))

    def selection():
        return (yield from train_selection_classifier(tiles, out_dir, preset, ClassifierOptions(
            steps=opts.selection_steps, trunk=opts.selection_trunk, augment=opts.selection_augment,
            folds=selection_folds(opts), **clf)))

    if bool(opts.unlabeled) != (unlabeled is not None):  # planned() orders the stages by opts.unlabeled
        raise HistodiffError("give the unlabelled tiles both as {opt:unlabeled} and as the opened tile set "
                             "(jobs.finetune.open_labeled(..., labeled=False)), or neither")
    if not opts.unlabeled:
        result["latent_classifier"] = yield from latent(tiles)
        result["selection_classifier"] = yield from selection()
        return _with_retention(result, tiles, out_dir, opts)
    from .pseudo import WithPseudoLabels, pseudo_label

    result["selection_classifier"] = yield from selection()
    with_pseudo = tiles
    if not T.stage_written(out_dir, "latent_classifier", opts.classifier_steps):
        bundle = load_bundle(out_dir, device=opts.device, require_unet=False)
        pseudo, result["pseudo_labels"] = yield from pseudo_label(
            bundle, unlabeled, opts.pseudo_label_threshold, opts.unlabeled_max_tiles, opts.seed)
        del bundle
        meta = read_meta(out_dir)
        meta["provenance"]["finetune"]["pseudo_labels"] = result["pseudo_labels"]
        if is_main_process():
            write_meta(out_dir, meta)
        wait_for_everyone()
        with_pseudo = WithPseudoLabels(tiles, pseudo) if len(pseudo) else tiles
    result["latent_classifier"] = yield from latent(with_pseudo)
    return _with_retention(result, tiles, out_dir, opts)


def _with_retention(result: dict, tiles, out_dir, opts) -> dict:
    """The first stage's class retention on the held-out labelled tiles, in the result and the bundle's meta."""
    from .retention import record_retention

    held = ((result.get("selection_classifier") or {}).get("splits") or {}).get("heldout") or []
    if is_main_process():
        result["retention"] = record_retention(out_dir, tiles, held, opts.device)
    wait_for_everyone()
    return result

"""The ``histodiff`` command: thin argument parsing over ``napari_histodiff.core``.

Heavy imports (torch, diffusers) happen inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def drain(gen):
    """Run a core generator to its end with a tqdm progress bar per stage; return its result."""
    from tqdm import tqdm

    from .core.events import run_to_end

    bars = {}

    def show(event):
        bar = bars.get(event.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[event.stage] = tqdm(total=event.total, desc=event.stage, unit="step",
                                           disable=not _is_main_process(), dynamic_ncols=True)
        bar.update(event.step - bar.n)
        post = {} if event.loss is None else {"loss": f"{event.loss:.4f}"}
        if "psnr" in event.metrics:
            post["psnr"] = f"{event.metrics['psnr']:.2f}"
        if post:
            bar.set_postfix(post, refresh=False)

    try:
        return run_to_end(gen, show)
    finally:
        for bar in bars.values():
            bar.close()
        gen.close()


# -- argument groups -----------------------------------------------------------------------

def _add_data_args(p):
    g = p.add_argument_group("training tiles")
    g.add_argument("data", nargs="+", type=Path,
                   help="tile folders (read recursively; PNG, JPEG, TIFF) or large images to cut into tiles")
    g.add_argument("--large-images", action="store_true",
                   help="treat every image inside the given folders as a large image to cut into tiles")
    g.add_argument("--stride", type=int, default=None, help="tiling stride in pixels (default: the tile size)")
    g.add_argument("--scale", type=float, nargs="+", default=None,
                   help="magnification factor: large images are rescaled by it before tiling; tiles of a "
                   "folder give their centre TILE/SCALE px (default: large images as they are, folder tiles "
                   "fitted whole to the tile size); one value for every path, or one per path in order "
                   "(collections at different magnifications)")
    g.add_argument("--min-tissue", type=float, default=0.5,
                   help="keep a tile of a large image when at least this fraction is tissue (default 0.5)")
    g.add_argument("--no-tissue-filter", action="store_true", help="keep background tiles of large images too")
    g.add_argument("--microns-per-pixel", type=float, default=None,
                   help="resolution of the training tiles, recorded in the bundle (after --scale)")


def _add_run_args(p):
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    g.add_argument("--preset", default="tiny",
                   help="tiny (32 px, tests), small (64 px, laptop CPU), paper (256 px), or a preset JSON file")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    g.add_argument("--num-workers", type=int, default=0, help="processes reading tiles (default 0: inline)")
    g.add_argument("--batch-size", type=int, default=None, help="per process (default: the preset's)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    ex.add_argument("--resume", action="store_true", help="continue the training saved in the output folder")


def _add_ae_args(p, steps_flag="--steps", default=2000):
    g = p.add_argument_group("autoencoder")
    g.add_argument(steps_flag, dest="ae_steps", type=int, default=default, help=f"autoencoder steps (default {default})")
    g.add_argument("--ae-checkpoint-every", type=int, default=500)
    g.add_argument("--holdout", type=float, default=0.05, help="fraction of tiles held out for PSNR (default 0.05)")
    g.add_argument("--perceptual-weights", type=Path, default=None,
                   help="local LPIPS-VGG16 weights file; adds the perceptual loss term (off without it)")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``histodiff: error: ...`` and exit code 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"histodiff: error: {message} (see `{self.prog} --help`)\n")


def _add_source_args(p):
    g = p.add_argument_group("foreign checkpoints (converted in memory)")
    g.add_argument("--format", choices=["bundle", "compvis", "diffusers"], default=None,
                   help="what the model path is (default: detected)")
    g.add_argument("--config", type=Path, default=None,
                   help="YAML config of a CompVis .ckpt (default: beside it or in ../configs/*-project.yaml)")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--ema", dest="ema", action="store_true", default=None,
                    help="use the EMA weights of a CompVis checkpoint (the default when it has them)")
    ex.add_argument("--no-ema", dest="ema", action="store_false", help="use the model weights instead of EMA")


def _source_kwargs(args) -> dict:
    return {"format": args.format, "config": args.config, "ema": args.ema}


def _add_rule_args(p):
    g = p.add_argument_group("selection")
    g.add_argument("--rule", choices=["confidence", "centroid", "both", "none"], default="both",
                   help="keep a tile when the classifier is confident (confidence), its nearest class "
                   "centroid is the target (centroid, as the original code), both (default), or always (none)")
    g.add_argument("--threshold", type=float, default=0.8, help="minimum confidence (default 0.8)")
    g.add_argument("--cap", type=int, default=None, help="keep at most this many tiles per class, best first")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="histodiff",
        description="Class-guided latent diffusion for histopathology tile augmentation (HistoDiffusion).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain-autoencoder", help="train the KL autoencoder on unlabeled tiles",
                       description="Train the KL autoencoder (L1 + KL + patch-GAN) on unlabeled tiles.")
    _add_data_args(p)
    _add_run_args(p)
    _add_ae_args(p)
    p.set_defaults(func=cmd_pretrain_autoencoder)

    p = sub.add_parser("pretrain", help="train the latent diffusion model (and the autoencoder first)",
                       description="Train the unconditional latent diffusion UNet on unlabeled tiles. The "
                       "autoencoder is trained first unless --autoencoder names a bundle that has one, "
                       "or the output folder already has a finished one (with --resume).")
    _add_data_args(p)
    _add_run_args(p)
    p.add_argument("--steps", type=int, default=10000, help="diffusion training steps (default 10000)")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--warmup-steps", type=int, default=None, help="learning-rate warm-up (default: the preset's)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay (default: the preset's)")
    p.add_argument("--autoencoder", type=Path, default=None, help="bundle whose trained autoencoder to reuse")
    _add_ae_args(p, "--autoencoder-steps")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a bundle on labeled tiles (classifiers, UNet)",
                       description="Fine-tune a pre-trained bundle on a small labeled set: continued UNet "
                       "training at a low learning rate, a noisy latent classifier for guidance and a "
                       "selection classifier. Writes a new bundle with class names.")
    p.add_argument("bundle", type=Path,
                   help="pre-trained bundle (from `histodiff pretrain`), CompVis .ckpt or diffusers LDM folder")
    p.add_argument("--labeled", type=Path, nargs="+", required=True,
                   help="folders of labeled tiles, one sub-folder per class (DIR/TUM/*.png, DIR/STR/*.png)")
    p.add_argument("--out", type=Path, required=True, help="new bundle folder")
    p.add_argument("--scale", type=float, default=None, help="magnification factor for the tiles (see pretrain)")
    p.add_argument("--classifier-steps", type=int, default=2000, help="latent classifier steps (default 2000)")
    p.add_argument("--selection-steps", type=int, default=1000, help="selection classifier steps (default 1000)")
    p.add_argument("--finetune-unet-steps", type=int, default=1000,
                   help="continued UNet training on the labeled tiles (default 1000; 0: off)")
    p.add_argument("--unet-lr", type=float, default=1e-5, help="UNet fine-tuning learning rate (default 1e-5)")
    p.add_argument("--finetune-decoder-steps", type=int, default=0,
                   help="decoder fine-tuning steps (default 0: off)")
    p.add_argument("--clean-latents", action="store_true",
                   help="train the latent classifier on clean latents only, as the original code (for comparison)")
    p.add_argument("--min-tiles-per-class", type=int, default=5)
    p.add_argument("--holdout", type=float, default=0.2, help="held-out fraction per class for the classifiers")
    p.add_argument("--checkpoint-every", type=int, default=500)
    for flag, kw in (("--seed", dict(type=int, default=0)), ("--device", dict(default="auto")),
                     ("--mixed-precision", dict(choices=["no", "fp16", "bf16"], default="no")),
                     ("--num-workers", dict(type=int, default=0)), ("--batch-size", dict(type=int, default=None))):
        p.add_argument(flag, **kw)
    ex = p.add_mutually_exclusive_group()
    ex.add_argument("--overwrite", action="store_true")
    ex.add_argument("--resume", action="store_true")
    _add_source_args(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("sample", help="sample tiles, unguided or guided toward classes, and select",
                       description="Sample tiles (TIFF) into a folder with samples.csv and a contact sheet per "
                       "class. With --class/--per-class, sampling is guided by the latent classifier; on a "
                       "fine-tuned bundle every tile is scored and selected unless --no-select.")
    p.add_argument("bundle", type=Path, help="bundle folder, CompVis .ckpt or diffusers LDM pipeline folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("-n", type=int, default=16, help="tiles per class (in all when unguided; default 16)")
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                   help="target class (repeat for several)")
    p.add_argument("--per-class", type=int, default=None, metavar="N", help="N tiles of every class of the bundle")
    p.add_argument("--guidance", type=float, default=10.0, help="classifier guidance scale (default 10; 0: none)")
    p.add_argument("--sampler", choices=["ddim", "dpm", "ddpm"], default="ddim")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta (default 1.0, as the paper)")
    p.add_argument("--from", dest="sources", type=Path, default=None, metavar="DIR",
                   help="make variations of these tiles (class sub-folders; each variation keeps its "
                   "source's class) instead of sampling from pure noise; see --strength")
    p.add_argument("--strength", type=float, default=None,
                   help="with --from: how far the sources are noised, in (0, 1] (default 0.5; 1: pure noise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-select", action="store_true", help="do not score and select the tiles")
    _add_rule_args(p)
    p.add_argument("--overwrite", action="store_true")
    _add_source_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("select", help="score and select the tiles of a sample folder again",
                       description="Re-score a sample folder with a fine-tuned bundle's selection classifier "
                       "and rewrite its samples.csv with keep/reject decisions.")
    p.add_argument("samples", type=Path)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--device", default="auto")
    _add_rule_args(p)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("export", help="export kept tiles as an ImageFolder-style augmentation set",
                       description="Write <class>/<id>.tif (or .png) for the kept tiles of one or more sample "
                       "folders, with manifest.csv and export.json. Written atomically.")
    p.add_argument("samples", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--include-real", type=Path, default=None, metavar="DIR",
                   help="also copy these labeled real tiles (class sub-folders), marked as real")
    p.add_argument("--png", action="store_true", help="PNG instead of TIFF")
    p.add_argument("--all", action="store_true", help="export every tile, kept or not")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="print a readable summary of a bundle (or of a foreign checkpoint, converted)")
    p.add_argument("bundle", type=Path, help="bundle folder, CompVis .ckpt or diffusers LDM pipeline folder")
    p.add_argument("--json", action="store_true", help="print histodiff.json as it is")
    _add_source_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a CompVis .ckpt or a diffusers LDM folder into a bundle",
                       description="Convert a CompVis / HistoDiffusion LatentDiffusion .ckpt (+ YAML) or a diffusers "
                       "LDMPipeline folder into a napari-histodiff bundle (safetensors). The checkpoint is read "
                       "with torch.load(weights_only=True); nothing in it is executed. With --to-compvis, write "
                       "a bundle as a CompVis .ckpt + YAML instead.")
    p.add_argument("source", type=Path, help="CompVis .ckpt, diffusers pipeline folder (or a bundle with --to-compvis)")
    p.add_argument("out", type=Path, help="bundle folder to write (with --to-compvis: the .ckpt file)")
    p.add_argument("--to-compvis", action="store_true", help="write SOURCE (a bundle) as a CompVis .ckpt + .yaml")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _add_source_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo", help="run the whole method on an embedded default image",
                       description="The whole method on the colon tissue image shipped with scikit-image: "
                       "pre-train tiny models, fine-tune on a demonstration labelling (stain content by colour "
                       "deconvolution), sample guided tiles, select, export and write a report (minutes on a CPU).")
    p.add_argument("--out", type=Path, default=Path("histodiff-demo"))
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.add_argument("--quick", action="store_true", help="far fewer steps (seconds; poor samples)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="does the augmentation help? train downstream classifiers and compare",
                       description="Train a small ResNet from scratch on the real training tiles, and on real + "
                       "augmentation tiles (an export folder), over several seeds; test both on a test set. "
                       "Writes results.json and results.png (see docs/evaluate.md).")
    p.add_argument("--train", type=Path, required=True, help="labeled training tiles (one sub-folder per class)")
    p.add_argument("--test", type=Path, required=True, help="labeled test tiles (one sub-folder per class)")
    p.add_argument("--augment", type=Path, default=None, metavar="EXPORT_DIR",
                   help="augmentation set (from `histodiff export`): adds the 'augmented' arm")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and results.png")
    p.add_argument("--steps", type=int, default=1500, help="optimisation steps per classifier (default 1500)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--eval-every", type=int, default=100, help="validation every N steps (default 100)")
    p.add_argument("--tile-size", type=int, default=64, help="tiles are fitted to this size (default 64)")
    p.add_argument("--arch", choices=["resnet", "vit"], default="resnet",
                   help="downstream classifier: a small ResNet (default) or a small Vision Transformer")
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128],
                   help="the ResNet's stage widths (default 32 64 128)")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_evaluate)
    return parser


# -- commands ------------------------------------------------------------------------------

def _tiles(args, tile_size):
    from .core.tiles import open_tiles

    return open_tiles(
        args.data, tile_size, large_images=args.large_images, stride=args.stride, scale=args.scale,
        min_tissue=args.min_tissue, tissue_filter=not args.no_tissue_filter,
    )


def _preset(args):
    from .core.bundle import read_meta
    from .core.errors import HistodiffError
    from .core.presets import Preset, get_preset

    if args.resume and (args.out / "histodiff.json").is_file():
        return Preset.from_dict(read_meta(args.out)["preset"])
    if args.preset.endswith(".json"):
        try:
            return Preset.from_dict(json.loads(Path(args.preset).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise HistodiffError(f"cannot read preset file {args.preset}: {e}") from None
    return get_preset(args.preset)


def _ae_options(args):
    from .core.train_autoencoder import AutoencoderOptions

    return AutoencoderOptions(
        steps=args.ae_steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        checkpoint_every=args.ae_checkpoint_every, holdout=args.holdout,
        perceptual_weights=str(args.perceptual_weights) if args.perceptual_weights else None,
        device=args.device, mixed_precision=args.mixed_precision, num_workers=args.num_workers,
    )


def cmd_pretrain_autoencoder(args):
    from .core.train_autoencoder import train_autoencoder
    from .core.training import prepare_out_dir

    preset = _preset(args)
    tiles = _tiles(args, preset.tile_size)
    prepare_out_dir(args.out, args.overwrite, args.resume)
    result = drain(train_autoencoder(tiles, args.out, preset, _ae_options(args)))
    _record_mpp(args)
    _say(f"autoencoder written to {args.out}/vae; held-out PSNR {result['psnr']:.2f} dB"
         if result["psnr"] is not None else f"autoencoder written to {args.out}/vae")


def cmd_pretrain(args):
    from .core.bundle import read_meta, write_meta
    from .core.errors import HistodiffError
    from .core.train_autoencoder import train_autoencoder
    from .core.train_diffusion import DiffusionOptions, train_diffusion
    from .core.training import prepare_out_dir

    if args.autoencoder is not None:
        from .core.presets import Preset

        preset = Preset.from_dict(read_meta(args.autoencoder)["preset"])
        if not (args.autoencoder / "vae").is_dir():
            raise HistodiffError(f"{args.autoencoder} has no vae/; train one with `histodiff pretrain-autoencoder`")
    else:
        preset = _preset(args)
    tiles = _tiles(args, preset.tile_size)
    prepare_out_dir(args.out, args.overwrite, args.resume)
    if args.autoencoder is not None and not (args.out / "vae").is_dir():
        import shutil

        shutil.copytree(args.autoencoder / "vae", args.out / "vae")
        meta = read_meta(args.autoencoder)
        meta["provenance"]["autoencoder"] = {**meta["provenance"].get("autoencoder", {}),
                                             "copied_from": str(args.autoencoder)}
        write_meta(args.out, meta)
    elif args.autoencoder is None:
        drain(train_autoencoder(tiles, args.out, preset, _ae_options(args)))
    opts = DiffusionOptions(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay, seed=args.seed, checkpoint_every=args.checkpoint_every, device=args.device,
        mixed_precision=args.mixed_precision, num_workers=args.num_workers,
    )
    result = drain(train_diffusion(tiles, args.out, preset, opts))
    _record_mpp(args)
    _say(f"bundle written to {args.out} (latent scale factor {result['latent_scale_factor']:.4f}); "
         f"try: histodiff sample {args.out} -n 16 --out samples")


def _rule(args):
    from .core.selection import SelectionRule

    rule = SelectionRule(rule=args.rule, threshold=args.threshold, cap=args.cap)
    rule.validate()
    return rule


def _counts(records) -> str:
    from collections import Counter

    kept = Counter(r.target_class or r.predicted_class or "unguided" for r in records if r.kept)
    made = Counter(r.target_class or r.predicted_class or "unguided" for r in records)
    return ", ".join(f"{c}: {kept.get(c, 0)}/{n} kept" for c, n in sorted(made.items()))


def cmd_finetune(args):
    with _as_bundle_folder(args) as bundle_dir:
        _finetune(args, bundle_dir)


def _finetune(args, bundle_dir):
    from .core.finetune import FinetuneOptions, finetune
    from .core.presets import Preset
    from .core.bundle import read_meta
    from .core.training import prepare_out_dir

    preset = Preset.from_dict(read_meta(bundle_dir)["preset"])
    _check_kl(bundle_dir)
    tiles = _labeled_tiles(args.labeled, preset.tile_size, args.scale)
    opts = FinetuneOptions(
        classifier_steps=args.classifier_steps, selection_steps=args.selection_steps,
        unet_steps=args.finetune_unet_steps, unet_learning_rate=args.unet_lr,
        decoder_steps=args.finetune_decoder_steps, clean_latents=args.clean_latents,
        min_tiles_per_class=args.min_tiles_per_class, holdout=args.holdout, batch_size=args.batch_size,
        seed=args.seed, checkpoint_every=args.checkpoint_every, device=args.device,
        mixed_precision=args.mixed_precision, num_workers=args.num_workers,
    )
    opts.validate()
    from .core.finetune import check_labeled

    check_labeled(tiles, opts.min_tiles_per_class)  # before touching --out
    if args.out.resolve() == args.bundle.resolve():
        from .core.errors import HistodiffError

        raise HistodiffError("--out must be a new folder, not the pre-trained bundle itself")
    prepare_out_dir(args.out, args.overwrite, args.resume)
    result = drain(finetune(bundle_dir, tiles, args.out, preset, opts))
    counts = ", ".join(f"{c} {n}" for c, n in result["class_counts"].items())
    _say(f"fine-tuned bundle written to {args.out} (tiles per class: {counts}); "
         f"try: histodiff sample {args.out} --per-class 16 --out samples")


def _labeled_tiles(paths, tile_size, scale):
    from .core.tiles import open_tiles, read_rgb

    tiles = open_tiles(paths, tile_size, scale=scale)
    source = Path(tiles.origin(0))  # a tile file for folders ("image@x=..,y=.." for cut images)
    first = read_rgb(source) if scale is None and source.is_file() else None
    if first is not None and first.shape[:2] != (tile_size, tile_size):
        print(f"histodiff: warning: tiles are {first.shape[1]}x{first.shape[0]} px; they are centre-cropped "
              f"and resized to the model's {tile_size} px (pass --scale to cut at a fixed magnification "
              "instead)", file=sys.stderr)
    return tiles


def cmd_sample(args):
    from .core.bundle import load_bundle
    from .core.sample_set import write_samples
    from .core.sampling import SampleOptions

    from .core.errors import HistodiffError

    if args.per_class is not None and args.classes:
        raise HistodiffError("give either --class (with -n) or --per-class, not both")
    if args.per_class is not None and args.per_class < 1:
        raise HistodiffError("--per-class must be at least 1")
    if args.strength is not None and args.sources is None:
        raise HistodiffError("--strength needs --from DIR (the tiles to make variations of)")
    bundle = load_bundle(args.bundle, device=args.device, **_source_kwargs(args))
    sources = _labeled_tiles([args.sources], bundle.tile_size, None) if args.sources else None
    if args.per_class and not bundle.class_names and sources is None:
        raise HistodiffError("--per-class needs a fine-tuned bundle with classes; run `histodiff finetune` first")
    classes = args.classes or (list(bundle.class_names) if args.per_class and sources is None else [])
    for name in classes:
        bundle.class_index(name)
    opts = SampleOptions(n=args.per_class or args.n, classes=classes, guidance=args.guidance, sampler=args.sampler,
                         steps=args.steps, eta=args.eta, seed=args.seed, batch_size=args.batch_size,
                         strength=args.strength if args.strength is not None else 0.5 if sources is not None else 1.0)
    opts.validate(bundle.scheduler.config.num_train_timesteps)
    select = not args.no_select and bundle.selection_classifier is not None
    records = drain(write_samples(bundle, opts, args.out, _rule(args) if select else None, args.overwrite,
                                  sources=sources))
    summary = _counts(records) if select else f"{len(records)} tiles (not selected)"
    _say(f"{len(records)} tiles written to {args.out} ({summary})")


def cmd_select(args):
    from .core.bundle import load_bundle
    from .core.sample_set import select_folder

    records = select_folder(args.samples, load_bundle(args.bundle, device=args.device), _rule(args))
    _say(f"{args.samples}/samples.csv updated: {_counts(records)}")


def cmd_export(args):
    from .core.export import ExportOptions, export_set

    opts = ExportOptions(include_real=args.include_real is not None, fmt="png" if args.png else "tif",
                         only_kept=not args.all, overwrite=args.overwrite)
    opts.validate()
    real = None
    if args.include_real is not None:
        import tifffile

        from .core.errors import HistodiffError
        from .core.records import read_records
        from .core.tiles import TileFolder

        records = read_records(args.samples[0])
        if not records:
            raise HistodiffError(f"{args.samples[0]} holds no tiles")
        size = tifffile.imread(args.samples[0] / records[0].file).shape[0]
        real = TileFolder(args.include_real, size)
    params = {"samples": [str(s) for s in args.samples], "include_real": str(args.include_real or "")}
    summary = drain(export_set(args.samples, args.out, opts, real_tiles=real, params=params))
    _say(f"{summary['total']} tiles exported to {args.out}")


def cmd_info(args):
    from .core.bundle import read_meta, summary

    with _as_bundle_folder(args) as folder:
        if args.json:
            print(json.dumps(read_meta(folder), indent=2, sort_keys=True))
        else:
            text = summary(folder)
            if folder != args.bundle:
                text = text.replace(f"bundle      {folder}", f"source      {args.bundle} (converted in memory; "
                                    "save it with `histodiff convert`)")
            print(text)


def cmd_convert(args):
    from .core.errors import HistodiffError

    if args.to_compvis:
        from .core.bundle import load_bundle
        from .core.convert_compvis import write_compvis

        if args.out.exists() and not args.overwrite:
            raise HistodiffError(f"{args.out} already exists; pass --overwrite to replace it")
        if args.out.suffix != ".ckpt":
            raise HistodiffError(f"with --to-compvis the output is a .ckpt file, not {args.out}")
        write_compvis(load_bundle(args.source, device="cpu", **_source_kwargs(args)), args.out)
        _say(f"CompVis checkpoint written to {args.out} with its config {args.out.with_suffix('.yaml')}")
        return
    from .core.convert import convert_to_bundle

    bundle = convert_to_bundle(args.source, args.out, overwrite=args.overwrite, **_source_kwargs(args))
    prov = bundle.meta["provenance"]["converted"]
    weights = {True: "EMA weights", False: "model weights"}.get(prov.get("ema"), "weights")
    _say(f"bundle written to {args.out} ({prov['format']}, {weights}, tile size {bundle.tile_size} px, latent scale "
         f"factor {bundle.scale_factor:.5g}); try: histodiff sample {args.out} -n 16 --out samples")


class _as_bundle_folder:
    """``args.bundle`` itself when it is a bundle; else a temporary bundle converted from it."""

    def __init__(self, args):
        self.args, self.tmp = args, None

    def __enter__(self):
        from .core.convert import detect_format

        a = self.args
        fmt = a.format or detect_format(a.bundle)
        if fmt == "bundle":
            if a.config is not None or a.ema is not None:
                from .core.errors import HistodiffError

                raise HistodiffError("--config and --ema/--no-ema apply to CompVis .ckpt checkpoints only")
            return a.bundle
        import tempfile

        from .core.bundle import save_bundle
        from .core.convert import convert_source

        self.tmp = tempfile.TemporaryDirectory(prefix="histodiff-converted-")
        out = Path(self.tmp.name) / "bundle"
        save_bundle(convert_source(a.bundle, fmt, config=a.config, ema=a.ema), out)
        return out

    def __exit__(self, *exc):
        if self.tmp is not None:
            self.tmp.cleanup()


def _check_kl(bundle_dir) -> None:
    from .core.bundle import _class_name

    if _class_name(Path(bundle_dir) / "vae") == "VQModel":
        from .core.errors import HistodiffError

        raise HistodiffError("this model has a VQ first stage; fine-tuning encodes tiles with a KL autoencoder "
                             "(latent_dist), so it works on KL models only. Sampling works with VQ models.")


def cmd_demo(args):
    from .core.demo import DemoOptions, run_demo

    report = drain(run_demo(args.out, DemoOptions(quick=args.quick, device=args.device), overwrite=args.overwrite))
    _say(f"demo finished: open {report}")


def cmd_evaluate(args):
    from .core.evaluate import EvaluateOptions, evaluate, open_labeled, write_results
    from .core.training import prepare_out_dir

    opts = EvaluateOptions(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                           seeds=list(args.seeds), eval_every=args.eval_every, device=args.device,
                           arch=args.arch, channels=tuple(args.channels))
    opts.validate()
    train = open_labeled(args.train, args.tile_size)
    test = open_labeled(args.test, args.tile_size)
    augment = open_labeled(args.augment, args.tile_size) if args.augment is not None else None
    if args.out.exists() and not args.overwrite and (not args.out.is_dir() or any(args.out.iterdir())):
        from .core.errors import HistodiffError

        raise HistodiffError(f"output folder {args.out} already exists; pass --overwrite to replace it")
    results = drain(evaluate(train, test, augment, opts))
    prepare_out_dir(args.out, overwrite=args.overwrite)
    write_results(results, args.out)
    n = len(opts.seeds)
    for arm, r in results["arms"].items():
        _say(f"{arm:>10}: accuracy {100 * r['mean']['accuracy']:.1f} +- {100 * r['sd']['accuracy']:.1f}, "
             f"macro-F1 {r['mean']['macro_f1']:.3f} +- {r['sd']['macro_f1']:.3f} ({n} seed{'s' * (n > 1)})")
    d = results.get("paired_difference")
    if d:
        _say(f"augmented - real: {d['mean']:+.1f} points of accuracy, 95% CI [{d['ci95_low']:+.1f}, "
             f"{d['ci95_high']:+.1f}]" + (f" ({d['note']})" if "note" in d else ""))
    _say(f"results written to {args.out}/results.json and results.png")


def _record_mpp(args) -> None:
    if args.microns_per_pixel is not None and _is_main_process():
        from .core.bundle import read_meta, write_meta

        meta = read_meta(args.out)
        meta["microns_per_pixel"] = args.microns_per_pixel
        write_meta(args.out, meta)


def _say(msg: str) -> None:
    if _is_main_process():
        print(msg)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .core.errors import HistodiffError

    try:
        args.func(args)
    except HistodiffError as e:
        print(f"histodiff: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        hint = {"pretrain": "a checkpoint was saved; continue with --resume",
                "pretrain-autoencoder": "a checkpoint was saved; continue with --resume",
                "finetune": "a checkpoint was saved; continue with --resume",
                "demo": "run the demo again to continue where it stopped",
                "sample": "nothing was written", "export": "nothing was written",
                "select": "samples.csv was left as it was"}.get(args.command, "")
        print(f"histodiff: interrupted; {hint}", file=sys.stderr)
        return 130
    return 0

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


def drain(gen, desc: str | None = None):
    """Run a core generator to its end with a tqdm progress bar per stage; return its result."""
    from tqdm import tqdm

    bar, stage = None, None
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if event.stage != stage:
                if bar is not None:
                    bar.close()
                stage = event.stage
                bar = tqdm(total=event.total, desc=desc or stage, unit="step",
                           disable=not _is_main_process(), dynamic_ncols=True)
                bar.update(event.step - 1)
            bar.update(event.step - bar.n)
            post = {} if event.loss is None else {"loss": f"{event.loss:.4f}"}
            if "psnr" in event.metrics:
                post["psnr"] = f"{event.metrics['psnr']:.2f}"
            if post:
                bar.set_postfix(post, refresh=False)
    finally:
        if bar is not None:
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
    g.add_argument("--scale", type=float, default=None,
                   help="magnification factor: large images are rescaled by it before tiling; tiles of a "
                   "folder give their centre TILE/SCALE px (default: large images as they are, folder tiles "
                   "fitted whole to the tile size)")
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

    p = sub.add_parser("sample", help="sample tiles from a bundle (unguided DDIM)",
                       description="Sample tiles with DDIM; writes TIFF tiles and a PNG contact sheet.")
    p.add_argument("bundle", type=Path)
    p.add_argument("-n", type=int, default=16, help="number of tiles (default 16)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta (default 1.0, as the paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("info", help="print a readable summary of a bundle")
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", action="store_true", help="print histodiff.json as it is")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="run the whole method on an embedded default image",
                       description="Pre-train tiny models on the colon tissue image shipped with "
                       "scikit-image, sample tiles and write a report (a few minutes on a CPU).")
    p.add_argument("--out", type=Path, default=Path("histodiff-demo"))
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.add_argument("--quick", action="store_true", help="far fewer steps (seconds; poor samples)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)
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


def cmd_sample(args):
    from .core.bundle import load_bundle
    from .core.sampling import SampleOptions
    from .core.sampling import write_samples

    opts = SampleOptions(n=args.n, steps=args.steps, eta=args.eta, seed=args.seed, batch_size=args.batch_size)
    opts.validate()
    bundle = load_bundle(args.bundle, device=args.device)
    sheet = drain(write_samples(bundle, opts, args.out, overwrite=args.overwrite))
    _say(f"{args.n} tiles written to {args.out}; contact sheet {sheet}")


def cmd_info(args):
    from .core.bundle import read_meta, summary

    if args.json:
        print(json.dumps(read_meta(args.bundle), indent=2, sort_keys=True))
    else:
        print(summary(args.bundle))


def cmd_demo(args):
    from .core.demo import DemoOptions, run_demo

    report = drain(run_demo(args.out, DemoOptions(quick=args.quick, device=args.device), overwrite=args.overwrite))
    _say(f"demo finished: open {report}")


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
                "demo": "run the demo again to continue where it stopped",
                "sample": "nothing was written"}.get(args.command, "")
        print(f"histodiff: interrupted; {hint}", file=sys.stderr)
        return 130
    return 0

"""Pre-training jobs: the autoencoder alone, or the latent diffusion UNet (after the autoencoder)."""

from __future__ import annotations

import json
from ..base.threads import fit_threads
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import HistodiffError
from ..base.shell import command
from ..base.options import check, device_option, option, precision_option, require, seed_option
from ..train.autoencoder import AutoencoderOptions as _AE
from ..train.diffusion import DiffusionOptions as _DIFF


@dataclass
class TrainingData:
    """Unlabeled training tiles: tile folders, or large images cut into tiles."""

    data: list[Path] = option(factory=list, positional=True, required=True, metavar="DATA",
                              help="tile folders (read recursively; PNG, JPEG, TIFF), whole-slide images (SVS, "
                              "NDPI, MRXS, OME-TIFF, ...), folders of slides, .txt lists of slides, or large "
                              "images to cut into tiles")
    large_images: bool = option(False, help="treat every image inside the given folders as a large image to "
                                "cut into tiles")
    stride: int | None = option(None, min=1, help="tiling stride of large images in pixels (default: the tile "
                                "size)")
    scale: list[float] | None = option(None, min=0, min_open=True,
                                       help="magnification factor: large images are rescaled by it before "
                                       "tiling; tiles of a folder give their centre TILE/SCALE px (default: "
                                       "large images as they are, folder tiles fitted whole to the tile size); "
                                       "one value for every path, or one per path in order")
    min_tissue: float = option(0.5, min=0, max=1, help="keep a tile of a large image when at least this "
                               "fraction is tissue")
    tissue_filter: bool = option(True, help="drop background tiles of large images (--no-tissue-filter keeps them)")
    microns_per_pixel: float | None = option(None, min=0, min_open=True, flags=("--mpp",),
                                             help="microns per pixel of the training tiles: whole-slide images "
                                             "are read at the pyramid level that fits and resized to it; "
                                             "recorded in the bundle")
    slide_mpp: float | None = option(None, min=0, min_open=True, help="the slides' level-0 microns per pixel, "
                                     "when their files do not say it")

    def open(self, tile_size: int):
        from ..data.opening import open_tiles

        return open_tiles(self.data, tile_size, large_images=self.large_images, stride=self.stride,
                          scale=self.scale, min_tissue=self.min_tissue, tissue_filter=self.tissue_filter,
                          mpp=self.microns_per_pixel, slide_mpp=self.slide_mpp)


@dataclass
class Run:
    """Where and how a training runs."""

    out: Path | None = option(None, required=True, help="bundle folder to write")
    intent: str = option("new", choices=("new", "resume", "overwrite"),
                         consts={"--resume": "resume", "--overwrite": "overwrite"},
                         help="new folder, resume the training saved in it, or overwrite our bundle there")
    preset: str = option("tiny", help="tiny (32 px, tests), small (64 px, laptop CPU), paper (256 px), or a "
                         "preset JSON file")
    seed: int = seed_option()
    device: str = device_option()
    precision: str = precision_option()
    num_workers: int = option(0, min=0, help="processes reading tiles (0: inline)")
    batch_size: int | None = option(None, min=1, help="tiles per step and process (default: the preset's)")
    learning_rate: float | None = option(None, min=0, min_open=True, flags=("--lr",),
                                         help="learning rate (default: the preset's)")


@dataclass
class AutoencoderStage:
    holdout: float = option(_AE.holdout, min=0, max=0.49, help="fraction of tiles held out to measure the "
                            "autoencoder's reconstruction (PSNR)")
    ae_checkpoint_every: int = option(_AE.checkpoint_every, min=1, help="autoencoder checkpoint every N steps")
    perceptual_weights: Path | None = option(None, help="local LPIPS-VGG16 weights file, or the features/ folder "
                                             "of an audit (an encoder trained on your own tiles); adds the "
                                             "perceptual loss term (off without it)")


@dataclass
class PretrainAutoencoderOptions(TrainingData, Run, AutoencoderStage):
    """``histodiff pretrain-autoencoder``: the KL autoencoder (L1 + KL + patch-GAN) on unlabeled tiles."""

    steps: int = option(_AE.steps, min=1, help="autoencoder training steps")

    def validate(self) -> None:
        check(self)


@dataclass
class PretrainOptions(TrainingData, Run, AutoencoderStage):
    """``histodiff pretrain``: the latent diffusion UNet on unlabeled tiles, after the autoencoder (trained
    first unless ``autoencoder`` names a bundle that has one, or the folder has a finished one)."""

    steps: int = option(_DIFF.steps, min=1, help="diffusion training steps")
    checkpoint_every: int = option(_DIFF.checkpoint_every, min=1, help="diffusion checkpoint every N steps")
    warmup_steps: int | None = option(None, min=0, help="learning-rate warm-up steps (default: the preset's)")
    ema_decay: float | None = option(None, min=0, max=1, help="EMA decay of the UNet weights (default: the "
                                     "preset's)")
    autoencoder: Path | None = option(None, help="bundle whose trained autoencoder to reuse")
    autoencoder_steps: int = option(_AE.steps, min=1, help="autoencoder training steps (when it is trained here)")

    def validate(self) -> None:
        check(self)


def _preset(opts: Run):
    from ..formats.bundle import read_meta
    from ..models.presets import Preset, get_preset

    if opts.intent == "resume" and (Path(opts.out) / "histodiff.json").is_file():
        return Preset.from_dict(read_meta(opts.out)["preset"])
    if opts.preset.endswith(".json"):
        try:
            return Preset.from_dict(json.loads(Path(opts.preset).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise HistodiffError(f"cannot read preset file {opts.preset}: {e}") from None
    return get_preset(opts.preset)


def _ae_options(opts, steps: int) -> _AE:
    return _AE(steps=steps, batch_size=opts.batch_size, learning_rate=opts.learning_rate, seed=opts.seed,
               checkpoint_every=opts.ae_checkpoint_every, holdout=opts.holdout,
               perceptual_weights=str(opts.perceptual_weights) if opts.perceptual_weights else None,
               device=opts.device, precision=opts.precision, num_workers=opts.num_workers)


def _record_mpp(opts) -> None:
    from ..formats.bundle import read_meta, write_meta
    from ..base.devices import is_main_process, wait_for_everyone

    if opts.microns_per_pixel is not None and is_main_process():
        meta = read_meta(opts.out)
        meta["microns_per_pixel"] = opts.microns_per_pixel
        write_meta(opts.out, meta)
    wait_for_everyone()


def _bundle_out(opts):
    from ..base.outdir import output_folder

    return output_folder(opts.out, "bundle", opts.intent, allowed=("new", "resume", "overwrite"))


def pretrain_autoencoder(opts: PretrainAutoencoderOptions, tiles=None):
    """Train (or resume) the autoencoder into ``opts.out`` on ``tiles`` (default: opened from ``opts.data``);
    yields progress, returns a summary."""
    from ..base.outdir import check_output
    from ..train.autoencoder import train_autoencoder

    fit_threads(opts.num_workers)
    opts.validate()
    require(opts, "out", *(["data"] if tiles is None else []))
    check_output(opts.out, "bundle", opts.intent, allowed=("new", "resume", "overwrite"))
    preset = _preset(opts)
    tiles = TrainingData.open(opts, preset.tile_size) if tiles is None else tiles
    with _bundle_out(opts):
        result = yield from train_autoencoder(tiles, opts.out, preset, _ae_options(opts, opts.steps))
        _record_mpp(opts)
    psnr = f"; held-out PSNR {result['psnr']:.2f} dB" if result["psnr"] is not None else ""
    return {**result, "message": f"autoencoder written to {opts.out}/vae{psnr}"}


def pretrain(opts: PretrainOptions, tiles=None):
    """The autoencoder (unless reused), then the diffusion UNet, into ``opts.out``, on ``tiles`` (default:
    opened from ``opts.data``); returns the diffusion summary with the autoencoder's under "autoencoder"."""
    from ..base.devices import wait_for_everyone
    from ..base.outdir import check_output
    from ..formats.bundle import read_meta
    from ..models.presets import Preset
    from ..train.autoencoder import train_autoencoder
    from ..train.diffusion import train_diffusion

    fit_threads(opts.num_workers)
    opts.validate()
    require(opts, "out", *(["data"] if tiles is None else []))
    check_output(opts.out, "bundle", opts.intent, allowed=("new", "resume", "overwrite"))
    if opts.autoencoder is not None:
        preset = Preset.from_dict(read_meta(opts.autoencoder)["preset"])
        if not (Path(opts.autoencoder) / "vae").is_dir():
            raise HistodiffError(f"{opts.autoencoder} has no vae/; train one with `histodiff pretrain-autoencoder`")
    else:
        preset = _preset(opts)
    tiles = TrainingData.open(opts, preset.tile_size) if tiles is None else tiles
    ae = None
    with _bundle_out(opts):
        copy = opts.autoencoder is not None and not (Path(opts.out) / "vae").is_dir()
        wait_for_everyone()  # every process decides before the main one copies
        if copy:
            _copy_autoencoder(opts.autoencoder, opts.out)
        elif opts.autoencoder is None:
            ae = yield from train_autoencoder(tiles, opts.out, preset, _ae_options(opts, opts.autoencoder_steps))
        result = yield from train_diffusion(tiles, opts.out, preset, _DIFF(
            steps=opts.steps, batch_size=opts.batch_size, learning_rate=opts.learning_rate,
            warmup_steps=opts.warmup_steps, ema_decay=opts.ema_decay, seed=opts.seed,
            checkpoint_every=opts.checkpoint_every, device=opts.device, precision=opts.precision,
            num_workers=opts.num_workers))
        _record_mpp(opts)
    try_next = command("sample", opts.out, "-n", 16, "--out", "samples")
    return {**result, "autoencoder": ae, "message": f"bundle written to {opts.out} (latent scale factor "
            f"{result['latent_scale_factor']:.4f}); try: {try_next}"}


def _copy_autoencoder(source, out) -> None:
    import shutil

    from ..formats.bundle import read_meta, write_meta
    from ..base.devices import is_main_process, wait_for_everyone

    if is_main_process():
        from ..formats.bundle import require_intact

        require_intact(source, ("vae",))
        shutil.copytree(Path(source) / "vae", Path(out) / "vae")
        meta = read_meta(source)
        meta["provenance"]["autoencoder"] = {**meta["provenance"].get("autoencoder", {}), "copied_from": str(source)}
        write_meta(out, meta)
    wait_for_everyone()  # the others read the copy

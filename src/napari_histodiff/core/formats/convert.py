"""Which kind of model a path holds, and converting any supported kind into a bundle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..base.errors import HistodiffError
from ..base.options import option

FORMATS = ("bundle", "compvis", "diffusers")
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SUPPORTED = ("a napari-histodiff bundle folder (histodiff.json), a CompVis / HistoDiffusion LatentDiffusion "
             ".ckpt with its YAML config, or a diffusers LDMPipeline folder (model_index.json, unet/, vae/ or vqvae/)")


@dataclass
class ModelSource:
    """How to read a model path: its format and, for CompVis checkpoints, the config and weights."""

    format: str | None = option(None, choices=("bundle", "compvis", "diffusers"),
                                help="what the model path is (default: detected)")
    config: Path | None = option(None, help="YAML config of a CompVis .ckpt (default: beside it or in "
                                 "../configs/*-project.yaml)")
    ema: bool | None = option(None, help="use the EMA weights of a CompVis checkpoint (default: when it has them)")

    def kwargs(self) -> dict:
        return {"format": self.format, "config": self.config, "ema": self.ema}


def detect_format(source) -> str:
    """``bundle``, ``compvis`` or ``diffusers``; a clear error for anything else."""
    from .bundle import META_FILE

    path = Path(source)
    if not path.exists():
        raise HistodiffError(f"{path} is not a bundle folder or checkpoint file: it does not exist. Give {SUPPORTED}.")
    if path.is_dir():
        if (path / "model_index.json").is_file() and not (path / META_FILE).is_file():
            return "diffusers"
        if (path / META_FILE).is_file() or (path / "unet").is_dir() or (path / "vae").is_dir():
            return "bundle"  # a bundle missing histodiff.json gets the bundle's own message
        ckpts = sorted(p.name for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
        hint = f" It holds {', '.join(ckpts)}: pass that file." if ckpts else ""
        raise HistodiffError(f"{path} is not a napari-histodiff bundle (no histodiff.json) nor a diffusers pipeline "
                             f"(no model_index.json).{hint} Give {SUPPORTED}.")
    if path.suffix in CHECKPOINT_SUFFIXES:
        return "compvis"
    raise HistodiffError(f"{path} is not a known model file (suffix {path.suffix or 'none'}). Give {SUPPORTED}.")


def convert_source(source, format: str | None = None, config=None, ema: bool | None = None):
    """An in-memory :class:`bundle.Bundle` for a foreign source (not saved)."""
    fmt = format or detect_format(source)
    if fmt not in FORMATS:
        raise HistodiffError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt != "compvis" and (config is not None or ema is not None):
        raise HistodiffError("{opt:config} and {opt:ema} apply to CompVis .ckpt checkpoints only")
    if fmt == "compvis":
        from .compvis import convert

        return convert(source, config=config, ema=ema)
    if fmt == "diffusers":
        from .diffusers_ldm import convert

        return convert(source)
    from .bundle import load_bundle

    return load_bundle(source, device="cpu")


def open_model(source, device=None, require_unet: bool = True, format: str | None = None, config=None,
               ema: bool | None = None):
    """Open any supported model onto ``device``: our bundle folder, a CompVis / HistoDiffusion ``.ckpt``
    (its YAML beside it, in a Lightning ``configs/*-project.yaml``, or ``config=``), or a diffusers LDM
    pipeline folder (converted in memory; nothing executed). ``format``: ``bundle``, ``compvis`` or
    ``diffusers`` (default: detected). ``ema``: CompVis EMA weights (default: used when present)."""
    from ..base.devices import pick_device
    from .bundle import check_consistent, load_bundle
    from .starter import resolve_model

    source = resolve_model(source)  # a built-in model's name: its folder in the package
    fmt = format or detect_format(source)
    if fmt == "bundle":
        if config is not None or ema is not None:
            raise HistodiffError(f"{source} is a napari-histodiff bundle; config and ema apply to CompVis "
                                 ".ckpt checkpoints only")
        return load_bundle(source, device, require_unet)
    bundle = convert_source(source, fmt, config=config, ema=ema)
    check_consistent(bundle)
    return bundle.to(pick_device(device))


def convert_to_bundle(source, out, format: str | None = None, config=None, ema: bool | None = None,
                      intent: str = "new"):
    """Convert ``source`` and write it as a bundle folder ``out``; returns the bundle. ``intent``: ``new``
    or ``overwrite`` (replaces only our own bundle folder, see :mod:`..base.outdir`)."""
    from ..base.outdir import check_output
    from .bundle import load_bundle, save_bundle

    fmt = format or detect_format(source)
    if fmt == "bundle":
        raise HistodiffError(f"{source} is already a napari-histodiff bundle; copy the folder instead")
    check_output(out, "bundle", intent)
    bundle = convert_source(source, fmt, config=config, ema=ema)
    save_bundle(bundle, out, intent=intent)
    return load_bundle(out, device="cpu")

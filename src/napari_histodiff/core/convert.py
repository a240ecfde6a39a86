"""Which kind of model a path holds, and converting any supported kind into a bundle."""

from __future__ import annotations

from pathlib import Path

from .errors import HistodiffError

FORMATS = ("bundle", "compvis", "diffusers")
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SUPPORTED = ("a napari-histodiff bundle folder (histodiff.json), a CompVis / HistoDiffusion LatentDiffusion "
             ".ckpt with its YAML config, or a diffusers LDMPipeline folder (model_index.json, unet/, vae/ or vqvae/)")


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
        raise HistodiffError("--config and --ema/--no-ema apply to CompVis .ckpt checkpoints only")
    if fmt == "compvis":
        from .convert_compvis import convert

        return convert(source, config=config, ema=ema)
    if fmt == "diffusers":
        from .convert_diffusers import convert

        return convert(source)
    from .bundle import load_bundle

    return load_bundle(source, device="cpu")


def convert_to_bundle(source, out, format: str | None = None, config=None, ema: bool | None = None,
                      overwrite: bool = False):
    """Convert ``source`` and write it as a bundle folder ``out``; returns the bundle."""
    from .bundle import load_bundle, save_bundle

    fmt = format or detect_format(source)
    if fmt == "bundle":
        raise HistodiffError(f"{source} is already a napari-histodiff bundle; copy the folder instead")
    if Path(out).exists() and not overwrite:
        raise HistodiffError(f"{out} already exists; pass --overwrite to replace it, or choose a new folder")
    bundle = convert_source(source, fmt, config=config, ema=ema)
    save_bundle(bundle, out, overwrite=overwrite)
    return load_bundle(out, device="cpu")

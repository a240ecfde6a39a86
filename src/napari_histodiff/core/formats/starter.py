"""Built-in models: a name such as ``he-starter`` that stands for a bundle folder inside the package, and
the compact (float16) copy of a bundle that is shipped there.

Every job that opens a model passes what the user gave through :func:`resolve_model` first; a file or
folder of that name in the working directory wins over the built-in model. The packaged folder is read
only: fine-tuning writes a new bundle elsewhere (``jobs/finetune.py`` refuses an ``--out`` inside it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..base.errors import HistodiffError
from .bundle import float_dtypes

PACKAGE = Path(__file__).resolve().parents[2]  # src/napari_histodiff
STARTERS = {"he-starter": PACKAGE / "models" / "he_starter"}
LABELS = {"he-starter": "64 px H&E, colon, built in"}  # what the Load panel shows beside the name
RECIPE = "python benchmarks/he_starter.py --data ../shared/data --work he-starter-work --ship"
PARTS = ("vae", "unet", "scheduler")  # what inference and fine-tuning need


def has_weights(folder) -> bool:
    """Whether ``folder`` holds a bundle's description and the autoencoder's and UNet's weights."""
    folder = Path(folder)
    return (folder / "histodiff.json").is_file() and all(any((folder / p).glob("*.safetensors"))
                                                         for p in ("vae", "unet"))


def starter_folder(name: str) -> Path:
    """The packaged folder of the built-in model ``name``; a clear error when this copy lacks its weights."""
    if name not in STARTERS:
        raise HistodiffError(f"unknown built-in model {name!r}; the built-in models are {', '.join(STARTERS)}")
    folder = Path(STARTERS[name])
    if not has_weights(folder):
        raise HistodiffError(f"the built-in model {name} is not installed in this copy of napari-histodiff "
                             f"({folder} holds no weights); build it from the project's repository with "
                             f"`{RECIPE}`, or give a bundle folder instead")
    return folder


def resolve_model(source):
    """``source`` as given, or the packaged folder when it is a built-in model's name and no file or folder
    of that name exists here. ``None`` stays ``None``."""
    if source is None or not isinstance(source, (str, Path)):
        return source
    text = str(source)
    if text in STARTERS and not Path(text).exists():
        return starter_folder(text)
    return source


def starter_of(path) -> str | None:
    """The built-in model's name whose packaged folder ``path`` is (or lies in), else None."""
    path = Path(path).resolve()
    for name, folder in STARTERS.items():
        folder = Path(folder).resolve()
        if path == folder or folder in path.parents:
            return name
    return None


def choices() -> dict[str, str]:
    """``{name: what it is}`` of the built-in models this copy has weights for (for the Load panel)."""
    from .bundle import read_meta

    out = {}
    for name, folder in STARTERS.items():
        if has_weights(folder):
            try:
                out[name] = (read_meta(folder).get("starter") or {}).get("what") or name
            except HistodiffError:
                continue
    return out


# -- the compact copy -----------------------------------------------------------------------------

def shrink_bundle(src, dst, intent: str = "new", starter: dict | None = None) -> Path:
    """Write a copy of the bundle ``src`` at ``dst`` with only what inference and fine-tuning need (vae,
    unet with its EMA weights, scheduler, histodiff.json; no training checkpoints, no classifiers), float
    weights stored as float16, with new checksums (files.json). ``starter``: the attribution record
    (name, what, data, licence, attribution, recipe) kept in histodiff.json. ``intent``: ``new`` or
    ``overwrite`` (our own bundle folder only). Loading casts the weights back to float32."""
    from ..base.atomic import partial_path, remove_dead_partials, swap_in
    from ..base.outdir import check_output
    from .bundle import read_meta, require_intact, write_meta
    from .integrity import write_manifest

    src, dst = Path(src), Path(dst)
    meta = read_meta(src)
    missing = [p for p in PARTS if not (src / p).is_dir()]
    if missing:
        raise HistodiffError(f"{src} has no {', '.join(p + '/' for p in missing)}; pre-train it fully "
                             "(`histodiff pretrain`) before making a compact copy")
    if dst.resolve() == src.resolve():
        raise HistodiffError("the compact copy must go to another folder than the bundle itself")
    require_intact(src, PARTS)
    check_output(dst, "bundle", intent)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(dst)
    tmp = partial_path(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for part in PARTS:
            (tmp / part).mkdir()
            for f in sorted((src / part).iterdir()):
                if f.suffix == ".safetensors":
                    _half(f, tmp / part / f.name)
                elif f.is_file() and f.name.endswith(".json") and f.name != "files.json":
                    shutil.copy2(f, tmp / part / f.name)
            write_manifest(tmp / part)
        meta = {**meta, "class_names": [], "storage": {"float_dtype": "float16", "parts": ["vae", "unet"],
                                                       "loaded_as": "float32"}}
        meta.pop("class_counts", None)
        meta["metrics"] = {k: v for k, v in (meta.get("metrics") or {}).items()
                           if not k.startswith(("latent_classifier", "selection_classifier"))}
        if starter is not None:
            meta["starter"] = dict(starter)
        write_meta(tmp, meta)
        swap_in(tmp, dst, "bundle")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _half(src: Path, dst: Path) -> None:
    """A safetensors file with its floating tensors as float16 (others as they are); refuses values that
    float16 cannot hold."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    with safe_open(str(src), framework="pt") as fh:
        metadata = fh.metadata() or {}
        for key in fh.keys():
            t = fh.get_tensor(key)
            if t.is_floating_point():
                t = t.to(torch.float16)
                if not torch.isfinite(t).all():
                    raise HistodiffError(f"{src} holds values too large for float16 in {key}; this bundle "
                                         "cannot be stored compactly")
            tensors[key] = t.contiguous()
    save_file(tensors, str(dst), metadata={**metadata, "format": "pt"})


def note_storage(folder) -> None:
    """Keep histodiff.json's ``storage`` record true after a job re-saved parts of a compact bundle's copy
    (a fine-tuned UNet is written as float32): it lists the parts still stored as float16, or goes."""
    from ..base.devices import is_main_process
    from .bundle import read_meta, write_meta

    folder = Path(folder)
    meta = read_meta(folder)
    if "storage" not in meta or not is_main_process():
        return
    parts = [p for p in ("vae", "unet", "latent_classifier", "selection_classifier")
             if float_dtypes(folder / p) == ["float16"]]
    if parts == meta["storage"].get("parts"):
        return
    if parts:
        meta["storage"] = {**meta["storage"], "parts": parts}
    else:
        meta.pop("storage")
    write_meta(folder, meta)

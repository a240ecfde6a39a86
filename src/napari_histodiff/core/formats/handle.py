"""A model as the GUI holds it: where its bundle folder is and what it holds, without its weights.

Jobs open the folder themselves (in their own process), so a model is never in memory twice. A foreign
checkpoint (CompVis .ckpt, diffusers folder) is converted once into a bundle in the user's cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import MetaFields, read_meta

PARTS = ("vae", "unet", "latent_classifier", "selection_classifier")


@dataclass(frozen=True)
class ModelHandle(MetaFields):
    """A checked bundle folder: ``meta`` (its histodiff.json), the device jobs use, parameter counts per
    network class, and the checkpoint it was converted from (``source``), if any."""

    path: Path
    meta: dict
    device: str
    parameters: dict = field(default_factory=dict)
    parts: tuple = ()
    source: Path | None = None

    def has(self, part: str) -> bool:
        return part in self.parts


def describe_folder(path, device, source=None) -> ModelHandle:
    """The handle of a bundle folder from its histodiff.json, configs and safetensors headers (no weight is
    read); jobs check the weights when they open them."""
    import json

    path = Path(path)
    meta = read_meta(path)
    parts = tuple(p for p in PARTS if (path / p).is_dir())
    counts = {}
    for part in parts:
        try:
            name = json.loads((path / part / "config.json").read_text()).get("_class_name") or part
        except (OSError, ValueError):
            name = part
        counts[name] = sum(_weights(f) for f in sorted((path / part).glob("*.safetensors")))
    return ModelHandle(path=path, meta=meta, device=str(device), parameters=counts, parts=parts,
                       source=Path(source) if source is not None else None)


def _weights(f: Path) -> int:
    """The number of values in a safetensors file, from its header."""
    import json
    import math
    import struct

    with open(f, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def converted_folder(source, config=None, ema=None) -> Path:
    """Where a foreign checkpoint's converted bundle is kept: the user's cache, one folder per checkpoint
    version (path, size, modification time) and conversion options."""
    source = Path(source).resolve()
    st = source.stat()
    key = f"{source}|{st.st_size}|{st.st_mtime_ns}|{config and Path(config).resolve()}|{ema}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    from ..base.names import safe_name
    from .integrity import cache_folder

    return cache_folder() / "converted" / f"{safe_name(source.stem)}-{digest}"

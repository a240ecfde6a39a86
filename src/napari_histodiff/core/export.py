"""Export of augmentation sets: ``<class>/<id>.tif`` + ``manifest.csv`` + ``export.json``.

The folder is ImageFolder-style, so a downstream classifier trains on it directly. It is
written into a temporary sibling folder and renamed at the end: an interrupted export leaves
no partial set, and an existing set is replaced only once the new one is complete.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import HistodiffError
from .events import Progress
from .records import read_records

MANIFEST = "manifest.csv"
EXPORT_JSON = "export.json"
MANIFEST_COLUMNS = ["file", "class", "source", "kept", "confidence", "predicted_class", "centroid_distance",
                    "seed", "sample_seed", "sampler", "steps", "guidance", "eta", "bundle_hash", "id"]


@dataclass
class ExportOptions:
    include_real: bool = False  # add the labeled real tiles, marked "real"
    fmt: str = "tif"  # or "png"
    only_kept: bool = True  # False: every tile, with its kept flag
    overwrite: bool = False

    def validate(self) -> None:
        if self.fmt not in ("tif", "png"):
            raise HistodiffError(f"unknown export format {self.fmt!r}; use tif or png")


def _write(path: Path, tile: np.ndarray, row: dict, fmt: str) -> None:
    if fmt == "tif":
        import tifffile

        tifffile.imwrite(path, tile, photometric="rgb", description=json.dumps(row))
    else:
        import imageio.v3 as iio

        iio.imwrite(path, tile)


def _synthetic_rows(sample_dirs, only_kept):
    """(source path, manifest row) of every synthetic tile to export; ids unique across folders."""
    import tifffile

    seen, rows, skipped = set(), [], 0
    for folder in map(Path, sample_dirs):
        records = read_records(folder)
        if only_kept and any(r.kept is None for r in records):
            raise HistodiffError(f"{folder} has tiles that were not selected yet; run `histodiff select` on it "
                                 "first, or pass --all to export every tile")
        for r in records:
            if only_kept and not r.kept:
                continue
            cls = r.target_class or r.predicted_class
            if not cls:
                skipped += 1
                continue
            tile_id = r.id if r.id not in seen else f"{folder.name}_{r.id}"
            seen.add(tile_id)
            row = {**r.as_row(), "class": cls, "id": tile_id}
            rows.append((lambda p=folder / r.file: tifffile.imread(p), row))
    return rows, skipped


def _real_rows(real_tiles):
    rows = []
    for k in range(len(real_tiles)):
        label = real_tiles.label(k)
        if label is None:
            raise HistodiffError("real tiles need classes: give a folder with one sub-folder per class")
        row = {c: "" for c in MANIFEST_COLUMNS} | {"class": real_tiles.class_names[label], "source": "real",
                                                   "kept": True, "id": f"real_{k:05d}"}
        rows.append((lambda k=k: real_tiles[k], row))
    return rows


def export_set(sample_dirs, out, options: ExportOptions | None = None, real_tiles=None, params: dict | None = None):
    """Write the set; yields :class:`Progress` per tile; returns ``{"out", "counts", "total", "skipped"}``."""
    from .bundle import package_versions

    opts = options or ExportOptions()
    opts.validate()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not opts.overwrite:
        raise HistodiffError(f"export folder {out} already exists; pass --overwrite to replace it")
    rows, skipped = _synthetic_rows(sample_dirs, opts.only_kept)
    if opts.include_real:
        if real_tiles is None:
            raise HistodiffError("include_real needs the labeled real tiles")
        rows += _real_rows(real_tiles)
    if not rows:
        raise HistodiffError("nothing to export: no tile was kept (lower --threshold, change --rule, or pass --all)")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    try:
        manifest = []
        for i, (load, row) in enumerate(rows):
            (tmp / row["class"]).mkdir(parents=True, exist_ok=True)
            row = {c: row.get(c, "") for c in MANIFEST_COLUMNS} | {"file": f"{row['class']}/{row['id']}.{opts.fmt}"}
            _write(tmp / row["file"], load(), row, opts.fmt)
            manifest.append(row)
            counts.setdefault(row["class"], {"synthetic": 0, "real": 0})[row["source"] or "synthetic"] += 1
            yield Progress("export", i + 1, len(rows))
        with open(tmp / MANIFEST, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(manifest)
        (tmp / EXPORT_JSON).write_text(json.dumps({
            "format": "napari-histodiff-export", "version": 1, "parameters": params or {},
            "options": asdict(opts), "counts": counts, "skipped": skipped,
            "sources": [str(d) for d in sample_dirs], "versions": package_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "counts": counts, "total": len(manifest), "skipped": skipped}


def read_export(folder) -> tuple[np.ndarray, list[dict]]:
    """Read an exported set back: uint8 (N, H, W, 3) tiles in manifest order and the manifest rows."""
    import imageio.v3 as iio
    import tifffile

    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise HistodiffError(f"{folder} is not an exported set ({MANIFEST} is missing); create one with `histodiff export`")
    with open(folder / MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    tiles = []
    for row in rows:
        path = folder / row["file"]
        if not path.is_file():
            raise HistodiffError(f"{folder}/{MANIFEST} names {row['file']}, which is missing; export the set again")
        tiles.append(tifffile.imread(path) if path.suffix == ".tif" else iio.imread(path))
    return (np.stack(tiles) if tiles else np.zeros((0, 0, 0, 3), np.uint8)), rows

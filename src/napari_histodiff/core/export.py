"""Export of augmentation sets: ImageFolder-style ``<class>/<id>.tif`` + ``manifest.csv`` + ``export.json``.

Written into a temporary sibling folder and renamed at the end: an interrupted export leaves no
partial set, and an existing set is replaced only once the new one is complete."""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .bundle import package_versions
from .outputs import write_png, write_tile
from .errors import HistodiffError
from .events import Progress
from .records import RECORDS_FILE, read_records
from .tiles import read_rgb

MANIFEST = "manifest.csv"
EXPORT_JSON = "export.json"
MANIFEST_COLUMNS = ["file", "class", "source", "kept", "confidence", "predicted_class", "centroid_distance",
                    "seed", "sample_seed", "sampler", "steps", "guidance", "eta", "strength", "source_tile",
                    "bundle_hash", "id"]
_NUMBERS = {"confidence": float, "centroid_distance": float, "seed": int, "sample_seed": int, "steps": int,
            "guidance": float, "eta": float, "strength": float}


@dataclass
class ExportOptions:
    include_real: bool = False  # add the labeled real tiles, marked "real"
    fmt: str = "tif"  # or "png"
    only_kept: bool = True  # False: every tile, with its kept flag
    overwrite: bool = False

    def validate(self) -> None:
        if self.fmt not in ("tif", "png"):
            raise HistodiffError(f"unknown export format {self.fmt!r}; use 'tif' or 'png'")


def _write(path: Path, tile: np.ndarray, description: dict, fmt: str) -> None:
    if fmt == "tif":
        write_tile(path, tile, description)
    else:
        write_png(path, tile)


def _folder_name(cls: str) -> str:
    if cls in (".", "..") or "/" in cls or "\\" in cls:
        raise HistodiffError(f"class name {cls!r} cannot be a folder name; rename the class (no slashes, not . or ..)")
    return cls


def _unique(tile_id: str, prefix: str, seen: set) -> str:
    """``tile_id``, or ``<prefix>_<tile_id>`` (then ``..._2``, ...) when another folder already used it."""
    new, k = tile_id, 1
    while new in seen:
        new, k = f"{prefix}_{tile_id}" + (f"_{k}" if k > 1 else ""), k + 1
    seen.add(new)
    return new


def _synthetic_rows(sample_dirs, only_kept, seen):
    """(loader, manifest row, TIFF description) of every synthetic tile to export, and the skipped count."""
    rows, skipped = [], 0
    for folder in sample_dirs:
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
            path = folder / r.file
            if not path.is_file():
                raise HistodiffError(f"{folder / RECORDS_FILE} names {r.file}, which is missing; sample again")
            row = {**r.as_row(), "class": _folder_name(cls), "id": _unique(r.id, folder.name, seen)}
            rows.append((lambda p=path: read_rgb(p), row, {**r.as_row(), "class": cls, "export_id": row["id"]}))
    return rows, skipped


def _real_rows(real_tiles, seen):
    rows = []
    for k in range(len(real_tiles)):
        label = real_tiles.label(k)
        if label is None:
            raise HistodiffError(f"real tile {real_tiles.origin(k)} has no class; use one sub-folder per class")
        cls = _folder_name(real_tiles.class_names[label])
        row = {"class": cls, "source": "real", "kept": True, "id": _unique(f"real_{k:05d}", "real", seen)}
        rows.append((lambda k=k: real_tiles[k], row, {**row, "origin": real_tiles.origin(k)}))
    return rows


def _check_out(out: Path, sample_dirs, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise HistodiffError(f"{out} is a file; choose a folder for the export")
    for d in sample_dirs:
        if out.resolve() == d.resolve() or out.resolve() in d.resolve().parents:
            raise HistodiffError(f"export folder {out} would replace the sample folder {d}; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HistodiffError(f"export folder {out} already exists; pass --overwrite to replace it")


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out``; an old ``out`` is moved aside first and removed only after."""
    if not out.exists():
        return os.replace(tmp, out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_set(sample_dirs, out, options: ExportOptions | None = None, real_tiles=None, params: dict | None = None):
    """Write the set; yields :class:`Progress` per tile; returns ``{"out", "counts", "total", "skipped"}``."""
    opts = options or ExportOptions()
    opts.validate()
    out = Path(out)
    dirs = [Path(sample_dirs)] if isinstance(sample_dirs, (str, os.PathLike)) else [Path(d) for d in sample_dirs]
    _check_out(out, dirs, opts.overwrite)
    seen: set = set()
    rows, skipped = _synthetic_rows(dirs, opts.only_kept, seen)
    if opts.include_real and real_tiles is None:
        raise HistodiffError("include_real needs the labeled real tiles; give a folder of them (--include-real)")
    rows += _real_rows(real_tiles, seen) if opts.include_real else []
    if not rows:
        raise HistodiffError("nothing to export: no tile was kept (lower --threshold, change --rule, or pass --all)")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    counts, manifest, shape = {}, [], None
    try:
        for i, (load, row, description) in enumerate(rows):
            row = {**{c: row.get(c, "") for c in MANIFEST_COLUMNS}, "file": f"{row['class']}/{row['id']}.{opts.fmt}"}
            tile = np.asarray(load())
            shape = shape or tile.shape
            if tile.shape != shape:
                raise HistodiffError(f"tile {row['id']} is {tile.shape[1]}x{tile.shape[0]} px, the others "
                                     f"{shape[1]}x{shape[0]} px; open the real tiles at the sample tile size")
            (tmp / row["class"]).mkdir(parents=True, exist_ok=True)
            _write(tmp / row["file"], tile, {**description, "file": row["file"]}, opts.fmt)
            manifest.append(row)
            source = "real" if row["source"] == "real" else "synthetic"
            counts.setdefault(row["class"], {"synthetic": 0, "real": 0})[source] += 1
            yield Progress("export", i + 1, len(rows), message=row["file"])
        with open(tmp / MANIFEST, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(manifest)
        (tmp / EXPORT_JSON).write_text(json.dumps({
            "format": "napari-histodiff-export", "version": 1, "parameters": params or {},
            "options": asdict(opts), "counts": counts, "total": len(manifest), "skipped": skipped,
            "sources": [str(d) for d in dirs], "versions": package_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }, indent=2), encoding="utf-8")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "counts": counts, "total": len(manifest), "skipped": skipped}


def _typed(row: dict) -> dict:
    numbers = {k: None if row.get(k) in ("", None) else kind(row[k]) for k, kind in _NUMBERS.items()}
    return {**row, **numbers, "kept": {"True": True, "False": False}.get(row.get("kept", ""))}


def read_export(folder) -> tuple[np.ndarray, list[dict]]:
    """Read an exported set back: uint8 (N, H, W, 3) tiles in manifest order and the manifest rows
    (numbers as int / float, ``kept`` as True / False, empty fields as None)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise HistodiffError(f"{folder} is not an exported set (no {MANIFEST}); create one with `histodiff export`")
    try:
        with open(folder / MANIFEST, newline="", encoding="utf-8") as f:
            rows = [_typed(r) for r in csv.DictReader(f)]
    except (KeyError, ValueError) as e:
        raise HistodiffError(f"{folder / MANIFEST} is not a readable export manifest ({e}); export the set again")
    tiles = []
    for row in rows:
        if not row.get("file") or not (folder / row["file"]).is_file():
            raise HistodiffError(f"{folder / MANIFEST} names {row.get('file')!r}, which is missing; export again")
        tiles.append(read_rgb(folder / row["file"]))
    if len({t.shape for t in tiles}) > 1:
        raise HistodiffError(f"the tiles of {folder} differ in size; export the set again")
    return (np.stack(tiles) if tiles else np.zeros((0, 0, 0, 3), np.uint8)), rows

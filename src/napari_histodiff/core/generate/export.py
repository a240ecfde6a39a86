"""Export of augmentation sets: ImageFolder-style ``<class>/<id>.tif`` + ``manifest.csv`` + ``export.json``.

Written into a temporary sibling folder and renamed at the end: an interrupted export leaves no
partial set, and an existing set is replaced (or appended to) only once the new one is complete.
The output folder follows :mod:`..base.outdir`: only a folder with ``export.json`` is ever replaced
or added to."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..formats.bundle import package_versions
from ..formats.images import write_png, write_tile
from ..base.disk import check_free_space, tile_bytes
from ..base.errors import HistodiffError
from ..base.names import inside, safe_name
from ..base.options import check, option, record
from ..base.atomic import partial_path, remove_dead_partials, swap_in
from ..base.outdir import check_output, is_marked
from ..base.events import Progress
from ..formats.records import RECORDS_FILE, parse_bool, parse_number, read_csv, read_records

MANIFEST = "manifest.csv"
EXPORT_JSON = "export.json"
MANIFEST_COLUMNS = ["file", "class", "source", "kept", "confidence", "predicted_class", "centroid_distance",
                    "seed", "sample_seed", "sampler", "steps", "guidance", "eta", "strength", "source_tile",
                    "bundle_hash", "id", "near_copy", "similarity", "nearest_real"]
_NUMBERS = {"confidence": float, "centroid_distance": float, "seed": int, "sample_seed": int, "steps": int,
            "guidance": float, "eta": float, "strength": float, "similarity": float}


@dataclass
class ExportOptions:
    """``histodiff export``: the kept tiles of sample folders as an ImageFolder-style augmentation set."""

    samples: list[Path] = option(factory=list, positional=True, required=True, gui=False, metavar="SAMPLES",
                                 help="sample folders (from `histodiff sample` or the napari Sample widget)")
    out: Path | None = option(None, required=True, gui=False, help="export folder to write")
    intent: str = option("new", choices=("new", "overwrite", "append"),
                         consts={"--overwrite": "overwrite", "--append": "append"}, gui=False,
                         help="new folder, overwrite our exported set there, or append classes and tiles to it")
    include_real: Path | None = option(None, metavar="DIR", gui=False,
                                       help="also copy these labeled real tiles (class sub-folders), marked as real")
    fmt: str = option("tif", choices=("tif", "png"), flags=("--format",), consts={"--png": "png"},
                      label="file format", help="file format of the exported tiles")
    only_kept: bool = option(True, consts={"--all": False}, label="kept tiles only",
                             help="export only the kept tiles (--all: every tile, with its kept flag)")
    audit: list[Path] = option(factory=list, metavar="DIR", gui=False,
                               help="audit folders (`histodiff audit`) of these sample folders: each tile's "
                               "near-copy flag and similarity go into the manifest, and near-copies are left out")
    keep_near_copies: bool = option(False, label="keep near-copies",
                                    help="export the tiles an audit flags as near-copies of real tiles too")

    def validate(self) -> None:
        check(self)


def _write(path: Path, tile: np.ndarray, description: dict, fmt: str) -> None:
    if fmt == "tif":
        write_tile(path, tile, description)
    else:
        write_png(path, tile)


def _unique(tile_id: str, prefix: str, seen: set) -> str:
    """``tile_id``, or ``<prefix>_<tile_id>`` (then ``..._2``, ...) when another folder already used it."""
    new, k = tile_id, 1
    while new in seen:
        new, k = f"{prefix}_{tile_id}" + (f"_{k}" if k > 1 else ""), k + 1
    seen.add(new)
    return new


def selection_report(sample_dirs, earlier: dict | None = None) -> dict:
    """Kept synthetic tiles per class over ``sample_dirs`` (plus ``earlier``, the report of an export
    appended to) and, for each class that kept none, why (with the threshold each folder was selected with)."""
    from .sample_set import read_selection_rule
    from .selection import class_report

    kept = dict((earlier or {}).get("kept_per_class") or {})
    reasons: dict[str, list[str]] = {c: [why] for c, why in ((earlier or {}).get("classes_without_tiles") or {}).items()}
    for folder in sample_dirs:
        report = class_report(read_records(folder), read_selection_rule(folder))
        for c, n in report["kept_per_class"].items():
            kept[c] = kept.get(c, 0) + n
        for c, why in report["classes_without_tiles"].items():
            reasons.setdefault(c, []).append(why if len(sample_dirs) == 1 else f"{Path(folder).name}: {why}")
    return {"kept_per_class": kept,
            "classes_without_tiles": {c: "; ".join(reasons.get(c) or ["no tile was kept"])
                                      for c, n in kept.items() if n == 0}}


def _audited(audit_dirs) -> dict:
    """``{tile key: (near_copy, similarity, nearest_real)}`` over the audit folders."""
    from ..formats.audit import read_audit

    found = {}
    for folder in audit_dirs:
        found.update(read_audit(folder))
    return found


def _synthetic_rows(sample_dirs, only_kept, seen, audit=None, keep_near_copies=False):
    """(loader, manifest row, TIFF description) of every synthetic tile to export, the skipped count and
    the near-copies left out (``audit``: :func:`_audited`; None: not audited)."""
    from ..data.tiles import read_rgb
    from ..formats.audit import tile_key

    rows, skipped, copies = [], 0, 0
    for folder in sample_dirs:
        records = read_records(folder)
        if only_kept and any(r.kept is None for r in records):
            raise HistodiffError(f"{folder} has tiles that were not selected yet; run `histodiff select` on it "
                                 "first, or export every tile with {opt:only_kept=false}")
        for r in records:
            if only_kept and not r.kept:
                continue
            cls = r.target_class or r.predicted_class
            if not cls:
                skipped += 1
                continue
            path = inside(folder, r.file, str(folder / RECORDS_FILE))
            if not path.is_file():
                raise HistodiffError(f"{folder / RECORDS_FILE} names {r.file}, which is missing; sample again")
            checked = {}
            if audit is not None:
                near, sim, nearest = audit.get(tile_key(path), (None, None, ""))
                if near and not keep_near_copies:
                    copies += 1
                    continue
                checked = {"near_copy": "" if near is None else near, "similarity": "" if sim is None else sim,
                           "nearest_real": nearest}
            row = {**r.as_row(), **checked, "class": cls, "id": _unique(r.id, folder.name, seen)}
            rows.append((lambda p=path: read_rgb(p), row, {**r.as_row(), "class": cls, "export_id": row["id"]}))
    return rows, skipped, copies


def _real_rows(real_tiles, seen, first: int = 0):
    rows = []
    for k in range(len(real_tiles)):
        label = real_tiles.label(k)
        if label is None:
            raise HistodiffError(f"real tile {real_tiles.origin(k)} has no class; use one sub-folder per class")
        cls = real_tiles.class_names[label]
        row = {"class": cls, "source": "real", "kept": True, "id": _unique(f"real_{first + k:05d}", "real", seen)}
        rows.append((lambda k=k: real_tiles[k], row, {**row, "origin": real_tiles.origin(k)}))
    return rows


def _check_sources(out: Path, sample_dirs) -> None:
    for d in sample_dirs:
        if out.resolve() == d.resolve() or out.resolve() in d.resolve().parents:
            raise HistodiffError(f"export folder {out} would replace the sample folder {d}; choose another "
                                 "{opt:out}")
    seen = set()
    for d in sample_dirs:
        if d.resolve() in seen:
            raise HistodiffError(f"sample folder {d} is given twice; give each sample folder once")
        seen.add(d.resolve())


class _Existing:
    """The export in ``out`` that an append adds to: its manifest rows (as written), export.json and tile shape."""

    def __init__(self, out: Path):
        from ..data.tiles import read_rgb

        self.out = out
        try:
            self.meta = json.loads((out / EXPORT_JSON).read_text(encoding="utf-8"))
            self.rows = [{c: row.get(c) or "" for c in MANIFEST_COLUMNS} for row in read_csv(out / MANIFEST)]
            if not isinstance(self.meta, dict):
                raise ValueError(f"{EXPORT_JSON} is not a JSON object")
        except (OSError, ValueError) as e:
            raise HistodiffError(f"cannot append to the exported set {out}: its {EXPORT_JSON} or {MANIFEST} is "
                                 f"not readable ({e}); export to a new folder") from None
        for row in self.rows:
            if not row["file"] or not inside(out, row["file"], str(out / MANIFEST)).is_file():
                raise HistodiffError(f"cannot append to the exported set {out}: {MANIFEST} names "
                                     f"{row['file']!r}, which is missing; export to a new folder")
        self.shape = None
        if self.rows:
            size = self.meta.get("tile_size")
            self.shape = (size, size, 3) if isinstance(size, int) else read_rgb(out / self.rows[0]["file"]).shape
        self.sources = [str(s) for s in self.meta.get("sources", [])]
        self.real_sources = [str(s) for s in self.meta.get("real_sources", [])]

    def check_new(self, dirs, real_root) -> None:
        known = {Path(s).resolve() for s in self.sources}
        for d in dirs:
            if d.resolve() in known:
                raise HistodiffError(f"the exported set {self.out} already holds the tiles of sample folder {d}; "
                                     "each sample folder is appended once")
        if real_root is not None and Path(real_root).resolve() in {Path(s).resolve() for s in self.real_sources}:
            raise HistodiffError(f"the exported set {self.out} already holds the real tiles of {real_root}; "
                                 "leave out {opt:include_real} to append only synthetic tiles")

    def copy_into(self, tmp: Path) -> None:
        """Hard-link (or copy) the existing tiles into ``tmp``; they are never written in place."""
        for row in self.rows:
            dest = tmp / row["file"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.out / row["file"], dest)
            except OSError:
                shutil.copy2(self.out / row["file"], dest)


def _first_tile_size(sample_dirs) -> int:
    from ..data.tiles import read_rgb

    for folder in sample_dirs:
        records = read_records(folder)
        if records:
            return read_rgb(folder / records[0].file).shape[0]
    raise HistodiffError(f"{', '.join(map(str, sample_dirs))} hold no tiles; sample first")


def export_set(sample_dirs, out, options: ExportOptions | None = None, real_tiles=None, params: dict | None = None):
    """Write the set (or, with intent ``append``, add to our set in ``out``); yields :class:`Progress`
    per new tile; returns ``{"out", "counts", "total", "skipped"}`` of the whole set.

    ``out`` follows :mod:`..base.outdir`: a folder holding anything but our exported set is never
    touched. Real tiles come from ``real_tiles`` (a tile set) or are opened from ``options.include_real``
    at the sample tile size."""
    from ..data.tiles import TileFolder

    out = Path(out)
    dirs = [Path(sample_dirs)] if isinstance(sample_dirs, (str, os.PathLike)) else [Path(d) for d in sample_dirs]
    opts = dataclasses.replace(options or ExportOptions(), samples=dirs, out=out)
    opts.validate()
    _check_sources(out, dirs)
    check_output(out, "export", opts.intent, allowed=("new", "overwrite", "append"))
    existing = _Existing(out) if opts.intent == "append" and is_marked(out, "export") else None
    real_root = opts.include_real if opts.include_real is not None else getattr(real_tiles, "root", None)
    if existing is not None:
        existing.check_new(dirs, real_root)
    seen: set = {row["id"] for row in existing.rows} if existing else set()
    audit = _audited(opts.audit) if opts.audit else None
    rows, skipped, copies = _synthetic_rows(dirs, opts.only_kept, seen, audit, opts.keep_near_copies)
    if copies:
        yield Progress("warning", 0, 0, message=f"{copies} near-cop{'y' if copies == 1 else 'ies'} of real tiles "
                       "left out (the audit flags them; {opt:keep_near_copies} exports them too)")
    report = selection_report(dirs, existing.meta if existing else None)
    if not opts.only_kept:
        report["classes_without_tiles"] = {}  # every tile is exported, kept or not
    from .selection import report_lines

    for line in report_lines(report):
        yield Progress("warning", 0, 0, message=line.replace("the augmentation set will have", "the exported set has"))
    if real_tiles is None and opts.include_real is not None:
        size = existing.shape[0] if existing and existing.shape else _first_tile_size(dirs)
        real_tiles = TileFolder(opts.include_real, size)
    if real_tiles is not None:
        first = sum(row["source"] == "real" for row in existing.rows) if existing else 0
        rows += _real_rows(real_tiles, seen, first)
    real_sources = [str(real_root)] if real_tiles is not None and real_root is not None else []
    if not rows:
        raise HistodiffError("nothing to export: no tile was kept (select again with a lower {opt:threshold} or "
                             "another {opt:rule}, or export every tile with {opt:only_kept=false})")
    size = existing.shape[0] if existing and existing.shape else np.asarray(rows[0][0]()).shape[0]
    check_free_space(out, (len(rows) + (len(existing.rows) if existing else 0)) * tile_bytes(size, opts.fmt),
                     f"{len(rows)} tiles of {size} px")  # an append copies the existing tiles too
    remove_dead_partials(out)
    tmp = partial_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = list(existing.rows) if existing else []
    shape = existing.shape if existing else None
    others = f"the tiles already in {out}"
    try:
        tmp.mkdir(parents=True)
        if existing:
            existing.copy_into(tmp)
        folders = _Folders(manifest)
        for i, (load, row, description) in enumerate(rows):
            row = {**{c: row.get(c, "") for c in MANIFEST_COLUMNS}}
            row["file"] = folders.file(row["class"], row["id"], opts.fmt)
            tile = np.asarray(load())
            if shape is None:
                shape, others = tuple(tile.shape), "the others"
            if tuple(tile.shape) != tuple(shape):
                raise HistodiffError(f"tile {row['id']} is {tile.shape[1]}x{tile.shape[0]} px, {others} "
                                     f"{shape[1]}x{shape[0]} px; one set holds tiles of one size (export these "
                                     "to a new folder, or open the real tiles at the sample tile size)")
            (tmp / row["file"]).parent.mkdir(parents=True, exist_ok=True)
            _write(tmp / row["file"], tile, {**description, "file": row["file"]}, opts.fmt)
            manifest.append(row)
            yield Progress("export", i + 1, len(rows), message=row["file"])
        with open(tmp / MANIFEST, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(manifest)
        counts = _counts(manifest)
        skipped += existing.meta.get("skipped", 0) if existing else 0
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        run = {"parameters": params or {}, "options": record(opts), "sources": [str(d) for d in dirs],
               "created": now}
        if existing:
            meta = dict(existing.meta)
            meta["appended"] = [*meta.get("appended", []), run]
            meta["sources"] = existing.sources + run["sources"]
            meta["real_sources"] = existing.real_sources + real_sources
        else:
            meta = {"format": "napari-histodiff-export", "version": 1, **run, "versions": package_versions(),
                    "real_sources": real_sources}
        run["audit"] = {"folders": [str(a) for a in opts.audit], "near_copies_left_out": copies,
                        "kept_near_copies": opts.keep_near_copies} if opts.audit else None
        meta.update(counts=counts, total=len(manifest), skipped=skipped, tile_size=int(shape[0]), **report,
                    audit=run["audit"] if not existing else meta.get("audit"))
        (tmp / EXPORT_JSON).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        swap_in(tmp, out, "export")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "counts": counts, "total": len(manifest), "skipped": skipped, **report,
            "audited": bool(opts.audit), "near_copies_left_out": copies}


class _Folders:
    """One safe, unique folder per class name (those of an appended-to set kept as they are)."""

    def __init__(self, manifest):
        self.map = {row["class"]: row["file"].split("/")[0] for row in manifest if "/" in row["file"]}
        self.taken = set(self.map.values())
        self.files: dict[str, set] = {}
        for row in manifest:
            folder, _, name = row["file"].rpartition("/")
            self.files.setdefault(folder, set()).add(name.rsplit(".", 1)[0])

    def file(self, cls: str, tile_id: str, fmt: str) -> str:
        """``<class folder>/<tile file>``, both safe and unique."""
        if cls not in self.map:
            self.map[cls] = safe_name(cls, self.taken)
        folder = self.map[cls]
        return f"{folder}/{safe_name(tile_id, self.files.setdefault(folder, set()))}.{fmt}"


def _counts(manifest) -> dict:
    counts = {}
    for row in manifest:
        source = "real" if row["source"] == "real" else "synthetic"
        counts.setdefault(row["class"], {"synthetic": 0, "real": 0})[source] += 1
    return counts


def _typed(row: dict, path) -> dict:
    def where(column):
        return lambda: f"{path} row {row.get('_line')}, column {column},"

    numbers = {k: parse_number(row.get(k), kind, where(k)) for k, kind in _NUMBERS.items()}
    return {**row, **numbers, "kept": parse_bool(row.get("kept"), where("kept")),
            "near_copy": parse_bool(row.get("near_copy"), where("near_copy"))}


def read_export(folder) -> tuple[np.ndarray, list[dict]]:
    """Read an exported set back: uint8 (N, H, W, 3) tiles in manifest order and the manifest rows
    (numbers as int / float, ``kept`` as True / False, empty fields as None)."""
    from ..data.tiles import read_rgb

    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise HistodiffError(f"{folder} is not an exported set (no {MANIFEST}); create one with `histodiff export`")
    try:
        rows = [_typed(r, folder / MANIFEST) for r in read_csv(folder / MANIFEST)]
    except (KeyError, ValueError) as e:
        raise HistodiffError(f"{folder / MANIFEST} is not a readable export manifest ({e}); export the set again")
    tiles = []
    for row in rows:
        if not row.get("file") or not inside(folder, row["file"], str(folder / MANIFEST)).is_file():
            raise HistodiffError(f"{folder / MANIFEST} names {row.get('file')!r}, which is missing; export again")
        tiles.append(read_rgb(folder / row["file"]))
    if len({t.shape for t in tiles}) > 1:
        raise HistodiffError(f"the tiles of {folder} differ in size; export the set again")
    return (np.stack(tiles) if tiles else np.zeros((0, 0, 0, 3), np.uint8)), rows

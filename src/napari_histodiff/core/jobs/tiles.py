"""The tiles job: whole-slide images (with QuPath annotations) cut into tiles at a chosen resolution.

Writes an ImageFolder (``CLASS/NAME.png``, or unlabelled tiles at the top) with ``tiles.csv``
(slide, level, x, y, size in level-0 px, mpp, class, covered fraction), or WebDataset-style tar shards
(``shard-000000.tar`` holding ``KEY.png`` + ``KEY.json``) for large collections. Built in a hidden
folder and swapped in when complete; tiles are streamed, never held together in memory.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import HistodiffError
from ..base.events import Progress, warning
from ..base.names import safe_name
from ..base.options import check, option, record, require

MANIFEST = "tiles.csv"
COLUMNS = ["file", "slide", "level", "x", "y", "size0", "mpp", "class", "covered"]


@dataclass
class TilesOptions:
    """``histodiff tiles``: tiles of whole-slide images at a chosen resolution, with their classes."""

    slides: list[Path] = option(factory=list, positional=True, required=True, metavar="SLIDE",
                                help="slides (SVS, NDPI, MRXS, SCN, OME-TIFF, pyramidal TIFF, ...), folders of "
                                "slides, or .txt files listing them")
    out: Path | None = option(None, required=True, help="folder to write")
    intent: str = option("new", choices=("new", "overwrite"), consts={"--overwrite": "overwrite"},
                         help="new folder, or overwrite our tile folder there")
    annotations: list[Path] = option(factory=list, metavar="GEOJSON",
                                     help="QuPath GeoJSON files (matched to slides by name, or in order); "
                                     "default: none (unlabelled tissue tiles)")
    tile_size: int = option(256, min=8, help="tile size in pixels")
    mpp: float | None = option(None, min=0, min_open=True, help="microns per pixel of the tiles (read from the "
                               "pyramid level that fits, then resized); default: level 0")
    scale: float | None = option(None, min=0, min_open=True, help="magnification factor instead of --mpp, for "
                                 "slides without microns per pixel (0.5: half resolution)")
    slide_mpp: float | None = option(None, min=0, min_open=True, help="the slides' level-0 microns per pixel, "
                                     "when their files do not say it")
    stride: int | None = option(None, min=1, help="grid step in tile pixels (default: the tile size)")
    min_tissue: float = option(0.5, min=0, max=1, help="fraction of tissue an unlabelled tile needs")
    tissue_filter: bool = option(True, help="keep only tissue tiles (unlabelled tiling)")
    min_fraction: float = option(0.5, min=0, max=1, help="fraction of a tile one class must cover to label it")
    detections: bool = option(False, help="also use QuPath detections and cells, not only annotations")
    fmt: str = option("png", choices=("png", "tif"), flags=("--format",), help="tile file format")
    shard_size: int = option(0, min=0, help="write tar shards of this many tiles instead of files (0: files)")

    def validate(self) -> None:
        check(self)
        if self.mpp is not None and self.scale is not None:
            raise HistodiffError("give {opt:mpp} or {opt:scale}, not both")


def open_slide_tiles(opts: TilesOptions):
    """The tile set the options describe (labelled when annotations are given)."""
    from ..data.opening import open_tiles

    kinds = ("annotation", "detection", "cell") if opts.detections else ("annotation",)
    annotations = opts.annotations or None
    tiles = open_tiles(opts.slides, opts.tile_size, stride=opts.stride, scale=opts.scale, min_tissue=opts.min_tissue,
                       tissue_filter=opts.tissue_filter, mpp=opts.mpp, slide_mpp=opts.slide_mpp,
                       annotations=annotations, min_fraction=opts.min_fraction, object_types=kinds)
    return tiles


def _leaves(tiles) -> list:
    """The single-slide tile sets of a tile set (itself, or the parts of a concatenation), in order."""
    parts = getattr(tiles, "parts", None)
    return [tiles] if parts is None else [leaf for p in parts for leaf in _leaves(p)]


def _record(tiles, i: int) -> tuple[object, dict]:
    """(the single-slide tile set, where tile ``i`` comes from) of a slide tile set or a concatenation."""
    parts = getattr(tiles, "parts", None)
    if parts is None:
        return tiles, (tiles.record(i) if hasattr(tiles, "record") else {"slide": tiles.origin(i)})
    k, j = tiles._locate(i)
    leaf, rec = _record(parts[k], j)
    lab = tiles.label(i)
    return leaf, {**rec, "class": tiles.class_names[lab] if lab is not None else ""}


def slide_names(leaves) -> dict[int, str]:
    """``id(tile set)`` -> the name its tiles are called by: the slide's file name without suffixes,
    safe on every system; where two slides share it (``a/case.svs``, ``b/case.svs``), followed by a short
    hash of the slide's path, so no tile name is given twice (one slide given twice: ``-2``, ...)."""
    paths = [str(Path(getattr(t, "path", "") or "tiles").resolve()) for t in leaves]
    stems = [Path(p).name.split(".")[0] or "slide" for p in paths]
    shared = {s for s in stems if len({p for p, t in zip(paths, stems) if t == s}) > 1}
    taken: set[str] = set()
    out = {}
    for t, p, stem in zip(leaves, paths, stems):
        name = f"{stem}-{hashlib.sha256(p.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}" if stem in shared else stem
        out[id(t)] = safe_name(name, taken)
    return out


def class_folders(class_names) -> dict[str, str]:
    """Class name -> its folder (:func:`safe_name`: ``Tumor/Positive``, ``..``, ``Dermis: Inflamed`` are safe)."""
    taken = {MANIFEST, "tiles.json"}
    return {c: safe_name(c, taken) for c in class_names}


def tiles(opts: TilesOptions):
    """Cut the slides into tiles in ``opts.out``; yields progress; returns counts per class and a ``message``."""
    from ..base.atomic import partial_path, remove_dead_partials, swap_in
    from ..base.disk import check_free_space, tile_bytes
    from ..base.outdir import check_output

    opts.validate()
    require(opts, "slides", "out")
    out = Path(opts.out)
    check_output(out, "tiles", opts.intent)
    ts = open_slide_tiles(opts)
    from ..data.survey import annotation_notes

    for note in annotation_notes(ts):
        yield warning(note)
    names, folders = slide_names(_leaves(ts)), class_folders(ts.class_names)
    counts = {c: 0 for c in ts.class_names}
    if ts.class_names:
        n = [ts.label(i) for i in range(len(ts))]
        for k, c in enumerate(ts.class_names):
            counts[c] = n.count(k)
        for c in [c for c, v in counts.items() if v == 0]:
            yield warning(f"class {c} yields no tile (its annotations cover less than {opts.min_fraction:.0%} of "
                          "every tile); use a smaller {opt:tile_size} or a lower {opt:min_fraction}")
    check_free_space(out, len(ts) * tile_bytes(opts.tile_size, opts.fmt), f"{len(ts)} tiles of {opts.tile_size} px")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(out)
    tmp = partial_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shard = None
    try:
        with open(tmp / MANIFEST, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for i in range(len(ts)):
                leaf, rec = _record(ts, i)
                key = f"{names[id(leaf)]}_x{rec['x']}_y{rec['y']}"
                tile = ts[i]
                if opts.shard_size:
                    if i % opts.shard_size == 0:
                        if shard is not None:
                            shard.close()
                        shard = tarfile.open(tmp / f"shard-{i // opts.shard_size:06d}.tar", "w")
                    rec["file"] = f"shard-{i // opts.shard_size:06d}.tar:{key}"
                    _add(shard, f"{key}.{opts.fmt}", _encode(tile, opts.fmt))
                    _add(shard, f"{key}.json", json.dumps(rec).encode())
                else:
                    rec["file"] = f"{folders[rec['class']]}/{key}.{opts.fmt}" if rec["class"] else f"{key}.{opts.fmt}"
                    (tmp / rec["file"]).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / rec["file"]).write_bytes(_encode(tile, opts.fmt))
                writer.writerow({c: rec.get(c, "") for c in COLUMNS})
                if (i + 1) % 64 == 0 or i + 1 == len(ts):
                    yield Progress("tiles", i + 1, len(ts))
        if shard is not None:
            shard.close()
            shard = None
        (tmp / "tiles.json").write_text(json.dumps({"format": "napari-histodiff-tiles", "options": record(opts),
                                                    "total": len(ts), "counts": counts}, indent=2))
        swap_in(tmp, out, "tiles")
    finally:
        if shard is not None:
            shard.close()
        shutil.rmtree(tmp, ignore_errors=True)
    per = ", ".join(f"{c} {n}" for c, n in counts.items()) if counts else "unlabelled"
    return {"total": len(ts), "counts": counts, "message": f"{len(ts)} tiles written to {out} ({per})"}


def _encode(tile, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="PNG" if fmt == "png" else "TIFF")
    return buf.getvalue()


def _add(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

"""A cheap look at tile files before training: sizes and colour from their headers only.

Named in warnings: files that training would resample more than 2x or turn grey, classes whose
native sizes differ enough that blur becomes a class cue, and what the annotations of slides needed
(repaired polygons, QuPath objects left out).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base.errors import TileReadError
from .opening import _per_path
from .tiles import ConcatTiles, TileFolder, TileSet, planar_rgb

GRAY_MODES = ("1", "L", "LA", "La", "I", "F")  # PIL modes without colour (plus "I;16" variants)


def image_header(path) -> tuple[int, int, bool]:
    """``(width, height, grayscale)`` of an image file from its header; no pixel is decoded.

    TIFFs go through tifffile (as they are read), other files through PIL. Grayscale: 1-2 channels
    (gray, gray + alpha), PIL modes 1/L/LA/I/F. Raises whatever the reader raises for a non-image."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:  # the series (as read) only for multi-page files
            shape = tuple(tif.series[0].shape if len(tif.pages) > 1 else tif.pages.first.shape)
        while len(shape) > 3 and shape[0] == 1:
            shape = shape[1:]
        if planar_rgb(shape):
            shape = shape[1:] + shape[:1]
        channels = shape[2] if len(shape) == 3 else 1
        return int(shape[1]), int(shape[0]), channels <= 2
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0], im.size[1], im.mode in GRAY_MODES or im.mode.startswith("I;")


def _folders(source, tile_size, scale) -> list:
    """The tile folders in a TileSet, or folder paths opened as in open_tiles."""
    if isinstance(source, ConcatTiles):
        return [f for p in source.parts for f in _folders(p, tile_size, scale)]
    if isinstance(source, TileSet):
        return [source] if isinstance(source, TileFolder) else []
    return [TileFolder(p, tile_size, s) for p, s in _per_path(source, scale) if p.is_dir()]


def annotation_notes(source) -> list[str]:
    """What the readers of the slides' annotations repaired or left out (:attr:`SlideTiles.notes`)."""
    if isinstance(source, ConcatTiles):
        return [n for p in source.parts for n in annotation_notes(p)]
    return list(getattr(source, "notes", None) or []) if isinstance(source, TileSet) else []


def _header(path: Path) -> tuple[int, int, bool]:
    try:
        return image_header(path)
    except Exception as e:  # as in read_rgb: any reader failure is a bad file
        raise TileReadError(f"cannot read tile {path}: truncated or not an image ({type(e).__name__}: {e}). "
                            "Remove or re-export the file.") from e


def _sizes(w, h) -> str:
    if len(set(zip(w, h))) == 1:
        return f"{w[0]}x{h[0]} px"
    s = np.minimum(w, h)
    return f"{s.min()}-{s.max()} px on the shorter side"


def survey_warnings(source, tile_size: int | None = None, scale=None) -> list[str]:
    """Warnings naming tile files that training would resample more than 2x or turn grey.

    Reads image headers only. ``source``: a TileSet (its tile folders are surveyed; tiles cut from
    large images or held in memory are already tile-sized) or folder path(s) with ``tile_size`` and
    ``scale`` as in open_tiles. Size rule: a file's shorter side s (what the square centre crop
    keeps) against c, the source size cut per tile (tile_size t, or round(t / scale)): s < c / 2 is
    upscaled (blurred) more than 2x; without a scale, s > 2c is shrunk more than 2x. Also named:
    classes whose median resize factor (t / s; with a scale t / min(s, c)) is more than 2x apart
    (blur and magnification become a class cue), and grayscale files in a set with colour files.
    A file without a readable header raises TileReadError, as reading it would. Annotated slides add
    what their annotations' reader repaired or left out (:func:`annotation_notes`), first."""
    notes = annotation_notes(source)
    folders = _folders(source, tile_size, scale)
    rows: dict = {}  # class name (None: no class folder) -> [(w, h, gray, c, scaled)]
    for f in folders:
        c = max(1, round(f.tile_size / f.scale)) if f.scale is not None else f.tile_size  # as _fit_square
        for p, k in zip(f.paths, f._labels):
            name = f.class_names[k] if k >= 0 else None
            rows.setdefault(name, []).append((*_header(p), c, f.scale is not None))
    if not rows:
        return notes
    t = folders[0].tile_size
    any_colour = any(not r[2] for rs in rows.values() for r in rs)
    out, factors = list(notes), {}
    for name in sorted(rows, key=lambda n: (n is None, n or "")):
        w, h, gray, c, scaled = (np.array(x) for x in zip(*rows[name]))
        s, n, who = np.minimum(w, h), len(w), f"class {name}" if name is not None else "unlabeled tiles"
        factors[name] = (float(np.median(t / np.where(scaled, np.minimum(s, c), s))), int(np.median(s)))
        small, large = 2 * s < c, ~scaled & (s > 2 * c)
        if small.any():
            ref = (f"the model's {t} px tiles" if not scaled[small].any() else
                   f"the {np.max(c[small])} px cut per {t} px tile at {{opt:scale}}")
            out.append(f"{who}: {small.sum()} of {n} tiles are {_sizes(w[small], h[small])}, more than 2x "
                       f"smaller than {ref}: they are upscaled (blurred). Re-cut them at {np.max(c[small])} "
                       "px or more, or remove them.")
        if large.any():
            out.append(f"{who}: {large.sum()} of {n} tiles are {_sizes(w[large], h[large])}, more than 2x larger "
                       f"than the model's {t} px tiles: each is shrunk whole to {t} px, losing detail (set "
                       f"{{opt:scale}} to cut at a fixed magnification, or re-cut the tiles at {t} px).")
        if any_colour and gray.any():
            out.append(f"{who}: {gray.sum()} of {n} tiles are grayscale in a colour set; they are converted "
                       "to RGB (grey), which the model can learn as a cue. Re-export them in colour or remove them.")
    labeled = {k: v for k, v in factors.items() if k is not None}
    if len(labeled) > 1:
        hi, lo = max(labeled, key=lambda k: labeled[k][0]), min(labeled, key=lambda k: labeled[k][0])
        (fh, sh), (fl, sl) = labeled[hi], labeled[lo]
        if fh > 2 * fl:
            out.append(f"classes differ in native tile size: class {hi} tiles are resized {fh:.2g}x (median "
                       f"shorter side {sh} px), class {lo} tiles {fl:.2g}x ({sl} px), more than 2x apart: the "
                       "classes differ in blur and magnification, which the model can learn as a class cue. "
                       "Re-cut the tiles at one size and magnification (or set {opt:scale} per folder).")
    return out

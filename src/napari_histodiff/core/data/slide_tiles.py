"""Tiles of whole-slide images at the model's resolution, read on demand, in bounded memory.

A tile of ``tile_size`` px at ``mpp`` microns per pixel covers ``tile_size * mpp / slide_mpp`` level-0
pixels; it is read from the pyramid level closest below that resolution and resized. Tissue is found
on a thumbnail (never at full resolution); the grid's coordinates are compact int32 arrays; slides are
opened when a tile is read, a few at a time (:func:`opened`), so memory does not grow with slide size
or slide count. Annotations (QuPath GeoJSON) label a tile when a class covers enough of its area.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..base.errors import HistodiffError
from ..base.events import Progress, run_to_end
from .tiles import TileSet, tissue_mask

MAX_OPEN = 8  # slides kept open per process
THUMB = 2048  # longer side of the thumbnail tissue is detected on
_open: OrderedDict = OrderedDict()
_owner = [os.getpid()]


def opened(path, slide_mpp=None):
    """The open slide at ``path`` from a small per-process cache (least recently used closed first)."""
    from .slides import open_slide

    if _owner[0] != os.getpid():  # a forked reader process: never share the parent's file handles
        _open.clear()
        _owner[0] = os.getpid()
    key = (str(path), slide_mpp)
    if key in _open:
        _open.move_to_end(key)
        return _open[key]
    slide = _open[key] = open_slide(path, mpp=slide_mpp)
    while len(_open) > MAX_OPEN:
        _open.popitem(last=False)[1].close()
    return slide


def tile_factor(name, image_mpp=None, mpp=None, scale=None) -> float:
    """Level-0 pixels of an image per tile pixel: the one rule of the CLI, the jobs and napari.

    ``mpp``: the tiles' microns per pixel (e.g. the model's), which needs the image's ``image_mpp``;
    else ``scale``: a magnification factor (0.5: half resolution); neither: level 0 as it is. An
    image that does not say its microns per pixel is never tiled at an ``mpp`` (silently at full
    resolution it would give the model tiles of the wrong magnification): that is an error naming the fix."""
    if mpp is None:
        return 1.0 / float(scale) if scale is not None else 1.0
    if not image_mpp:
        raise HistodiffError(f"{name} does not say its microns per pixel, so tiles at {float(mpp):g} um/px cannot "
                             "be cut from it: give its resolution with {opt:slide_mpp} (in napari: open the slide "
                             "with this plugin's reader, which reads it, or give the image layer its scale in "
                             "micrometres), or cut tiles by magnification with {opt:scale} (1: as stored)")
    return float(mpp) / float(image_mpp)


def best_level(downsamples, downsample: float) -> int:
    """The coarsest pyramid level at least as fine as ``downsample`` (level 0 when none is)."""
    ok = [k for k, d in enumerate(downsamples) if d <= downsample * 1.01]
    return max(ok, key=lambda k: downsamples[k]) if ok else 0


class SlideSource:
    """A slide file, opened per process from a small cache (so tile sets of it can go to data-loader
    worker processes); ``slide_mpp`` overrides the file's microns per pixel."""

    lazy = True

    def __init__(self, path, slide_mpp: float | None = None):
        self.path, self.slide_mpp = Path(path), slide_mpp
        slide = self.slide
        self.dimensions, self.downsamples, self.mpp = list(slide.dimensions), list(slide.downsamples), slide.mpp
        self.name = self.path.name

    @property
    def slide(self):
        return opened(self.path, self.slide_mpp)

    def best_level(self, downsample: float) -> int:
        return best_level(self.downsamples, downsample)

    def read_region(self, level, x, y, w, h) -> np.ndarray:
        return self.slide.read_region(level, x, y, w, h)


class TileGrid:
    """The tiling of a source (a slide, or an image's levels): ``tile_size`` px tiles at ``mpp`` or
    ``scale`` (:func:`tile_factor`), every ``stride`` tile px, aligned to the top-left corner. A tile
    covers ``size0`` level-0 px and is read from ``level`` as ``read_size`` px (then resized)."""

    def __init__(self, source, tile_size: int, stride: int | None = None, mpp: float | None = None,
                 scale: float | None = None):
        t = int(tile_size)
        s = t if stride is None else int(stride)
        if t < 1 or s < 1:
            raise HistodiffError(f"tile size ({tile_size}) and stride ({stride}) must be at least 1 px.")
        self.tile_size, self.stride, self.name = t, s, source.name
        self.factor = tile_factor(source.name, source.mpp, mpp, scale)
        self.mpp = source.mpp * self.factor if source.mpp else None
        self.size0, self.step0 = t * self.factor, s * self.factor
        self.width, self.height = source.dimensions[0]
        if self.size0 > min(self.width, self.height) + 1e-6:
            if self.factor == 1:
                raise HistodiffError(f"tile size {t} px is larger than the image ({self.width}x{self.height} px). "
                                     f"Use a tile size of at most {min(self.width, self.height)} px.")
            at = f"{float(mpp):g} um/px" if mpp is not None else f"scale {float(scale):g}"
            raise HistodiffError(f"a {t} px tile at {at} covers {self.size0:.0f} px of {source.name}, which is only "
                                 f"{self.width}x{self.height} px: use a smaller {{opt:tile_size}}")
        self.level = source.best_level(self.factor)
        self.read_size = max(1, round(t * self.factor / source.downsamples[self.level]))
        self.nx = math.floor((self.width - self.size0) / self.step0 + 1e-6) + 1
        self.ny = math.floor((self.height - self.size0) / self.step0 + 1e-6) + 1

    def pos(self, i) -> np.ndarray:
        """Level-0 start of grid column (or row) ``i``."""
        return np.round(np.asarray(i) * self.step0).astype(np.int64)

    def xs(self) -> np.ndarray:
        return self.pos(np.arange(self.nx)).astype(np.int32)

    def ys(self) -> np.ndarray:
        return self.pos(np.arange(self.ny)).astype(np.int32)

    def span(self, lo, hi, n) -> tuple[np.ndarray, np.ndarray]:
        """Grid indices [first, last) whose tiles may overlap [lo, hi) (a little generous; clipped to n)."""
        first = np.floor((np.asarray(lo, float) - self.size0) / self.step0) - 1
        last = np.floor(np.asarray(hi, float) / self.step0) + 2
        return np.clip(first, 0, n).astype(np.int64), np.clip(last, 0, n).astype(np.int64)

    def describe(self) -> str:
        res = f"{self.mpp:.3g} um/px" if self.mpp else "full resolution" if self.factor == 1 else f"1/{self.factor:g}"
        return f"{self.tile_size} px tiles at {res}, stride {self.stride}"


class SlideTiles(TileSet):
    """Tiles of one slide: the tissue grid, or with ``annotations`` the tiles a class covers.

    ``mpp``: microns per pixel of the tiles (or ``scale``: magnification factor, for files without
    one); ``stride`` in tile pixels; ``min_tissue``: fraction of tissue a kept tile needs;
    ``annotations`` (an ``AnnotationSet``): a tile gets the class covering the largest fraction of it,
    if at least ``min_fraction`` (the grid and the labelling are those of napari's annotation layers,
    :class:`TileGrid` and :func:`label_cells`); unlabelled tiles are then left out.
    ``notes``: what the annotations' reader repaired or left out, for the job to show.
    """

    def __init__(self, path, tile_size: int, *, mpp=None, scale=None, slide_mpp=None, stride=None,
                 min_tissue: float = 0.5, tissue_filter: bool = True, annotations=None, min_fraction: float = 0.5):
        self.path, self.tile_size, self.slide_mpp = Path(path), int(tile_size), slide_mpp
        self.source = SlideSource(self.path, slide_mpp)
        grid = TileGrid(self.source, tile_size, stride, mpp=mpp, scale=scale)
        self.factor, self.mpp, self.level, self.read_size = grid.factor, grid.mpp, grid.level, grid.read_size
        self.class_names, self.labels, self.covered, self.notes = [], None, None, []
        if annotations is not None:
            self._label(grid, annotations, min_fraction)
        elif tissue_filter:
            tissue, kept, best = TissueMask(self.source.slide), [], 0.0
            for xy in grid_rows(grid.xs(), grid.ys()):  # a few rows at a time: memory does not grow with the slide
                frac = tissue.fraction(xy, grid.size0)
                best = max(best, float(frac.max()))
                kept.append(xy[frac >= min_tissue])
            self.xy = np.concatenate(kept)
            if not len(self.xy):
                raise HistodiffError(f"no tile of {self.path.name} has at least {min_tissue:.0%} tissue (best "
                                     f"{best:.0%}); lower {{opt:min_tissue}} or turn the tissue filter off "
                                     "({opt:tissue_filter=false})")
        else:
            self.xy = np.concatenate(list(grid_rows(grid.xs(), grid.ys())))
        self.description = (f"slide {self.path} at {f'{self.mpp:.3g} um/px' if self.mpp else f'1/{self.factor:g}'}"
                            f" (level {self.level})")

    def _label(self, grid, annotations, min_fraction):
        xy, labels, covered = run_to_end(label_cells(grid, annotations, min_fraction))
        if not len(xy):
            bounds = annotations.bounds()
            w0, h0 = grid.width, grid.height
            if bounds is None or bounds[0] >= w0 or bounds[1] >= h0 or bounds[2] <= 0 or bounds[3] <= 0:
                raise HistodiffError(f"the annotations of {annotations.source} lie outside {self.path.name} "
                                     f"({w0}x{h0} px); check that they belong to this slide")
            raise HistodiffError(f"no {self.tile_size} px tile of {self.path.name} is covered at least "
                                 f"{min_fraction:.0%} by one class of {annotations.source}; use a smaller "
                                 "{opt:tile_size} or a lower {opt:min_fraction}")
        self.class_names = list(annotations.class_names)
        self.xy = xy.astype(np.int32)
        self.labels, self.covered = labels, covered.astype(np.float32)
        message = annotations.left_out_message() if hasattr(annotations, "left_out_message") else None
        self.notes = list(getattr(annotations, "notes", [])) + ([message] if message else [])

    def __len__(self) -> int:
        return len(self.xy)

    def __getitem__(self, i: int) -> np.ndarray:
        x, y = (int(v) for v in self.xy[self._index(i)])
        region = self.source.read_region(self.level, x, y, self.read_size, self.read_size)
        return resized(region, self.tile_size)

    def label(self, i: int) -> int | None:
        return None if self.labels is None else int(self.labels[self._index(i)])

    def origin(self, i: int) -> str:
        x, y = (int(v) for v in self.xy[self._index(i)])
        return f"{self.path}@x={x},y={y}"

    def record(self, i: int) -> dict:
        """Where tile ``i`` comes from, for a manifest."""
        j = self._index(i)
        lab = self.label(j)
        return {"slide": str(self.path), "level": self.level, "x": int(self.xy[j, 0]), "y": int(self.xy[j, 1]),
                "size0": round(self.tile_size * self.factor, 3), "mpp": self.mpp,
                "class": self.class_names[lab] if lab is not None else "",
                "covered": None if self.covered is None else round(float(self.covered[j]), 4)}


def resized(region: np.ndarray, size: int) -> np.ndarray:
    """A square uint8 RGB region resized to ``size`` px (area averaging when shrinking)."""
    if region.shape[0] == size and region.shape[1] == size:
        return np.ascontiguousarray(region)
    from PIL import Image

    return np.asarray(Image.fromarray(region).resize((size, size), Image.Resampling.BOX if region.shape[0] > size
                                                     else Image.Resampling.BILINEAR))


def grid_rows(xs: np.ndarray, ys: np.ndarray, most: int = 1 << 16):
    """The (x, y) int32 corners of the grid ``xs`` x ``ys``, row by row, about ``most`` at a time."""
    rows = max(1, most // max(1, len(xs)))
    for k in range(0, len(ys), rows):
        gy, gx = np.meshgrid(ys[k:k + rows], xs, indexing="ij")
        yield np.stack([gx.ravel(), gy.ravel()], 1)


class TissueMask:
    """Tissue of a slide found on a thumbnail (at most :data:`THUMB` px), as an integral image."""

    def __init__(self, slide):
        thumb = slide.thumbnail(THUMB)
        w0, h0 = slide.dimensions[0]
        self.shape = thumb.shape[:2]
        self.sx, self.sy = thumb.shape[1] / w0, thumb.shape[0] / h0
        self.ii = np.zeros((thumb.shape[0] + 1, thumb.shape[1] + 1), np.int64)
        self.ii[1:, 1:] = tissue_mask(thumb)
        np.cumsum(self.ii, 0, out=self.ii)
        np.cumsum(self.ii, 1, out=self.ii)

    def fraction(self, xy: np.ndarray, size0: float) -> np.ndarray:
        """Fraction of tissue in each tile (level-0 corners ``xy``, side ``size0``)."""
        (h, w), ii = self.shape, self.ii
        x0 = np.clip(np.floor(xy[:, 0] * self.sx), 0, w - 1).astype(np.int64)
        y0 = np.clip(np.floor(xy[:, 1] * self.sy), 0, h - 1).astype(np.int64)
        x1 = np.clip(np.ceil((xy[:, 0] + size0) * self.sx), x0 + 1, w).astype(np.int64)
        y1 = np.clip(np.ceil((xy[:, 1] + size0) * self.sy), y0 + 1, h).astype(np.int64)
        return (ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]) / ((x1 - x0) * (y1 - y0))


# -- slides among the inputs of a command -----------------------------------------------------------

VENDOR = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")
LAZY = VENDOR + (".tif", ".tiff")  # read region by region (PNG and JPEG decode whole: they stay ImageTiles)


def is_slide(path) -> bool:
    """A vendor whole-slide file or an OME-TIFF (by name)."""
    name = Path(path).name.lower()
    return name.endswith(VENDOR) or name.endswith((".ome.tif", ".ome.tiff"))


def listed_slides(path) -> list[Path]:
    """The slides named in a text file, one path per line (relative to the file; # comments)."""
    path = Path(path)
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            p = Path(line) if Path(line).is_absolute() else path.parent / line
            if not p.is_file():
                raise HistodiffError(f"{path} lists {line}, which does not exist; fix the list")
            out.append(p)
    if not out:
        raise HistodiffError(f"{path} lists no slides; write one slide path per line")
    return out


def annotations_for(slides, given) -> dict:
    """The GeoJSON file of each slide: from ``given`` matched by name (``A.svs`` <- ``A.geojson``), in
    pairs when no name matches and the counts agree, else ``NAME.geojson`` beside the slide."""
    given = [Path(g) for g in given or []]
    by_stem = {g.name.split(".")[0]: g for g in given}
    out = {s: by_stem.get(Path(s).name.split(".")[0]) for s in slides}
    if given and not any(out.values()) and len(given) == len(slides):
        out = dict(zip(slides, given))
    for s, g in out.items():
        if g is None:
            beside = [Path(s).with_name(Path(s).name.split(".")[0] + ext) for ext in (".geojson", ".json")]
            out[s] = next((b for b in beside if b.is_file()), None)
        if out[s] is None:
            raise HistodiffError(f"no annotations for slide {s}: export them from QuPath as "
                                 f"{Path(s).name.split('.')[0]}.geojson beside it, or give them with {{opt:annotations}}")
    return out


def open_slides(slides, tile_size, *, annotations=None, object_types=("annotation",), **opts) -> list[SlideTiles]:
    """One :class:`SlideTiles` per slide. ``annotations``: None for unlabelled tiling, or GeoJSON files
    (possibly none given: then found beside the slides) whose classes label the tiles."""
    if annotations is None:
        return [SlideTiles(s, tile_size, **opts) for s in slides]
    from .geojson import read_geojson

    pairs = annotations_for(slides, annotations)
    return [SlideTiles(s, tile_size, annotations=read_geojson(g, object_types=object_types), **opts)
            for s, g in pairs.items()]


STAGE = "extracting tiles"
BOXES = 20000  # tile boxes tested against the shapes at once


def check_fraction(min_fraction) -> None:
    if not 0 < min_fraction <= 1:
        raise HistodiffError(f"the minimum annotated fraction must be in (0, 1] (got {min_fraction}), e.g. 0.5.")


def _band_cells(grid: TileGrid, bounds: np.ndarray, iy0: int, iy1: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid cells (iy, ix) of rows [iy0, iy1) whose tiles may overlap one of the ``bounds`` boxes."""
    ylo, yhi = grid.span(bounds[:, 1], bounds[:, 3], grid.ny)
    xlo, xhi = grid.span(bounds[:, 0], bounds[:, 2], grid.nx)
    ylo, yhi = np.maximum(ylo, iy0) - iy0, np.minimum(yhi, iy1) - iy0
    on = (ylo < yhi) & (xlo < xhi)
    if not on.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    diff = np.zeros((iy1 - iy0 + 1, grid.nx + 1), np.int32)  # 2-D difference array of the boxes' cell ranges
    for r, c, v in ((ylo, xlo, 1), (ylo, xhi, -1), (yhi, xlo, -1), (yhi, xhi, 1)):
        np.add.at(diff, (r[on], c[on]), v)
    np.cumsum(diff, 0, out=diff)
    np.cumsum(diff, 1, out=diff)
    iy, ix = np.nonzero(diff[:-1, :-1] > 0)
    return iy + iy0, ix


def label_cells(grid: TileGrid, annotations, min_fraction: float = 0.5):
    """Generator: the cells of ``grid`` where one class of ``annotations`` (an AnnotationSet in level-0
    px) covers at least ``min_fraction`` (the largest class wins; ties: first in class_names); only
    tiles near a shape are tested. Yields progress; returns (xy: level-0 top-left corners, row by row,
    labels: indices of class_names, covered: the winner's fraction). Used by napari's layers and by
    :class:`SlideTiles` alike."""
    import shapely

    check_fraction(min_fraction)
    geoms = [a.geometry for a in annotations.annotations if not a.geometry.is_empty]
    xy, labels, covered = [np.zeros((0, 2), np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    if geoms:
        bounds = shapely.bounds(np.array(geoms, dtype=object))
        rows = max(1, min(grid.ny, 4_000_000 // max(grid.nx, 1) // 4))
        for iy0 in range(0, grid.ny, rows):
            iy1 = min(grid.ny, iy0 + rows)
            iy, ix = _band_cells(grid, bounds, iy0, iy1)
            for k in range(0, len(iy), BOXES):
                x, y = grid.pos(ix[k : k + BOXES]), grid.pos(iy[k : k + BOXES])
                boxes = np.stack([x, y, x + grid.size0, y + grid.size0], 1).astype(np.float64)
                lab, frac = annotations.label_boxes(boxes, min_fraction)
                keep = lab >= 0
                xy.append(np.stack([x[keep], y[keep]], 1))
                labels.append(lab[keep])
                covered.append(frac[keep])
            yield Progress(STAGE, iy1, grid.ny)
    xy, labels, covered = np.concatenate(xy), np.concatenate(labels), np.concatenate(covered)
    order = np.lexsort((xy[:, 0], xy[:, 1]))  # row by row, as the image is read
    return xy[order], labels[order], covered[order]

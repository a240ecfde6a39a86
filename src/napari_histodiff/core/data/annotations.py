"""Annotations on an image (shapes, label images, points) -> labelled tiles, in bounded memory.

Coordinates are level-0 pixels of the image, continuous, with the origin at the top-left corner of
pixel (0, 0): pixel (row r, column c) covers x in [c, c + 1), y in [r, r + 1) (QuPath's convention).
napari puts pixel centres on integers, so a napari data coordinate d of the image is d + 0.5 here.

Nothing here is ever as large as the slide: shapes are shapely polygons and a tile's class comes
from how much of its box each class covers (only grid tiles near a shape are tested); label images
are read block by block (numpy, dask or zarr: a block is sliced, never the whole array); tiles are
read from the pyramid level that matches the wanted microns per pixel, when they are used
(:class:`RegionTiles`), or once into memory for images that are already in memory.

The napari widgets turn layers into these plain inputs (``widgets/_layers.py``); the small
in-memory API (:func:`tiles_from_labels`, :func:`tiles_from_masks`, :func:`tiles_from_points`)
works on arrays of one image's pixels.
"""

from __future__ import annotations

import math

import numpy as np

from ..base.errors import HistodiffError
from ..base.events import Progress, run_to_end, warning
from .slide_tiles import STAGE, SlideSource, TileGrid, best_level, check_fraction, label_cells, resized
from .tiles import ArrayTiles, TileSet, to_rgb_uint8

__all__ = ["ArraySource", "SlideSource", "TileGrid", "RegionTiles", "label_cells", "shape_tiles", "label_tiles",
           "point_tiles", "shapes_annotations"]

BLOCK = 2048  # label-image pixels per side read at once


def check_rgb_image(image) -> None:
    """Raise HistodiffError unless `image` has shape (H, W, 3) or (H, W, 4)."""
    shape = tuple(getattr(image, "shape", None) or np.shape(image))
    if len(shape) != 3 or shape[-1] not in (3, 4) or min(shape[:2]) < 1:
        raise HistodiffError(f"the image layer must be RGB (H, W, 3); got shape {shape}. Open an RGB image "
                             "(or convert it: channels last, one 2-D slice, 3 colour channels) and try again.")


def _compute(a) -> np.ndarray:
    return np.asarray(a.compute() if hasattr(a, "compute") else a)


def read_window(image, y, x, size) -> np.ndarray:
    """The (size, size) window at row y, column x as uint8 RGB; reads only that window."""
    y, x, size = int(y), int(x), int(size)
    h, w = image.shape[:2]
    if y < 0 or x < 0 or y + size > h or x + size > w:
        raise HistodiffError(f"the {size} px window at y={y},x={x} leaves the image ({w}x{h} px). "
                             "Choose a window inside the image.")
    return to_rgb_uint8(_compute(image[y : y + size, x : x + size]), name=f"the image window at y={y},x={x}")


# -- where tiles are read from --------------------------------------------------------------------

class ArraySource:
    """An image as pyramid levels of numpy-like (h, w, 3|4) arrays (numpy, dask, zarr), level 0 first.

    ``mpp``: microns per pixel of level 0, if known. Reads only the windows asked for."""

    lazy = False  # tiles are read into memory at once (the arrays may not survive a process boundary)

    def __init__(self, levels, mpp: float | None = None, name: str = "image"):
        levels = list(levels) if isinstance(levels, (list, tuple)) else [levels]
        if not levels:
            raise HistodiffError("the image layer has no data; open an RGB image first.")
        for a in levels:
            check_rgb_image(a)
        self.levels, self.mpp, self.name = levels, (float(mpp) if mpp else None), name
        self.dimensions = [(int(a.shape[1]), int(a.shape[0])) for a in levels]
        w0, h0 = self.dimensions[0]
        self.downsamples = [(w0 / w + h0 / h) / 2 for w, h in self.dimensions]

    def best_level(self, downsample: float) -> int:
        return best_level(self.downsamples, downsample)

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w) px of ``level`` whose top-left corner is level-0 pixel (x, y); white outside the image."""
        ds = self.downsamples[level]
        lx, ly = math.floor(x / ds + 0.5), math.floor(y / ds + 0.5)
        lw, lh = self.dimensions[level]
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x1 > x0 and y1 > y0:
            part = _compute(self.levels[level][y0:y1, x0:x1])
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = to_rgb_uint8(part, name=f"{self.name} at x={x},y={y}")
        return out


class RegionTiles(TileSet):
    """Labelled tiles of a source at grid positions ``xy`` (level-0 x, y of each top-left corner),
    read when used. ``labels`` index ``class_names``; ``covered``: the winning class's fraction."""

    def __init__(self, source, grid: TileGrid, xy, labels, class_names, covered=None, description=""):
        self.source, self.tile_size, self.level, self.read_size = source, grid.tile_size, grid.level, grid.read_size
        self.size0, self.mpp = grid.size0, grid.mpp
        self.xy = np.asarray(xy, dtype=np.int32).reshape(-1, 2)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.covered = None if covered is None else np.asarray(covered, dtype=np.float32)
        self.description = description or f"annotated regions of {source.name}, {grid.describe()}"

    def __len__(self) -> int:
        return len(self.xy)

    def __getitem__(self, i: int) -> np.ndarray:
        x, y = (int(v) for v in self.xy[self._index(i)])
        return resized(self.source.read_region(self.level, x, y, self.read_size, self.read_size), self.tile_size)

    def label(self, i: int) -> int | None:
        return int(self.labels[self._index(i)])

    def origin(self, i: int) -> str:
        x, y = (int(v) for v in self.xy[self._index(i)])
        return f"{self.source.name}@y={y},x={x}" if self.source.lazy else f"y={y},x={x}"

    def record(self, i: int) -> dict:
        """Where tile ``i`` comes from, for a manifest."""
        j = self._index(i)
        return {"slide": str(getattr(self.source, "path", self.source.name)), "level": self.level,
                "x": int(self.xy[j, 0]), "y": int(self.xy[j, 1]), "size0": round(self.size0, 3), "mpp": self.mpp,
                "class": self.class_names[self.labels[j]],
                "covered": None if self.covered is None else round(float(self.covered[j]), 4)}

    def in_memory(self):
        """Generator: read every tile (yields progress); returns them as :class:`ArrayTiles`."""
        n = len(self)
        tiles = np.empty((n, self.tile_size, self.tile_size, 3), np.uint8)
        for i in range(n):
            tiles[i] = self[i]
            if i % 64 == 63 or i == n - 1:
                yield Progress("reading tiles", i + 1, n)
        return ArrayTiles(tiles, self.labels, self.class_names, [self.origin(i) for i in range(n)], self.description)


def _finish(tiles: RegionTiles, lazy: bool | None):
    """The tile set as it is (lazy) or read into memory (generator)."""
    if lazy if lazy is not None else tiles.source.lazy:
        return tiles
    return (yield from tiles.in_memory())


def _no_tiles(t, min_fraction, what) -> HistodiffError:
    return HistodiffError(f"no tile of {t} px is at least {min_fraction:.0%} annotated with a class ({what}); "
                          "draw larger regions, lower the minimum annotated fraction or the tile size.")


# -- shapes ---------------------------------------------------------------------------------------

def check_classes(classes, n, what):
    classes = [str(c).strip() if c is not None else "" for c in classes]
    if len(classes) != n:
        raise HistodiffError(f"got {n} {what}s but {len(classes)} class names. Give one class per {what}.")
    for i, c in enumerate(classes):
        if not c or c.lower() == "nan":
            raise HistodiffError(f"{what} {i} has no class name. Set its `class` feature (e.g. TUM, STR).")
    return classes


def ellipse_ring(corners, n: int = 64) -> np.ndarray:
    """The outline (n points) of the ellipse inscribed in a (possibly rotated) rectangle given by its 4
    corners in order (how napari stores an ellipse)."""
    c = np.asarray(corners, dtype=float)
    centre = c.mean(0)
    a, b = (c[0] + c[1]) / 2 - centre, (c[1] + c[2]) / 2 - centre
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * b + np.sin(t) * a


def hole_free_parts(geometry) -> list:
    """The polygons of a Polygon / MultiPolygon cut into pieces without holes (their union is the
    geometry): a polygon with holes is cut along the vertical line through the middle of its first
    hole, and the halves again while they have holes. For viewers that draw no holes (napari)."""
    import shapely
    from shapely.geometry import box

    out, todo = [], [p for p in shapely.get_parts(geometry) if p.geom_type == "Polygon" and not p.is_empty]
    while todo:
        p = todo.pop()
        if not p.interiors:
            out.append(p)
            continue
        hx0, _, hx1, _ = p.interiors[0].bounds
        cut = (hx0 + hx1) / 2
        x0, y0, x1, y1 = p.bounds
        for half in (box(x0 - 1, y0 - 1, cut, y1 + 1), box(cut, y0 - 1, x1 + 1, y1 + 1)):
            todo += [q for q in shapely.get_parts(p.intersection(half)) if q.geom_type == "Polygon" and q.area > 0]
    return out[::-1]


def shapes_annotations(polygons, classes, names=None, paint_over: bool = True):
    """An AnnotationSet from shapely polygons (level-0 px) with one class each; with ``paint_over``
    a later shape covers earlier ones (as painting would), so overlaps count for the later class."""
    import shapely

    from .geojson import Annotation, AnnotationSet

    classes = check_classes(classes, len(polygons), "shape")
    names = names or [None] * len(polygons)
    geoms, notes = np.empty(len(polygons), dtype=object), []
    for k, g in enumerate(polygons):
        if not np.isfinite(shapely.get_coordinates(g)).all():
            raise HistodiffError(f"shape {k} ({classes[k]}) has a coordinate that is not a number; delete it and "
                                 "draw it again.")
        geoms[k] = g
        if not g.is_valid:  # e.g. a bow-tie: keep what it encloses, and say so
            why = shapely.is_valid_reason(g)
            geoms[k] = shapely.make_valid(g)
            who = f"shape {k} {names[k]!r}" if names[k] else f"shape {k}"
            notes.append(f"{who} ({classes[k]}) crosses itself ({why}); it was repaired (shapely make_valid) "
                         f"into {geoms[k].area:.0f} px\u00b2: redraw it if that is not what you meant")
    if paint_over and len(geoms) > 1:
        tree = shapely.STRtree(geoms)
        later, near = tree.query(geoms, predicate="intersects")
        out = geoms.copy()
        for k in range(len(geoms)):
            over = near[(later == k) & (near > k)]
            if over.size:
                out[k] = shapely.difference(geoms[k], shapely.union_all(geoms[over]))
        geoms = out
    return AnnotationSet([Annotation(g, c, "annotation", None, n) for g, c, n in zip(geoms, classes, names)],
                         "the shapes layer", notes=notes)


def shape_tiles(source, annotations, tile_size: int, stride: int | None = None, min_fraction: float = 0.5,
                mpp: float | None = None, lazy: bool | None = None, scale: float | None = None):
    """Generator: grid tiles where one class of ``annotations`` (an AnnotationSet in level-0 px) covers
    at least ``min_fraction`` (:func:`label_cells`). Yields progress and a warning per repaired shape;
    returns a :class:`RegionTiles` (lazy slides) or ArrayTiles."""
    check_fraction(min_fraction)
    grid = TileGrid(source, tile_size, stride, mpp, scale)
    if not any(not a.geometry.is_empty for a in annotations.annotations):
        raise HistodiffError("the shapes have no area (all painted over, or lines); draw regions around each class.")
    for note in getattr(annotations, "notes", []):
        yield warning(note)
    xy, labels, covered = yield from label_cells(grid, annotations, min_fraction)
    if not len(xy):
        (x0, y0, x1, y1) = annotations.bounds() or (0, 0, 0, 0)
        if x0 >= grid.width or y0 >= grid.height or x1 <= 0 or y1 <= 0:
            raise HistodiffError(f"the shapes lie outside {source.name} ({grid.width}x{grid.height} px); draw them "
                                 "on this image (or check the layers' scale and translate).")
        raise _no_tiles(tile_size, min_fraction, ", ".join(annotations.class_names))
    tiles = RegionTiles(source, grid, xy, labels, annotations.class_names, covered)
    return (yield from _finish(tiles, lazy))


# -- label images ---------------------------------------------------------------------------------

def _class_lookup(class_map):
    class_map = {int(v): str(c) for v, c in (class_map or {}).items() if int(v) != 0}
    if not class_map:
        raise HistodiffError("no class is assigned to any label value. Give each label value (1, 2, ...) "
                             "a class name.")
    empty = [v for v, c in class_map.items() if not c.strip()]
    if empty:
        raise HistodiffError(f"label value {empty[0]} has an empty class name. Give it a class name.")
    names = sorted(set(class_map.values()))
    keys = np.array(sorted(class_map), dtype=np.int64)
    to_class = np.array([names.index(class_map[k]) for k in keys], dtype=np.int16)
    return class_map, names, keys, to_class


def label_tiles(source, labels, class_map: dict[int, str], tile_size: int, stride: int | None = None,
                min_fraction: float = 0.5, mpp: float | None = None, to_labels=((1.0, 1.0), (0.0, 0.0)),
                lazy: bool | None = None, scale: float | None = None):
    """Generator: grid tiles whose main class in the label image covers at least ``min_fraction``.

    ``labels``: a 2-D integer array-like (numpy, dask, zarr), read block by block. ``class_map``: label
    value -> class name (0 is never a class; values may share a name: their pixels add up).
    ``to_labels`` = ((sy, sx), (oy, ox)): a level-0 position (continuous, see the module doc) u maps to
    the label image's v = s * u + o; a tile counts the label pixels whose centres fall in its box."""
    check_fraction(min_fraction)
    grid = TileGrid(source, tile_size, stride, mpp, scale)
    if len(labels.shape) != 2:
        raise HistodiffError(f"the label image must be 2-D (got shape {tuple(labels.shape)}); use a 2-D Labels layer.")
    if np.dtype(labels.dtype).kind not in "iub":
        raise HistodiffError(f"labels must be integers (got {labels.dtype}). Use a napari Labels layer.")
    class_map, names, keys, to_class = _class_lookup(class_map)
    (sy, sx), (oy, ox) = to_labels
    if sy <= 0 or sx <= 0:
        raise HistodiffError("the Labels layer is flipped relative to the image (negative scale); "
                             "give it a positive scale.")
    lh, lw = (int(n) for n in labels.shape)
    # label pixel j has its centre at j + 0.5: the tile [a, b) holds pixels ceil(a - 0.5) .. ceil(b - 0.5) - 1
    r0 = np.ceil(sy * grid.pos(np.arange(grid.ny)) + oy - 0.5).astype(np.int64)
    r1 = np.ceil(sy * (grid.pos(np.arange(grid.ny)) + grid.size0) + oy - 0.5).astype(np.int64)
    c0 = np.ceil(sx * grid.pos(np.arange(grid.nx)) + ox - 0.5).astype(np.int64)
    c1 = np.ceil(sx * (grid.pos(np.arange(grid.nx)) + grid.size0) + ox - 0.5).astype(np.int64)
    # blocks of whole tiles whose label windows span about BLOCK px (at least one tile)
    per_y = max(1, int(BLOCK // max(1, r1[0] - r0[0], sy * grid.step0)))
    per_x = max(1, int(BLOCK // max(1, c1[0] - c0[0], sx * grid.step0)))
    xy, labs, fracs, seen = [], [], [], False
    nby = -(-grid.ny // per_y)
    for by, iy0 in enumerate(range(0, grid.ny, per_y)):
        iy = np.arange(iy0, min(iy0 + per_y, grid.ny))
        R0, R1 = max(int(r0[iy].min()), 0), min(int(r1[iy].max()), lh)
        for ix0 in range(0, grid.nx, per_x):
            ix = np.arange(ix0, min(ix0 + per_x, grid.nx))
            C0, C1 = max(int(c0[ix].min()), 0), min(int(c1[ix].max()), lw)
            if R1 <= R0 or C1 <= C0:
                continue
            block = _compute(labels[R0:R1, C0:C1])
            if not block.any():
                continue
            seen = True
            pos = np.clip(np.searchsorted(keys, block), 0, len(keys) - 1)
            cls = np.where(keys[pos] == block, to_class[pos], np.int16(-1))
            if not (cls >= 0).any():
                continue
            gy, gx = (a.ravel() for a in np.meshgrid(iy, ix, indexing="ij"))
            ya, yb = (np.clip(v[gy] - R0, 0, R1 - R0) for v in (r0, r1))
            xa, xb = (np.clip(v[gx] - C0, 0, C1 - C0) for v in (c0, c1))
            area = (r1[gy] - r0[gy]) * (c1[gx] - c0[gx])
            counts = np.zeros((len(names), gy.size), np.int64)
            ii = np.zeros((cls.shape[0] + 1, cls.shape[1] + 1), np.int64)  # integral image, one class at a time
            for c in range(len(names)):
                ii[1:, 1:] = cls == c
                np.cumsum(ii, 0, out=ii)
                np.cumsum(ii, 1, out=ii)
                counts[c] = ii[yb, xb] - ii[ya, xb] - ii[yb, xa] + ii[ya, xa]
            best, most = counts.argmax(0), counts.max(0)
            keep = (most >= np.maximum(1, np.ceil(min_fraction * area - 1e-6))) & (area > 0)
            xy.append(np.stack([grid.pos(gx[keep]), grid.pos(gy[keep])], 1))
            labs.append(best[keep])
            fracs.append(most[keep] / area[keep])
        yield Progress(STAGE, by + 1, nby)
    if not seen:
        raise HistodiffError("the annotation layer is empty (no nonzero pixel over the image). Paint some regions "
                             "first (or check the layers' scale and translate).")
    xy = np.concatenate(xy) if xy else np.zeros((0, 2), np.int64)
    if not len(xy):
        raise _no_tiles(tile_size, min_fraction, ", ".join(f"{v}={c}" for v, c in sorted(class_map.items())))
    order = np.lexsort((xy[:, 0], xy[:, 1]))
    tiles = RegionTiles(source, grid, xy[order], np.concatenate(labs)[order], names, np.concatenate(fracs)[order])
    return (yield from _finish(tiles, lazy))


# -- points ---------------------------------------------------------------------------------------

def point_tiles(source, points, classes, tile_size: int, mpp: float | None = None, lazy: bool | None = None,
                scale: float | None = None):
    """Generator: one tile centred on each point (level-0 (y, x), continuous: see the module doc);
    returns (tiles, number of points whose tile would leave the image)."""
    grid = TileGrid(source, tile_size, None, mpp, scale)
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise HistodiffError(f"points must be an (N, 2) array of (row, col) with N >= 1; got shape {points.shape}. "
                             "Add points on a 2-D points layer.")
    classes = check_classes(classes, len(points), "point")
    with np.errstate(invalid="ignore"):
        top = np.ceil(np.floor(points) - grid.size0 / 2)  # the point's pixel is the tile's centre pixel
        ok = (np.isfinite(top).all(1) & (top >= 0).all(1) & (top[:, 0] + grid.size0 <= grid.height + 1e-6)
              & (top[:, 1] + grid.size0 <= grid.width + 1e-6))
    if not ok.any():
        raise HistodiffError(f"all {len(points)} points lie within {grid.size0 / 2:.0f} px of the image border "
                             f"(or outside it), so no {tile_size} px tile fits around them. Move the points "
                             "inward or lower the tile size.")
    names = sorted(set(classes))
    idx = np.flatnonzero(ok)
    xy = np.stack([top[idx, 1], top[idx, 0]], 1).astype(np.int64)
    tiles = RegionTiles(source, grid, xy, [names.index(classes[i]) for i in idx], names,
                        description=f"tiles centred on points of {source.name}, {grid.describe()}")
    yield Progress(STAGE, 1, 1)
    tiles = yield from _finish(tiles, lazy)
    return tiles, int(len(points) - idx.size)


# -- the in-memory API: arrays of one image's pixels -----------------------------------------------

def _check_tiling(image, tile_size, stride, min_fraction):
    check_rgb_image(image)
    h, w = image.shape[:2]
    if int(tile_size) < 1 or int(stride) < 1:
        raise HistodiffError(f"tile size ({tile_size}) and stride ({stride}) must be at least 1 px.")
    if int(tile_size) > min(h, w):
        raise HistodiffError(f"tile size {tile_size} px is larger than the image ({w}x{h} px). "
                             f"Use a tile size of at most {min(h, w)} px.")
    check_fraction(min_fraction)


def _plain(tiles: ArrayTiles, t, s) -> ArrayTiles:
    tiles.description = f"annotated regions, {t} px tiles at stride {s}"
    return tiles


def tiles_from_labels(image, labels, class_map: dict[int, str], tile_size: int, stride: int | None = None,
                      min_fraction: float = 0.5) -> ArrayTiles:
    """Tiles on a grid (at `stride`) whose main annotated class covers >= min_fraction of the tile.

    class_map maps label values to class names (0 = unannotated is never a class; several values may
    share one name). The grid is aligned to the image's top-left corner. Pixel counts are per class
    name, so values of one class add up. The label image is read block by block."""
    t = int(tile_size)
    s = t if stride is None else int(stride)
    _check_tiling(image, t, s, min_fraction)
    if tuple(labels.shape) != tuple(image.shape[:2]):
        raise HistodiffError(f"the annotation layer has shape {tuple(labels.shape)} but the image has shape "
                             f"{tuple(image.shape)}; the annotation layer must cover the image pixel for pixel. "
                             "Create the annotation layer from this image (same size, no scaling).")
    labels = labels if hasattr(labels, "dtype") else np.asarray(labels)
    tiles = run_to_end(label_tiles(ArraySource(image), labels, class_map, t, s, min_fraction, lazy=False))
    return _plain(tiles, t, s)


def tiles_from_masks(image, masks, classes: list[str], tile_size, stride=None, min_fraction=0.5) -> ArrayTiles:
    """Tiles from shape masks (K, H, W), one class name per shape; later shapes paint over earlier ones."""
    check_rgb_image(image)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise HistodiffError(f"shape masks must be a (K, H, W) stack with at least one shape; got shape "
                             f"{masks.shape}. Draw at least one shape.")
    classes = check_classes(classes, masks.shape[0], "shape")
    names = sorted(set(classes))
    labels = np.zeros(masks.shape[1:], dtype=np.int32)
    for mask, c in zip(masks, classes):
        labels[mask] = names.index(c) + 1
    return tiles_from_labels(image, labels, {k + 1: c for k, c in enumerate(names)}, tile_size, stride,
                             min_fraction)


def tiles_from_points(image, points, classes: list[str], tile_size) -> tuple[ArrayTiles, int]:
    """One tile centred on each (row, col) point (napari data coordinates: pixel centres on integers);
    returns (tiles, number of points too near the border)."""
    check_rgb_image(image)
    t = int(tile_size)
    h, w = image.shape[:2]
    if t < 1 or t > min(h, w):
        raise HistodiffError(f"tile size {tile_size} px must be between 1 and {min(h, w)} px (the image is "
                             f"{w}x{h} px). Choose a smaller tile size.")
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise HistodiffError(f"points must be an (N, 2) array of (row, col) with N >= 1; got shape {points.shape}. "
                             "Add points on a 2-D points layer.")
    tiles, skipped = run_to_end(point_tiles(ArraySource(image), points + 0.5, classes, t, lazy=False))
    tiles.description = f"tiles centred on points, {t} px"
    return tiles, skipped


def class_counts(tiles) -> dict[str, int]:
    """Number of tiles per class, in class_names order, zeros included."""
    n = len(tiles.class_names)
    labels = getattr(tiles, "labels", None)
    if labels is None and len(tiles) and n:
        labels = [tiles.label(i) for i in range(len(tiles))]
    labels = np.asarray([] if labels is None else [v for v in labels if v is not None], dtype=np.int64)
    counts = np.bincount(labels[labels >= 0], minlength=n)
    return {c: int(counts[k]) for k, c in enumerate(tiles.class_names)}

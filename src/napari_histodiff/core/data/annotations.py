"""Annotations drawn on an image (labels, shape masks, points) -> a labeled tile set.

Plain numpy arrays in the image's pixel coordinates come in; the napari widgets do the layer
conversion. The image may be numpy, dask or zarr: only the windows that become tiles are read.
"""

from __future__ import annotations

import numpy as np

from ..base.errors import HistodiffError
from .tiles import ArrayTiles, to_rgb_uint8


def check_rgb_image(image) -> None:
    """Raise HistodiffError unless `image` has shape (H, W, 3) or (H, W, 4)."""
    shape = tuple(getattr(image, "shape", None) or np.shape(image))
    if len(shape) != 3 or shape[-1] not in (3, 4) or min(shape[:2]) < 1:
        raise HistodiffError(f"the image layer must be RGB (H, W, 3); got shape {shape}. Open an RGB image "
                             "(or convert it: channels last, one 2-D slice, 3 colour channels) and try again.")


def read_window(image, y, x, size) -> np.ndarray:
    """The (size, size) window at row y, column x as uint8 RGB; reads only that window."""
    y, x, size = int(y), int(x), int(size)
    h, w = image.shape[:2]
    if y < 0 or x < 0 or y + size > h or x + size > w:
        raise HistodiffError(f"the {size} px window at y={y},x={x} leaves the image ({w}x{h} px). "
                             "Choose a window inside the image.")
    win = image[y : y + size, x : x + size]
    if hasattr(win, "compute"):  # dask
        win = win.compute()
    return to_rgb_uint8(np.asarray(win), name=f"the image window at y={y},x={x}")


def _check_tiling(image, tile_size, stride, min_fraction):
    check_rgb_image(image)
    h, w = image.shape[:2]
    if int(tile_size) < 1 or int(stride) < 1:
        raise HistodiffError(f"tile size ({tile_size}) and stride ({stride}) must be at least 1 px.")
    if int(tile_size) > min(h, w):
        raise HistodiffError(f"tile size {tile_size} px is larger than the image ({w}x{h} px). "
                             f"Use a tile size of at most {min(h, w)} px.")
    if not 0 < min_fraction <= 1:
        raise HistodiffError(f"the minimum annotated fraction must be in (0, 1] (got {min_fraction}), e.g. 0.5.")


def _grid(lo, hi, t, s, n):
    """Grid starts (multiples of s) of windows of t px that overlap [lo, hi] and fit in n px."""
    first = -(-max(0, lo - t + 1) // s) * s
    return np.arange(first, min(hi, n - t) + 1, s)


def tiles_from_labels(image, labels, class_map: dict[int, str], tile_size: int, stride: int | None = None,
                      min_fraction: float = 0.5) -> ArrayTiles:
    """Tiles on a grid (at `stride`) whose main annotated class covers >= min_fraction of the tile.

    class_map maps label values to class names (0 = unannotated is never a class; several values may
    share one name). The grid is aligned to the image's top-left corner and limited to the bounding
    box of nonzero labels. Pixel counts are per class name, so values of one class add up.
    """
    t = int(tile_size)
    s = t if stride is None else int(stride)
    _check_tiling(image, t, s, min_fraction)
    labels = np.asarray(labels)
    if labels.shape != tuple(image.shape[:2]):
        raise HistodiffError(f"the annotation layer has shape {labels.shape} but the image has shape "
                             f"{tuple(image.shape)}; the annotation layer must cover the image pixel for pixel. "
                             "Create the annotation layer from this image (same size, no scaling).")
    if labels.dtype.kind not in "iub":
        raise HistodiffError(f"labels must be integers (got {labels.dtype}). Use a napari Labels layer.")
    class_map = {int(v): str(c) for v, c in (class_map or {}).items() if int(v) != 0}
    if not class_map:
        raise HistodiffError("no class is assigned to any label value. Give each label value (1, 2, ...) "
                             "a class name.")
    empty = [v for v, c in class_map.items() if not c.strip()]
    if empty:
        raise HistodiffError(f"label value {empty[0]} has an empty class name. Give it a class name.")
    rows = np.flatnonzero(labels.any(axis=1))
    if rows.size == 0:
        raise HistodiffError("the annotation layer is empty (no nonzero pixel). Paint some regions first.")
    cols = np.flatnonzero(labels.any(axis=0))
    h, w = labels.shape
    ys, xs = _grid(rows[0], rows[-1], t, s, h), _grid(cols[0], cols[-1], t, s, w)
    class_names = sorted(set(class_map.values()))
    need = max(1, int(np.ceil(min_fraction * t * t - 1e-6)))
    if ys.size and xs.size:
        oy, ox = ys[0], xs[0]
        crop = labels[oy : ys[-1] + t, ox : xs[-1] + t]
        # class index of every pixel of the crop, -1 where the value has no class
        keys = np.array(sorted(class_map), dtype=np.int64)
        to_class = np.array([class_names.index(class_map[k]) for k in keys], dtype=np.int16)
        pos = np.clip(np.searchsorted(keys, crop), 0, len(keys) - 1)
        cls = np.where(keys[pos] == crop, to_class[pos], np.int16(-1))
        gy, gx = np.meshgrid(ys - oy, xs - ox, indexing="ij")
        gy, gx = gy.ravel(), gx.ravel()
        dt = np.int32 if crop.size < 2**31 else np.int64
        ii = np.zeros((crop.shape[0] + 1, crop.shape[1] + 1), dtype=dt)  # integral image, one class at a time
        counts = np.zeros((len(class_names), gy.size), dtype=np.int64)
        for c in range(len(class_names)):
            ii[1:, 1:] = cls == c
            np.cumsum(ii, 0, out=ii)
            np.cumsum(ii, 1, out=ii)
            counts[c] = ii[gy + t, gx + t] - ii[gy, gx + t] - ii[gy + t, gx] + ii[gy, gx]
        best, keep = counts.argmax(0), counts.max(0) >= need
        coords = [(int(oy + a), int(ox + b), int(k)) for a, b, k, ok in zip(gy, gx, best, keep) if ok]
    else:
        coords = []
    if not coords:
        raise HistodiffError(f"no tile of {t} px is at least {min_fraction:.0%} annotated with a class "
                             f"({', '.join(f'{v}={c}' for v, c in sorted(class_map.items()))}); draw larger "
                             "regions, lower the minimum annotated fraction or the tile size.")
    tiles = np.stack([read_window(image, y, x, t) for y, x, _ in coords])
    return ArrayTiles(tiles, [k for _, _, k in coords], class_names, [f"y={y},x={x}" for y, x, _ in coords],
                      description=f"annotated regions, {t} px tiles at stride {s}")


def _check_classes(classes, n, what):
    classes = [str(c).strip() if c is not None else "" for c in classes]
    if len(classes) != n:
        raise HistodiffError(f"got {n} {what}s but {len(classes)} class names. Give one class per {what}.")
    for i, c in enumerate(classes):
        if not c or c.lower() == "nan":
            raise HistodiffError(f"{what} {i} has no class name. Set its `class` feature (e.g. TUM, STR).")
    return classes


def tiles_from_masks(image, masks, classes: list[str], tile_size, stride=None, min_fraction=0.5) -> ArrayTiles:
    """Tiles from shape masks (K, H, W), one class name per shape; later shapes paint over earlier ones."""
    check_rgb_image(image)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise HistodiffError(f"shape masks must be a (K, H, W) stack with at least one shape; got shape "
                             f"{masks.shape}. Draw at least one shape.")
    classes = _check_classes(classes, masks.shape[0], "shape")
    names = sorted(set(classes))
    labels = np.zeros(masks.shape[1:], dtype=np.int32)
    for mask, c in zip(masks, classes):
        labels[mask] = names.index(c) + 1
    return tiles_from_labels(image, labels, {k + 1: c for k, c in enumerate(names)}, tile_size, stride,
                             min_fraction)


def tiles_from_points(image, points, classes: list[str], tile_size) -> tuple[ArrayTiles, int]:
    """One tile centred on each (row, col) point; returns (tiles, number of points too near the border)."""
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
    classes = _check_classes(classes, len(points), "point")
    # napari pixel i spans [i - 0.5, i + 0.5), so the pixel under a point is floor(p + 0.5)
    with np.errstate(invalid="ignore"):
        top = np.floor(points + 0.5) - t // 2
        ok = np.isfinite(top).all(1) & (top >= 0).all(1) & (top[:, 0] + t <= h) & (top[:, 1] + t <= w)
    if not ok.any():
        raise HistodiffError(f"all {len(points)} points lie within {t // 2} px of the image border, so no "
                             f"{t} px tile fits around them. Move the points inward or lower the tile size.")
    names = sorted(set(classes))
    idx = np.flatnonzero(ok)
    tiles = np.stack([read_window(image, top[i, 0], top[i, 1], t) for i in idx])
    origins = [f"y={int(top[i, 0])},x={int(top[i, 1])}" for i in idx]
    out = ArrayTiles(tiles, [names.index(classes[i]) for i in idx], names, origins,
                     description=f"tiles centred on points, {t} px")
    return out, int(len(points) - idx.size)


def class_counts(tiles: ArrayTiles) -> dict[str, int]:
    """Number of tiles per class, in class_names order, zeros included."""
    n = len(tiles.class_names)
    labels = np.asarray([] if tiles.labels is None else tiles.labels, dtype=np.int64)
    counts = np.bincount(labels[labels >= 0], minlength=n)
    return {c: int(counts[k]) for k, c in enumerate(tiles.class_names)}

"""Tile sets: every image source becomes a lazy collection of uint8 RGB tiles.

Pure numpy / scikit-image / tifffile / Pillow; no Qt, napari or torch here.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.transform import rescale, resize

from ..base.errors import HistodiffError, TileReadError
from ..base.names import check_class_name

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# Tissue = HSV saturation above Otsu's threshold, clamped to this range (see tissue_mask).
TISSUE_THRESHOLD_RANGE = (0.05, 0.08)
_MASK_MAX_PIXELS = 1 << 24  # larger images get their mask computed on a subsampled copy


def _fix(name) -> str:
    return f"Remove {name} or re-export it as 8-bit RGB (PNG, JPEG or TIFF)."


def to_rgb_uint8(array, name="image") -> np.ndarray:
    """Convert grayscale / RGB / RGBA / LA arrays of bool, uint8, uint16 or float [0, 1] to uint8 (H, W, 3)."""
    a = np.asarray(array)
    while a.ndim > 3 and a.shape[0] == 1:  # leading singleton pages / frames
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] > 4 or min(a.shape[:2]) < 1:
        raise TileReadError(f"cannot use {name}: shape {a.shape} is not one 2D image with 1-4 channels "
                            f"(a multi-page stack or more than 4 channels?). {_fix(name)}")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "u" and a.dtype.itemsize == 2:
        a = np.round(a / 257.0).astype(np.uint8)
    elif a.dtype.kind == "f":
        _check_finite(a, name)
        if a.min() < 0 or a.max() > 1:
            raise TileReadError(f"cannot use {name}: float values must lie in [0, 1] (found {a.min():g}.."
                                f"{a.max():g}). Scale it to [0, 1] or save it as 8-bit RGB.")
        a = np.round(a * 255.0).astype(np.uint8)
    elif a.dtype.kind in "iu" and a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise TileReadError(f"cannot use {name}: {a.dtype} values {a.min()}..{a.max()} do not fit 8 bits. "
                                + _fix(name))
        a = a.astype(np.uint8)
    elif a.dtype != np.uint8:
        raise TileReadError(f"cannot use {name}: unsupported pixel type {a.dtype}. {_fix(name)}")
    c = a.shape[-1]
    if c in (2, 4):  # composite on white, drop alpha
        alpha = a[..., -1:].astype(np.float32) / 255.0
        a = np.round(a[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        c -= 1
    if c == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)


def _check_finite(a: np.ndarray, name) -> None:
    """TileReadError counting NaN and inf pixels (H, W, C) of a float image, if it has any."""
    if np.isfinite(a).all():
        return
    nan, inf = (int(bad(a).any(-1).sum()) for bad in (np.isnan, np.isinf))
    what = (f"{nan} NaN pixel{'s' * (nan != 1)}" + (f" (and {inf} inf)" if inf else "") if nan
            else f"{inf} inf (infinite) pixel{'s' * (inf != 1)} and no NaN")
    raise TileReadError(f"cannot use {name}: it has {what}. Fill or mask them (e.g. set them to 0) before "
                        "using the image, or save it as 8-bit RGB.")


def planar_rgb(shape) -> bool:
    """True for a TIFF array stored as 3-4 colour planes (C, H, W) rather than (H, W, C)."""
    return len(shape) == 3 and shape[0] in (3, 4) and shape[-1] > 4


def _read_pillow(path, rgb: bool = False) -> np.ndarray:
    """The first frame of an image file as imageio's pillow plugin reads it (``rgb``: converted to RGB;
    palette images in their palette's mode; 16-bit PNGs as uint16), with Pillow itself: imageio's plugin
    tries to import optional HEIF/AVIF openers at every read (half its time), and a Ctrl-C there left a
    half-made plugin whose clean-up printed a traceback after the "interrupted" line."""
    from PIL import Image

    with Image.open(path) as im:
        if rgb:
            im = im.convert("RGB")
        elif im.mode == "P":
            im = im.convert(im.palette.mode)
        elif im.format == "PNG" and im.mode == "I":
            im = im.convert("I;16")
        return np.asarray(im)


def read_rgb(path) -> np.ndarray:
    """Read one image file as uint8 (H, W, 3); TileReadError names the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise TileReadError(f"cannot read tile {path}: no such file. Check the path.")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            a = tifffile.imread(path)
            if planar_rgb(a.shape):  # (C, H, W)
                a = np.moveaxis(a, 0, -1)
        else:
            a = _read_pillow(path, rgb=path.suffix.lower() in (".jpg", ".jpeg"))  # RGB: gray / CMYK JPEGs too
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file to the user
        detail = f"{type(e).__name__}: {e}"
        if "imagecodecs" in str(e):
            raise TileReadError(f"cannot read tile {path}: its compression needs the 'imagecodecs' package "
                                f"({detail}). Run `pip install imagecodecs` or re-export the file.") from e
        raise TileReadError(f"cannot read tile {path}: truncated or not an image ({detail}). "
                            "Remove or re-export the file.") from e
    return to_rgb_uint8(a, name=str(path))


def tissue_fractions(tiles) -> np.ndarray:
    """The fraction of each uint8 RGB tile (N, H, W, 3) that :func:`tissue_mask` calls tissue."""
    return np.array([tissue_mask(t).mean() for t in tiles], dtype=np.float64)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Bool mask of stained tissue: smoothed HSV saturation > clamped Otsu threshold, small holes filled.

    Otsu alone splits pale from dark stain (0.2-0.5 on all-tissue H&E), so the threshold is capped
    at 0.08, which keeps pale stroma and mucin; it is floored at 0.05, above glass and JPEG noise
    (smoothed saturation 0.01 median, 0.05 at the 99th percentile), so a blank image stays blank.
    """
    rgb = np.asarray(rgb)
    h, w = rgb.shape[:2]
    step = int(np.ceil(np.sqrt(h * w / _MASK_MAX_PIXELS)))
    small = rgb[::step, ::step] if step > 1 else rgb
    mx = small.max(-1).astype(np.float32)
    sat = ndi.gaussian_filter((mx - small.min(-1)) / np.maximum(mx, 1.0), 2.0)
    lo, hi = TISSUE_THRESHOLD_RANGE
    sample = sat[::2, ::2]
    t = threshold_otsu(sample) if sample.max() > sample.min() else lo
    mask = sat > float(np.clip(t, lo, hi))
    holes, _ = ndi.label(~mask)  # fill background specks (< 32x32 px) inside tissue
    fill = np.bincount(holes.ravel()) < 1024
    fill[0] = False
    mask |= fill[holes]
    if step > 1:
        mask = np.repeat(np.repeat(mask, step, 0), step, 1)[:h, :w]
    return mask


def _fit_square(rgb: np.ndarray, size: int, scale: float | None = None) -> np.ndarray:
    """Centre-crop to a square, then resize to (size, size) as uint8.

    With ``scale``, the crop is the centre ``size / scale`` px (when the image is that large),
    i.e. the image rescaled by ``scale`` and cut to ``size``: magnification is kept."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    if scale is not None:
        s = min(s, max(1, round(size / scale)))
    y, x = (h - s) // 2, (w - s) // 2
    sq = rgb[y : y + s, x : x + s]
    if s != size:
        out = resize(sq, (size, size), order=1, anti_aliasing=s > size, preserve_range=True)
        sq = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(sq)


def _image_files(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]  # skip ._junk, .git
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


class TileSet:
    """Lazy collection of uint8 (tile_size, tile_size, 3) tiles with optional class labels."""

    tile_size: int
    class_names: list[str] = []

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def label(self, i: int) -> int | None:
        return None

    def origin(self, i: int) -> str:
        raise NotImplementedError

    @property
    def description(self) -> str:
        """Where the tiles come from, for provenance records."""
        return getattr(self, "_description", None) or type(self).__name__

    @description.setter
    def description(self, text: str) -> None:
        self._description = text

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _index(self, i: int) -> int:
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"tile index {i} out of range for {n} tiles")
        return j


class TileFolder(TileSet):
    """Image files under `root`; the first-level sub-folder names the class."""

    def __init__(self, root, tile_size: int, scale: float | None = None):
        root = Path(root)
        if not root.exists():
            raise HistodiffError(f"tile folder {root} does not exist. Check the path.")
        if not root.is_dir():
            raise HistodiffError(f"{root} is not a folder. Give a folder of tiles (or open the file as an image).")
        _check_sizes(tile_size, 1.0 if scale is None else scale)
        self.root, self.tile_size, self.scale = root, int(tile_size), scale
        self.description = f"tile folder {root}" + (f" at scale {scale:g}" if scale is not None else "")
        self.paths = _image_files(root)
        if not self.paths:
            raise HistodiffError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found under {root}. "
                                 "Put tiles there, one sub-folder per class.")
        rel = [p.relative_to(root).parts for p in self.paths]
        folders = sorted({r[0] for r in rel if len(r) > 1})
        _check_no_empty_classes(root, folders)
        names = _class_names_of(root, folders)  # a folder's class name as its manifest gives it
        for f in folders:
            check_class_name(names[f], f"class folder {root / f}")
        self.class_names = sorted(set(names.values()))
        index = {f: self.class_names.index(names[f]) for f in folders}
        self._labels = np.array([index[r[0]] if len(r) > 1 else -1 for r in rel], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        # no scale: the whole tile is fitted to tile_size; with a scale, a centre crop of
        # tile_size / scale px is taken, as if the tile were rescaled and then cut.
        return _fit_square(read_rgb(self.paths[self._index(i)]), self.tile_size, self.scale)

    def label(self, i: int) -> int | None:
        k = int(self._labels[self._index(i)])
        return None if k < 0 else k

    def origin(self, i: int) -> str:
        return str(self.paths[self._index(i)])


def _class_names_of(root: Path, folders) -> dict:
    """``{folder: class name}``: the names ``histodiff tiles`` recorded in ``tiles.csv`` for its class folders
    (a class such as ``Stroma: Inflamed`` is stored in a safe folder name); a folder's own name otherwise."""
    from ..base.owner import owned

    names = {f: f for f in folders}
    if not (root / "tiles.csv").is_file() or not owned(root, "tiles"):
        return names
    import csv

    try:
        with open(root / "tiles.csv", newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            folder = str(row.get("file") or "").split("/")[0]
            if folder in names and "/" in str(row.get("file")) and row.get("class"):
                names[folder] = row["class"]
    except (OSError, ValueError, csv.Error):
        return {f: f for f in folders}
    return names


def _check_no_empty_classes(root: Path, classes) -> None:
    """A class folder without image files is an error (skips .hidden and __MACOSX-style folders)."""
    empty = sorted(d for d in root.iterdir() if d.is_dir() and d.name not in classes
                   and not d.name.startswith((".", "__")))
    if empty:
        one = len(empty) == 1
        names = ", ".join(str(d) for d in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise HistodiffError(f"class folder{'' if one else 's'} {names} {'has' if one else 'have'} no image files "
                             f"({', '.join(IMAGE_SUFFIXES)}), so class{'' if one else 'es'} "
                             f"{', '.join(d.name for d in empty[:5])} would have no tiles. Add tiles to "
                             f"{'it' if one else 'them'} or remove the folder{'' if one else 's'}.")


def _check_sizes(tile_size, scale, stride=1):
    if int(tile_size) < 1 or int(stride) < 1:
        raise HistodiffError(f"tile size ({tile_size}) and stride ({stride}) must be at least 1 px.")
    if not float(scale) > 0:
        raise HistodiffError(f"scale must be > 0 (got {scale}); 0.5 halves the image, 2 doubles it.")


class ImageTiles(TileSet):
    """Grid of tiles cut from one large image, optionally keeping only tiles with enough tissue."""

    def __init__(self, image, tile_size: int, stride: int | None = None, scale: float | None = None,
                 min_tissue: float = 0.5, tissue_filter: bool = True, name: str = "image"):
        stride = tile_size if stride is None else stride
        scale = 1.0 if scale is None else scale
        _check_sizes(tile_size, scale, stride)
        if isinstance(image, (str, Path)):
            name = str(image) if name == "image" else name
            rgb = read_rgb(image)
        else:
            rgb = to_rgb_uint8(image, name=name)
        if scale != 1:
            out = rescale(rgb, scale, order=1, channel_axis=-1, anti_aliasing=scale < 1, preserve_range=True)
            rgb = np.clip(np.round(out), 0, 255).astype(np.uint8)
        t, (h, w) = int(tile_size), rgb.shape[:2]
        if t > min(h, w):
            raise HistodiffError(f"tile size {t} px is larger than {name} ({w}x{h} px at scale {scale:g}). "
                                 f"Use a tile size of at most {min(h, w)} px or a larger {{opt:scale}}.")
        self.image, self.tile_size, self.name, self.class_names = rgb, t, name, []
        self.description = f"image {name}"
        ys, xs = np.meshgrid(np.arange(0, h - t + 1, stride), np.arange(0, w - t + 1, stride), indexing="ij")
        ys, xs = ys.ravel(), xs.ravel()
        if tissue_filter:
            m = tissue_mask(rgb)
            dt = np.int32 if h * w < 2**31 else np.int64
            ii = np.zeros((h + 1, w + 1), dtype=dt)  # integral image (in place): O(1) tissue sum per tile
            ii[1:, 1:] = m
            np.cumsum(ii, 0, out=ii)
            np.cumsum(ii, 1, out=ii)
            frac = (ii[ys + t, xs + t] - ii[ys, xs + t] - ii[ys + t, xs] + ii[ys, xs]) / float(t * t)
            keep = frac >= min_tissue
            if not keep.any():
                raise HistodiffError(f"no {t} px tile of {name} has at least {min_tissue:.0%} tissue (best "
                                     f"{frac.max():.0%}). Lower {{opt:min_tissue}} or turn the tissue filter off "
                                     "({opt:tissue_filter=false}).")
            ys, xs, self.tissue = ys[keep], xs[keep], frac[keep]
        else:
            self.tissue = None
        self.coords = [(int(y), int(x)) for y, x in zip(ys, xs)]

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> np.ndarray:
        y, x = self.coords[self._index(i)]
        return self.image[y : y + self.tile_size, x : x + self.tile_size].copy()

    def origin(self, i: int) -> str:
        y, x = self.coords[self._index(i)]
        return f"{self.name}@x={x},y={y}"


class ConcatTiles(TileSet):
    """Several tile sets of one tile size as one; class names merged, labels remapped."""

    def __init__(self, parts: list[TileSet]):
        self.parts = list(parts)
        self.description = "; ".join(p.description for p in self.parts)
        if not self.parts:
            raise HistodiffError("no tile sets to combine. Give at least one folder or image.")
        sizes = sorted({p.tile_size for p in self.parts})
        if len(sizes) > 1:
            raise HistodiffError(f"tile sets have different tile sizes {sizes}. Open them with one tile size.")
        self.tile_size = sizes[0]
        self.class_names = sorted({c for p in self.parts for c in p.class_names})
        index = {c: k for k, c in enumerate(self.class_names)}
        self._maps = [[index[c] for c in p.class_names] for p in self.parts]
        self._ends = np.cumsum([len(p) for p in self.parts]).tolist()

    def __len__(self) -> int:
        return self._ends[-1]

    def groups(self) -> np.ndarray:
        """The part (slide, folder, shard) of each tile, shards of a shard set numbered after the parts."""
        out, base = [], 0
        for p in self.parts:
            g = p.groups() if hasattr(p, "groups") else np.zeros(len(p), np.int64)
            out.append(g + base)
            base += int(g.max()) + 1 if len(g) else 1
        return np.concatenate(out)

    def _locate(self, i: int) -> tuple[int, int]:
        j = self._index(i)
        k = bisect.bisect_right(self._ends, j)
        return k, j - (self._ends[k - 1] if k else 0)

    def __getitem__(self, i: int) -> np.ndarray:
        k, j = self._locate(i)
        return self.parts[k][j]

    def label(self, i: int) -> int | None:
        k, j = self._locate(i)
        lab = self.parts[k].label(j)
        return None if lab is None else self._maps[k][lab]

    def origin(self, i: int) -> str:
        k, j = self._locate(i)
        return self.parts[k].origin(j)


def split_indices(n: int, holdout: float, seed: int, max_holdout: int | None = None):
    """Deterministic (train, held_out) index split; held-out >= 1 when n >= 2 and holdout > 0."""
    if n < 1:
        raise HistodiffError("no tiles to split into training and held-out sets. Add tiles.")
    if not 0 <= holdout < 1:
        raise HistodiffError(f"held-out fraction must be in [0, 1) (got {holdout}), e.g. 0.1.")
    perm = np.random.default_rng(seed).permutation(n)
    k = max(int(round(n * holdout)), 1 if holdout > 0 else 0)
    if max_holdout is not None:
        k = min(k, int(max_holdout))
    k = max(0, min(k, n - 1))
    return np.sort(perm[k:]), np.sort(perm[:k])


class ArrayTiles(TileSet):
    """Tiles already in memory (uint8 (N, T, T, 3)), optionally labeled."""

    def __init__(self, tiles, labels=None, class_names=None, origins=None, description="tiles in memory"):
        self.tiles = np.asarray(tiles)
        if self.tiles.ndim != 4 or self.tiles.shape[-1] != 3 or self.tiles.shape[1] != self.tiles.shape[2]:
            raise HistodiffError(f"tiles must be an (N, T, T, 3) RGB array, got shape {self.tiles.shape}")
        self.tiles = self.tiles.astype(np.uint8, copy=False)
        self.tile_size = self.tiles.shape[1]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.class_names = [check_class_name(c, description) for c in class_names or []]
        self.origins = origins
        self.description = description

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tiles[self._index(i)]

    def label(self, i: int) -> int | None:
        return None if self.labels is None else int(self.labels[self._index(i)])

    def origin(self, i: int) -> str:
        j = self._index(i)
        return self.origins[j] if self.origins is not None else f"tile {j}"

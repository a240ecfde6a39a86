"""Opening folders of tiles, tar shards, whole-slide images and other large images as one tile set
(apart from :mod:`.tiles`, whose tile sets the slide and shard modules build on)."""

from __future__ import annotations

from pathlib import Path

from ..base.errors import HistodiffError
from .tiles import (
    IMAGE_SUFFIXES,
    ConcatTiles,
    ImageTiles,
    TileFolder,
    TileSet,
    _image_files,
)


def _per_path(paths, scale) -> list[tuple[Path, float | None]]:
    """(path, scale) pairs: one scale for all paths or one per path."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    scales = list(scale) if isinstance(scale, (list, tuple)) else [scale]
    if len(scales) not in (1, len(paths)):
        raise HistodiffError(f"{len(scales)} scales for {len(paths)} paths. Give one scale for all paths or "
                             "one per path, in the same order.")
    return list(zip(map(Path, paths), scales * len(paths) if len(scales) == 1 else scales))


def open_tiles(paths, tile_size, *, large_images=False, stride=None, scale=None, min_tissue=0.5,
               tissue_filter=True, mpp=None, slide_mpp=None, annotations=None, min_fraction=0.5,
               object_types=("annotation",)) -> TileSet:
    """Open folders of tiles, tar shards, whole-slide images and other large images as one tile set.

    ``scale`` is one factor for every path or a list with one per path (collections scanned at
    different magnifications). Slides (vendor formats, TIFFs, text files listing slides, folders of
    vendor slides) are tiled at ``mpp`` microns per pixel when given, read region by region
    (:mod:`.slide_tiles`); ``annotations``: None, or GeoJSON files (found beside the slides when none
    are given) that label the slides' tiles."""
    from .slide_tiles import LAZY, VENDOR, is_slide, listed_slides, open_slides

    parts: list[TileSet] = []
    for p, s in _per_path(paths, scale):
        opts = dict(stride=stride, scale=s, min_tissue=min_tissue, tissue_filter=tissue_filter)
        slide_opts = dict(opts, mpp=mpp, slide_mpp=slide_mpp, annotations=annotations, min_fraction=min_fraction,
                          object_types=object_types)
        if not p.exists():
            raise HistodiffError(f"no such file or folder: {p}. Check the path.")
        vendor = sorted(f for f in p.rglob("*") if is_slide(f)) if p.is_dir() else []
        if p.is_dir() and (large_images or vendor and all(is_slide(f) for f in _image_files(p))):
            files = sorted(set(_image_files(p)) | set(vendor)) if large_images else vendor
            if not files:
                raise HistodiffError(f"no image files ({', '.join(IMAGE_SUFFIXES + VENDOR)}) found under {p}.")
            lazy = [f for f in files if f.name.lower().endswith(LAZY)]
            parts += [ImageTiles(f, tile_size, name=str(f), **opts) for f in files if f not in lazy]
            parts += open_slides(lazy, tile_size, **slide_opts) if lazy else []
        elif p.is_dir() and any(p.glob("*.tar")) and not _image_files(p):
            from .shards import ShardTiles, shard_files

            parts.append(ShardTiles(shard_files(p), tile_size, scale=s))
        elif p.is_dir():
            parts.append(TileFolder(p, tile_size, scale=s))
        elif p.suffix.lower() == ".tar":
            from .shards import ShardTiles

            parts.append(ShardTiles([p], tile_size, scale=s))
        elif p.suffix.lower() == ".txt":
            parts += open_slides(listed_slides(p), tile_size, **slide_opts)
        elif p.name.lower().endswith(LAZY) or is_slide(p):
            parts += open_slides([p], tile_size, **slide_opts)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            parts.append(ImageTiles(p, tile_size, name=str(p), **opts))
        else:
            raise HistodiffError(f"{p} is not a slide or image file ({', '.join(VENDOR + IMAGE_SUFFIXES)}), a "
                                 "folder, or a .txt list of slides.")
    if not parts:
        raise HistodiffError("no tile folder or image given. Give at least one path.")
    return parts[0] if len(parts) == 1 else ConcatTiles(parts)

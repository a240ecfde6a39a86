"""Tile images on disk: headers read without decoding, TIFF tiles with their record, PNG contact sheets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

GRAY_MODES = ("1", "L", "LA", "La", "I", "F")  # PIL modes without colour (plus "I;16" variants)


def planar_rgb(shape) -> bool:
    """True for a TIFF array stored as 3-4 colour planes (C, H, W) rather than (H, W, C)."""
    return len(shape) == 3 and shape[0] in (3, 4) and shape[-1] > 4


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


def contact_sheet(tiles: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Arrange uint8 (N, H, W, 3) tiles in a grid on a white background."""
    n, h, w = tiles.shape[:3]
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    sheet = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y : y + h, x : x + w] = tile
    return sheet


def write_png(path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(Path(path), image)


def write_tile(path, tile: np.ndarray, record: dict) -> None:
    """One RGB tile as TIFF (tifffile) with ``record`` as JSON in the image description."""
    import tifffile

    tifffile.imwrite(Path(path), tile, photometric="rgb", description=json.dumps(record))


def read_tile_record(path) -> dict:
    import tifffile

    with tifffile.TiffFile(Path(path)) as tif:
        return json.loads(tif.pages[0].description)

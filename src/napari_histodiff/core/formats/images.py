"""Writing tiles and pictures: TIFF tiles with their record, PNG contact sheets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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

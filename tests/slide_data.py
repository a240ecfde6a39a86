"""Synthetic pyramidal slides of any size, written tile by tile (memory stays small); used by the
tests and by benchmarks/slides.py."""

from __future__ import annotations

import numpy as np

GLASS = 245
TILE = 256


def write_slide(path, width: int, height: int, blocks, mpp: float = 0.25, levels: int = 3, compression="zlib"):
    """A pyramidal BigTIFF: glass, with ``blocks`` = [(x0, y0, x1, y1, (r, g, b)), ...] in level-0 px
    (multiples of 2**(levels-1) keep every level exact); levels at 1, 1/2, 1/4, ... in SubIFDs."""

    def tiles(k):
        d = 2**k
        h, w = -(-height // d), -(-width // d)
        for ty in range(0, h, TILE):
            for tx in range(0, w, TILE):
                t = np.full((TILE, TILE, 3), GLASS, np.uint8)
                for x0, y0, x1, y1, colour in blocks:
                    xa, xb = max(x0 // d - tx, 0), min(x1 // d - tx, TILE)
                    ya, yb = max(y0 // d - ty, 0), min(y1 // d - ty, TILE)
                    if xa < xb and ya < yb:
                        t[ya:yb, xa:xb] = colour
                yield t

    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k in range(levels):
            d = 2**k
            kw = dict(subifds=levels - 1, resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER") if k == 0 \
                else dict(subfiletype=1)
            tw.write(tiles(k), shape=(-(-height // d), -(-width // d), 3), dtype=np.uint8, tile=(TILE, TILE),
                     compression=compression, photometric="rgb", **kw)
    return path

"""Tiling whole-slide images in bounded memory: peak RSS and tiles per second by slide size (prints figures).

    python benchmarks/slides.py [--sizes 10000 30000 60000 100000] [--tile 64] [--keep DIR]

For each size, a pyramidal BigTIFF (0.25 um/px, levels 1, 1/2, 1/4, ... down to ~3k px) is written
tile by tile: glass with four 2048 px tissue blocks, so the disk use stays small. A fresh process
then opens it as a :class:`SlideTiles` at level 0 (``--tile`` px tiles at the slide's mpp), reads
every tissue tile, and reports its peak RSS. In the same process, the same tile grid is read with a
plain OpenSlide ``read_region`` loop, alternating ours / OpenSlide twice; the ratio is ours / plain
in tiles per second (best of two each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = r"""
import json, resource, sys, time
import numpy as np
path, tile = sys.argv[1], int(sys.argv[2])
from napari_histodiff.core.data.slide_tiles import SlideTiles
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
ts = SlideTiles(path, tile)
grid_s = time.perf_counter() - t0

def ours():
    t = time.perf_counter()
    for i in range(len(ts)):
        ts[i]
    return len(ts) / (time.perf_counter() - t)

import openslide
osr = openslide.OpenSlide(path)
xy = [(int(x), int(y)) for x, y in ts.xy]

def plain():
    t = time.perf_counter()
    for x, y in xy:
        np.asarray(osr.read_region((x, y), 0, (tile, tile)).convert("RGB"))
    return len(xy) / (time.perf_counter() - t)

rates = [(ours(), plain()) for _ in range(2)]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"tiles": len(ts), "grid_s": grid_s, "ours": max(r[0] for r in rates),
                  "plain": max(r[1] for r in rates), "peak_mb": peak / 1024, "base_mb": base / 1024}))
"""


EXTRACT = r"""
import json, resource, sys, time
import numpy as np
from napari.components import ViewerModel
from napari_histodiff._reader import get_reader
from napari_histodiff.widgets._layers import extract
path, n = sys.argv[1], int(sys.argv[2])
viewer = ViewerModel()
image = [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in get_reader(path)(path)][0]
def rect(x0, y0, x1, y1):
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) - 0.5
shapes = viewer.add_shapes([rect(0, 0, 512, 512), rect(n - 512, n - 512, n, n)], shape_type="rectangle",
                           scale=image.scale, features={"class": ["TUM", "STR"]})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
tiles, skipped = extract(image, shapes, 128, 128, 0.5, mpp=0.5)
pixels = [tiles[i] for i in range(len(tiles))]
print(json.dumps({"tiles": len(pixels), "seconds": time.perf_counter() - t, "base_mb": base / 1024,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def extraction(path: Path, size: int) -> None:
    """napari: tiles of two 512 px rectangles at opposite corners of a slide layer (as the Fine-tune widget)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-c", EXTRACT, str(path), str(size)], capture_output=True, text=True,
                          env=env)
    if done.returncode:
        print(done.stderr[-2000:])
        return
    r = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nnapari extraction, two 512 px rectangles at opposite corners of the {size} px slide: {r['tiles']} "
          f"tiles in {r['seconds']:.2f} s; peak RSS {r['peak_mb']:.0f} MB (after loading napari: {r['base_mb']:.0f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 60000, 100000])
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--keep", type=Path, help="write the slides here and keep them")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "tests"))
    from slide_data import write_slide

    root = args.keep or Path(tempfile.mkdtemp(prefix="histodiff-slides-"))
    root.mkdir(parents=True, exist_ok=True)
    pink, purple = (230, 150, 190), (120, 60, 150)
    rows = []
    print(f"{'size px':>8} {'file MB':>8} {'tiles':>6} {'grid s':>7} {'peak RSS MB':>12} {'ours t/s':>9} "
          f"{'plain t/s':>10} {'ratio':>6}")
    for size in args.sizes:
        path = root / f"slide-{size}.tif"
        if not path.is_file():
            levels = 1
            while size / 2 ** (levels - 1) > 3000:
                levels += 1
            q = size // 4 // 2048 * 2048
            blocks = [(q, q, q + 2048, q + 2048, pink), (size - q - 2048, q, size - q, q + 2048, purple),
                      (q, size - q - 2048, q + 2048, size - q, purple), (2 * q, 2 * q, 2 * q + 2048, 2 * q + 2048, pink)]
            write_slide(path, size, size, blocks, mpp=0.25, levels=levels)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.tile)], capture_output=True,
                              text=True, env=env)
        if done.returncode:
            print(done.stderr[-2000:])
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append((size, r))
        print(f"{size:>8} {path.stat().st_size / 1e6:>8.1f} {r['tiles']:>6} {r['grid_s']:>7.2f} {r['peak_mb']:>12.0f} "
              f"{r['ours']:>9.0f} {r['plain']:>10.0f} {r['ours'] / r['plain']:>6.2f}")
    if len(rows) > 1:
        first, last = rows[0][1], rows[-1][1]
        print(f"\npeak RSS {rows[-1][0]} px / {rows[0][0]} px: {last['peak_mb'] / first['peak_mb']:.2f}x; "
              f"tiles/s ours / plain OpenSlide: {min(r['ours'] / r['plain'] for _, r in rows):.2f}x at worst")
    if 60000 in args.sizes:
        extraction(root / "slide-60000.tif", 60000)
    if args.keep is None:
        for f in root.glob("*.tif"):
            f.unlink()
        root.rmdir()


if __name__ == "__main__":
    main()

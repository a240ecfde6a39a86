"""Two of our jobs at once on one machine: time of each against one job alone (prints figures).

    python benchmarks/concurrent_jobs.py [--steps 60] [--rounds 2] [--share on,off]

Each job is ``histodiff pretrain-autoencoder`` (tiny preset, ``--steps`` steps) on tiles of the demo
image, run as its own process, as a user running napari's job and a CLI run (or two CLI runs) gets
them. ``on``: our jobs share the cores (base/threads.py: each sizes its threads from our jobs alive);
``off``: each takes every core (``OMP_NUM_THREADS`` = cores), as before. Alone and paired runs
alternate, ``--rounds`` times, so a machine shared with other work slows them alike. Goal: two
concurrent jobs each within 2.5x of one job alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def write_tiles(folder: Path, n: int = 64) -> Path:
    import imageio.v3 as iio

    from napari_histodiff.core.jobs.demo import demo_tiles

    folder.mkdir(parents=True)
    tiles = demo_tiles(32)
    for i in range(n):
        iio.imwrite(folder / f"t{i:03d}.png", tiles[i * 7 % len(tiles)])
    return folder


def job(tiles: Path, out: Path, steps: int, share: bool, locks: Path) -> subprocess.Popen:
    env = {**os.environ, "HISTODIFF_LOCKS": str(locks)}
    env.pop("OMP_NUM_THREADS", None)
    if not share:
        env["OMP_NUM_THREADS"] = str(os.cpu_count())
    cmd = [sys.executable, "-m", "napari_histodiff", "pretrain-autoencoder", str(tiles), "--out", str(out),
           "--preset", "tiny", "--steps", str(steps), "--device", "cpu", "--precision", "fp32"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def timed(procs) -> list[float]:
    t0, times = time.perf_counter(), [None] * len(procs)
    while any(t is None for t in times):
        for i, p in enumerate(procs):
            if times[i] is None and p.poll() is not None:
                if p.returncode != 0:
                    raise SystemExit(p.stderr.read()[-2000:])
                times[i] = time.perf_counter() - t0
        time.sleep(0.05)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--share", default="on,off")
    args = ap.parse_args()
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    print(f"cores {os.cpu_count()}, avx512_bf16 {'avx512_bf16' in flags}, avx2 {'avx2' in flags}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiles = write_tiles(tmp / "tiles")
        results: dict = {}
        k = 0
        for r in range(args.rounds):
            for share in [s == "on" for s in args.share.split(",")]:
                for pair in ((False, True) if r % 2 == 0 else (True, False)):
                    k += 1
                    n = 2 if pair else 1
                    procs = [job(tiles, tmp / f"out{k}-{i}", args.steps, share, tmp / f"locks{k}")
                             for i in range(n)]
                    results.setdefault((share, pair), []).extend(timed(procs))
        for share in [s == "on" for s in args.share.split(",")]:
            alone = sum(results[(share, False)]) / len(results[(share, False)])
            paired = sum(results[(share, True)]) / len(results[(share, True)])
            print(f"threads shared {'on ' if share else 'off'}: one job alone {alone:6.1f} s, each of two at once "
                  f"{paired:6.1f} s: {paired / alone:.2f}x (goal <= 2.5x)")


if __name__ == "__main__":
    main()

"""Memorisation audit on crc5: planted-copy recall, false flags on genuine tiles, and audit time.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/audit_check.py --real 1000 --copies 200 --genuine 200

The real set is ``--real`` crc5 tiles (224 px JPEG, audited at 64 px). The synthetic set holds
``--copies`` planted copies of real tiles, made at full size with the audit's own transforms (flip /
rotation, H&E stain jitter, crop to 85-100% resized back, translation, mild blur, JPEG) and saved as PNG,
and ``--genuine`` crc5 tiles that are not in the real set. Prints recall, false-flag rate and the time
of each stage, and an extrapolation to 100,000 real tiles (assumptions printed with it).

``--real-crops N`` measures a large real set instead of extrapolating to it:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audit_check.py --real-crops 100000 --copies 200 --genuine 800

The real set is then N distinct 112 px crops cut from the crc5 tiles left after the ``--genuine`` ones,
saved as JPEG (quality 90) in a temporary folder and deleted at the end: windows on a 28 px grid (a
quarter of the side, beyond the pixel check's shift search of a fifth) at 0, 22.5, 45 and 67.5 degrees
(rotations that are not among the audit's 8 flips / rotations), 48 per tile, in a random order per tile
taken round-robin over the tiles; horizontal flips of them (copies in the audit's eyes) only when N asks
for more. Copies are planted from random real crops; the genuine tiles are one such crop of each held-out
tile. Also prints the time to build the set (not part of the audit), the peak RSS of this process
(``ru_maxrss``) and of each audit stage, and the index used. crc5's tiles overlap one another by half a
tile, so axis-aligned crops have exact twins in other tiles: at large N (100,000) enough of them are in
the real set to push the calibrated threshold to about 1 (docs/results.md); the times and memory stand.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CROP, STRIDE, ANGLES = 112, 28, (0.0, 22.5, 45.0, 67.5)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "crc5"


def build(root: Path, n_real: int, n_copies: int, n_genuine: int, seed: int):
    files = sorted(p for p in DATA.rglob("*.jpg"))
    if n_real + n_genuine > len(files):
        sys.exit(f"crc5 has {len(files)} tiles; ask for fewer than --real + --genuine = {n_real + n_genuine}")
    order = np.random.default_rng(seed).permutation(len(files))
    real, genuine = [files[i] for i in order[:n_real]], [files[i] for i in order[n_real : n_real + n_genuine]]
    for f in real:
        (root / "real" / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(f, root / "real" / f.parent.name / f.name)
    (root / "synthetic" / "genuine").mkdir(parents=True)
    for f in genuine:
        os.symlink(f, root / "synthetic" / "genuine" / f.name)
    links = [root / "real" / f.parent.name / f.name for f in real]
    return _plant(root, links, n_copies, seed)

def crop_variants(size: int = 224) -> list[tuple[float, int, int]]:
    """(angle, x0, y0) of every CROP window on the STRIDE grid that lies inside the tile rotated by angle."""
    from PIL import Image

    out = []
    for angle in ANGLES:
        inside = np.asarray(Image.new("L", (size, size), 255).rotate(angle, resample=Image.Resampling.BILINEAR))
        for y0 in range(0, size - CROP + 1, STRIDE):
            for x0 in range(0, size - CROP + 1, STRIDE):
                if inside[y0 : y0 + CROP, x0 : x0 + CROP].min() == 255:
                    out.append((angle, x0, y0))
    return out


def _cut(img, variants, path_of):
    from PIL import Image

    rotated = {}
    for k, (angle, x0, y0, flip) in enumerate(variants):
        if angle not in rotated:
            rotated[angle] = img.rotate(angle, resample=Image.Resampling.BICUBIC) if angle else img
        crop = rotated[angle].crop((x0, y0, x0 + CROP, y0 + CROP))
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(path_of(k, angle, x0, y0, flip), quality=90)


def build_crops(root: Path, n_real: int, n_copies: int, n_genuine: int, seed: int):
    """The real set as ``n_real`` crops of the crc5 tiles left after ``n_genuine`` held-out ones (one crop
    each is a genuine synthetic tile), and ``n_copies`` copies of random real crops."""
    from PIL import Image

    files = sorted(p for p in DATA.rglob("*.jpg"))
    order = np.random.default_rng(seed).permutation(len(files))
    genuine, sources_ = [files[i] for i in order[:n_genuine]], [files[i] for i in order[n_genuine:]]
    base = [(a, x, y, False) for a, x, y in crop_variants()]
    variants = base + [(a, x, y, True) for a, x, y, _ in base]
    if n_real > len(sources_) * len(variants):
        sys.exit(f"{len(sources_)} crc5 tiles give at most {len(sources_) * len(variants)} crops; ask for fewer")
    if n_real > len(sources_) * len(base):
        print(f"note: more than {len(sources_) * len(base)} crops asked: flipped crops fill the rest (the audit "
              "sees a flip as a copy, so they raise the calibrated threshold)")
    rng = np.random.default_rng(seed + 3)
    perms = [np.concatenate([rng.permutation(len(base)), len(base) + rng.permutation(len(base))]) for _ in sources_]
    want: dict[int, list] = {}
    for n in range(n_real):  # round-robin over the tiles: rank r of every tile before rank r + 1
        t, r = n % len(sources_), n // len(sources_)
        want.setdefault(t, []).append(variants[perms[t][r]])
    real = []
    for t, chosen in want.items():
        f = sources_[t]
        folder = root / "real" / f.parent.name
        folder.mkdir(parents=True, exist_ok=True)

        def path_of(k, angle, x0, y0, flip, f=f, folder=folder):
            p = folder / f"{f.stem}_a{angle:g}_x{x0}_y{y0}{'_f' if flip else ''}.jpg"
            real.append(p)
            return p

        with Image.open(f) as im:
            _cut(im.convert("RGB"), chosen, path_of)
    (root / "synthetic" / "genuine").mkdir(parents=True)
    for i, f in enumerate(genuine):
        with Image.open(f) as im:
            _cut(im.convert("RGB"), [base[rng.integers(len(base))]],
                 lambda *_, f=f: root / "synthetic" / "genuine" / f"{f.stem}.jpg")
    return _plant(root, real, n_copies, seed)


def _plant(root: Path, real: list, n_copies: int, seed: int):
    """``n_copies`` copies of random ``real`` tiles in synthetic/copy/: {copy file name: its source}."""
    from PIL import Image

    from napari_histodiff.core.evaluate.copies import copy_tiles

    (root / "synthetic" / "copy").mkdir(parents=True)
    sources = {}
    pick = np.random.default_rng(seed + 1).choice(len(real), n_copies, replace=False)
    for k in range(0, n_copies, 50):
        part = [real[i] for i in pick[k : k + 50]]
        tiles = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in part])
        for j, (f, c) in enumerate(zip(part, copy_tiles(tiles, seed=seed + 2 + k))):
            name = f"copy_{k + j:05d}.png"
            Image.fromarray(c).save(root / "synthetic" / "copy" / name)
            sources[name] = str(f)
    return sources


def rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=int, default=1000)
    p.add_argument("--real-crops", type=int, default=None, metavar="N",
                   help="instead of --real: N distinct 112 px crops of the crc5 tiles as the real set")
    p.add_argument("--copies", type=int, default=200)
    p.add_argument("--genuine", type=int, default=200)
    p.add_argument("--steps", type=int, default=None, help="feature encoder steps (default: the audit's)")
    p.add_argument("--features", type=Path, default=None, help="reuse this encoder (an earlier audit folder)")
    p.add_argument("--keep", type=Path, default=None, help="write the audit here and keep it")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is not here")
        return 0
    import torch

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.jobs.audit import AuditOptions, audit

    stage_rss: dict[str, float] = {}

    def on_event(event):
        stage_rss[event.stage] = max(stage_rss.get(event.stage, 0.0), rss_mb())

    with tempfile.TemporaryDirectory(prefix="audit_check_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        if a.real_crops:
            sources = build_crops(root, a.real_crops, a.copies, a.genuine, a.seed)
            n_real = a.real_crops
            mb = sum(f.stat().st_size for f in (root / "real").rglob("*.jpg")) / 1e6
            print(f"built {n_real} real crops ({mb:.0f} MB of JPEG in {root}) in {time.perf_counter() - t:.1f} s "
                  "(not part of the audit)")
        else:
            sources = build(root, a.real, a.copies, a.genuine, a.seed)
            n_real = a.real
        rss_before = peak_rss_mb()
        out = a.keep or root / "audit"
        opts = AuditOptions(samples=[root / "synthetic"], against=[root / "real"], out=out, features=a.features,
                            seed=a.seed, intent="overwrite" if a.keep else "new",
                            **({"feature_steps": a.steps} if a.steps else {}))
        t = time.perf_counter()
        run_to_end(audit(opts), on_event)
        wall = time.perf_counter() - t
        rows = list(csv.DictReader(open(out / "audit.csv", encoding="utf-8")))
        summary = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    flagged = {c: [r["near_copy"] == "true" for r in rows if r["class"] == c] for c in ("copy", "genuine")}
    right = [sources[Path(r["tile"]).name] == r["nearest_real"] for r in rows if r["class"] == "copy"]
    s, cal = summary["seconds"], summary["calibration"]
    print(f"real tiles {n_real}, planted copies {a.copies}, genuine unseen tiles {a.genuine}, seed {a.seed}; "
          f"torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"threshold {summary['threshold']:.4f} at a {100 * opts.false_flag_rate:g}% false-flag target "
          f"({cal['negatives']} negatives; calibration recall {100 * cal['positive_recall_at_threshold']:.1f}%)")
    print(f"planted-copy recall: {100 * np.mean(flagged['copy']):.1f}% ({sum(flagged['copy'])}/{a.copies}); "
          f"nearest real = the copied tile: {100 * np.mean(right):.1f}%")
    print(f"genuine tiles flagged: {100 * np.mean(flagged['genuine']):.1f}% ({sum(flagged['genuine'])}/{a.genuine})")
    print(f"index: {summary['index']}")
    print("seconds:", json.dumps(s), f"wall {wall:.1f} ({wall / 60:.1f} min, with the report); encoder training "
          f"{summary['feature_encoder'].get('training_seconds')} s ({summary['feature_encoder'].get('steps')} steps)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB (ru_maxrss of this process; {rss_before:.0f} MB before the audit); "
          "largest RSS seen per stage: " + ", ".join(f"{k} {v:.0f} MB" for k, v in stage_rss.items()))
    if n_real >= 100_000:
        return 0
    per_real = s["embedding_real_tiles"] / n_real
    per_syn = s["synthetic_tiles"] / (a.copies + a.genuine)
    est = s["feature_encoder"] + s["calibration"] + 100_000 * per_real + 1000 * per_syn
    print(f"extrapolation to 100,000 real and 1,000 synthetic tiles: {est / 60:.1f} min = encoder "
          f"{s['feature_encoder']:.0f} s (trained on at most {opts.train_tiles} tiles: fixed) + calibration "
          f"{s['calibration']:.0f} s (fixed {opts.calibration_tiles} tiles) + reading and embedding "
          f"{1000 * per_real:.1f} ms per real tile x 100,000 + {1000 * per_syn:.0f} ms per synthetic tile x 1,000 "
          "(shortlist and pixel check: independent of the real set's size; the index search itself grows "
          "linearly). Memory: 512 bytes per real tile (128 float32) + one batch of 256 tiles. "
          "Measure it instead with --real-crops 100000.")
    return 0

if __name__ == "__main__":
    sys.exit(main())

"""The audit's quality report on crc5, with answers known in advance: does it tell real-like, collapsed and
copied classes apart, and what does it cost?

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/report_check.py

Per crc5 class: ``--real`` tiles are the real set (``--against``), ``--held`` others the labelled held-out
tiles (``--held-out``), and ``--synthetic`` further unseen tiles stand in for synthetic ones, so they should
score like real tiles (precision, recall and diversity near 1). Two classes are spoiled on purpose: S is one
unseen tile repeated (collapse: recall and diversity near 0), T has 10 of its tiles replaced by copies of
real T tiles (near-copies). Prints the per-class figures and the time of the report part of the audit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "crc5"
CLASSES = ("AC", "H", "S", "T", "V")


def build(root: Path, n_real: int, n_held: int, n_syn: int, seed: int) -> None:
    from PIL import Image

    from napari_histodiff.core.evaluate.copies import copy_tiles

    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        files = sorted((DATA / cls).glob("*.jpg"))
        files = [files[i] for i in rng.permutation(len(files))]
        parts = (("real", files[:n_real]), ("held", files[n_real : n_real + n_held]),
                 ("synthetic", files[n_real + n_held : n_real + n_held + n_syn]))
        for sub, part in parts:
            (root / sub / cls).mkdir(parents=True)
            for f in part:
                os.symlink(f, root / sub / cls / f.name)
        syn = root / "synthetic" / cls
        if cls == "S":  # collapse: one unseen tile, n_syn times
            for f in syn.iterdir():
                f.unlink()
            for i in range(n_syn):
                os.symlink(parts[2][1][0], syn / f"s{i:03d}.jpg")
        if cls == "T":  # 10 tiles replaced by copies of real ones
            for f in sorted(syn.iterdir())[:10]:
                f.unlink()
            tiles = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[:10]])
            for i, c in enumerate(copy_tiles(tiles, seed=seed + 1)):
                Image.fromarray(c).save(syn / f"copy_{i}.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=int, default=100, help="real tiles per class")
    p.add_argument("--held", type=int, default=40, help="held-out tiles per class")
    p.add_argument("--synthetic", type=int, default=30, help="stand-in synthetic tiles per class")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if not DATA.is_dir():
        print(f"crc5 not found at {DATA}: nothing to measure")
        return 0
    from napari_histodiff.core.jobs.audit import AuditOptions, audit

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, a.real, a.held, a.synthetic, a.seed)
        opts = AuditOptions(samples=[root / "synthetic"], against=[root / "real"], held_out=[root / "held"],
                            out=root / "out", device="cpu", seed=a.seed)
        gen, t0, t_report = audit(opts), time.perf_counter(), None
        try:
            while True:
                event = next(gen)
                if not event.stage.startswith("report"):
                    t_report = time.perf_counter()  # the report starts after the audit's last event
        except StopIteration:
            pass
        end = time.perf_counter()
        report = json.loads((root / "out" / "report.json").read_text())
    print(f"audit {end - t0:.1f} s, of which the report {end - t_report:.1f} s "
          f"({os.environ.get('OMP_NUM_THREADS', '?')} threads)")
    acc = report["agreement"]["independent_cross_validated_accuracy"]
    print(f"independent classifier (logistic regression on the audit features): {100 * acc:.0f}% "
          "cross-validated on the held-out tiles")
    cols = ("independent_agreement", "diversity_ratio", "precision", "recall", "frechet_distance", "near_copies")
    print(f"{'class':6}" + "".join(f"{c[:12]:>14}" for c in cols))
    for name, c in report["classes"].items():
        print(f"{name:6}" + "".join(f"{'-' if c[k] is None else format(c[k], '.3g'):>14}" for k in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())

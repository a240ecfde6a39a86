"""Semi-supervised guidance classifier (issue 17): does pseudo-labelling unlabelled tiles of the same tissue
with the selection ensemble help the noisy latent classifier? The experiment's crc5 test tiles are split
in two halves: one is the unlabelled pool (its labels are used only to report the pseudo-labels'
precision), the other scores the classifiers.

    python benchmarks/pseudo_label_check.py [--threshold 0.9] [--steps 400 1200]

The paths default to the runs of docs/results.md (/work/exp/...)."""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from trunk_check import labelled_copy, swap_vae

from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.data.opening import open_tiles
from napari_histodiff.core.data.tiles import ArrayTiles, TileFolder
from napari_histodiff.core.formats.bundle import load_bundle
from napari_histodiff.core.generate.selection import score
from napari_histodiff.core.models.presets import small
from napari_histodiff.core.train.classifiers import (
    ClassifierOptions,
    latent_accuracy,
    train_latent_classifier,
)
from napari_histodiff.core.train.pseudo import PseudoLabelled, WithPseudoLabels

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--base", type=Path, default=Path("/work/exp/base/pretrained"), help="pre-trained bundle")
ap.add_argument("--selection", type=Path, default=Path("/work/exp/ens/k20/finetuned"), help="fine-tuned bundle")
ap.add_argument("--test", type=Path, default=Path("/work/exp/ens/data/test"))
ap.add_argument("--labelled", type=Path, default=Path("/work/exp/ens/data/k20"))
ap.add_argument("--threshold", type=float, default=0.9)
ap.add_argument("--steps", type=int, nargs="+", default=[400])
ap.add_argument("--no-augment", action="store_true", help="train without classifier_augment")
ap.add_argument("--vae", type=Path, help="another autoencoder (a bundle folder, e.g. /work/exp/aemore: 4200 steps) "
                "in place of the base bundle's, with its own latent scale factor")
ap.add_argument("--pretrain-data", type=Path, default=Path("/work/shared/data/pretrain"),
                help="tiles that measure a swapped autoencoder's scale factor (the experiment's)")
ap.add_argument("--arms", nargs="+", default=["labelled", "labelled+pseudo"])
args = ap.parse_args()

te = TileFolder(args.test, 64)
labelled = TileFolder(args.labelled, 64)
classes = labelled.class_names
order = np.random.default_rng(1).permutation(len(te))
pool_i, eval_i = order[: len(te) // 2], order[len(te) // 2 :]
pool = np.stack([te[int(i)] for i in pool_i])
pool_y = np.array([te.label(int(i)) for i in pool_i])
ev = ArrayTiles(np.stack([te[int(i)] for i in eval_i]), [te.label(int(i)) for i in eval_i], classes)
probs = score(load_bundle(args.selection, device="cpu"), pool)[0]
pred, conf = probs.argmax(1), probs.max(1)
keep = conf >= args.threshold
report = {"threshold": args.threshold, "pool": len(pool), "kept": int(keep.sum()),
          "pool_accuracy": float((pred == pool_y).mean()), "kept_precision": float((pred[keep] == pool_y[keep]).mean()),
          "kept_per_class": {c: int((pred[keep] == k).sum()) for k, c in enumerate(classes)},
          "precision_per_class": {c: float((pool_y[keep & (pred == k)] == k).mean()) if (keep & (pred == k)).any()
                                  else None for k, c in enumerate(classes)}}
print(json.dumps(report), flush=True)
# as fine-tuning joins them: the pseudo-labelled tiles only train; the held-out fifth is of labelled tiles only
pseudo = PseudoLabelled(ArrayTiles(pool), np.flatnonzero(keep), pred[keep], classes)
pretrain_tiles = open_tiles([args.pretrain_data], 64, large_images=True, stride=12, scale=0.1) if args.vae else None
with tempfile.TemporaryDirectory() as tmp:
    for steps in args.steps:
        arms = {"labelled": labelled, "labelled+pseudo": WithPseudoLabels(labelled, pseudo)}
        for name in args.arms:
            tiles = arms[name]
            d = labelled_copy(args.base, Path(tmp) / f"{name}-{steps}", classes)
            if args.vae:
                swap_vae(d, args.vae, pretrain_tiles)
            t0 = time.time()
            run_to_end(train_latent_classifier(tiles, d, small(), ClassifierOptions(
                steps=steps, device="cpu", augment=not args.no_augment, checkpoint_every=10**6)))
            acc = latent_accuracy(load_bundle(d, device="cpu"), ev)
            print(json.dumps({"arm": name, "augment": not args.no_augment, "tiles": len(tiles), "steps": steps, "seconds": round(time.time() - t0),
                              **{k: round(v, 4) for k, v in acc.items()}}), flush=True)

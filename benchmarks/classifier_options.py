"""The guidance and selection classifiers' options compared on crc5 (issue 17), without sampling:

    python benchmarks/classifier_options.py --run experiment [--k 20] [--steps 400] [--sel-steps 300]

Uses an augmentation_experiment run's data split and pre-trained bundle. Each variant trains one classifier
on the k labelled tiles per class (20% held out inside, as fine-tuning does) into a copy of the bundle,
then is measured on every test tile: the guidance classifier on noised latents at t = 0, 250, 500, 750,
the selection classifier's accuracy and calibration error. Also the time of one guidance gradient
(batch 8, fp32) per latent classifier variant, relative to a forward pass of the bundle's UNet.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from trunk_check import labelled_copy  # noqa: E402

LATENT = {  # name: (trunk, augment, classifier config changes)
    "scratch": ("scratch", False, {}),
    "scratch+augment": ("scratch", True, {}),
    "scratch-narrow+augment": ("scratch", True, {"block_out_channels": (32, 64, 64), "layers_per_block": 1}),
    "unet+augment": ("unet", True, {}),
}
SELECTION = {"scratch": ("scratch", False, 1), "scratch+augment": ("scratch", True, 1),
             "scratch-folds5": ("scratch", False, 5),
             "autoencoder": ("autoencoder", False, 1), "autoencoder+augment": ("autoencoder", True, 1)}


def grad_cost(bundle, reps: int = 5) -> float:
    """Seconds of one guidance gradient over seconds of one UNet forward (batch 8, fp32), alternating."""
    import torch

    from napari_histodiff.core.generate.sampling import classifier_grad

    c = bundle.unet.config
    z, t = torch.randn(8, c.in_channels, c.sample_size, c.sample_size), torch.tensor(500)
    y = torch.zeros(8, dtype=torch.long)
    a = b = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        with torch.no_grad():
            bundle.unet(z, t)
        t1 = time.perf_counter()
        classifier_grad(bundle.latent_classifier, z, t, y)
        a, b = a + t1 - t0, b + time.perf_counter() - t1
    return b / a


def main(argv=None):
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.tiles import TileFolder
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.generate.selection import score
    from napari_histodiff.core.models.presets import small
    from napari_histodiff.core.train.calibration import expected_calibration_error
    from napari_histodiff.core.train.classifiers import (ClassifierOptions, latent_accuracy, train_latent_classifier,
                                                         train_selection_classifier)

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="an augmentation_experiment --out folder")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--steps", type=int, default=400, help="latent classifier steps")
    ap.add_argument("--sel-steps", type=int, default=300, help="selection classifier steps")
    ap.add_argument("--only", nargs="*", default=None, help="variants to run, e.g. 'latent scratch' "
                    "'selection scratch-folds5'")
    args = ap.parse_args(argv)
    labeled = TileFolder(args.run / "data" / f"k{args.k}", 64)
    test = TileFolder(args.run / "data" / "test", 64)
    x = np.stack([test[i] for i in range(len(test))])
    y = np.array([test.label(i) for i in range(len(test))])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (trunk, aug, change) in LATENT.items():
            if args.only is not None and f"latent {name}" not in args.only:
                continue
            preset = small()
            preset.classifier = replace(preset.classifier, **change)
            d = labelled_copy(args.run / "pretrained", Path(tmp) / f"latent-{name}", labeled.class_names)
            t0 = time.perf_counter()
            run_to_end(train_latent_classifier(labeled, d, preset, ClassifierOptions(
                steps=args.steps, device="cpu", trunk=trunk, augment=aug, checkpoint_every=10**6)))
            b = load_bundle(d, device="cpu")
            acc = latent_accuracy(b, test)
            results[f"latent {name}"] = {**acc, "seconds": time.perf_counter() - t0, "grad_cost": grad_cost(b)}
            print(f"latent {name}: " + json.dumps(results[f"latent {name}"]), flush=True)
        for name, (trunk, aug, folds) in SELECTION.items():
            if args.only is not None and f"selection {name}" not in args.only:
                continue
            d = labelled_copy(args.run / "pretrained", Path(tmp) / f"sel-{name}", labeled.class_names)
            t0 = time.perf_counter()
            r = run_to_end(train_selection_classifier(labeled, d, small(), ClassifierOptions(
                steps=args.sel_steps, device="cpu", trunk=trunk, augment=aug, folds=folds,
                checkpoint_every=10**6)))
            probs, _ = score(load_bundle(d, device="cpu"), x)
            import torch

            results[f"selection {name}"] = {
                "test_acc": float((probs.argmax(1) == y).mean()),
                "test_ece_calibrated": expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(y)),
                "heldout_ece_before": r["ece_before"], "seconds": time.perf_counter() - t0}
            print(f"selection {name}: " + json.dumps(results[f"selection {name}"]), flush=True)
    (args.run / f"classifier_options_k{args.k}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Is the selection ensemble's confidence what it says (issue 27)? Trains the selection classifier as
fine-tuning does (5 folds, 20% of the labelled tiles held out) on the augmentation experiment's crc5
k = 20 split, then measures on every test tile: accuracy, and the calibration error with no temperature,
with the old recipe's temperature (fitted on the members' own out-of-fold logits) and with the
temperature fine-tuning now stores (the ensemble's logits on the held-out tiles); what thresholds 0.8 and
0.9 keep; and the pseudo-labels at 0.9 on the pool half of the test tiles (as pseudo_label_check.py).

    OMP_NUM_THREADS=1 python benchmarks/selection_calibration_check.py [--steps 300] [--out DIR]

Needs ../shared/data/crc5 (the split is written into DIR/data the first time, as augmentation_experiment)."""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def logits_of(model, x, batch=128):
    import torch

    from napari_histodiff.core.models.pixels import to_model_input

    with torch.no_grad():
        return torch.cat([model(to_model_input(torch.from_numpy(x[i : i + batch]), "cpu")).double()
                          for i in range(0, len(x), batch)])


def kept(probs, y, threshold):
    conf, pred = probs.max(-1)
    keep = conf >= threshold
    return {"share": float(keep.double().mean()), "n": int(keep.sum()),
            "accuracy": float((pred[keep] == y[keep]).double().mean()) if keep.any() else None,
            "mean_confidence": float(conf[keep].mean()) if keep.any() else None}


def main(argv=None):
    import torch

    from augmentation_experiment import Settings, make_data
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.tiles import TileFolder
    from napari_histodiff.core.formats.bundle import new_meta, write_meta
    from napari_histodiff.core.models.classifiers import SelectionClassifier, SelectionEnsemble
    from napari_histodiff.core.models.presets import small
    from napari_histodiff.core.train.calibration import expected_calibration_error as ece, fit_temperature
    from napari_histodiff.core.train.classifiers import ClassifierOptions, train_selection_classifier

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "selection_calibration")
    ap.add_argument("--steps", type=int, default=300, help="steps per ensemble member")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args(argv)
    make_data(args.data, args.out / "data", Settings(ks=[20]))
    labeled, test = TileFolder(args.out / "data" / "k20", 64), TileFolder(args.out / "data" / "test", 64)
    x = np.stack([test[i] for i in range(len(test))])
    y = torch.tensor([test.label(i) for i in range(len(test))])
    d = args.out / f"bundle-{args.steps}"
    d.mkdir(parents=True, exist_ok=True)
    write_meta(d, {**new_meta(small()), "class_names": labeled.class_names})
    t0 = time.time()
    result = run_to_end(train_selection_classifier(labeled, d, small(), ClassifierOptions(
        steps=args.steps, device="cpu", folds=args.folds, checkpoint_every=10**6)))
    seconds = time.time() - t0
    cls = SelectionEnsemble if args.folds > 1 else SelectionClassifier
    clf = cls.from_pretrained(d / "selection_classifier").eval()
    lx = np.stack([labeled[i] for i in range(len(labeled))])
    ly = torch.tensor([labeled.label(i) for i in range(len(labeled))])
    members = getattr(clf, "nets", [clf])
    # the old recipe: one temperature for the members' logits on their own validation folds (which also chose
    # their steps), applied to the ensemble's mean logits
    val = [(m, v) for m, (_, v) in zip(members, result["splits"]["folds"])]
    t_old = fit_temperature(torch.cat([logits_of(m, lx[v]) for m, v in val]), torch.cat([ly[v] for _, v in val]))
    t_new = clf.config.temperature
    z = logits_of(clf, x)
    report = {"steps": args.steps, "folds": args.folds, "seconds": round(seconds), "test_tiles": len(y),
              "heldout_tiles": len(result["splits"]["heldout"]), "test_acc": float((z.argmax(-1) == y).double().mean()),
              "reported": {k: result[k] for k in ("heldout_acc", "temperature", "ece_before", "ece_after")},
              "temperature_old_recipe": t_old, "temperature": t_new,
              "test_ece": {"T=1": ece(z.softmax(-1), y), "old recipe": ece((z / t_old).softmax(-1), y),
                           "held-out ensemble": ece((z / t_new).softmax(-1), y)}}
    for name, t in (("old recipe", t_old), ("held-out ensemble", t_new)):
        p = (z / t).softmax(-1)
        report[f"kept, {name}"] = {thr: kept(p, y, thr) for thr in (0.8, 0.9)}
    order = np.random.default_rng(1).permutation(len(test))  # pseudo_label_check's pool: the first half
    pool = torch.from_numpy(order[: len(test) // 2])
    for name, t in (("old recipe", t_old), ("held-out ensemble", t_new)):
        report[f"pseudo-labels at 0.9, {name}"] = kept((z[pool] / t).softmax(-1), y[pool], 0.9)
    print(json.dumps(report, indent=1), flush=True)
    (args.out / f"report-{args.steps}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

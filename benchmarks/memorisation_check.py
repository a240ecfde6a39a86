"""Does longer UNet fine-tuning memorise more? Near-copies among class-guided tiles of a model fine-tuned on
20 crc5 tiles per class, after N UNet fine-tuning steps (issue 28, item 4; results in docs/results.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memorisation_check.py --work /tmp/memo/run \\
        --unet-steps 0 300 1000 2000 4000 --ae-steps 150 --ldm-steps 200 --docs docs/results/memorisation

Stages (each caches its output under --work and is skipped or resumed when present, so a re-run resumes):
  data       the augmentation experiment's crc5 split at 64 px (benchmarks/augmentation_experiment.py, seed
             2023): the 20 labeled tiles per class of its k=20 arm, and --held-out unseen tiles per class
  pretrain   one CPU-sized pre-trained bundle (`small` preset, the experiment's pre-training tiles), with
             --ae-steps / --ldm-steps (the experiment's CPU profile: 600 / 1000)
  finetune   per N in --unet-steps, from that one bundle with the same tiles and seed: N UNet steps at
             --unet-lr, the noisy latent classifier and a one-ResNet selection classifier (`histodiff
             finetune`). A longer arm resumes a copy of the next shorter one (see finetune_arm). N = 0: the
             classifiers of the first fine-tuned arm with the pre-trained UNet (run last)
  sample     --per-class class-guided tiles per class from each bundle (`histodiff sample --rule none`:
             every tile kept, so selection hides no copy), the same seed for every arm
  audit      `histodiff audit SAMPLES --against LABELED --held-out HELD-OUT` per arm; the first arm trains
             the feature encoder, the others reuse it (`--features`), so every arm has the same threshold
First, unless --no-reconstructions, the labeled tiles encoded and decoded by the pre-trained autoencoder are
audited as if synthetic: the most a perfect copy through that decoder can score. Prints one row per arm (with,
per fine-tuned arm, the paired change of similarity against the 0 arm) and writes summary.json / summary.csv / per_class.csv (and each arm's audit.json and
report.json, no tiles) to --docs.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import augmentation_experiment as X  # noqa: E402  (its data split and pre-training stage)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def drain(gen, label):
    return X.drain(gen, label)


def pretrain(args, work: Path) -> Path:
    pre = work / "pretrained"
    s = X.Settings(ks=[20], ae_steps=args.ae_steps, ldm_steps=args.ldm_steps, device=args.device)
    info = X.pretrain(args.data, pre, s)
    (work / "pretrain.json").write_text(json.dumps({"ae_steps": args.ae_steps, "ldm_steps": args.ldm_steps,
                                                    "ae_batch": s.ae_batch, "ldm_batch": "small preset (16)",
                                                    **info}, indent=1))
    return pre


def finetune_arm(args, pre: Path, labeled: Path, out: Path, steps: int, first: Path | None,
                 previous: Path | None) -> Path:
    """``steps`` UNet steps from ``pre``. With ``previous`` (an arm of fewer steps, same tiles, seed and
    options) its folder and training checkpoint are copied and resumed to ``steps``: training is seeded per
    step (batches, noise, dropout) with a constant learning rate, so this is the run of ``steps`` from the
    start, without repeating the first ones; its classifiers (the same options) are kept."""
    from napari_histodiff.core.jobs.finetune import FinetuneOptions, finetune

    if steps == 0:  # the classifiers of a fine-tuned arm beside the pre-trained UNet (no UNet fine-tuning)
        if not out.is_dir():
            tmp = out.with_name(out.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(first, tmp, ignore=shutil.ignore_patterns("checkpoints*"))
            shutil.rmtree(tmp / "unet")
            shutil.copytree(pre / "unet", tmp / "unet")
            (tmp / "unet-from-pretrained").write_text(f"unet/ copied from {pre}; classifiers from {first}\n")
            tmp.rename(out)
        return out
    if previous is not None and not out.is_dir():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(previous, tmp)
        tmp.rename(out)
    opts = FinetuneOptions(model=pre, labeled=[labeled], out=out, intent="resume" if out.is_dir() else "new",
                           unet_steps=steps, unet_learning_rate=args.unet_lr, classifier_steps=args.clf_steps,
                           selection_steps=args.sel_steps, selection_folds=1, min_tiles_per_class=2,
                           checkpoint_every=250, seed=0, device=args.device)
    drain(finetune(opts), f"finetune {steps}")
    return out


def sample_arm(args, bundle: Path, out: Path):
    from napari_histodiff.core.generate.selection import SelectionRule
    from napari_histodiff.core.jobs.sample import SampleOptions, sample

    if (out / "samples.csv").is_file():
        return
    drain(sample(SampleOptions(model=bundle, out=out, intent="overwrite", per_class=args.per_class,
                               guidance=args.guidance, steps=args.sample_steps, seed=0, batch_size=25, device=args.device,
                               selection=SelectionRule(rule="none"))), f"sample {out.name}")


def audit_arm(args, samples: Path, labeled: Path, held_out: Path, out: Path, features: Path | None) -> dict:
    from napari_histodiff.core.jobs.audit import AuditOptions, audit

    if not (out / "audit.json").is_file():
        drain(audit(AuditOptions(samples=[samples], against=[labeled], held_out=[held_out], out=out,
                                 intent="overwrite", features=features, seed=0, device=args.device)), f"audit {out.name}")
    return json.loads((out / "audit.json").read_text())


QUALITY = ("selection_agreement", "independent_agreement", "diversity_ratio", "precision", "recall",
           "frechet_distance")


def figures(steps: int, audit_dir: Path) -> tuple[dict, list[dict]]:
    a = json.loads((audit_dir / "audit.json").read_text())
    rep = json.loads((audit_dir / "report.json").read_text())
    rows = list(csv.DictReader((audit_dir / "audit.csv").open()))
    sims = sorted(float(r["similarity"]) for r in rows)
    flagged = sum(r["near_copy"] == "true" for r in rows)
    mem = rep["memorisation"]
    row = {"unet_steps": steps, "tiles": len(rows), "near_copies": flagged, "rate": round(flagged / len(rows), 4),
           "median_similarity": round(mem["synthetic_median"], 4), "p95_similarity": round(sims[int(0.95 * (len(sims) - 1))], 4),
           "max_similarity": round(sims[-1], 4), "distinct_nearest_real": len({r["nearest_real"] for r in rows}),
           "real_median_similarity": round(mem["real_median"], 4),
           "real_p99_similarity": a["held_out_real_similarity"].get("q99"),
           "threshold": round(a["threshold"], 4),
           "planted_copy_recall": a["calibration"]["positive_recall_at_threshold"],
           "real_flag_rate": a["calibration"]["negative_flag_rate_at_threshold"],
           **{k: rep["classes"]["all"].get(k) for k in QUALITY}}
    per = []
    for c, v in a["classes"].items():
        q = rep["classes"].get(c, {})
        per.append({"unet_steps": steps, "class": c, "tiles": v["tiles"], "near_copies": v["near_copies"],
                    "rate": v["near_copy_rate"], "median_similarity": v["similarity_median"],
                    "max_similarity": v["similarity_max"], **{k: q.get(k) for k in QUALITY}})
    return row, per


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/memo"), help="bundles, tiles and audits (cached)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--unet-steps", type=int, nargs="+", default=[1000, 4000], help="one arm per count (0: none)")
    ap.add_argument("--unet-lr", type=float, default=5e-5, help="the augmentation experiment's UNet fine-tuning rate")
    ap.add_argument("--ae-steps", type=int, default=300)
    ap.add_argument("--ldm-steps", type=int, default=500)
    ap.add_argument("--clf-steps", type=int, default=200)
    ap.add_argument("--sel-steps", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--held-out", type=int, default=100, help="unseen crc5 tiles per class for the report")
    ap.add_argument("--guidance", type=float, default=10.0)
    ap.add_argument("--sample-steps", type=int, default=20, help="DDIM steps (the experiment's 20)")
    ap.add_argument("--docs", type=Path, default=None, help="copy the summaries (no tiles) here")
    ap.add_argument("--reconstructions", action=argparse.BooleanOptionalAction, default=True,
                    help="also audit the labeled tiles through the autoencoder: what a copy of them scores at best")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["pretrain", "finetune"], default=None, help="stop after this stage")
    args = ap.parse_args(argv)

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("docs", "only", "unet_steps")}
    old = json.loads((work / "settings.json").read_text()) if (work / "settings.json").is_file() else None
    fixed = ("ae_steps", "ldm_steps", "unet_lr", "clf_steps", "sel_steps", "per_class", "held_out", "guidance",
             "sample_steps")
    if old and any(old.get(k) != settings[k] for k in fixed):
        sys.exit(f"error: {work} holds a run with other settings ({work / 'settings.json'}); choose another --work")
    (work / "settings.json").write_text(json.dumps(settings, indent=1))
    timer = X.Timer(work / "timing.json")

    log("data")
    timer.run("data", lambda: X.make_data(args.data, work / "data", X.Settings(ks=[20], test_per_class=args.held_out)))
    labeled, held_out = work / "data" / "k20", work / "data" / "test"
    log(f"pre-training ({args.ae_steps} autoencoder, {args.ldm_steps} diffusion steps)")
    pre = timer.run("pretrain", lambda: pretrain(args, work))
    if args.only == "pretrain":
        return
    order = sorted(n for n in set(args.unet_steps) if n > 0)
    if 0 in args.unet_steps:  # the 0 arm borrows the first fine-tuned arm's classifiers: last
        order.append(0)
    features = None
    rows, per = [], []

    def audit_and_record(name, steps, samples):
        nonlocal features
        log(f"audit: {name}")
        timer.run(f"audit {name}", lambda: audit_arm(args, samples, labeled, held_out, work / f"audit-{name}",
                                                     features))
        features = features or work / f"audit-{name}"
        row, pc = figures(steps, work / f"audit-{name}")
        row["arm"] = name
        rows.append(row)
        per.extend(dict(pc_row, arm=name) for pc_row in pc)
        report(args, work, timer, rows, per)

    if args.reconstructions:  # the ceiling: the labeled tiles themselves through the autoencoder
        timer.run("reconstructions", lambda: reconstructions(args, pre, labeled, work / "reconstructions"))
        audit_and_record("reconstructions", None, work / "reconstructions")
    bundles, previous = {}, None
    for n in order:
        log(f"fine-tuning: {n} UNet steps")
        first = next((bundles[m] for m in order if m in bundles), None)
        bundles[n] = timer.run(f"finetune {n}", lambda: finetune_arm(args, pre, labeled, work / f"ft{n}", n, first,
                                                                     previous))
        previous = bundles[n] if n else previous
        if args.only == "finetune":
            continue
        log(f"sampling: {n} UNet steps")
        timer.run(f"sample {n}", lambda: sample_arm(args, bundles[n], work / f"samples{n}"))
        audit_and_record(f"unet{n}", n, work / f"samples{n}")


def reconstructions(args, pre: Path, labeled: Path, out: Path) -> None:
    """The labeled tiles encoded and decoded by the pre-trained autoencoder, one class folder each."""
    import imageio.v3 as iio
    import numpy as np

    from napari_histodiff.core.data.tiles import TileFolder
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.train.autoencoder import reconstruct

    if out.is_dir():
        return
    tiles = TileFolder(labeled, 64)
    x = np.stack([tiles[i] for i in range(len(tiles))])
    rx = reconstruct(load_bundle(pre, device=args.device).vae, x, args.device)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for i, img in enumerate(rx):
        c = tiles.class_names[tiles.label(i)]
        (tmp / c).mkdir(parents=True, exist_ok=True)
        iio.imwrite(tmp / c / f"recon-{i:04d}.png", np.asarray(img, dtype=np.uint8))
    tmp.rename(out)


def paired(work: Path, rows: list[dict]) -> None:
    """Each fine-tuned arm against the 0 arm, tile by tile (tile i starts from the same noise in every arm):
    the mean change of the nearest-real similarity and a Wilcoxon signed-rank p-value."""
    from scipy.stats import wilcoxon

    def sims(name):
        return {r["file"]: float(r["similarity"]) for r in csv.DictReader((work / f"audit-{name}" / "audit.csv").open())}

    if not any(r["arm"] == "unet0" for r in rows):
        return
    base = sims("unet0")
    for r in rows:
        if r["unet_steps"]:
            mine = sims(r["arm"])
            d = [mine[f] - base[f] for f in mine if f in base]
            r["paired_change_vs_unet0"] = round(sum(d) / len(d), 4)
            r["paired_wilcoxon_p"] = float(f"{wilcoxon(d).pvalue:.2g}")


def report(args, work: Path, timer, rows: list[dict], per: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: -1 if r["unet_steps"] is None else r["unet_steps"])
    paired(work, rows)
    per = sorted(per, key=lambda r: (-1 if r["unet_steps"] is None else r["unet_steps"], r["class"]))
    print(f"{'arm':>16} {'tiles':>5} {'copies':>6} {'rate':>6} {'median sim':>10} {'max sim':>7} "
          f"{'real median':>11} {'threshold':>9}")
    for r in rows:
        print(f"{r['arm']:>16} {r['tiles']:>5} {r['near_copies']:>6} {100 * r['rate']:>5.1f}% "
              f"{r['median_similarity']:>10.3f} {r['max_similarity']:>7.3f} {r['real_median_similarity']:>11.3f} "
              f"{r['threshold']:>9.3f}")
    for r in per:
        print(f"  {r['arm']:>16} {r['class']:>3}: {r['near_copies']}/{r['tiles']} near-copies, median "
              f"{r['median_similarity']}")
    settings = json.loads((work / "settings.json").read_text())
    summary = {"settings": settings, "pretrain": json.loads((work / "pretrain.json").read_text()),
               "timing_s": timer.times, "arms": rows}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        (args.docs / "summary.json").write_text(json.dumps(summary, indent=1))
        write_csv(args.docs / "summary.csv", rows)
        write_csv(args.docs / "per_class.csv", per)
        for r in rows:
            for name in ("audit.json", "report.json"):
                shutil.copy(work / f"audit-{r['arm']}" / name, args.docs / f"{r['arm']}-{name}")


if __name__ == "__main__":
    main()

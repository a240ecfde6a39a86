"""``histodiff demo``: the whole method on an image that scikit-image ships.

The image is ``skimage.data.immunohistochemistry()`` (a 512x512 colon tissue section,
IHC stained). Re-running resumes from what is already in the output folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.events import Progress
from ..base.options import check, device_option, option, record, seed_option
from ..base.threads import fit_threads


@dataclass
class DemoOptions:
    """``histodiff demo``: the whole method on the colon image that scikit-image ships (minutes on a CPU)."""

    out: Path = option(Path("histodiff-demo"), gui=False, help="demo folder")
    intent: str = option("resume", choices=("resume", "overwrite"), consts={"--overwrite": "overwrite"},
                         gui=False, help="resume the demo in the folder (or start it), or start it again")
    quick: bool = option(False, help="far fewer steps (seconds; poor samples)")
    device: str = device_option()
    seed: int = seed_option()

    @property
    def steps(self) -> tuple[int, int]:
        """(autoencoder steps, diffusion steps)."""
        return (40, 60) if self.quick else (1200, 2400)

    # diffusion batch: 32 tiles cost 1.35x the time of 16 on this tiny UNet, and 2400 x 32 gives the same
    # final loss and report as 4000 x 16 in 0.8x the time (docs/benchmarks.md)
    diffusion_batch = 32

    @property
    def per_class(self) -> int:
        return 8 if self.quick else 32


def demo_tiles(tile_size: int):
    import skimage.data

    from ..data.tiles import ImageTiles

    image = skimage.data.immunohistochemistry()
    tiles = ImageTiles(image, tile_size, stride=tile_size // 4, name="skimage.data.immunohistochemistry")
    tiles.description = "skimage.data.immunohistochemistry() (colon, IHC), 32 px tiles at stride 8"
    return tiles


DEMO_CLASSES = ["DAB-rich", "hematoxylin-rich"]


def demo_labeled_tiles(tile_size: int, stride: int | None = None):
    """A demonstration labelling of the demo image by colour deconvolution (skimage rgb2hed):
    the third of tiles with the most DAB relative to hematoxylin is "DAB-rich", the third with
    the least is "hematoxylin-rich"; the ambiguous middle third is left out. Not a diagnosis."""
    import skimage.data
    from scipy.stats import rankdata
    from skimage.color import rgb2hed

    from ..data.tiles import ArrayTiles, ImageTiles

    image = skimage.data.immunohistochemistry()
    grid = ImageTiles(image, tile_size, stride=stride or tile_size // 2)
    hed = rgb2hed(image)
    t = tile_size
    h = np.array([hed[y : y + t, x : x + t, 0].mean() for y, x in grid.coords])
    d = np.array([hed[y : y + t, x : x + t, 2].mean() for y, x in grid.coords])
    r = rankdata(d) - rankdata(h)
    lo, hi = np.quantile(r, [1 / 3, 2 / 3])
    keep = np.flatnonzero((r <= lo) | (r >= hi))
    labels = (r[keep] <= lo).astype(int)  # 0: DAB-rich, 1: hematoxylin-rich
    tiles = np.stack([grid[int(i)] for i in keep])
    origins = [grid.origin(int(i)) for i in keep]
    return ArrayTiles(tiles, labels, DEMO_CLASSES, origins,
                      description="demo image labeled by colour deconvolution (DAB vs hematoxylin)")


def run_demo(options: DemoOptions | None = None):
    """The jobs one after another on the demo image: pretrain, finetune, sample (guided and unguided),
    export; then the report. Yields progress; returns the path of the report."""
    from ..base.outdir import OUTPUT_FILES, prepare_output
    from ..base.owner import seal
    from ..formats.bundle import load_bundle
    from ..formats.images import contact_sheet, write_png
    from ..generate.export import ExportOptions
    from ..generate.selection import SelectionRule
    from ..models.presets import tiny
    from .export import export
    from .finetune import FinetuneOptions, finetune
    from .pretrain import (
        PretrainAutoencoderOptions,
        PretrainOptions,
        pretrain,
        pretrain_autoencoder,
    )
    from .sample import SampleOptions, sample

    opts = options or DemoOptions()
    check(opts)
    out = prepare_output(opts.out, "demo", opts.intent, allowed=("resume", "overwrite"))
    (out / OUTPUT_FILES["demo"][0]).write_text(json.dumps({"format": "napari-histodiff-demo", "options": record(opts)}))
    tiles = demo_tiles(tiny().tile_size)
    labeled = demo_labeled_tiles(tiny().tile_size)
    (ae_steps, diff_steps), q = opts.steps, opts.quick
    run = dict(seed=opts.seed, device=opts.device)
    times, t = {}, time.perf_counter()
    ae = yield from pretrain_autoencoder(PretrainAutoencoderOptions(
        out=out / "bundle", intent="resume", preset="tiny", steps=ae_steps, ae_checkpoint_every=250, **run),
        tiles=tiles)
    diff = yield from pretrain(PretrainOptions(
        out=out / "bundle", intent="resume", preset="tiny", autoencoder_steps=ae_steps, steps=diff_steps,
        batch_size=opts.diffusion_batch, checkpoint_every=500, **run), tiles=tiles)
    times["pre-training"], t = time.perf_counter() - t, time.perf_counter()
    ft = yield from finetune(FinetuneOptions(
        model=out / "bundle", out=out / "finetuned", intent="resume", classifier_steps=30 if q else 1000,
        selection_steps=30 if q else 100, unet_steps=10 if q else 500, checkpoint_every=250, **run), tiles=labeled)
    times["fine-tuning"], t = time.perf_counter() - t, time.perf_counter()
    bundle = load_bundle(out / "finetuned", device=opts.device)
    records = (yield from sample(SampleOptions(out=out / "samples", intent="overwrite", n=opts.per_class,
                                               classes=bundle.class_names, seed=opts.seed), model=bundle))["records"]
    unguided = (yield from sample(SampleOptions(
        out=out / "samples-unguided", intent="overwrite", n=opts.per_class * 2, guidance=0.0, seed=opts.seed,
        selection=SelectionRule(rule="none")), model=bundle))["records"]
    times["sampling"], t = time.perf_counter() - t, time.perf_counter()
    summary = {"total": 0}
    if any(r.kept for r in records):  # quick runs may keep nothing
        summary = yield from export(ExportOptions(samples=[out / "samples"], out=out / "augmentation-set",
                                                  intent="overwrite"))
    for k, name in enumerate(labeled.class_names):
        idx = np.flatnonzero(labeled.labels == k)[:32]
        write_png(out / f"real_{name}.png", contact_sheet(labeled.tiles[idx], ncols=8))
    yield Progress("report", 1, 1)
    report = out / "report.md"
    report.write_text(_report(tiles, labeled, ae, diff, ft, records, unguided, summary,
                              times, opts))
    seal(out, "demo")
    return report


def _rate(records, name) -> str:
    mine = [r for r in records if (r.target_class or r.predicted_class) == name]
    agree = [r for r in mine if r.predicted_class == name]
    return f"{len(agree)}/{len(mine)}"


def _report(tiles, labeled, ae, diff, ft, records, unguided, export, times, opts) -> str:
    losses = diff["losses"]
    k = max(1, len(losses) // 10)
    loss = (f"L1 loss, mean of first {k} steps {np.mean(losses[:k]):.4f}, last {k} {np.mean(losses[-k:]):.4f}"
            if len(losses) >= 20 else "resumed from a checkpoint")
    psnr = f"{ae['psnr']:.2f} dB" if ae.get("psnr") is not None else "n/a"
    clf = ft["latent_classifier"]["history"][-1][1] if ft["latent_classifier"]["history"] else {}
    sel = ft["selection_classifier"].get("best_heldout_acc")
    kept = {n: sum(1 for r in records if r.kept and r.target_class == n) for n in labeled.class_names}
    lines = [
        "# napari-histodiff demo", "",
        f"Unlabeled data: {tiles.description}; {len(tiles)} tiles after the tissue filter.",
        f"Labeled data: {labeled.description}: " + ", ".join(
            f"{n} {c}" for n, c in ft["class_counts"].items()) + " tiles.",
        "This labelling is a demonstration (stain content by colour deconvolution), not a diagnosis.",
        "Preset: `tiny` (32 px tiles)." + (" Quick mode: too few steps for good tiles." if opts.quick else ""), "",
        "## Results",
        f"- autoencoder: {ae['steps']} steps, held-out reconstruction PSNR {psnr}",
        f"- latent diffusion: {diff['steps']} steps, latent scale factor {diff['latent_scale_factor']:.4f}, {loss}",
        "- noisy latent classifier, held-out accuracy by timestep: "
        + ", ".join(f"t={key[5:]}: {v:.2f}" for key, v in clf.items()),
        f"- selection classifier, best held-out accuracy: {sel:.2f}" if sel is not None else "",
        "- guided samples (scale 10, DDIM 50 steps, eta 1) the selection classifier assigns to their "
        "target: " + ", ".join(f"{n} {_rate(records, n)}" for n in labeled.class_names),
        "- unguided samples of the same model, as the selection classifier labels them: "
        + ", ".join(f"{n} {sum(1 for r in unguided if r.predicted_class == n)}" for n in labeled.class_names),
        "- kept by selection (confidence >= 0.8 and nearest centroid): "
        + ", ".join(f"{n} {c}" for n, c in kept.items()),
        f"- exported augmentation set: `augmentation-set/` ({export['total']} tiles, manifest.csv)",
        "- wall time this run: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()), "",
        "| class | real tiles | synthetic tiles (guided) |", "| --- | --- | --- |",
    ]
    lines += [f"| {n} | ![real](real_{n}.png) | ![synthetic](samples/contact_{n}.png) |" for n in labeled.class_names]
    lines += ["", "Unguided samples: ![unguided](samples-unguided/contact_unguided.png)", "",
              "The fine-tuned model is in `finetuned/` (`histodiff info finetuned`); sample more with",
              "`histodiff sample finetuned --per-class 100 --out more-samples`.", ""]
    return "\n".join(line for line in lines if line is not None)


def demo(opts: DemoOptions):
    """The demo job: :func:`run_demo`, with a ``message`` for the CLI."""
    fit_threads()
    report = yield from run_demo(opts)
    return {"report": report, "message": f"demo finished: open {report}"}

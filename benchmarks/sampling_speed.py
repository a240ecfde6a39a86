"""Sampling benchmarks (prints figures; ratios from one run).

    python benchmarks/sampling_speed.py [--preset small] [--batch-size 8] [--steps 20] [--rounds 3]
                                        [--no-quality] [--no-rss]

1. tiles/s of diffusers' own ``LDMPipeline`` (fp32) and of our DDIM loop in fp32 and with
   ``precision=auto`` (bf16 autocast on CPUs with bf16 instructions), unguided and guided, with
   the same UNet, VAE, DDIM scheduler, steps, eta and batch, all in one alternating run:
   ours auto / diffusers (goal >= 1.6x on a bf16 CPU), guided / unguided (goal <= 1.2x);
   PSNR of the same seeds in fp32 and in the precision ``auto`` picks (random weights);
2. quality (tiny preset, trained briefly on the demo image and fine-tuned on its two stain classes):
   per-tile PSNR fp32 vs auto and guided-class agreement (the bundle's selection classifier) of
   both, same seeds (goal: PSNR >= 30 dB, agreement within 2 points);
3. peak RSS of ``histodiff sample``'s writer for 100 and 1,000 tiles streamed to disk,
   each in a fresh process (tiny preset; goal: flat, within 10%).

Weights of 1 and 3 are random (speed does not depend on them); bundles are built in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build_bundle(preset_name: str, folder: Path) -> None:
    import torch

    from napari_histodiff.core.formats.bundle import new_meta, save_part, write_meta
    from napari_histodiff.core.models.presets import get_preset

    p = get_preset(preset_name)
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    for name, model in (("vae", p.build_vae()), ("unet", p.build_unet()), ("scheduler", p.build_scheduler()),
                        ("latent_classifier", p.build_latent_classifier(2)),
                        ("selection_classifier", p.build_selection_classifier(2))):
        save_part(model, folder, name)
    meta = new_meta(p)
    meta["latent_scale_factor"], meta["class_names"] = 0.5, ["A", "B"]
    write_meta(folder, meta)


def run_ours(bundle, n, steps, guidance, precision="auto", classes=("A",), seed=0, eta=1.0):
    """(seconds, uint8 tiles) of our sampler."""
    from napari_histodiff.core.generate.sampling import SampleOptions, sample_tiles

    classes = list(classes) if guidance else []
    tiles = []
    t = time.perf_counter()
    for event in sample_tiles(bundle, SampleOptions(n=n, classes=classes, guidance=guidance, steps=steps,
                                                    batch_size=min(n * max(1, len(classes)), 16 if n > 16 else n),
                                                    eta=eta, seed=seed, precision=precision)):
        if event.data is not None:
            tiles.append(event.data["tiles"])
    return time.perf_counter() - t, np.concatenate(tiles)


def time_ours(bundle, n, steps, guidance, precision="auto") -> float:
    return run_ours(bundle, n, steps, guidance, precision)[0]


def psnr(a, b) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def quality(folder: Path, per_class: int, steps: int) -> None:
    """Tiny preset trained on the demo image, fine-tuned on its two stain classes; fp32 vs auto."""
    import torch

    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.base.precision import resolve_precision
    from napari_histodiff.core.generate.selection import score
    from napari_histodiff.core.jobs.demo import demo_labeled_tiles, demo_tiles
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder
    from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion
    from napari_histodiff.core.train.finetune import FinetuneOptions, finetune

    preset, pre, out = tiny(), folder / "pre", folder / "ft"
    tiles, labeled = demo_tiles(32), demo_labeled_tiles(32)
    torch.manual_seed(0)
    run_to_end(train_autoencoder(tiles, pre, preset, AutoencoderOptions(steps=200, device="cpu")))
    run_to_end(train_diffusion(tiles, pre, preset, DiffusionOptions(steps=400, device="cpu")))
    run_to_end(finetune(pre, labeled, out, preset, FinetuneOptions(classifier_steps=400, selection_steps=150,
                                                                   unet_steps=20, device="cpu")))
    bundle = load_bundle(out, device="cpu")
    auto = resolve_precision("auto", bundle.device, "sample")
    names = bundle.class_names
    got = {}
    for prec in ("fp32", auto):
        _, t = run_ours(bundle, per_class, steps, 10.0, prec, classes=names, seed=5)
        pred = score(bundle, t)[0].argmax(1)
        got[prec] = (t, pred)
    target = np.repeat(np.arange(len(names)), per_class)
    agree = {p: 100 * np.mean(np.asarray(pred) == target) for p, (_, pred) in got.items()}
    q = psnr(got["fp32"][0], got[auto][0])
    print(f"quality (tiny, fine-tuned on the demo's 2 stain classes, {per_class} guided tiles per class, "
          f"DDIM {steps} steps, guidance 10): PSNR fp32 vs {auto}: min {q.min():.1f} dB, median "
          f"{np.median(q):.1f} dB (goal >= 30); guided-class agreement fp32 {agree['fp32']:.1f}%, "
          f"{auto} {agree[auto]:.1f}% (difference {abs(agree['fp32'] - agree[auto]):.1f} points, goal <= 2)")


def time_pipeline(bundle, n, steps) -> float:
    import torch
    from diffusers import LDMPipeline

    from napari_histodiff.core.generate.sampling import make_scheduler

    pipe = LDMPipeline(vqvae=bundle.vae, unet=bundle.unet, scheduler=make_scheduler(bundle, "ddim", steps))
    pipe.set_progress_bar_config(disable=True)
    t = time.perf_counter()
    pipe(batch_size=n, num_inference_steps=steps, eta=1.0, generator=torch.Generator().manual_seed(0),
         output_type="np")
    return time.perf_counter() - t


def rss_worker(folder: Path, n: int, out: Path) -> None:
    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.generate.sample_set import write_samples
    from napari_histodiff.core.generate.sampling import SampleOptions
    from napari_histodiff.core.generate.selection import SelectionRule

    bundle = load_bundle(folder, device="cpu")
    run_to_end(write_samples(bundle, SampleOptions(n=n, classes=["A"], steps=5, batch_size=16), out,
                             SelectionRule()))
    print(json.dumps({"n": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-quality", action="store_true", help="skip the quality check (trains a tiny bundle)")
    ap.add_argument("--no-rss", action="store_true", help="skip the memory check")
    ap.add_argument("--quality-tiles", type=int, default=32, help="guided tiles per class in the quality check")
    ap.add_argument("--rss-worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_worker:
        folder, n, out = args.rss_worker
        return rss_worker(Path(folder), int(n), Path(out))

    import torch

    from napari_histodiff import load_bundle

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_bundle(args.preset, tmp / "bundle")
        bundle = load_bundle(tmp / "bundle", device="cpu")
        n, steps = args.batch_size, args.steps
        from napari_histodiff.core.base.precision import resolve_precision
        from napari_histodiff.core.base.threads import fit_threads

        fit_threads()
        auto = resolve_precision("auto", bundle.device, "sample")
        kinds = {"diffusers fp32": lambda: time_pipeline(bundle, n, steps),
                 "ours fp32": lambda: time_ours(bundle, n, steps, 0.0, "fp32"),
                 "ours fp32 guided": lambda: time_ours(bundle, n, steps, 10.0, "fp32"),
                 f"ours auto ({auto})": lambda: time_ours(bundle, n, steps, 0.0, "auto"),
                 f"ours auto ({auto}) guided": lambda: time_ours(bundle, n, steps, 10.0, "auto")}
        times = {k: [] for k in kinds}
        for precision in ("fp32", "auto"):  # warm-up
            time_ours(bundle, n, 2, 10.0, precision)
        order = list(kinds)
        for r in range(args.rounds):
            for kind in order[r % len(order):] + order[: r % len(order)]:
                times[kind].append(kinds[kind]())
        print(f"preset {args.preset}, batch {n}, DDIM {steps} steps eta 1, {args.rounds} rounds alternating, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, auto = {auto}")
        for kind, ts in times.items():
            print(f"{kind:>24}: {n / np.mean(ts):6.2f} tiles/s ({np.mean(ts):.3f} s per batch; rounds: "
                  f"{', '.join(f'{t:.3f}' for t in ts)})")
        m = {k: np.mean(v) for k, v in times.items()}
        a, ag = f"ours auto ({auto})", f"ours auto ({auto}) guided"
        print(f"ours fp32 / diffusers fp32 (time): {m['ours fp32'] / m['diffusers fp32']:.3f} (goal <= 1.05)")
        print(f"speed-up ours auto vs diffusers fp32: {m['diffusers fp32'] / m[a]:.3f}x (goal >= 1.6)")
        print(f"speed-up ours auto vs ours fp32: {m['ours fp32'] / m[a]:.3f}x")
        print(f"guided / unguided: fp32 {m['ours fp32 guided'] / m['ours fp32']:.3f}, auto "
              f"{m[ag] / m[a]:.3f} (goal <= 1.2)")
        q = psnr(run_ours(bundle, n, steps, 0.0, "fp32")[1], run_ours(bundle, n, steps, 0.0, "auto")[1])
        print(f"PSNR fp32 vs {auto}, same seeds (random weights): min {q.min():.1f} dB, median {np.median(q):.1f} dB")
        if not args.no_quality:
            quality(tmp / "quality", args.quality_tiles, steps)
        if args.no_rss:
            return

        build_bundle("tiny", tmp / "tiny")
        rss = {}
        for count in (100, 1000):
            out = subprocess.run([sys.executable, __file__, "--rss-worker", str(tmp / "tiny"), str(count),
                                  str(tmp / f"s{count}")], capture_output=True, text=True, check=True).stdout
            rss[count] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
        print(f"peak RSS writing 100 tiles: {rss[100]:.0f} MB; 1,000 tiles: {rss[1000]:.0f} MB; "
              f"ratio {rss[1000] / rss[100]:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()

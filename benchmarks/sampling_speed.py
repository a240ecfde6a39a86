"""Sampling benchmarks (prints figures; ratios from one run).

    python benchmarks/sampling_speed.py [--preset small] [--batch-size 8] [--steps 20] [--rounds 3]

1. guided against unguided sampling of the same bundle, steps and batch (goal <= 1.3x);
2. our unguided DDIM loop against diffusers' own ``LDMPipeline`` with the same UNet, VAE,
   DDIM scheduler, steps, eta and batch (goal <= 1.05x);
3. peak RSS of ``histodiff sample``'s writer for 100 and 1,000 tiles streamed to disk,
   each in a fresh process (tiny preset; goal: flat, within 10%).

Weights are random (speed does not depend on them); the bundle is built in a temporary folder.
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


def time_ours(bundle, n, steps, guidance) -> float:
    from napari_histodiff.core.generate.sampling import SampleOptions, sample_tiles

    classes = ["A"] if guidance else []
    t = time.perf_counter()
    for _ in sample_tiles(bundle, SampleOptions(n=n, classes=classes, guidance=guidance, steps=steps,
                                                batch_size=n, eta=1.0)):
        pass
    return time.perf_counter() - t


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
        times = {"unguided": [], "guided": [], "pipeline": []}
        time_ours(bundle, n, 2, 0.0)  # warm-up
        for r in range(args.rounds):
            order = ["unguided", "guided", "pipeline"]
            for kind in order[r % 3:] + order[: r % 3]:
                if kind == "pipeline":
                    times[kind].append(time_pipeline(bundle, n, steps))
                else:
                    times[kind].append(time_ours(bundle, n, steps, 10.0 if kind == "guided" else 0.0))
        print(f"preset {args.preset}, batch {n}, DDIM {steps} steps, {args.rounds} rounds, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        for kind, ts in times.items():
            print(f"{kind:>9}: {np.mean(ts):.3f} s per batch (rounds: {', '.join(f'{t:.3f}' for t in ts)})")
        print(f"guided / unguided: {np.mean(times['guided']) / np.mean(times['unguided']):.3f} (goal <= 1.3)")
        print(f"ours unguided / diffusers LDMPipeline: "
              f"{np.mean(times['unguided']) / np.mean(times['pipeline']):.3f} (goal <= 1.05)")

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

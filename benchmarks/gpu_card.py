"""GPU card: the `paper` preset at 256 px on one CUDA GPU, in one command (prints figures).

    python benchmarks/gpu_card.py [--dry-run] [--batch-size 8] [--train-steps 20] [--sample-batch 16]
                                  [--sample-steps 50] [--rounds 2]

Prints, for the `paper` preset (256 px tiles, 64x64x3 latents, random weights; speed does not
depend on them):

1. diffusion training steps/s of ``train_diffusion`` (latents encoded once, EMA, AdamW) in fp32 and
   in bf16 autocast, after 3 warm-up steps each (checkpoint writes switched off);
2. sampling tiles/s, DDIM ``--sample-steps`` steps, eta 1, guided (scale 10) and unguided, alternating
   for ``--rounds`` rounds, and the guided / unguided time ratio;
3. the peak GPU memory (``torch.cuda.max_memory_allocated``) of each part.

Sized on the GPU itself to finish within ``--budget-min`` (8) minutes with a 15% margin: each part has a
deadline (training fp32 until 35% of the allowed time, bf16 until 60%, sampling until 100%); the training
parts time at least 3 steps and stop at their deadline, and sampling runs another round only when the
round measured before it still fits. The card records the steps and rounds it timed. ``--dry-run`` prints
the plan with assumed costs. Both precisions are timed on purpose (the experiment's GPU profile trains in
fp32, as the CPU results). Without CUDA it refuses unless ``--dry-run`` (``--allow-cpu --preset tiny`` runs
the same code on the CPU, to check the script itself).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WARMUP = 3
MARGIN = 0.15  # of the budget, left free
SHARES = {"fp32": 0.35, "bf16": 0.60, "sampling": 1.0}  # each part's deadline, as a share of the allowed time
# Assumed seconds per unit on one H100/H200-class GPU, for the plan only (replace with measured figures)
ASSUMED = {"build_s": 60, "train_step_fp32_s": 0.5, "train_step_bf16_s": 0.25, "encode_s": 10,
           "sample_step_per_tile_s": 0.004, "guided_factor": 1.4}


def precision_kw(options_cls, precision: str) -> dict:
    """The precision field of an options dataclass: ``precision`` (fp32|bf16) or ``mixed_precision`` (no|bf16)."""
    names = {f.name for f in dataclasses.fields(options_cls)}
    if "precision" in names:
        return {"precision": precision}
    return {"mixed_precision": "no" if precision == "fp32" else precision}


def plan(args) -> tuple[list[str], float]:
    a = ASSUMED
    train = (args.train_steps + WARMUP) * (a["train_step_fp32_s"] + a["train_step_bf16_s"]) + 2 * a["encode_s"]
    per_batch = args.sample_steps * args.sample_batch * a["sample_step_per_tile_s"]
    sample = (1 + args.rounds) * per_batch * (1 + a["guided_factor"])  # one warm-up round, then the timed ones
    total = a["build_s"] + train + sample
    lines = [
        f"preset {args.preset} ({args.tile_size} px), random weights, one CUDA GPU",
        f"1. training: {WARMUP} warm-up + {args.train_steps} timed steps of batch {args.batch_size}, fp32 then "
        f"bf16 autocast, on {args.tiles} demo tiles (encoded once: {args.tiles} x 8 augmentations)",
        f"2. sampling: DDIM {args.sample_steps} steps, batch {args.sample_batch}, unguided and guided (scale 10), "
        f"1 warm-up + {args.rounds} timed rounds, alternating",
        "3. peak GPU memory of each part (torch.cuda.max_memory_allocated, reset between parts)",
        "time estimate (assumed per-unit costs, not measured): "
        f"build + load {a['build_s']} s; training ({args.train_steps} + {WARMUP}) x ({a['train_step_fp32_s']} + "
        f"{a['train_step_bf16_s']}) s + 2 x {a['encode_s']} s encoding = {train:.0f} s; sampling "
        f"{1 + args.rounds} x {args.sample_steps} x {args.sample_batch} x {a['sample_step_per_tile_s']} s x "
        f"(1 + {a['guided_factor']}) = {sample:.0f} s; total about {total / 60:.1f} min (the run keeps within "
        f"{100 * (1 - MARGIN):.0f}% of --budget-min by measuring as it goes)",
    ]
    return lines, total


def build_bundle(preset, folder: Path) -> None:
    import torch

    from napari_histodiff.core.formats.bundle import new_meta, save_part, write_meta

    torch.manual_seed(0)
    folder.mkdir(parents=True)
    for name, model in (("vae", preset.build_vae()), ("unet", preset.build_unet()),
                        ("scheduler", preset.build_scheduler()), ("latent_classifier", preset.build_latent_classifier(2)),
                        ("selection_classifier", preset.build_selection_classifier(2))):
        save_part(model, folder, name)
    meta = new_meta(preset)
    meta["latent_scale_factor"], meta["class_names"] = 0.5, ["A", "B"]
    write_meta(folder, meta)


def train_rate(preset, tiles, bundle: Path, work: Path, precision: str, args) -> dict:
    import shutil

    import torch

    from napari_histodiff.core.train import loop as T
    from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion

    out = work / f"train-{precision}"
    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("unet", "latent_classifier", "selection_classifier"))
    steps = WARMUP + args.train_steps
    opts = DiffusionOptions(steps=steps + 1, batch_size=args.batch_size, device=args.device, scale_tiles=16,
                            checkpoint_every=10**9, latent_cache="on", **precision_kw(DiffusionOptions, precision))
    save = T.Checkpointer.save
    T.Checkpointer.save = lambda self, step: None  # no multi-GB checkpoint writes in a speed card
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    gen = train_diffusion(tiles, out, preset, opts)
    t0, stamps, encode_s = time.perf_counter(), [], None
    deadline = args.t_start + SHARES[precision] * args.allowed_s
    try:
        for event in gen:
            if event.stage != "diffusion":
                continue
            if encode_s is None:
                encode_s = time.perf_counter() - t0
            sync(args.device)
            stamps.append(time.perf_counter())
            if len(stamps) == steps or len(stamps) >= WARMUP + 3 and stamps[-1] >= deadline:
                break
    finally:
        gen.close()
        T.Checkpointer.save = save
    timed = stamps[WARMUP:]
    rate = (len(timed) - 1) / (timed[-1] - timed[0])
    return {"steps_per_s": rate, "timed_steps": len(timed) - 1, "setup_and_encode_s": encode_s,
            "peak_gib": peak_gib()}


def sample_rates(bundle_dir: Path, args) -> dict:
    import torch

    from napari_histodiff import load_bundle
    from napari_histodiff.core.generate.sampling import SampleOptions, sample_tiles

    bundle = load_bundle(bundle_dir, device=args.device)
    extra = precision_kw(SampleOptions, "fp32") if "precision" in {f.name for f in dataclasses.fields(SampleOptions)} \
        else {}

    def once(guided: bool) -> float:
        sync(args.device)
        t = time.perf_counter()
        for _ in sample_tiles(bundle, SampleOptions(n=args.sample_batch, classes=["A"] if guided else [],
                                                    guidance=10.0 if guided else 0.0, steps=args.sample_steps,
                                                    batch_size=args.sample_batch, eta=1.0, seed=0, **extra)):
            pass
        sync(args.device)
        return time.perf_counter() - t

    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    once(False), once(True)  # warm-up
    times = {"unguided": [], "guided": []}
    deadline = args.t_start + SHARES["sampling"] * args.allowed_s
    for r in range(args.rounds):
        last = sum(times[k][-1] for k in times) if times["guided"] else 0.0  # the round before, measured
        if r and time.perf_counter() + last > deadline:
            break
        for kind in ("unguided", "guided") if r % 2 == 0 else ("guided", "unguided"):
            times[kind].append(once(kind == "guided"))
    return {"rounds": len(times["guided"]),"tiles_per_s": {k: args.sample_batch / np.mean(v) for k, v in times.items()},
            "guided_over_unguided": float(np.mean(times["guided"]) / np.mean(times["unguided"])),
            "peak_gib": peak_gib()}


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib():
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and its time estimate only")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch-size", type=int, default=8, help="training batch (the paper preset's default: 8)")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--sample-batch", type=int, default=16)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget-min", type=float, default=8.0, help="minutes the card may take (15%% kept free)")
    ap.add_argument("--allow-cpu", action="store_true", help="run without CUDA (to check the script; use --preset tiny)")
    args = ap.parse_args(argv)

    from napari_histodiff.core.models.presets import get_preset

    preset = get_preset(args.preset)
    args.tile_size = preset.tile_size
    side = (512 - preset.tile_size) // (preset.tile_size // 4) + 1
    args.tiles = side * side
    lines, total = plan(args)
    if args.dry_run:
        print("plan (dry run, nothing computed):")
        print("\n".join("  " + line for line in lines))
        return
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("error: benchmarks/gpu_card.py needs a CUDA GPU (torch.cuda.is_available() is False on this "
                 "machine); run it with --dry-run to see its plan")
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    from napari_histodiff.core.jobs.demo import demo_tiles

    t_start = time.perf_counter()
    args.t_start, args.allowed_s = t_start, (1 - MARGIN) * 60 * args.budget_min
    tiles = demo_tiles(preset.tile_size)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{name}; torch {torch.__version__}; preset {args.preset} ({preset.tile_size} px, "
          f"{preset.latent_size}x{preset.latent_size}x{preset.autoencoder.latent_channels} latents)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_bundle(preset, work / "bundle")
        print(f"bundle built in {time.perf_counter() - t_start:.0f} s", flush=True)
        results = {}
        for precision in ("fp32", "bf16"):
            results[precision] = r = train_rate(preset, tiles, work / "bundle", work, precision, args)
            print(f"training {precision:>4}: {r['steps_per_s']:.2f} steps/s at batch {args.batch_size} "
                  f"({r['timed_steps']} timed steps) "
                  f"({r['steps_per_s'] * args.batch_size:.1f} tiles/s); set-up + encoding {r['setup_and_encode_s']:.0f} s; "
                  f"peak {_gib(r['peak_gib'])}", flush=True)
        s = sample_rates(work / "bundle", args)
        print(f"sampling, DDIM {args.sample_steps} steps, batch {args.sample_batch}: unguided "
              f"{s['tiles_per_s']['unguided']:.2f} tiles/s, guided {s['tiles_per_s']['guided']:.2f} tiles/s; "
              f"guided / unguided time {s['guided_over_unguided']:.2f} ({s['rounds']} timed rounds); "
              f"peak {_gib(s['peak_gib'])}", flush=True)
        print(f"bf16 / fp32 training: {results['bf16']['steps_per_s'] / results['fp32']['steps_per_s']:.2f}x; "
              f"whole card {time.perf_counter() - t_start:.0f} s (planned about {total:.0f} s from assumed costs; "
              f"allowed {args.allowed_s:.0f} s, {100 * MARGIN:.0f}% of {args.budget_min:g} min kept free)")


def _gib(x) -> str:
    return "n/a (no CUDA)" if x is None else f"{x:.1f} GiB"


if __name__ == "__main__":
    main()

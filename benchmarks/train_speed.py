"""Training speed of our diffusion loop against a plain diffusers loop (prints figures).

    python benchmarks/train_speed.py [--preset small] [--batch-size 8] [--steps 30] [--rounds 3]

Both loops train the preset's ``UNet2DModel`` on latents of the same frozen autoencoder, with
the same batch size, on the same tiles. Ours is ``core.train_diffusion.train_diffusion`` as
the CLI runs it (augmentation, EMA, warm-up scheduler, progress events, checkpoint at the
end); the plain loop is ``vae.encode`` + ``DDPMScheduler.add_noise`` + ``UNet2DModel`` + L1 +
``AdamW``, nothing else. Each round runs each loop in a fresh process, alternating, so the
peak RSS is per loop. Step time excludes the first 3 steps (warm-up).
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

WARMUP = 3


def make_data(preset_name: str):
    from napari_histodiff.core.jobs.demo import demo_tiles
    from napari_histodiff.core.models.presets import get_preset

    preset = get_preset(preset_name)
    return preset, demo_tiles(preset.tile_size)


def make_bundle(preset, folder: Path) -> None:
    import torch

    from napari_histodiff.core.formats.bundle import new_meta, save_part, write_meta

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    save_part(preset.build_vae(), folder, "vae")
    write_meta(folder, new_meta(preset))


def run_ours(preset, tiles, folder: Path, batch: int, steps: int) -> list[float]:
    import shutil

    from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion

    shutil.rmtree(folder / "training", ignore_errors=True)
    stamps = []
    opts = DiffusionOptions(steps=steps, batch_size=batch, device="cpu", checkpoint_every=10**9, scale_tiles=64)
    for _ in train_diffusion(tiles, folder, preset, opts):
        stamps.append(time.perf_counter())
    return stamps


def run_plain(preset, tiles, folder: Path, batch: int, steps: int) -> list[float]:
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae").requires_grad_(False)
    unet, sched = preset.build_unet(), preset.build_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=preset.diffusion.learning_rate)
    data = torch.from_numpy(np.stack([tiles[i] for i in range(len(tiles))])).permute(0, 3, 1, 2)
    stamps = []
    for _ in range(steps):
        x = data[torch.randint(0, len(data), (batch,))].float() / 127.5 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample() * 0.5
        noise = torch.randn_like(z)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        loss = (unet(sched.add_noise(z, noise, t), t).sample - noise).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        stamps.append(time.perf_counter())
    return stamps


def worker(kind: str, preset_name: str, folder: Path, batch: int, steps: int) -> None:
    preset, tiles = make_data(preset_name)
    stamps = (run_ours if kind == "ours" else run_plain)(preset, tiles, folder, batch, steps)
    per_step = (stamps[-1] - stamps[WARMUP - 1]) / (len(stamps) - WARMUP)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "steps_per_s": 1 / per_step, "peak_rss_mb": rss_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", choices=["ours", "plain"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.preset, args.folder, args.batch_size, args.steps)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        make_bundle(make_data(args.preset)[0], folder)
        results = {"ours": [], "plain": []}
        for r in range(args.rounds):
            for kind in ("ours", "plain") if r % 2 == 0 else ("plain", "ours"):
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", kind, "--folder", str(folder), "--preset", args.preset,
                     "--batch-size", str(args.batch_size), "--steps", str(args.steps)],
                    capture_output=True, text=True, check=True).stdout
                results[kind].append(json.loads(out.strip().splitlines()[-1]))
    print(f"preset {args.preset}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for kind, rows in results.items():
        sps = [row["steps_per_s"] for row in rows]
        rss = max(row["peak_rss_mb"] for row in rows)
        print(f"{kind:>5}: {np.mean(sps):.3f} steps/s (rounds: {', '.join(f'{s:.3f}' for s in sps)}), "
              f"peak RSS {rss:.0f} MB")
    ratio = np.mean([o["steps_per_s"] / p["steps_per_s"] for o, p in zip(results["ours"], results["plain"])])
    print(f"ratio ours/plain: {ratio:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()

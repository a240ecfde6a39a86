"""Training speed of our diffusion loop against a plain diffusers loop (prints figures).

    python benchmarks/train_speed.py [--preset small] [--batch-size 8] [--steps 30] [--rounds 3]
                                     [--try nocache unfused channels_last]

Both loops train the preset's ``UNet2DModel`` on latents of the same frozen autoencoder, with
the same batch size, on the same tiles. Ours is ``core.train.diffusion.train_diffusion`` as
the CLI runs it on a long run (augmentation, latents encoded once per tile and augmentation, EMA,
warm-up scheduler, progress events, checkpoint at the end); the plain loop is ``vae.encode`` +
``DDPMScheduler.add_noise`` + ``UNet2DModel`` + L1 + ``AdamW``, nothing else, encoding every batch.

All loops run in one process and alternate in blocks of ``--steps`` steps, ``--rounds`` times
(order reversed every round), so a machine shared with other work slows each of them alike. The
first 3 steps of every loop are excluded (warm-up); ours' one-off encoding of the tiles is timed
on its own. ``--try`` adds variants of ours: ``nocache`` (encode every batch, as before),
``unfused`` (``AdamW`` without ``fused=True``, ours' default since 2026-12-04), ``channels_last`` (UNet in channels_last memory format).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WARMUP = 3
TRIES = ("nocache", "unfused", "channels_last")


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


def ours(preset, tiles, folder: Path, batch: int, steps: int, variant: str = ""):
    """Steps of ``train_diffusion`` (a generator of step events); the encoding time goes to ``timing``."""
    import shutil

    from napari_histodiff.core.train import diffusion as D

    shutil.copytree(folder / "vae", folder.parent / f"b-{variant or 'ours'}" / "vae")
    out = folder.parent / f"b-{variant or 'ours'}"
    shutil.copy2(folder / "histodiff.json", out / "histodiff.json")
    opts = D.DiffusionOptions(steps=steps, batch_size=batch, device="cpu", checkpoint_every=10**9, scale_tiles=64,
                              latent_cache="off" if variant == "nocache" else "on")
    defaults = D.FUSED_ADAMW, D.CHANNELS_LAST
    D.FUSED_ADAMW = D.FUSED_ADAMW and variant != "unfused"
    D.CHANNELS_LAST = D.CHANNELS_LAST or variant == "channels_last"
    gen = D.train_diffusion(tiles, out, preset, opts)
    t0 = time.perf_counter()
    for event in gen:  # set-up and the one-off encoding, up to the first training step
        if event.stage == "diffusion":
            break
    D.FUSED_ADAMW, D.CHANNELS_LAST = defaults  # read at set-up only
    encode_s = time.perf_counter() - t0
    yield encode_s
    yield from gen


def plain(preset, tiles, folder: Path, batch: int, steps: int):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae").requires_grad_(False)
    unet, sched = preset.build_unet(), preset.build_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=preset.diffusion.learning_rate)
    data = torch.from_numpy(np.stack([tiles[i] for i in range(len(tiles))])).permute(0, 3, 1, 2)
    yield 0.0
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
        yield loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30, help="steps per loop per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiles", type=int, default=None, help="use only this many demo tiles (shorter encoding)")
    ap.add_argument("--try", dest="tries", nargs="*", default=[], choices=TRIES, help="variants of ours to add")
    args = ap.parse_args()

    import torch

    preset, tiles = make_data(args.preset)
    if args.tiles:
        from napari_histodiff.core.data.tiles import ArrayTiles

        pick = np.linspace(0, len(tiles) - 1, min(args.tiles, len(tiles))).round().astype(int)
        tiles = ArrayTiles(np.stack([tiles[int(i)] for i in pick]), description="demo subset")
    total = args.steps * args.rounds + 1  # the first step of the first block is set-up
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        make_bundle(preset, folder)
        kinds = ["ours", "plain", *args.tries]
        loops, encode_s, times = {}, {}, {k: [] for k in kinds}
        for kind in kinds:
            loops[kind] = plain(preset, tiles, folder, args.batch_size, total) if kind == "plain" else \
                ours(preset, tiles, folder, args.batch_size, total, "" if kind == "ours" else kind)
            encode_s[kind] = next(loops[kind])
            print(f"{kind}: set up ({encode_s[kind]:.1f} s)", flush=True)
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                last = time.perf_counter()
                block = []
                for _ in range(args.steps):
                    next(loops[kind])
                    now = time.perf_counter()
                    block.append(now - last)
                    last = now
                times[kind].append(block)
                print(f"round {r} {kind}: {len(block) / sum(block):.3f} steps/s", flush=True)
        for gen in loops.values():
            gen.close()
    print(f"preset {args.preset} ({len(tiles)} demo tiles), batch {args.batch_size}, {args.rounds} rounds x "
          f"{args.steps} steps per loop, alternating in one process; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    def rate(blocks):  # steps/s per round, the first WARMUP steps of the loop excluded
        return [len(b[WARMUP if i == 0 else 0:]) / sum(b[WARMUP if i == 0 else 0:]) for i, b in enumerate(blocks)]

    plain_rates = rate(times["plain"])
    for kind in kinds:
        rates = rate(times[kind])
        ratio = np.mean([a / b for a, b in zip(rates, plain_rates)])
        extra = f", one-off encoding {encode_s[kind]:.1f} s" if kind not in ("plain", "nocache") else ""
        print(f"{kind:>13}: {np.mean(rates):.3f} steps/s (rounds: {', '.join(f'{s:.3f}' for s in rates)}); "
              f"/ plain {ratio:.3f}{extra}")
    ours_rates = rate(times["ours"])
    for kind in args.tries:
        ratio = np.mean([a / b for a, b in zip(rate(times[kind]), ours_rates)])
        print(f"{kind} / ours: {ratio:.3f}")
    ratio = np.mean([a / b for a, b in zip(ours_rates, plain_rates)])
    print(f"ratio ours/plain: {ratio:.3f} (goal >= 1.3); peak RSS of the process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    per_tile = encode_s["ours"] / (8 * len(tiles))
    plain_step = 1 / np.mean(plain_rates)
    print(f"encoding once costs {encode_s['ours']:.1f} s for {len(tiles)} tiles x 8 augmentations; it pays after "
          f"about {encode_s['ours'] / max(plain_step - 1 / np.mean(ours_rates), 1e-9):.0f} steps of batch "
          f"{args.batch_size} ({per_tile * 1e3:.1f} ms per encoded tile)")


if __name__ == "__main__":
    main()

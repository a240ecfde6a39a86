"""Where does an experiment's generator lose the class? Checks on an augmentation_experiment run
(docs/results.md, "Third improvement"):

    python benchmarks/first_stage_check.py --run experiment [--k 20] [--decoder-steps 300]

1. the pre-trained autoencoder's reconstruction PSNR on the labelled tiles and on every 25th test
   tile, before and after fine-tuning its decoder on the labelled tiles (a copy; the run is not
   changed);
2. the fine-tuned guidance classifier's accuracy on noised latents of every 5th test tile at
   t = 0, 250, 500, 750, against linear models on simple features of the same tiles (the latents'
   per-channel mean and spread; the tiles' colour mean and spread), fitted on the labelled tiles.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from augmentation_experiment import tile_psnr  # noqa: E402
from napari_histodiff.core.data.tiles import TileFolder  # noqa: E402


def stack(tiles, every=1):
    idx = range(0, len(tiles), every)
    return np.stack([tiles[i] for i in idx]), np.array([tiles.label(i) for i in idx])


def psnr(vae, x) -> float:
    import torch

    return float(tile_psnr(vae, x, torch.device("cpu"))[1].mean())


def decoder_check(pre: Path, labeled, x_lab, x_test, steps: int) -> None:
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.models.presets import small
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder

    vae = load_bundle(pre, device="cpu").vae
    print(f"autoencoder PSNR, labelled {psnr(vae, x_lab):.2f} dB, test {psnr(vae, x_test):.2f} dB")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "bundle"
        work.mkdir()
        for part in ("vae", "histodiff.json"):
            (shutil.copytree if (pre / part).is_dir() else shutil.copy2)(pre / part, work / part)
        run_to_end(train_autoencoder(labeled, work, small(), AutoencoderOptions(
            steps=steps, learning_rate=1e-4, decoder_only=True, device="cpu", stage="finetune_decoder",
            checkpoint_every=10**9)), lambda ev: None)
        vae = load_bundle(work, device="cpu", require_unet=False).vae
        print(f"after {steps} decoder steps on the labelled tiles, labelled {psnr(vae, x_lab):.2f} dB, "
              f"test {psnr(vae, x_test):.2f} dB")


def linear_probe(f_train, y_train, f_test, y_test) -> float:
    import torch

    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    a = torch.tensor((f_train - mu) / sd, dtype=torch.float32)
    b = torch.tensor((f_test - mu) / sd, dtype=torch.float32)
    torch.manual_seed(0)
    model = torch.nn.Linear(a.shape[1], int(y_train.max()) + 1)
    opt = torch.optim.AdamW(model.parameters(), 1e-2, weight_decay=1e-2)
    y = torch.from_numpy(y_train)
    for _ in range(500):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(a), y).backward()
        opt.step()
    with torch.no_grad():
        return float((model(b).argmax(1).numpy() == y_test).mean())


def guidance_check(bundle_dir: Path, x_lab, y_lab, x_test, y_test) -> None:
    import torch

    from napari_histodiff.core.formats.bundle import load_bundle

    b = load_bundle(bundle_dir, device="cpu")
    clf = b.latent_classifier.eval()

    def latents(x):
        with torch.no_grad():
            t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
            return b.vae.encode(t).latent_dist.mean * b.scale_factor

    z = latents(x_test)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    accs = []
    with torch.no_grad():
        for t in (0, 250, 500, 750):
            tt = torch.full((len(z),), t)
            pred = clf(b.scheduler.add_noise(z, noise, tt), tt).argmax(-1).numpy()
            accs.append(f"t={t} {100 * (pred == y_test).mean():.1f}%")
    n = sum(p.numel() for p in clf.parameters())
    print(f"guidance classifier ({n / 1e6:.2f} M parameters) on {len(z)} test tiles: " + ", ".join(accs))

    def zstats(x):
        z = latents(x)
        return torch.cat([z.mean((2, 3)), z.std((2, 3))], 1).numpy()

    def colour(x):
        t = torch.from_numpy(x).float() / 255
        return torch.cat([t.mean((1, 2)), t.std((1, 2))], 1).numpy()

    for name, f in (("latent channel mean and spread", zstats), ("tile colour mean and spread", colour)):
        acc = linear_probe(f(x_lab), y_lab, f(x_test), y_test)
        print(f"linear model on {name}: {100 * acc:.1f}%")
    print(f"chance: {100 / len(b.class_names):.1f}%")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="an augmentation_experiment --out folder")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--decoder-steps", type=int, default=300, help="0: skip the decoder check")
    args = ap.parse_args(argv)
    labeled = TileFolder(args.run / "data" / f"k{args.k}", 64)
    test = TileFolder(args.run / "data" / "test", 64)
    x_lab, y_lab = stack(labeled)
    if args.decoder_steps:
        decoder_check(args.run / "pretrained", labeled, x_lab, stack(test, 25)[0], args.decoder_steps)
    guidance_check(args.run / f"k{args.k}" / "finetuned", x_lab, y_lab, *stack(test, 5))


if __name__ == "__main__":
    main()

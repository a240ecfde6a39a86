"""Does more autoencoder pre-training keep more of the class (issue 17)? The experiment's autoencoder
(600 steps x 4) continued on the same pre-training tiles; at each point the fine-tuned bundle's selection
ensemble scores the autoencoder's reconstructions of 1,000 crc5 test tiles (and the tiles themselves).

    OMP_NUM_THREADS=1 python benchmarks/autoencoder_class_check.py --base RUN/pretrained --selection RUN2/k20/finetuned \
        --test RUN2/data/test --out AE_OUT 900 1200 1800

The paths default to the runs of docs/results.md (/work/exp/...)."""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.data.tiles import TileFolder, open_tiles
from napari_histodiff.core.formats.bundle import load_bundle
from napari_histodiff.core.generate.selection import score
from napari_histodiff.core.models.presets import small
from napari_histodiff.core.train.autoencoder import AutoencoderOptions, psnr, reconstruct, train_autoencoder

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--base", type=Path, default=Path("/work/exp/base/pretrained"), help="pre-trained bundle")
ap.add_argument("--selection", type=Path, default=Path("/work/exp/ens/k20/finetuned"), help="fine-tuned bundle")
ap.add_argument("--test", type=Path, default=Path("/work/exp/ens/data/test"), help="labelled test tiles")
ap.add_argument("--pretrain-data", type=Path, default=Path("/work/shared/data/pretrain"))
ap.add_argument("--out", type=Path, default=Path("/work/exp/aemore"), help="the continued autoencoder")
ap.add_argument("steps", type=int, nargs="*", help="autoencoder steps to continue to, in order")
args = ap.parse_args()
base, out = args.base, args.out
if not out.exists():
    (out / "training").mkdir(parents=True)
    shutil.copytree(base / "training" / "autoencoder", out / "training" / "autoencoder")
    shutil.copytree(base / "vae", out / "vae")
    shutil.copy(base / "histodiff.json", out / "histodiff.json")
sel = load_bundle(args.selection, device="cpu")
te = TileFolder(args.test, 64)
idx = np.random.default_rng(0).permutation(len(te))[:1000]
x = np.stack([te[int(i)] for i in idx])
y = np.array([te.label(int(i)) for i in idx])
direct = float((score(sel, x)[0].argmax(1) == y).mean())


def measure(vae, steps):
    r = reconstruct(vae, x, "cpu")
    res = {"ae_steps": steps, "selection_on_reconstructions": float((score(sel, r)[0].argmax(1) == y).mean()),
           "selection_on_tiles": direct, "crc5_psnr": float(psnr(x, r))}
    print(json.dumps(res), flush=True)


measure(load_bundle(base, device="cpu", require_unet=False).vae, 600)
tiles = open_tiles([args.pretrain_data], 64, large_images=True, stride=12, scale=0.1)  # the experiment's
for steps in args.steps:
    t0 = time.time()
    run_to_end(train_autoencoder(tiles, out, small(), AutoencoderOptions(
        steps=steps, batch_size=4, learning_rate=2e-4, device="cpu", checkpoint_every=200)))
    print("trained to", steps, "in", round(time.time() - t0), "s", flush=True)
    measure(load_bundle(out, device="cpu", require_unet=False).vae, steps)

"""Does more autoencoder pre-training keep more of the class (issue 17)? The experiment's autoencoder
(600 steps x 4) continued on the same pre-training tiles; at each point the fine-tuned bundle's selection
ensemble scores the autoencoder's reconstructions of 1,000 crc5 test tiles (and the tiles themselves).

    OMP_NUM_THREADS=1 python benchmarks/autoencoder_class_check.py --base RUN/pretrained --selection RUN2/k20/finetuned \
        --test RUN2/data/test --out AE_OUT 900 1200 1800
    OMP_NUM_THREADS=1 python benchmarks/autoencoder_class_check.py --latent    # the guidance classifier too, on
                                                                                 # the autoencoder in --out now

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
from napari_histodiff.core.data.opening import open_tiles
from napari_histodiff.core.data.tiles import TileFolder
from napari_histodiff.core.formats.bundle import load_bundle
from napari_histodiff.core.generate.selection import score
from napari_histodiff.core.models.presets import small
from napari_histodiff.core.train.autoencoder import (
    AutoencoderOptions,
    psnr,
    reconstruct,
    train_autoencoder,
)

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--base", type=Path, default=Path("/work/exp/base/pretrained"), help="pre-trained bundle")
ap.add_argument("--selection", type=Path, default=Path("/work/exp/ens/k20/finetuned"), help="fine-tuned bundle")
ap.add_argument("--test", type=Path, default=Path("/work/exp/ens/data/test"), help="labelled test tiles")
ap.add_argument("--pretrain-data", type=Path, default=Path("/work/shared/data/pretrain"))
ap.add_argument("--out", type=Path, default=Path("/work/exp/aemore"), help="the continued autoencoder")
ap.add_argument("--latent", action="store_true", help="also train the guidance classifier (the small preset's, "
                "400 steps, augmented) on the k = 20 tiles' latents of each autoencoder and score it on the "
                "noised latents of every test tile; with no steps, measure the autoencoder in --out as it is")
ap.add_argument("--labelled", type=Path, default=Path("/work/exp/ens/data/k20"), help="labelled tiles (k = 20)")
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


def latent_check(vae_dir: Path) -> dict:
    """The guidance classifier trained on latents of the autoencoder in ``vae_dir`` (with its own scale
    factor), scored on noised latents of every test tile (``latent_accuracy``)."""
    import tempfile

    from trunk_check import labelled_copy, swap_vae

    from napari_histodiff.core.train.classifiers import (
        ClassifierOptions,
        latent_accuracy,
        train_latent_classifier,
    )

    labelled = TileFolder(args.labelled, 64)
    with tempfile.TemporaryDirectory() as tmp:
        d = labelled_copy(base, Path(tmp) / "b", labelled.class_names)
        swap_vae(d, vae_dir, tiles)
        run_to_end(train_latent_classifier(labelled, d, small(), ClassifierOptions(
            steps=400, device="cpu", augment=True, checkpoint_every=10**6)))
        return latent_accuracy(load_bundle(d, device="cpu"), te)


def measure(vae_dir: Path, steps):
    r = reconstruct(load_bundle(vae_dir, device="cpu", require_unet=False).vae, x, "cpu")
    res = {"ae_steps": steps, "selection_on_reconstructions": float((score(sel, r)[0].argmax(1) == y).mean()),
           "selection_on_tiles": direct, "crc5_psnr": float(psnr(x, r))}
    if args.latent:
        res["guidance_classifier"] = latent_check(vae_dir)
    print(json.dumps(res), flush=True)


tiles = open_tiles([args.pretrain_data], 64, large_images=True, stride=12, scale=0.1)  # the experiment's
if not args.steps and args.latent:
    from napari_histodiff.core.formats.bundle import read_meta

    measure(out, read_meta(out)["provenance"]["autoencoder"]["steps"])
    sys.exit()
measure(base, 600)
for steps in args.steps:
    t0 = time.time()
    run_to_end(train_autoencoder(tiles, out, small(), AutoencoderOptions(
        steps=steps, batch_size=4, learning_rate=2e-4, device="cpu", checkpoint_every=200)))
    print("trained to", steps, "in", round(time.time() - t0), "s", flush=True)
    measure(out, steps)

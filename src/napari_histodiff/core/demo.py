"""``histodiff demo``: the whole pre-training method on an image that scikit-image ships.

The image is ``skimage.data.immunohistochemistry()`` (a 512x512 colon tissue section,
IHC stained). Re-running resumes from what is already in the output folder.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import HistodiffError
from .events import Progress


@dataclass
class DemoOptions:
    quick: bool = False
    device: str = "auto"
    seed: int = 0

    @property
    def steps(self) -> tuple[int, int]:
        """(autoencoder steps, diffusion steps)."""
        return (40, 60) if self.quick else (1200, 5000)


def demo_tiles(tile_size: int):
    import skimage.data

    from .tiles import ImageTiles

    image = skimage.data.immunohistochemistry()
    tiles = ImageTiles(image, tile_size, stride=tile_size // 4, name="skimage.data.immunohistochemistry")
    tiles.description = "skimage.data.immunohistochemistry() (colon, IHC), 32 px tiles at stride 8"
    return tiles


def run_demo(out, options: DemoOptions | None = None, overwrite: bool = False):
    """Yield progress of every stage; return the path of the report."""
    from .bundle import load_bundle
    from .outputs import contact_sheet, write_png
    from .presets import tiny
    from .sampling import SampleOptions, write_samples
    from .train_autoencoder import AutoencoderOptions, train_autoencoder
    from .train_diffusion import DiffusionOptions, train_diffusion
    from .training import prepare_out_dir

    opts = options or DemoOptions()
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / "bundle").is_dir():
        raise HistodiffError(f"{out} exists and is not a demo folder; choose another --out")
    if out.exists() and not out.is_dir():
        raise HistodiffError(f"{out} is a file; choose a folder for --out")
    if overwrite:
        shutil.rmtree(out, ignore_errors=True)
    bundle_dir = prepare_out_dir(out / "bundle", resume=True)
    preset = tiny()
    tiles = demo_tiles(preset.tile_size)
    ae_steps, diff_steps = opts.steps
    t0 = time.perf_counter()
    ae = yield from train_autoencoder(tiles, bundle_dir, preset, AutoencoderOptions(
        steps=ae_steps, seed=opts.seed, device=opts.device, checkpoint_every=250))
    t1 = time.perf_counter()
    diff = yield from train_diffusion(tiles, bundle_dir, preset, DiffusionOptions(
        steps=diff_steps, seed=opts.seed, device=opts.device, checkpoint_every=500))
    t2 = time.perf_counter()
    bundle = load_bundle(bundle_dir, device=opts.device)
    sheet = yield from write_samples(bundle, SampleOptions(n=64, steps=50, eta=1.0, seed=opts.seed),
                                     out / "samples", overwrite=True)
    t3 = time.perf_counter()
    rng = np.random.default_rng(opts.seed)
    real = np.stack([tiles[int(i)] for i in rng.choice(len(tiles), 64, replace=False)])
    write_png(out / "real_tiles.png", contact_sheet(real))
    yield Progress("report", 1, 1)
    report = out / "report.md"
    losses = diff["losses"]
    report.write_text(_report(tiles, ae, diff, losses, (t1 - t0, t2 - t1, t3 - t2), sheet, opts))
    return report


def _report(tiles, ae, diff, losses, times, sheet, opts) -> str:
    def loss_line():
        if len(losses) < 20:
            return "- diffusion loss: (resumed; see the checkpoint)"
        k = max(1, len(losses) // 10)
        return f"- diffusion L1 loss, mean of first {k} steps: {np.mean(losses[:k]):.4f}; last {k}: {np.mean(losses[-k:]):.4f}"

    psnr = f"{ae['psnr']:.2f} dB" if ae.get("psnr") is not None else "n/a"
    return "\n".join([
        "# napari-histodiff demo",
        "",
        f"Data: {tiles.description}; {len(tiles)} tiles after the tissue filter.",
        "Preset: `tiny` (32 px tiles, about one million parameters)." + (" Quick mode." if opts.quick else ""),
        "",
        "## Results",
        f"- autoencoder: {ae['steps']} steps, held-out reconstruction PSNR {psnr} ({times[0]:.0f} s this run)",
        f"- latent diffusion: {diff['steps']} steps, latent scale factor {diff['latent_scale_factor']:.4f} "
        f"({times[1]:.0f} s this run)",
        loss_line(),
        f"- sampling: 64 tiles, DDIM 50 steps, eta 1.0 ({times[2]:.0f} s)",
        "",
        "| real tiles | synthetic tiles |",
        "| --- | --- |",
        f"| ![real](real_tiles.png) | ![synthetic]({Path(sheet).parent.name}/{Path(sheet).name}) |",
        "",
        "The model is in `bundle/` (`histodiff info bundle`); sample more with",
        "`histodiff sample bundle -n 100 --out more-samples`.",
        "",
    ])

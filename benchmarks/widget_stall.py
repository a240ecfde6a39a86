"""Longest event-loop stall while the Fine-tune widget trains (prints figures).

    xvfb-run -a python benchmarks/widget_stall.py [--preset small] [--steps 40]

A QTimer ticks every 10 ms in the GUI thread while the real Fine-tune widget runs the
``small`` preset's fine-tuning (UNet, latent classifier, selection classifier) on its
background worker, on the annotated sample data. The stall is the longest gap between two
ticks minus the 10 ms interval. Weights are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_histodiff import load_bundle
    from napari_histodiff._sample_data import demo_tissue_annotated
    from napari_histodiff.core.formats.bundle import new_meta, save_part, write_meta
    from napari_histodiff.core.models.presets import get_preset
    from napari_histodiff.widgets._common import State
    from napari_histodiff.widgets._state import MODEL

    tmp = Path(tempfile.mkdtemp(prefix="histodiff-stall-"))
    preset = get_preset(args.preset)
    torch.manual_seed(0)
    folder = tmp / "bundle"
    folder.mkdir()
    for name, model in (("vae", preset.build_vae()), ("unet", preset.build_unet()),
                        ("scheduler", preset.build_scheduler())):
        save_part(model, folder, name)
    meta = new_meta(preset)
    meta["latent_scale_factor"] = 0.5
    write_meta(folder, meta)

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    for data, kwargs, kind in demo_tissue_annotated():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    MODEL.set(load_bundle(folder, device="cpu"))
    _, w = viewer.window.add_plugin_dock_widget("napari-histodiff", "Fine-tune")
    w.out.value = str(tmp / "ft")
    w.form.unet_steps.value = w.form.classifier_steps.value = w.form.selection_steps.value = args.steps
    w.extract()
    n_tiles = len(w.tiles)
    stamps: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start(10)
    t0 = time.perf_counter()
    w.start()
    print(f"Start button handler: {(time.perf_counter() - t0) * 1000:.0f} ms")
    while w.state not in (State.DONE, State.FAILED):
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    gaps = np.diff(stamps) * 1000 - 10
    worst = int(gaps.argmax())
    print(f"longest stall at {stamps[worst] - t0:.1f} s after Start")
    print(f"preset {args.preset}, {args.steps} steps per stage, {n_tiles} tiles, "
          f"training {time.perf_counter() - t0:.1f} s, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"timer ticks: {len(stamps)}; stall (gap - 10 ms): longest {gaps.max():.1f} ms, "
          f"99th percentile {np.percentile(gaps, 99):.1f} ms, median {np.median(gaps):.1f} ms (goal: longest < 100 ms)")
    viewer.close()


if __name__ == "__main__":
    main()

"""Longest event-loop stall while the Fine-tune widget trains (prints figures).

    xvfb-run -a python benchmarks/widget_stall.py [--preset small] [--steps 40] [--modes process,thread]

A QTimer ticks every 10 ms in the GUI thread while the real Fine-tune widget runs the ``small``
preset's fine-tuning (UNet, latent classifier, selection classifier) on the annotated sample data,
with its job in a spawned process (what napari users get) and on a worker thread (``HISTODIFF_JOBS=
thread``), each on an otherwise idle machine and with a CPU-bound process running beside it, in one
alternating run. The stall is the longest gap between two ticks minus the 10 ms interval. Weights are
random (speed does not depend on them). Goal: longest stall under 50 ms in every condition.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUSY = "import time\nt=time.time()\nwhile time.time()-t<3600: pass"


def bundle_folder(tmp: Path, preset_name: str) -> Path:
    import torch

    from napari_histodiff.core.formats.bundle import new_meta, save_part, write_meta
    from napari_histodiff.core.models.presets import get_preset

    preset = get_preset(preset_name)
    torch.manual_seed(0)
    folder = tmp / "bundle"
    folder.mkdir()
    for name, model in (("vae", preset.build_vae()), ("unet", preset.build_unet()),
                        ("scheduler", preset.build_scheduler())):
        save_part(model, folder, name)
    meta = new_meta(preset)
    meta["latent_scale_factor"] = 0.5
    write_meta(folder, meta)
    return folder


def one_run(w, app, out: Path, process: bool) -> dict:
    from qtpy.QtCore import QTimer

    from napari_histodiff.widgets._common import Job, State

    w.job = Job(w.label_of, process=process)
    w.out.value = str(out)
    w.intent.value = "new"
    stamps: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start(10)
    t0 = time.perf_counter()
    if os.environ.get("PROFILE_START"):  # where the Start handler's time goes
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            w.start()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    else:
        w.start()
    start_ms = (time.perf_counter() - t0) * 1000
    if w.state == State.IDLE:
        raise SystemExit(f"the run did not start: {w.status.text()}")
    while w.state not in (State.DONE, State.FAILED, State.STOPPED):
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    if w.state != State.DONE:
        raise SystemExit(f"the run ended {w.state.value}: {w.status.text()}")
    gaps = np.diff(stamps) * 1000 - 10
    return {"ticks": len(stamps), "seconds": time.perf_counter() - t0, "start_ms": start_ms,
            "longest": gaps.max(), "p99": np.percentile(gaps, 99), "median": np.median(gaps),
            "at": stamps[int(gaps.argmax())] - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--modes", default="process,thread", help="comma-separated: process, thread")
    args = ap.parse_args()
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_histodiff import load_bundle
    from napari_histodiff._sample_data import demo_tissue_annotated
    from napari_histodiff.widgets._state import MODEL

    tmp = Path(tempfile.mkdtemp(prefix="histodiff-stall-"))
    os.environ.setdefault("HISTODIFF_LOG_DIR", str(tmp / "logs"))
    folder = bundle_folder(tmp, args.preset)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    for data, kwargs, kind in demo_tissue_annotated():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    MODEL.set(load_bundle(folder, device="cpu"))
    _, w = viewer.window.add_plugin_dock_widget("napari-histodiff", "Fine-tune")
    w.form.unet_steps.value = w.form.classifier_steps.value = w.form.selection_steps.value = args.steps
    w.extract()
    while w.extracting.busy:
        app.processEvents()
        time.sleep(0.01)
    print(f"preset {args.preset}, {args.steps} steps per stage, {len(w.tiles)} tiles, torch {torch.__version__}, "
          f"{os.cpu_count()} cores, GUI process {torch.get_num_threads()} threads")
    print("| job in | beside it | ticks | training | Start handler | median | 99th pct | longest (at) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    modes, tiles = args.modes.split(","), w.tiles
    for busy in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
        try:
            for mode in modes:
                w.tiles = tiles
                r = one_run(w, app, tmp / f"ft-{mode}-{int(busy)}", mode == "process")
                MODEL.set(load_bundle(folder, device="cpu"))  # the next run starts from the same model
                w.tiles = tiles
                print(f"| {mode} | {'a CPU-bound process' if busy else 'nothing'} | {r['ticks']} | "
                      f"{r['seconds']:.1f} s | {r['start_ms']:.0f} ms | {r['median']:.1f} ms | {r['p99']:.1f} ms | "
                      f"{r['longest']:.1f} ms ({r['at']:.1f} s) |", flush=True)
        finally:
            if hog is not None:
                hog.kill()
    viewer.close()


if __name__ == "__main__":
    main()

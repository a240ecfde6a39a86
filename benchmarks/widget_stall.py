"""Longest event-loop stall while the Fine-tune widget trains and while sampled tiles arrive in the Sample
widget (prints figures).

    xvfb-run -a python benchmarks/widget_stall.py [--preset small] [--steps 40] [--modes process,thread]
        [--panels finetune,sample] [--load 2] [--tiles 96]

A QTimer ticks every 10 ms in the GUI thread of a 1280 x 800 viewer while the real Fine-tune widget runs
the ``small`` preset's fine-tuning (UNet, latent classifier, selection classifier) on the annotated sample
data, and while the real Sample widget draws ``--tiles`` tiles (4 per batch, each batch added to its layer
as it comes), with the job in a spawned process (what napari users get) or on a worker thread
(``HISTODIFF_JOBS=thread``), each on an otherwise idle machine and with ``--load`` CPU-bound processes
running beside it. The stall is the longest gap between two ticks minus the 10 ms interval; the Start
handler (the click: for sampling it makes the tiles' layer) is timed on its own. Weights are random (speed
does not depend on them). Goal: longest stall under 50 ms in every condition, at load 2.
``STALL_WHY=1`` prints where the GUI thread was during the longest stalls.
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


class StallWatch:
    """``--why``: a thread that, while the GUI thread has not ticked for 50 ms, notes where the GUI thread is
    (its innermost frames) once per stall; :meth:`report` prints the longest stalls' places."""

    def __init__(self, stamps: list):
        import threading

        self.stamps, self.places, self.gui = stamps, {}, threading.get_ident()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import faulthandler
        import re
        import tempfile

        # faulthandler writes the stacks without Python references to frames (which, dropped in this thread,
        # could free Qt objects outside the GUI thread)
        with tempfile.TemporaryFile("w+") as f:
            while not self.stop.wait(0.005):
                if not self.stamps or time.perf_counter() - self.stamps[-1] <= 0.05:
                    continue
                key = len(self.stamps)
                f.seek(0)
                f.truncate()
                faulthandler.dump_traceback(f, all_threads=True)
                f.seek(0)
                blocks = f.read().split("\n\n")
                mine = next((b for b in blocks if f"{self.gui:#018x}" in b.splitlines()[0]), "")
                frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', mine)[:14]
                self.places.setdefault(key, []).append(
                    " < ".join(f"{Path(name).name}:{line} {func}" for name, line, func in frames))

    def report(self, n=3):
        self.stop.set()
        gaps = np.diff(self.stamps)
        for i in np.argsort(gaps)[::-1][:n]:
            seen = self.places.get(int(i) + 1, [])
            print(f"  stall {gaps[i] * 1000:.0f} ms at {self.stamps[i] - self.stamps[0]:.1f} s: {len(seen)} samples")
            for place in dict.fromkeys(seen[:: max(1, len(seen) // 4)]):
                print("    " + place[:400])


def one_run(w, app, out: Path, process: bool) -> dict:
    from qtpy.QtCore import QTimer

    from napari_histodiff.widgets._common import State

    w.job.process = process
    w.out.value = str(out)
    if hasattr(w, "intent"):
        w.intent.value = "new"
    stamps: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start(10)
    watch = StallWatch(stamps) if os.environ.get("STALL_WHY") else None
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
    for _ in range(20):  # tiles still queued for the layer
        app.processEvents()
        time.sleep(0.005)
    timer.stop()
    if watch is not None:
        watch.report()
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
    ap.add_argument("--panels", default="finetune,sample", help="comma-separated: finetune, sample")
    ap.add_argument("--load", type=int, default=2, help="CPU-bound processes beside the viewer (second pass)")
    ap.add_argument("--tiles", type=int, default=96, help="tiles the Sample widget draws")
    args = ap.parse_args()
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_histodiff.core.jobs.load import open_handle
    from napari_histodiff._sample_data import demo_tissue_annotated
    from napari_histodiff.widgets._state import MODEL

    tmp = Path(tempfile.mkdtemp(prefix="histodiff-stall-"))
    os.environ.setdefault("HISTODIFF_LOG_DIR", str(tmp / "logs"))
    folder = bundle_folder(tmp, args.preset)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    app = QApplication.instance()
    for data, kwargs, kind in demo_tissue_annotated():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    MODEL.set(open_handle(folder, "cpu"))
    panels = args.panels.split(",")
    _, w = viewer.window.add_plugin_dock_widget("napari-histodiff", "Fine-tune")
    w.form.unet_steps.value = w.form.classifier_steps.value = w.form.selection_steps.value = args.steps
    w.extract()
    while w.extracting.busy:
        app.processEvents()
        time.sleep(0.01)
    _, s = viewer.window.add_plugin_dock_widget("napari-histodiff", "Sample")
    s.form["n"].value, s.form["steps"].value, s.form["batch_size"].value = args.tiles, 10, 4
    flags = sorted({f for f in ("avx512_bf16", "avx512f", "avx2") if f in Path("/proc/cpuinfo").read_text()})
    print(f"preset {args.preset}, {args.steps} steps per stage, {len(w.tiles)} tiles, torch {torch.__version__}, "
          f"{os.cpu_count()} cores ({' '.join(flags) or 'no avx2'}), GUI process {torch.get_num_threads()} threads, "
          f"load average before {os.getloadavg()[0]:.1f}")
    print("| panel | job in | beside it | ticks | run | Start handler | median | 99th pct | longest (at) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    modes, tiles = args.modes.split(","), w.tiles
    for load in dict.fromkeys((0, args.load)):
        hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
        try:
            for panel in panels:
                for mode in modes:
                    out = tmp / f"{panel}-{mode}-{load}"
                    if panel == "finetune":
                        w.tiles = tiles
                        r = one_run(w, app, out, mode == "process")
                        MODEL.set(open_handle(folder, "cpu"))  # the next run starts from the same model
                        w.tiles = tiles
                    else:
                        r = one_run(s, app, out, mode == "process")
                        viewer.layers.remove(s.layer)
                    print(f"| {panel} | {mode} | {load} CPU-bound processes | {r['ticks']} | "
                          f"{r['seconds']:.1f} s | {r['start_ms']:.0f} ms | {r['median']:.1f} ms | {r['p99']:.1f} ms | "
                          f"{r['longest']:.1f} ms ({r['at']:.1f} s) |", flush=True)
        finally:
            for hog in hogs:
                hog.kill()
    viewer.close()


if __name__ == "__main__":
    main()

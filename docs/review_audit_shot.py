"""The Review tab's audit, on real tiles, in a 1280 x 800 window: ``docs/images/review_audit.png``.

``xvfb-run -a python docs/review_audit_shot.py`` (needs ``../shared/data/crc_mini``, or ``--real DIR`` with class
sub-folders of tiles). Four tiles of each class are the "real" tiles the model saw; a sample folder holds the
held-out tile of each class (genuine, not copies) and copies of four real tiles made with the audit's own
transforms (flips / rotations, stain jitter, crop, blur, JPEG). The Audit button runs the real audit job (it
trains its feature encoder on the real tiles); then the tiles are sorted by similarity, the grid is shown and
the nearest real tile of the most copy-like tile is shown under the layer; then the audit's quality report is
opened in its panel (``docs/images/review_report.png``). Prints the audit's time."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent / "images"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "crc_mini"
SCREEN = (1280, 800)
SIZE = 224


def make_sets(data: Path, tmp: Path) -> tuple[Path, Path]:
    """(real tiles folder, sample folder) from a folder of class sub-folders."""
    import numpy as np
    from PIL import Image

    from napari_histodiff.core.data.tiles import read_rgb
    from napari_histodiff.core.evaluate.copies import copy_tiles
    from napari_histodiff.core.formats.images import write_tile
    from napari_histodiff.core.formats.records import RECORDS_FILE, TileRecord, write_records

    real, samples = tmp / "real", tmp / "samples"
    held, kept = [], []
    for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
        files = sorted(f for f in (data / cls).iterdir() if f.suffix.lower() in (".png", ".tif", ".jpg"))
        if len(files) < 2:
            continue
        (real / cls).mkdir(parents=True)
        for f in files[:-1]:
            tile = read_rgb(f)[:SIZE, :SIZE]
            Image.fromarray(tile).save(real / cls / f"{f.stem}.png")
            kept.append((cls, tile))
        held.append((cls, read_rgb(files[-1])[:SIZE, :SIZE]))
    pick = [kept[i] for i in np.random.default_rng(3).choice(len(kept), 4, replace=False)]
    copies = copy_tiles(np.stack([t for _, t in pick]), seed=5)
    tiles = held + [(cls, t) for (cls, _), t in zip(pick, copies)]
    records = []
    for i, (cls, tile) in enumerate(tiles):
        r = TileRecord(id=f"{cls}_{i:05d}", file=f"{cls}/{cls}_{i:05d}.tif", target_class=cls, index=i, seed=0,
                       sample_seed=i, sampler="ddim", steps=50, eta=1.0, guidance=10.0, bundle_hash="demo",
                       predicted_class=cls, confidence=0.9)
        (samples / cls).mkdir(parents=True, exist_ok=True)
        write_tile(samples / r.file, tile, r.as_row())
        records.append(r)
    write_records(samples / RECORDS_FILE, records)
    return real, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=Path, default=DATA, help="class sub-folders of real tiles (default: crc_mini)")
    args = ap.parse_args()
    if not args.real.is_dir():
        raise SystemExit(f"no tiles at {args.real}: give --real DIR")
    os.environ.setdefault("HISTODIFF_JOBS", "thread")
    os.environ.setdefault("HISTODIFF_CONFIG", tempfile.mkdtemp(prefix="histodiff-config-"))
    import napari
    import numpy as np
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    from napari_histodiff.widgets.sample import _canvas_size, _yx_box, camera_of

    tmp = Path(tempfile.mkdtemp(prefix="histodiff-audit-shot-"))
    real, samples = make_sets(args.real, tmp)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    window = viewer.window._qt_window
    _, dock = viewer.window.add_plugin_dock_widget("napari-histodiff", "HistoDiffusion")
    window.showNormal()
    window.resize(*SCREEN)

    def settle(seconds=0.5):
        end = time.time() + seconds
        while time.time() < end:
            app.processEvents()
            time.sleep(0.02)

    review = dock.show_panel("review")
    layer = review.open_folder(samples)
    review.real.value = str(real)
    t0 = time.perf_counter()
    review.audit()
    while review.audit_job.busy or review.audit_button.text() != "Audit":
        settle(0.2)
        if time.perf_counter() - t0 > 1800:
            raise SystemExit("the audit did not end within 30 minutes")
    print(f"audit of {len(layer.data)} tiles against {sum(1 for _ in real.rglob('*.png'))} real tiles: "
          f"{time.perf_counter() - t0:.1f} s")
    if review.audit_of(layer) is None:
        raise SystemExit("the audit failed (see the messages above)")
    print(review.audit_status.text())
    review.accept_all()
    review.sort_box.setChecked(True)  # the most copy-like tile is the current one
    review.grid_view()
    viewer.layers.selection.active = layer
    review.show_nearest()
    settle(0.5)
    for toast in window.findChildren(NapariQtNotification):  # the audit's message is in the panel too
        toast.close()
    # the tiles, the nearest real tile under them and the first two columns of the grid (its labels readable)
    grid = _yx_box(viewer.layers[f"grid: {layer.name}"])
    grid[1, 1] = grid[0, 1] + 2 * (SIZE + 2) * layer.scale[-1]
    boxes = [_yx_box(layer), _yx_box(viewer.layers[f"nearest real: {layer.name}"]), grid]
    lo, hi = np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
    center = list(camera_of(viewer).center)
    center[-2:] = (lo + hi) / 2
    camera_of(viewer).center = tuple(center)
    camera_of(viewer).zoom = 0.95 * float(np.min(_canvas_size(viewer) / (hi - lo)))
    settle()
    assert (window.width(), window.height()) == SCREEN, (window.width(), window.height())
    HERE.mkdir(exist_ok=True)
    window.grab().save(str(HERE / "review_audit.png"))
    print("wrote", HERE / "review_audit.png")
    review.report_button.click()  # the quality report of the audit, in its own panel
    settle(1.0)
    window.grab().save(str(HERE / "review_report.png"))
    print("wrote", HERE / "review_report.png")
    viewer.close()


if __name__ == "__main__":
    main()

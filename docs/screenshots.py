"""Screenshots of every widget in use, for the docs (saved under docs/images/).

    xvfb-run -a python docs/screenshots.py [--bundle PRETRAINED_BUNDLE]

Without --bundle it pre-trains a tiny bundle on the demo image first (about a minute).
Runs the flow on the annotated sample data: load, extract tiles, fine-tune (the form's
"interactive" profile), sample guided tiles, review a few of them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent / "images"


def wait(app, condition, widget=None, timeout=600):
    from napari_histodiff.widgets._common import State

    start = time.time()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if getattr(widget, "state", None) == State.FAILED:
            raise RuntimeError(f"{type(widget).__name__} failed (see the notification above)")
        if time.time() - start > timeout:
            raise TimeoutError("the widget did not finish in time")


def pretrain(folder: Path) -> Path:
    from napari_histodiff.core.jobs.demo import demo_tiles
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder
    from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion

    tiles = demo_tiles(32)
    run_to_end(train_autoencoder(tiles, folder, tiny(), AutoencoderOptions(steps=600, device="cpu")))
    run_to_end(train_diffusion(tiles, folder, tiny(), DiffusionOptions(steps=1500, device="cpu")))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None)
    args = ap.parse_args()
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_histodiff._sample_data import demo_tissue_annotated
    from napari_histodiff.widgets._common import State

    HERE.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="histodiff-shots-"))
    bundle = args.bundle or pretrain(tmp / "pre")
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    app = QApplication.instance()
    for data, kwargs, kind in demo_tissue_annotated():
        getattr(viewer, f"add_{kind}")(data, **kwargs)

    def shot(widget, name, width=340):
        """The whole widget (its scrolling page, at a dock's width), not just the part the dock shows."""
        from qtpy.QtCore import QRect

        app.processEvents()
        page = getattr(widget, "page", widget)
        if page is widget:
            widget.grab().save(str(HERE / f"{name}.png"))
            return
        width = max(width, page.minimumSizeHint().width())
        lay = page.layout()
        height = lay.totalHeightForWidth(width) if lay.hasHeightForWidth() else lay.sizeHint().height()
        page.resize(width, max(height, page.minimumSizeHint().height()))
        app.processEvents()
        page.grab(QRect(0, 0, width, max(height, page.minimumSizeHint().height()))).save(str(HERE / f"{name}.png"))

    _, load = viewer.window.add_plugin_dock_widget("napari-histodiff", "Load model")
    load.path.value = str(bundle)
    load.device.setCurrentText("cpu")
    load.load()
    wait(app, lambda: "preset" in load.card.text())
    shot(load, "load_widget")

    _, ft = viewer.window.add_plugin_dock_widget("napari-histodiff", "Fine-tune")
    ft.out.value = str(tmp / "finetuned")
    ft.extract()
    ft.start()
    wait(app, lambda: ft.progress.format().startswith("latent_classifier") and ft.progress.value() > 150, ft)
    shot(ft, "finetune_widget")
    wait(app, lambda: ft.state == State.DONE, ft)

    _, sample = viewer.window.add_plugin_dock_widget("napari-histodiff", "Sample")
    sample.target.setCurrentText("DAB-rich")
    sample.form["n"].value, sample.form["steps"].value = 16, 25
    sample.out.value = str(tmp / "samples")
    sample.start()
    wait(app, lambda: sample.state == State.DONE, sample)
    shot(sample, "sample_widget")

    _, review = viewer.window.add_plugin_dock_widget("napari-histodiff", "Review & export")
    review.layers.setCurrentText("synthetic: DAB-rich")
    for keep in (True, True, False, True):
        review.decide(keep)
    review.grid_view()
    shot(review, "review_widget")
    viewer.layers["stain annotations"].visible = False
    app.processEvents()
    viewer.window._qt_window.grab().save(str(HERE / "napari_window.png"))
    print(f"screenshots written to {HERE}")
    viewer.close()


if __name__ == "__main__":
    main()

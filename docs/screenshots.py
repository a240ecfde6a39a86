"""Screenshots of the plugin in use, step by step, for docs/napari.md (saved under docs/images/).

    xvfb-run -a python docs/screenshots.py [--bundle PRETRAINED_BUNDLE]

Without --bundle it pre-trains a tiny bundle on the demo image first (a minute or two). The napari
window is 1280 x 800 with the HistoDiffusion dock (the panels as tabs). The story:

1. the test slide (``/work/shared/data/slides/cmu_small_region.svs``, or ``--slide``) opened with the
   plugin's reader, with its QuPath GeoJSON annotations (skipped with a note when it is missing):
   ``window_slide.png``, and the canvas alone, ``slide_annotations.png``;
2. the annotated demo image (File > Open Sample) in the Annotate tab, its class table:
   ``window_annotate.png``, ``classes_widget.png``; the Fine-tune tab before a model is loaded,
   ``dock_1280x800.png`` (``--first-steps`` stops here);
3. Load model: ``load_widget.png``;
4. Fine-tune: tiles extracted (``window_finetune.png``), then training with its progress and
   loss plot (``finetune_widget.png``); the job runs in a spawned process, as in napari;
5. Sample: guided tiles beside the tissue (``window_sample.png``, ``sample_widget.png``);
6. Review & export: a few decisions and the grid beside the tissue (``napari_window.png``,
   ``review_widget.png``);
7. after the export (``window_export.png``).

A panel's shot is its whole scrolling page (at the dock's width); a window's shot is what the screen shows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent / "images"
SLIDE = Path("/work/shared/data/slides/cmu_small_region.svs")
SCREEN = (1280, 800)


def wait(app, condition, widget=None, timeout=1200):
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
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.jobs.demo import demo_tiles
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder
    from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion

    tiles = demo_tiles(32)
    run_to_end(train_autoencoder(tiles, folder, tiny(), AutoencoderOptions(steps=600, device="cpu")))
    run_to_end(train_diffusion(tiles, folder, tiny(), DiffusionOptions(steps=1500, device="cpu")))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="a pre-trained bundle (default: pre-train a tiny one)")
    ap.add_argument("--first-steps", action="store_true",
                    help="only the shots that need no model (steps 1 and 2, dock_1280x800): seconds")
    ap.add_argument("--slide", type=Path, default=SLIDE, help="a slide with a QuPath .geojson beside it (step 1)")
    args = ap.parse_args()
    import napari
    import numpy as np
    from qtpy.QtCore import QRect
    from qtpy.QtWidgets import QApplication

    from napari_histodiff._sample_data import demo_tissue_annotated
    from napari_histodiff.widgets._common import State
    from napari_histodiff.widgets.sample import _canvas_size, _yx_box, camera_of

    HERE.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="histodiff-shots-"))
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

    def frame(margin=0.05):
        """Show every visible layer (the tissue and what was placed beside it); reset_view fails for a 2D
        layer among tile stacks."""
        boxes = [_yx_box(layer) for layer in viewer.layers if layer.visible]
        lo, hi = np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
        settle(0.2)
        center = list(camera_of(viewer).center)
        center[-2:] = (lo + hi) / 2
        camera_of(viewer).center = tuple(center)
        canvas = _canvas_size(viewer)
        if canvas is not None:
            camera_of(viewer).zoom = (1 - margin) * float(np.min(canvas / (hi - lo)))

    def window_shot(name):
        """The whole window, as the screen shows it (1280 x 800)."""
        settle()
        assert (window.width(), window.height()) == SCREEN, (window.width(), window.height())
        window.grab().save(str(HERE / f"{name}.png"))
        print("wrote", name)

    def shot(widget, name):
        """The whole panel: its scrolling page at the width it has in the dock, as tall as it needs (not
        just the part the tab shows)."""
        settle(0.2)
        page = getattr(widget, "page", widget)
        if page is widget:
            widget.grab().save(str(HERE / f"{name}.png"))
            return
        area = page.parentWidget().parentWidget()  # the QScrollArea (page -> viewport -> area)
        width = page.width()
        lay = page.layout()
        height = lay.totalHeightForWidth(width) if lay.hasHeightForWidth() else lay.sizeHint().height()
        height = max(height, page.minimumSizeHint().height(), area.viewport().height())  # a stretching table
        page.resize(width, height)
        lay.activate()
        app.processEvents()
        page.grab(QRect(0, 0, width, height)).save(str(HERE / f"{name}.png"))
        area.setWidgetResizable(True)  # the page fits its tab again
        settle(0.2)
        print("wrote", name)

    # 1. a slide and its QuPath annotations, opened with the plugin's reader
    geojson = args.slide.with_suffix(".geojson")
    if args.slide.is_file():
        viewer.open(str(args.slide), plugin="napari-histodiff")
        if geojson.is_file():
            shapes = viewer.open(str(geojson), plugin="napari-histodiff")[-1]
            viewer.layers.selection.active = shapes
        dock.show_panel("classes")
        viewer.reset_view()
        window_shot("window_slide")
        viewer.screenshot(str(HERE / "slide_annotations.png"), canvas_only=True)
        viewer.layers.clear()
    else:
        print(f"note: {args.slide} not found: the slide shots (window_slide, slide_annotations) are not made")

    # 2. the annotated demo image; its classes in the Annotate tab
    for data, kwargs, kind in demo_tissue_annotated():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    labels = viewer.layers["stain annotations"]
    viewer.layers.selection.active = labels
    classes = dock.show_panel("classes")
    classes.select(1)
    viewer.reset_view()
    window_shot("window_annotate")
    shot(classes, "classes_widget")
    ft = dock.show_panel("finetune")  # as tests/test_dock.py's screenshot: the tallest panel, no model yet
    window_shot("dock_1280x800")
    if args.first_steps:
        print(f"screenshots of the first steps written to {HERE}")
        viewer.close()
        return

    # 3. load the pre-trained model (pre-trained here, after the first shots, when not given)
    bundle = args.bundle or pretrain(tmp / "pre")
    load = dock.show_panel("load")
    load.path.value = str(bundle)
    load.device.setCurrentText("cpu")
    load.load()
    wait(app, lambda: "preset" in load.card.text())
    shot(load, "load_widget")

    # 4. extract tiles, fine-tune (the form's "interactive" profile)
    dock.show_panel("finetune")
    ft.out.value = str(tmp / "finetuned")
    ft.extract()
    wait(app, lambda: ft.tiles is not None and not ft.extracting.busy)
    window_shot("window_finetune")
    ft.start()
    wait(app, lambda: ft.progress.format().startswith("latent_classifier") and ft.progress.value() > 150, ft)
    shot(ft, "finetune_widget")
    wait(app, lambda: ft.state == State.DONE, ft)

    # 5. sample guided tiles of one class: they appear beside the tissue
    labels.visible = False
    sample = dock.show_panel("sample")
    sample.target.setCurrentText("DAB-rich")
    sample.form["n"].value, sample.form["steps"].value = 16, 25
    sample.out.value = str(tmp / "samples")
    sample.start()
    wait(app, lambda: sample.state == State.DONE, sample)
    frame()
    window_shot("window_sample")
    shot(sample, "sample_widget")

    # 6. review a few tiles, the grid beside the tissue
    review = dock.show_panel("review")
    review.layers.setCurrentText("synthetic: DAB-rich")
    for keep in (True, True, False, True):
        review.decide(keep)
    review.grid_view()
    viewer.layers.selection.active = viewer.layers["synthetic: DAB-rich"]
    frame()
    window_shot("napari_window")
    shot(review, "review_widget")

    # 7. accept the rest and export the accepted tiles
    review._set_all(True, "accept the rest", lambda r: r.kept is None)
    review.out.value = str(tmp / "export")
    review.export()
    wait(app, lambda: (tmp / "export" / "export.json").exists() and not review.job.busy)
    window_shot("window_export")
    print(f"screenshots written to {HERE}")
    viewer.close()


if __name__ == "__main__":
    main()

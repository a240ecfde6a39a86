"""Sample: class-guided tiles into an Image layer ``synthetic: <class>`` (N, H, W, 3), from noise or
as variations of the tiles extracted in the Fine-tune widget (``variations: <class>``).

The options form is generated from ``SampleOptions`` (the CLI's ``sample`` options, same defaults)
and Sample runs the same job as ``histodiff sample`` (``core.jobs.sample``). Tiles appear as they are
produced, in a layer placed beside the tissue (right of every other layer, at the tissue's scale: a tile
pixel is a tissue pixel), and the view zooms to them when the first ones arrive. The sample folder (the
same format the CLI writes) backs the layer; napari Image layers have no ``features``, so the per-tile
table (target class, predicted class, confidence, centroid distance, kept) is ``layer.metadata["features"]``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QWidget,
)

from ..core.generate.sampling import SampleOptions
from ._common import (
    SHOW_EVERY,
    DeviceCombo,
    Job,
    JobPanel,
    Reopens,
    RunNotes,
    State,
    activity,
    jobs_in_process,
    pinned_below,
    cancel_on_close,
    compact,
    notify_error,
    path_edit,
    scroll_page,
)
from ._forms import OptionsForm, explain_path, output_folder, source_path, tooltip
from ._state import MODEL, follow_model
from .settings import Remembered

UNGUIDED = "(unguided)"  # from noise: classes=[], no guidance
ALL_CLASSES = "all classes"  # from noise: every class of the model, n tiles each
EACH_SOURCE = "all classes (each keeps its source's)"  # variations: classes=[], guided toward the source's class
NOISE, ANNOTATED = "noise", "annotated tiles (variations)"
FEATURES = ["target_class", "predicted_class", "confidence", "centroid_distance", "kept"]
ADVANCED = ("eta", "batch_size", "precision")
LABELS = {"out": "sample folder", "classes": "class", "sources": "start from", "per_class": "class",
          "model": "model (Load model widget)"}


TIPS = {
    "start_from": "noise: draw new tiles from random noise.\n"
    "annotated tiles (variations): take the tiles last extracted in the Fine-tune widget, drown each partly "
    "in noise (\"strength\") and redraw it: a variation with the source's tissue layout and new details.",
    "target": "The class the tiles should show: a classifier trained on your annotations steers every tile "
    "toward it (\"guidance\"). all classes: the number of tiles of every class. (unguided): no steering, "
    "the model draws any tissue it has learnt (the only choice for a model that is not fine-tuned). "
    "With annotated tiles: each variation keeps its source tile's class, or is steered toward the class "
    "you pick.",
    "out": "A new sub-folder per sampling is written here (<class>[-variations]-seed<seed>, then -2, -3, ...): "
    "the tiles and their scores and decisions. Default: beside the opened image, else ~/histodiff/samples.",
    "start": "Draw the tiles with the loaded model; they appear in a new layer as they are made and are "
    "saved in the sample folder.",
    "cancel": "Stop sampling; the tiles shown so far are not saved.",
}


def features_table(records):
    import pandas as pd

    return pd.DataFrame({name: [getattr(r, name) for r in records] for name in FEATURES})


def fresh_folder(parent: Path, stem: str) -> Path:
    """``parent/stem``, or ``stem-2``, ``stem-3``, ... when it exists: a new sampling never replaces
    the folder behind an older layer."""
    folder, k = parent / stem, 2
    while folder.exists():
        folder, k = parent / f"{stem}-{k}", k + 1
    return folder


# -- where synthetic tiles are shown ---------------------------------------------------------------

def _yx_box(layer) -> np.ndarray:
    """``[[ymin, xmin], [ymax, xmax]]``: the world box a layer covers in the last two axes (pixel edges
    included for images)."""
    from napari.layers import Image

    box = np.array(layer.extent.world, dtype=float)[:, -2:]  # image pixels: their centres
    if isinstance(layer, Image):
        half = np.abs(np.asarray(layer.scale, dtype=float)[-2:]) / 2
        box[0] -= half
        box[1] += half
    return box


def tissue_scale(viewer, exclude=()) -> np.ndarray:
    """The (y, x) scale of the tissue: the first Image layer that is not synthetic tiles (else 1, 1).
    Tiles are cut from the tissue pixel for pixel, so a synthetic tile is shown at this scale."""
    from napari.layers import Image

    layers = [layer for layer in viewer.layers if layer.name not in exclude and isinstance(layer, Image)]
    tissue = [layer for layer in layers if "histodiff" not in layer.metadata and not layer.name.startswith("grid:")]
    for layer in tissue or layers:
        return np.asarray(layer.scale, dtype=float)[-2:]
    return np.ones(2)


def beside(viewer, exclude=(), scale=None) -> dict:
    """``scale`` and ``translate`` (y, x) that place a new image right of every layer of the viewer but
    ``exclude`` (layer names; the tissue, its annotations, earlier synthetic tiles), top-aligned, with a margin: the
    synthetic tiles are never drawn over the tissue."""
    scale = tissue_scale(viewer, exclude) if scale is None else np.asarray(scale, dtype=float)[-2:]
    boxes = [_yx_box(layer) for layer in viewer.layers if layer.name not in exclude]
    boxes = [box for box in boxes if np.all(np.isfinite(box))]
    if not boxes:
        return {"scale": tuple(scale), "translate": (0.0, 0.0)}
    lo, hi = np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
    margin = max(0.05 * (hi[1] - lo[1]), 8 * abs(scale[1]))
    # an image's pixel 0 is centred on ``translate``: its edge lies half a pixel before
    return {"scale": tuple(scale), "translate": (lo[0] + scale[0] / 2, hi[1] + margin + scale[1] / 2)}


def add_beside(viewer, data, **kwargs):
    """Add an RGB image (a tile stack (N, H, W, 3) or a sheet (H, W, 3)) beside the other layers."""
    from ._layers import tissue_units

    place = beside(viewer)
    lead = data.ndim - 3  # the stack axis: not scaled or moved
    return viewer.add_image(data, rgb=True, scale=(1.0,) * lead + place["scale"],
                            translate=(0.0,) * lead + place["translate"], units=tissue_units(viewer, data.ndim - 1),
                            **kwargs)


def _canvas_size(viewer) -> np.ndarray | None:
    """The canvas's (height, width) in screen pixels, or None when napari does not say."""
    try:
        size = viewer.canvas.viewbox_size(viewer.layers)  # napari >= 0.6
    except Exception:  # noqa: BLE001 - older napari
        size = getattr(viewer, "_canvas_size", None)
    return None if size is None else np.asarray(size, dtype=float)[-2:]


def show_layer(viewer, layer, margin: float = 0.05) -> None:
    """Centre and zoom the 2D view on ``layer`` (its last two axes). (``viewer.reset_view(layers=...)``
    fails for a 2D layer among tile stacks, so this is done here.)"""
    box = _yx_box(layer)
    camera = camera_of(viewer)
    center = list(camera.center)
    center[-2:] = (box[0] + box[1]) / 2
    camera.center = tuple(center)
    size, canvas = box[1] - box[0], _canvas_size(viewer)
    if viewer.dims.ndisplay == 2 and canvas is not None and np.all(size > 0) and np.all(canvas > 0):
        camera.zoom = (1 - margin) * float(np.min(canvas / size))


def camera_of(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


class TileFeed:
    """Tiles into an Image layer without stalling the viewer. The layer is made by :meth:`open` (a blank tile
    until the first ones come); arriving tiles (already decoded arrays, from the job) are queued by
    :meth:`put` and added between other events (``QTimer.singleShot``), at most ``chunk`` at a time, into a
    buffer that grows by doubling, so a batch copies only its own tiles; the layer shows ``buffer[:n]``."""

    def __init__(self, chunk: int = 16, gap_ms: int = 250):
        self.chunk, self.gap_ms = chunk, gap_ms
        self.layer, self.buffer, self.n, self.queue = None, None, 0, []
        self._scheduled = False

    def open(self, viewer, tile_size: int, **kwargs):
        """Add the layer beside the tissue (one blank tile) and zoom to it."""
        self.buffer = np.full((8, tile_size, tile_size, 3), 255, np.uint8)
        self.n, self.queue = 0, []
        self.layer = add_beside(viewer, self.buffer[:1], **kwargs)
        show_layer(viewer, self.layer)
        return self.layer

    @property
    def queued(self) -> int:
        return sum(len(t) for t in self.queue)

    def put(self, tiles: np.ndarray) -> None:
        self.queue.append(np.asarray(tiles, dtype=np.uint8))
        if not self._scheduled:
            from qtpy.QtCore import QTimer

            self._scheduled = True
            QTimer.singleShot(0, self._drain)

    def _take(self, k: int) -> np.ndarray:
        out, left = [], k
        while self.queue and left > 0:
            head = self.queue[0]
            out.append(head[:left])
            left -= len(out[-1])
            if len(head) > len(out[-1]):
                self.queue[0] = head[len(out[-1]):]
            else:
                self.queue.pop(0)
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _add(self, tiles: np.ndarray) -> None:
        need = self.n + len(tiles)
        if need > len(self.buffer):
            bigger = np.empty((max(need, 2 * len(self.buffer)), *self.buffer.shape[1:]), np.uint8)
            bigger[: self.n] = self.buffer[: self.n]
            self.buffer = bigger
        self.buffer[self.n: need] = tiles
        self.n = need

    def _show(self) -> None:
        layer = self.layer
        if layer is not None and self.n:
            layer.data = self.buffer[: self.n]

    def _drain(self) -> None:
        from qtpy.QtCore import QTimer

        self._scheduled = False
        if self.layer is None or not self.queue:
            return
        self._add(self._take(self.chunk))
        self._show()
        if self.queue:
            self._scheduled = True
            QTimer.singleShot(self.gap_ms, self._drain)  # the viewer draws and takes input in between

    def flush(self) -> None:
        """Add every queued tile now (the run has ended: its records must match the layer's tiles)."""
        while self.queue:
            self._add(self._take(len(self.buffer)))
        self._show()


class SampleWidget(JobPanel, QWidget, metaclass=Reopens):
    def __init__(self, napari_viewer=None):
        super().__init__()
        self.viewer = napari_viewer
        self.target = compact(QComboBox())
        self.start_from = compact(QComboBox())
        self.start_from.addItems([NOISE, ANNOTATED])
        self.start_from.setToolTip(tooltip(*TIPS["start_from"].split("\n")))
        self.target.setToolTip(tooltip(TIPS["target"]))
        self.form = OptionsForm(SampleOptions, advanced=ADVANCED)
        self._default_out = output_folder("samples", self._image_layer())
        self.out = path_edit("d", self._default_out)
        self.device = DeviceCombo()
        self.device.follow(MODEL.model)
        explain_path(self.out, tooltip(TIPS["out"]))
        self.start_button, self.cancel_button = QPushButton("Sample"), QPushButton("Cancel")
        self.start_button.setToolTip(tooltip(TIPS["start"]))
        self.cancel_button.setToolTip(tooltip(TIPS["cancel"]))
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.notes = RunNotes(QLabel(), self.label_of)  # a run's warnings: here, and counted in one notification
        self.form.add_row("start from", self.start_from, at=0)
        self.form.add_row(LABELS["classes"], self.target, at=1)
        self.form.add_row(LABELS["out"], self.out, wide=True)
        self.form.add_row("device", self.device)
        layout = scroll_page(self)
        layout.addWidget(self.form)
        layout.addWidget(self.notes.label)
        layout.addStretch()
        footer = pinned_below(self)  # the buttons and the progress stay in view below the scrolling form
        row = QHBoxLayout()
        row.addWidget(self.start_button)
        row.addWidget(self.cancel_button)
        footer.addLayout(row)
        footer.addWidget(self.progress)
        footer.addWidget(self.status)
        self.layer, self.feed, self.activity, self._wanted, self._shown = None, TileFeed(), None, None, 0.0
        self.job = Job(self.label_of, process=jobs_in_process(), title="the sampling")  # a spawned process
        # closing the panel asks whether the sampling keeps running (in the activity dock) or stops (the core
        # then leaves no folder)
        cancel_on_close(self, self.job, keep=True)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.start_from.currentTextChanged.connect(self._start_from_changed)
        self.target.currentTextChanged.connect(self._applies)
        for name in ("sampler", "select", "rule"):
            self.form[name].connect(self._applies)
        if napari_viewer is not None:
            napari_viewer.layers.events.inserted.connect(self._layers_changed)
            napari_viewer.layers.selection.events.active.connect(self._layers_changed)
        follow_model(self, self._model_changed)
        self.settings = Remembered("sample", {
            "start_from": self.start_from, "target": self.target, "out": self.out, "device": self.device,
            **{f"form.{name}": edit for name, edit in self.form.edits.items()}})
        self._wanted = self.settings.restore().get("target")  # chosen when a model has that class ...
        self.target.activated.connect(self._chosen)  # ... until the user chooses
        self._start_from_changed()

    # -- defaults that follow the viewer and the model ----------------------------------------
    def _image_layer(self):
        """The image the sample folder goes beside: the active layer, else the first, opened from a file."""
        from napari.layers import Image

        if self.viewer is None:
            return None
        layers = [self.viewer.layers.selection.active, *self.viewer.layers]
        return next((layer for layer in layers if isinstance(layer, Image) and source_path(layer)), None)

    def _layers_changed(self, *_):
        """A default folder follows the opened image (a folder the user chose stays)."""
        if Path(str(self.out.value)) == self._default_out:
            self._default_out = output_folder("samples", self._image_layer())
            self.out.value = self._default_out

    @property
    def can_select(self) -> bool:
        """Whether the loaded model has a selection classifier (a fine-tuned bundle)."""
        return MODEL.model is not None and MODEL.model.has("selection_classifier")

    def _applies(self, *_):
        """Show only the controls that apply: the selection options with a selection classifier (a
        fine-tuned model), strength for variations; enable eta for ddim, guidance when guided, threshold
        for the rules that use it."""
        form = self.form
        form.set_shown("strength", self.variations)
        form["strength"].enabled = self.variations
        form.set_shown("select", self.can_select)
        form.set_shown("selection", self.can_select)
        form.groups["selection"].setEnabled(form["select"].value)
        form["threshold"].enabled = form["rule"].value in ("confidence", "both")
        form["eta"].enabled = form["sampler"].value == "ddim"
        form["guidance"].enabled = self.target.currentText() != UNGUIDED

    def label_of(self, name: str) -> str:
        return LABELS.get(name) or self.form.label_of(name)

    @property
    def variations(self) -> bool:
        return self.start_from.currentText() == ANNOTATED

    def _targets(self, model) -> list[str]:
        names = list(model.class_names) if model is not None else []
        if self.variations:
            return [EACH_SOURCE, *names]
        return [*names, *([ALL_CLASSES] if len(names) > 1 else []), UNGUIDED]

    def _model_changed(self, model):
        """The class choices of the new model; the choice made (or remembered) stays where the model has it,
        else the first class (a model without classes: unguided)."""
        self.device.follow(model)
        current = self.target.currentText()
        if current == UNGUIDED and self.target.count() <= 1:
            current = None  # it was the only choice (a model without classes), not a choice made
        preferred = [t for t in (current, self._wanted) if t]
        self.target.blockSignals(True)
        self.target.clear()
        if model is not None:
            items = self._targets(model)
            self.target.addItems(items)
            self.target.setCurrentText(next((t for t in preferred if t in items), items[0]))
        self.target.blockSignals(False)
        settings = getattr(self, "settings", None)
        if settings is not None:  # a choice the model forced is not the one to remember
            settings._quiet = True
        try:
            self.target.currentTextChanged.emit(self.target.currentText())
        finally:
            if settings is not None:
                settings._quiet = False
        self._applies()
        self._update()

    def _chosen(self, *_):
        self._wanted = None

    def _start_from_changed(self, *_):
        if not self.variations:  # from noise: always 1 (pure noise)
            self.form["strength"].value = None
        self._model_changed(MODEL.model)

    def _update(self):
        ready = MODEL.model is not None
        self.start_button.setEnabled(ready and not self.job.busy)
        self.cancel_button.setEnabled(self.job.can_cancel)
        self.status.setText(self.state.value if ready else "load a model first (Load model widget)")

    def options(self, out=None) -> SampleOptions:
        """The job's options: the form, the class choice, the folder, the device."""
        model = MODEL.require()
        target = self.target.currentText()
        classes = list(model.class_names) if target == ALL_CLASSES else \
            [] if target in (UNGUIDED, EACH_SOURCE, "") else [target]
        extra = {} if self.variations else {"strength": None}
        return self.form.read(classes=classes, out=out, device=self.device.currentText(), **extra)

    def folder_stem(self, opts: SampleOptions) -> tuple[str, str]:
        """(what the layer shows, the sub-folder stem): ``DAB-rich-seed0``, ``all-classes-variations-seed0``."""
        target = self.target.currentText()
        what = {UNGUIDED: "unguided", ALL_CLASSES: "all classes", EACH_SOURCE: "all classes"}.get(target, target)
        tag = "-variations" if self.variations else ""
        from ..core.base.names import safe_name  # "Dermis: Inflamed" -> a folder name valid everywhere

        return what, safe_name(f"{what.replace(' ', '-')}{tag}-seed{opts.seed}")

    def start(self):
        if self.job.busy:
            return
        try:
            model = MODEL.require()
            opts = self.options()
            sources = self.sources()
            what, stem = self.folder_stem(opts)
            opts.out = fresh_folder(Path(str(self.out.value)), stem)
        except Exception as e:  # noqa: BLE001
            notify_error(e, self.label_of)
            return
        from ..core.jobs.sample import sample

        self.layer, self.folder = None, opts.out
        self.name = f"{'variations' if self.variations else 'synthetic'}: {what}"
        self.notes.clear()
        self.settings.save()
        self._shown = 0.0
        # the layer now (napari takes a moment to make one), so that tiles arriving only fill it
        self.layer = self.feed.open(self.viewer, model.tile_size, name=self.name)
        self.activity = activity(f"histodiff sample: {what}", 1, self.job.cancel)
        opts.model = model.path  # the job opens the model on the chosen device (the GUI holds no weights)
        self.job.start(sample, opts, None, sources, on_yield=self._event, on_done=self._done,
                       on_finish=self._finished, on_change=self._update, on_release=self.activity.close)

    def sources(self):
        """The annotated tiles for variations, or None when sampling from noise."""
        from ..core.base.errors import HistodiffError

        if not self.variations:
            return None
        if MODEL.labeled is None:
            raise HistodiffError("no annotated tiles for variations: extract tiles in the Fine-tune widget first "
                                 "(Extract tiles), or start from noise")
        return MODEL.labeled

    def cancel(self):
        self.job.cancel()

    def _event(self, event):
        if event.stage == "warning":
            self.notes.add(event.message)  # in the panel and the log; counted in the run's one notification
            return
        if event.total:
            self.progress.setMaximum(event.total)
            self.progress.setValue(event.step)
            now = time.monotonic()
            if now - self._shown >= SHOW_EVERY or event.step >= event.total:  # napari's bar processes events
                self._shown = now
                self.activity.total = event.total
                if event.step > self.activity.n:
                    self.activity.update(event.step - self.activity.n)
        if not event.data:
            return
        if self.layer is None or self.layer not in self.viewer.layers:  # removed by the user: a new one
            self.layer = self.feed.open(self.viewer, event.data["tiles"].shape[1], name=self.name)
        self.feed.put(event.data["tiles"])  # added between events, a few at a time

    def _done(self, result):
        records = result["records"]
        self.feed.flush()
        if self.layer is not None and not self.feed.n:  # no tile made: no blank layer left behind
            self._drop_layer()
        if self.layer is not None:
            from ..core.formats.records import folder_fingerprint

            self.layer.metadata = {**self.layer.metadata, "features": features_table(records),
                                   "histodiff": {"folder": str(self.folder), "records": records,
                                                 "fingerprint": folder_fingerprint(self.folder,
                                                                                   [r.file for r in records])}}
            self.layer.refresh()
        self.notes.notify(result["message"])  # the run's one notification

    def _drop_layer(self):
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self.layer = None

    def _finished(self):
        if self.state != State.DONE:
            self.feed.flush()
            if not self.feed.n:
                self._drop_layer()  # nothing came: not even the blank tile stays
        if self.state == State.STOPPED:
            self.notes.notify("sampling cancelled; the tiles shown were not saved")
        self._update()

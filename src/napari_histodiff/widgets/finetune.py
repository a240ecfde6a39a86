"""Fine-tune: annotated layers -> labeled tiles -> fine-tuned bundle, on a background worker."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                            QSpinBox, QVBoxLayout, QWidget)

from ..core.train.finetune import FinetuneOptions
from ._common import State, dataclass_form, notify_error, read_form, start_worker
from ._layers import LayerCombo, extract
from ._plot import LossPlot
from ._state import MODEL, follow_model

FORM_FIELDS = ["classifier_steps", "selection_steps", "unet_steps", "decoder_steps", "clean_latents",
               "min_tiles_per_class", "seed"]


def pixmap(rgb: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    return QPixmap.fromImage(QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy())


def warm_imports() -> None:
    """Import the training modules now: an import in the worker thread holds the GIL and would
    freeze the viewer for a moment when training starts."""
    import diffusers.optimization  # noqa: F401
    import diffusers.training_utils  # noqa: F401

    from ..core.train import losses
    from ..core.train import autoencoder as train_autoencoder
    from ..core.train import classifiers as train_classifiers
    from ..core.train import diffusion as train_diffusion


def finetune_and_load(source, tiles, out, preset, options):
    """The core fine-tuning, then the new bundle loaded in the worker thread (not the GUI's)."""
    from ..core.formats.bundle import load_bundle
    from ..core.train.finetune import finetune

    result = yield from finetune(source, tiles, out, preset, options)
    return result, load_bundle(out, device=options.device)


class FinetuneWidget(QWidget):
    def __init__(self, napari_viewer=None):
        import napari.layers as L
        from magicgui.widgets import FileEdit

        super().__init__()
        self.viewer = napari_viewer
        self.image = LayerCombo(napari_viewer, (L.Image,), lambda layer: getattr(layer, "rgb", False))
        self.annotations = LayerCombo(napari_viewer, (L.Labels, L.Shapes, L.Points))
        self.stride = QSpinBox(minimum=0, maximum=4096, value=0, specialValueText="tile size")
        self.min_fraction = QDoubleSpinBox(minimum=0.05, maximum=1.0, value=0.5, singleStep=0.05)
        self.form = dataclass_form(FinetuneOptions, FORM_FIELDS, classifier_steps=500, selection_steps=300,
                                   unet_steps=200)
        self.out = FileEdit(mode="d", label="output bundle",
                            value=str(Path(tempfile.gettempdir()) / "histodiff-finetuned"))
        self.extract_button = QPushButton("Extract tiles")
        self.counts = QLabel("Extract tiles to see how many each class gets.")
        self.counts.setWordWrap(True)
        self.preview = QLabel()
        self.start_button, self.pause_button, self.cancel_button = (
            QPushButton("Start"), QPushButton("Pause"), QPushButton("Cancel"))
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.plot = LossPlot()

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("annotations", self.annotations)
        form.addRow("stride (px)", self.stride)
        form.addRow("min annotated fraction", self.min_fraction)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.extract_button)
        layout.addWidget(self.counts)
        layout.addWidget(self.preview)
        layout.addWidget(self.form.native)
        layout.addWidget(self.out.native)
        row = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.cancel_button):
            row.addWidget(b)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addStretch()

        self.tiles, self.worker, self.state = None, None, State.IDLE
        warm_imports()
        self.extract_button.clicked.connect(self.extract)
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.cancel_button.clicked.connect(self.cancel)
        for combo in (self.image, self.annotations):
            combo.currentTextChanged.connect(self._inputs_changed)
        follow_model(self, self._model_changed)
        self._update()

    # -- inputs ---------------------------------------------------------------------------
    def _model_changed(self, bundle):
        if self.state not in (State.RUNNING, State.PAUSED, State.CANCELLING):
            self.tiles = None  # the tile size may have changed
        self._update()

    def _inputs_changed(self, *_):
        self.tiles = None
        self._update()

    def extract(self):
        from ..core.data.annotations import class_counts
        from ..core.formats.images import contact_sheet

        try:
            bundle = MODEL.require()
            self.tiles, skipped = extract(self.image.layer(), self.annotations.layer(), bundle.tile_size,
                                          self.stride.value() or bundle.tile_size, self.min_fraction.value())
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.tiles = None
            notify_error(e)
            self._update()
            return
        MODEL.labeled = self.tiles
        counts = class_counts(self.tiles)
        minimum = self.form.min_tiles_per_class.value
        text = ", ".join(f"{c}: {n}" for c, n in counts.items())
        few = [c for c, n in counts.items() if n < minimum]
        if skipped:
            text += f" ({skipped} points too close to the border skipped)"
        if few:
            text += f". Too few tiles (< {minimum}) for {', '.join(few)}: annotate more or lower the minimum."
        self.counts.setText("Tiles per class: " + text)
        k = min(len(self.tiles), 24)
        idx = np.linspace(0, len(self.tiles) - 1, k).round().astype(int)
        sheet = contact_sheet(self.tiles.tiles[idx], ncols=8)
        scale = max(1, 256 // sheet.shape[1])
        self.preview.setPixmap(pixmap(np.kron(sheet, np.ones((scale, scale, 1), np.uint8))))
        self._update()

    def _problem(self) -> str | None:
        if MODEL.bundle is None:
            return "load a model first (Load model widget)"
        if MODEL.training and self.state not in (State.RUNNING, State.PAUSED, State.CANCELLING):
            return "another training is running"
        if self.tiles is None:
            return "choose an image and an annotation layer, then Extract tiles"
        return None

    def _update(self):
        running = self.state in (State.RUNNING, State.PAUSED, State.CANCELLING)
        problem = self._problem()
        self.start_button.setEnabled(problem is None and not running)
        self.start_button.setToolTip(problem or "")
        self.extract_button.setEnabled(not running)
        self.pause_button.setEnabled(running and self.state != State.CANCELLING)
        self.pause_button.setText("Resume" if self.state == State.PAUSED else "Pause")
        self.cancel_button.setEnabled(running and self.state != State.CANCELLING)
        if self.state == State.DONE and self.tiles is None:
            problem = "the fine-tuned bundle is loaded (Sample widget); extract tiles again to train more"
        self.status.setText(self.state.value if problem is None or running else f"{self.state.value}: {problem}")

    # -- training ---------------------------------------------------------------------------
    def options(self) -> FinetuneOptions:
        return read_form(self.form, FinetuneOptions, device=str(MODEL.require().device))

    def start(self):
        from ..core.base.errors import HistodiffError

        try:
            problem = self._problem()
            if problem:
                raise HistodiffError(problem)
            bundle, opts, out = MODEL.bundle, self.options(), Path(str(self.out.value))
            if out.exists() and any(out.iterdir()) and not (out / "histodiff.json").is_file():
                raise HistodiffError(f"{out} exists and is not a bundle; choose an empty output folder")
            if bundle.path is not None and out.resolve() == bundle.path.resolve():
                raise HistodiffError("the output folder must differ from the loaded bundle")
        except Exception as e:  # noqa: BLE001
            notify_error(e)
            return
        MODEL.training, self.state, self.out_dir = True, State.RUNNING, out
        self.plot.reset()
        self.worker = start_worker(finetune_and_load, bundle.path, self.tiles, out, bundle.preset, opts,
                                   on_yield=self._event, on_done=self._done, on_error=self._failed,
                                   on_finish=self._finished)
        self._update()

    def toggle_pause(self):
        if self.worker is None:
            return
        self.worker.toggle_pause()
        self.state = State.RUNNING if self.state == State.PAUSED else State.PAUSED
        self._update()

    def cancel(self):
        if self.worker is not None:
            if self.state == State.PAUSED:
                self.worker.resume()
            self.state = State.CANCELLING
            self.worker.request_stop()
            self._update()

    def _event(self, event):
        if event.total:
            self.progress.setMaximum(event.total)
            self.progress.setValue(event.step)
            self.progress.setFormat(f"{event.stage}: %v / %m")
        if event.loss is not None:
            if self.plot.title != event.stage:
                self.plot.reset(event.stage)
            self.plot.add(event.loss)

    def _done(self, result_and_bundle):
        self.state = State.DONE
        self.result, bundle = result_and_bundle
        MODEL.set(bundle)

    def _failed(self, exc):
        self.state = State.FAILED
        notify_error(exc)

    def _finished(self):
        from napari.utils.notifications import show_info

        if self.state == State.CANCELLING:
            self.state = State.STOPPED
            show_info(f"fine-tuning stopped; the checkpoint in {self.out_dir} is kept: press Start to resume")
        MODEL.training = False
        self.worker = None
        self._update()

"""Sample: class-guided tiles into an Image layer ``synthetic: <class>`` (N, H, W, 3), from noise or
as variations of the tiles extracted in the Fine-tune widget (``variations: <class>``).

Tiles appear as they are produced. The sample folder (the same format the CLI writes) backs the
layer; napari Image layers have no ``features``, so the per-tile table (target class, predicted
class, confidence, centroid distance, kept) is ``layer.metadata["features"]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                            QVBoxLayout, QWidget)

from ..core.generate.sampling import SAMPLERS, SampleOptions
from ..core.generate.selection import RULES, SelectionRule
from ._common import State, dataclass_form, notify_error, read_form, start_worker
from ._state import MODEL, follow_model

UNGUIDED = "(unguided)"
NOISE, ANNOTATED = "noise", "annotated tiles (variations)"
FEATURES = ["target_class", "predicted_class", "confidence", "centroid_distance", "kept"]


def features_table(records):
    import pandas as pd

    return pd.DataFrame({name: [getattr(r, name) for r in records] for name in FEATURES})


class SampleWidget(QWidget):
    def __init__(self, napari_viewer=None):
        from magicgui.widgets import FileEdit

        super().__init__()
        self.viewer = napari_viewer
        self.target = QComboBox()
        self.sampler = QComboBox()
        self.sampler.addItems(SAMPLERS)
        self.rule = QComboBox()
        self.rule.addItems(RULES)
        self.rule.setCurrentText("both")
        self.start_from = QComboBox()
        self.start_from.addItems([NOISE, ANNOTATED])
        self.start_from.setToolTip("variations: the tiles last extracted in the Fine-tune widget, noised and "
                                   "denoised again (each keeps its class)")
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.05, 1.0)
        self.strength.setSingleStep(0.05)
        self.strength.setValue(0.5)
        self.strength.setToolTip("how far the annotated tiles are noised: low keeps more of them")
        self.form = dataclass_form(SampleOptions, ["n", "guidance", "steps", "eta", "seed", "batch_size"], n=16)
        self.threshold = dataclass_form(SelectionRule, ["threshold"])
        self.out = FileEdit(mode="d", label="sample folder", value=str(Path(tempfile.gettempdir()) / "histodiff-samples"))
        self.start_button, self.cancel_button = QPushButton("Sample"), QPushButton("Cancel")
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        form = QFormLayout()
        form.addRow("class", self.target)
        form.addRow("start from", self.start_from)
        form.addRow("strength", self.strength)
        form.addRow("sampler", self.sampler)
        form.addRow("selection rule", self.rule)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.form.native)
        layout.addWidget(self.threshold.native)
        layout.addWidget(self.out.native)
        row = QHBoxLayout()
        row.addWidget(self.start_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch()
        self.worker, self.layer, self.state = None, None, State.IDLE
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        follow_model(self, self._model_changed)
        self._model_changed(MODEL.bundle)

    def _model_changed(self, bundle):
        self.target.clear()
        if bundle is not None:
            self.target.addItems([*bundle.class_names, UNGUIDED])
        self._update()

    def _update(self):
        running = self.state in (State.RUNNING, State.CANCELLING)
        ready = MODEL.bundle is not None
        self.start_button.setEnabled(ready and not running)
        self.cancel_button.setEnabled(running and self.state != State.CANCELLING)
        self.status.setText(self.state.value if ready else "load a model first (Load model widget)")

    def options(self) -> tuple[SampleOptions, SelectionRule | None]:
        target = self.target.currentText()
        variations = self.start_from.currentText() == ANNOTATED
        opts = read_form(self.form, SampleOptions, sampler=self.sampler.currentText(),
                         classes=[] if target == UNGUIDED else [target],
                         strength=self.strength.value() if variations else 1.0)
        if variations and target == UNGUIDED:
            opts.guidance = 0.0  # variations of every class, each keeping its source's class
        if MODEL.require().selection_classifier is None:  # not fine-tuned: nothing to select with
            return opts, None
        return opts, SelectionRule(rule=self.rule.currentText(), threshold=self.threshold.threshold.value)

    def start(self):
        from ..core.generate.sample_set import write_samples

        try:
            bundle = MODEL.require()
            opts, rule = self.options()
            opts.validate(bundle.scheduler.config.num_train_timesteps)
            for name in opts.classes:
                bundle.class_index(name)
            sources = self.sources()
            what = opts.classes[0] if opts.classes else "all classes" if sources is not None else "unguided"
            tag = "-variations" if sources is not None else ""
            folder = Path(str(self.out.value)) / f"{what.replace(' ', '-')}{tag}-seed{opts.seed}"
        except Exception as e:  # noqa: BLE001
            notify_error(e)
            return
        self.layer, self.folder, self.state = None, folder, State.RUNNING
        self.name = f"{'variations' if tag else 'synthetic'}: {what}"
        self.worker = start_worker(write_samples, bundle, opts, folder, rule, True, sources,
                                   on_yield=self._event, on_done=self._done, on_error=self._failed,
                                   on_finish=self._finished)
        self._update()

    def sources(self):
        """The annotated tiles for variations, or None when sampling from noise."""
        from ..core.base.errors import HistodiffError

        if self.start_from.currentText() != ANNOTATED:
            return None
        if MODEL.labeled is None:
            raise HistodiffError("no annotated tiles for variations: extract tiles in the Fine-tune widget first "
                                 "(Extract tiles), or start from noise")
        return MODEL.labeled

    def cancel(self):
        if self.worker is not None:
            self.state = State.CANCELLING
            self.worker.request_stop()
            self._update()

    def _event(self, event):
        self.progress.setMaximum(event.total)
        self.progress.setValue(event.step)
        if not event.data:
            return
        tiles = event.data["tiles"]
        if self.layer is None or self.layer not in self.viewer.layers:
            self.layer = self.viewer.add_image(tiles, name=self.name, rgb=True)
        else:
            self.layer.data = np.concatenate([self.layer.data, tiles])

    def _done(self, records):
        self.state = State.DONE
        if self.layer is not None:
            self.layer.metadata["features"] = features_table(records)
            self.layer.metadata["histodiff"] = {"folder": str(self.folder), "records": records}
            self.layer.refresh()

    def _failed(self, exc):
        self.state = State.FAILED
        notify_error(exc)

    def _finished(self):
        from napari.utils.notifications import show_info

        if self.state == State.CANCELLING:
            self.state = State.STOPPED
            show_info("sampling cancelled; the tiles shown were not saved")
        self.worker = None
        self._update()

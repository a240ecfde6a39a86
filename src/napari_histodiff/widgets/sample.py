"""Sample: class-guided tiles into an Image layer ``synthetic: <class>`` (N, H, W, 3), from noise or
as variations of the tiles extracted in the Fine-tune widget (``variations: <class>``).

The options form is generated from ``SampleOptions`` (the CLI's ``sample`` options, same defaults)
and Sample runs the same job as ``histodiff sample`` (``core.jobs.sample``). Tiles appear as they are
produced. The sample folder (the same format the CLI writes) backs the layer; napari Image layers
have no ``features``, so the per-tile table (target class, predicted class, confidence, centroid
distance, kept) is ``layer.metadata["features"]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from ..core.generate.sampling import SampleOptions
from ._common import State, compact, notify_error, notify_warning, path_edit, scroll_page, start_worker
from ._forms import OptionsForm
from ._state import MODEL, follow_model

UNGUIDED = "(unguided)"  # from noise: classes=[], no guidance
ALL_CLASSES = "all classes"  # from noise: every class of the model, n tiles each
EACH_SOURCE = "all classes (each keeps its source's)"  # variations: classes=[], guided toward the source's class
NOISE, ANNOTATED = "noise", "annotated tiles (variations)"
FEATURES = ["target_class", "predicted_class", "confidence", "centroid_distance", "kept"]
ADVANCED = ("eta", "batch_size")
LABELS = {"out": "sample folder", "classes": "class", "sources": "start from", "per_class": "class",
          "model": "model (Load model widget)"}


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


class SampleWidget(QWidget):
    def __init__(self, napari_viewer=None):
        super().__init__()
        self.viewer = napari_viewer
        self.target = compact(QComboBox())
        self.start_from = compact(QComboBox())
        self.start_from.addItems([NOISE, ANNOTATED])
        self.start_from.setToolTip("variations: the tiles last extracted in the Fine-tune widget, noised to "
                                   "\"strength\" and denoised again (each keeps its class unless you pick one)")
        self.form = OptionsForm(SampleOptions, advanced=ADVANCED)
        self.out = path_edit("d", Path(tempfile.gettempdir()) / "histodiff-samples",
                             tip="a new sub-folder per sampling is written here "
                             "(<class>[-variations]-seed<seed>, then -2, -3, ...)")
        self.start_button, self.cancel_button = QPushButton("Sample"), QPushButton("Cancel")
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.form.add_row("start from", self.start_from, at=0)
        self.form.add_row(LABELS["classes"], self.target, "target class; unguided or all classes", at=1)
        self.form.add_row(LABELS["out"], self.out, wide=True)
        layout = scroll_page(self)
        layout.addWidget(self.form)
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
        self.start_from.currentTextChanged.connect(self._start_from_changed)
        follow_model(self, self._model_changed)
        self._model_changed(MODEL.bundle)

    def label_of(self, name: str) -> str:
        return LABELS.get(name) or self.form.label_of(name)

    @property
    def variations(self) -> bool:
        return self.start_from.currentText() == ANNOTATED

    def _targets(self, bundle) -> list[str]:
        names = list(bundle.class_names) if bundle is not None else []
        if self.variations:
            return [EACH_SOURCE, *names]
        return [*names, *([ALL_CLASSES] if len(names) > 1 else []), UNGUIDED]

    def _model_changed(self, bundle):
        current = self.target.currentText()
        self.target.clear()
        if bundle is not None:
            self.target.addItems(self._targets(bundle))
            if current:
                self.target.setCurrentText(current)
        self._update()

    def _start_from_changed(self, *_):
        strength = self.form["strength"]
        strength.enabled = self.variations  # from noise: always 1 (pure noise)
        if not self.variations:
            strength.value = None
        self._model_changed(MODEL.bundle)

    def _update(self):
        running = self.state in (State.RUNNING, State.CANCELLING)
        ready = MODEL.bundle is not None
        self.start_button.setEnabled(ready and not running)
        self.cancel_button.setEnabled(running and self.state != State.CANCELLING)
        self.status.setText(self.state.value if ready else "load a model first (Load model widget)")
        self.form["strength"].enabled = self.variations

    def options(self, out=None) -> SampleOptions:
        """The job's options: the form, the class choice, the folder, the loaded model's device."""
        bundle = MODEL.require()
        target = self.target.currentText()
        classes = list(bundle.class_names) if target == ALL_CLASSES else \
            [] if target in (UNGUIDED, EACH_SOURCE, "") else [target]
        extra = {} if self.variations else {"strength": None}
        return self.form.read(classes=classes, out=out, device=str(bundle.device), **extra)

    def folder_stem(self, opts: SampleOptions) -> tuple[str, str]:
        """(what the layer shows, the sub-folder stem): ``DAB-rich-seed0``, ``all-classes-variations-seed0``."""
        target = self.target.currentText()
        what = {UNGUIDED: "unguided", ALL_CLASSES: "all classes", EACH_SOURCE: "all classes"}.get(target, target)
        tag = "-variations" if self.variations else ""
        return what, f"{what.replace(' ', '-')}{tag}-seed{opts.seed}"

    def start(self):
        try:
            bundle = MODEL.require()
            opts = self.options()
            sources = self.sources()
            what, stem = self.folder_stem(opts)
            opts.out = fresh_folder(Path(str(self.out.value)), stem)
        except Exception as e:  # noqa: BLE001
            notify_error(e, self.label_of)
            return
        from ..core.jobs.sample import sample

        self.layer, self.folder, self.state = None, opts.out, State.RUNNING
        self.name = f"{'variations' if self.variations else 'synthetic'}: {what}"
        self.worker = start_worker(sample, opts, bundle, sources, on_yield=self._event, on_done=self._done,
                                   on_error=self._failed, on_finish=self._finished)
        self._update()

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
        if self.worker is not None:
            self.state = State.CANCELLING
            self.worker.request_stop()
            self._update()

    def _event(self, event):
        if event.stage == "warning":
            notify_warning(event.message, self.label_of)
            return
        if event.total:
            self.progress.setMaximum(event.total)
            self.progress.setValue(event.step)
        if not event.data:
            return
        tiles = event.data["tiles"]
        if self.layer is None or self.layer not in self.viewer.layers:
            self.layer = self.viewer.add_image(tiles, name=self.name, rgb=True)
        else:
            self.layer.data = np.concatenate([self.layer.data, tiles])

    def _done(self, result):
        from napari.utils.notifications import show_info

        self.state = State.DONE
        records = result["records"]
        if self.layer is not None:
            self.layer.metadata["features"] = features_table(records)
            self.layer.metadata["histodiff"] = {"folder": str(self.folder), "records": records}
            self.layer.refresh()
        show_info(result["message"])

    def _failed(self, exc):
        self.state = State.FAILED
        notify_error(exc, self.label_of)

    def _finished(self):
        from napari.utils.notifications import show_info

        if self.state == State.CANCELLING:
            self.state = State.STOPPED
            show_info("sampling cancelled; the tiles shown were not saved")
        self.worker = None
        self._update()

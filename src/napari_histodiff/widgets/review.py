"""Review & export: accept / reject synthetic tiles, bulk-reject by confidence, grid view, export.

Keys on a synthetic layer: A accept, R reject, N next, P previous. Export runs the same job as
``histodiff export`` (``core.jobs.export``); its form is generated from ``ExportOptions``, and the
intent (new, append, overwrite) follows the folder: append when it already holds an export.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (QDoubleSpinBox, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton,
                            QVBoxLayout, QWidget)

from ..core.generate.export import ExportOptions
from ._common import form_row, notify_error, notify_warning, path_edit, scroll_page, start_worker
from ._forms import OptionsForm, field_edit
from ._layers import LayerCombo
from .sample import features_table

LABELS = {"out": "export folder", "samples": "synthetic layer", "threshold": "threshold (Sample widget)",
          "rule": "rule (Sample widget)", "include_real": "real tiles"}


def default_intent(folder) -> str:
    """``append`` when ``folder`` already holds an exported set (export.json), else ``new``."""
    from ..core.base.outdir import is_marked

    return "append" if is_marked(folder, "export") else "new"


def is_synthetic(layer) -> bool:
    return "histodiff" in getattr(layer, "metadata", {})


class ReviewWidget(QWidget):
    def __init__(self, napari_viewer=None):
        import napari.layers as L

        super().__init__()
        self.viewer = napari_viewer
        self.layers = LayerCombo(napari_viewer, (L.Image,), is_synthetic)
        self.current = QLabel("no synthetic layer: sample tiles with the Sample widget")
        self.current.setWordWrap(True)
        buttons = {name: QPushButton(name) for name in ("Previous", "Next", "Accept", "Reject")}
        from ..core.generate.selection import SelectionRule

        self.threshold = QDoubleSpinBox(minimum=0.0, maximum=1.0, value=SelectionRule().threshold, singleStep=0.05)
        self.threshold.setToolTip("Reject all below: reject the tiles whose confidence is below this")
        self.threshold.setMinimumWidth(70)
        self.bulk_button = QPushButton("Reject all below")
        self.grid_button = QPushButton("Grid view")
        self.counts = QLabel()
        self.out = path_edit("d", Path(tempfile.gettempdir()) / "histodiff-export",
                             tip=ExportOptions.__dataclass_fields__["out"].metadata["help"])
        self.form = OptionsForm(ExportOptions)
        self.intent = field_edit(ExportOptions, "intent")
        self.export_button = QPushButton("Export accepted tiles")
        layout = scroll_page(self)
        layers = QFormLayout()
        form_row(layers, "synthetic layer", self.layers, "a layer from the Sample widget")
        layout.addLayout(layers)
        layout.addWidget(self.current)
        grid = QGridLayout()
        for i, name in enumerate(("Previous", "Next", "Accept", "Reject")):
            grid.addWidget(buttons[name], i // 2, i % 2)
        layout.addLayout(grid)
        row = QHBoxLayout()
        row.addWidget(QLabel("confidence"))
        row.addWidget(self.threshold)
        row.addWidget(self.bulk_button)
        layout.addLayout(row)
        layout.addWidget(self.grid_button)
        layout.addWidget(self.counts)
        export = QGroupBox("export")
        self.form.add_row(LABELS["out"], self.out, at=0, wide=True)
        self.form.add_row(self.intent.label, self.intent, at=2)
        box = QVBoxLayout(export)
        box.addWidget(self.form)
        box.addWidget(self.export_button)
        layout.addWidget(export)
        layout.addStretch()
        buttons["Previous"].clicked.connect(lambda: self.move(-1))
        buttons["Next"].clicked.connect(lambda: self.move(1))
        buttons["Accept"].clicked.connect(lambda: self.decide(True))
        buttons["Reject"].clicked.connect(lambda: self.decide(False))
        self.bulk_button.clicked.connect(self.bulk_reject)
        self.grid_button.clicked.connect(self.grid_view)
        self.export_button.clicked.connect(self.export)
        self.out.changed.connect(self._folder_changed)
        self._folder_changed()
        self.layers.currentTextChanged.connect(self._layer_changed)
        if napari_viewer is not None:
            napari_viewer.dims.events.current_step.connect(lambda *_: self._show())
        self.worker = None
        self._layer_changed()

    # -- state -----------------------------------------------------------------------------
    @property
    def records(self):
        layer = self.layers.layer()
        return layer.metadata["histodiff"]["records"] if layer is not None else []

    def index(self) -> int:
        return int(self.viewer.dims.current_step[0]) if self.records else 0

    def _layer_changed(self, *_):
        layer = self.layers.layer()
        if layer is not None:
            for key, func in (("a", lambda _: self.decide(True)), ("r", lambda _: self.decide(False)),
                              ("n", lambda _: self.move(1)), ("p", lambda _: self.move(-1))):
                layer.bind_key(key, func, overwrite=True)
        self._show()

    def _sync(self) -> None:
        """Features table and sample folder follow the decisions (nothing is lost if napari closes)."""
        from ..core.formats.records import RECORDS_FILE, write_records

        layer = self.layers.layer()
        layer.metadata["features"] = features_table(self.records)
        write_records(Path(layer.metadata["histodiff"]["folder"]) / RECORDS_FILE, self.records)
        self._show()

    def _show(self):
        records = self.records
        if not records:
            self.current.setText("no synthetic layer: sample tiles with the Sample widget")
            self.counts.setText("")
            return
        i = min(self.index(), len(records) - 1)
        r = records[i]
        conf = "n/a" if r.confidence is None else f"{r.confidence:.2f}"
        decision = {True: "accepted", False: "rejected", None: "undecided"}[r.kept]
        self.current.setText(f"tile {i + 1}/{len(records)}: target {r.target_class or '-'}, predicted "
                             f"{r.predicted_class or '-'} ({conf}), <b>{decision}</b>")
        counts = Counter((r.target_class or r.predicted_class or "unguided", r.kept) for r in records)
        classes = sorted({c for c, _ in counts})
        self.counts.setText("<br>".join(f"{c}: {counts[(c, True)]} accepted, {counts[(c, False)]} rejected, "
                                        f"{counts[(c, None)]} undecided" for c in classes))

    # -- actions ---------------------------------------------------------------------------
    def move(self, step: int):
        if self.records:
            i = int(np.clip(self.index() + step, 0, len(self.records) - 1))
            self.viewer.dims.set_current_step(0, i)
            self._show()

    def decide(self, keep: bool):
        if self.records:
            self.records[min(self.index(), len(self.records) - 1)].kept = keep
            self._sync()
            self.move(1)

    def bulk_reject(self):
        t = self.threshold.value()
        for r in self.records:
            if r.confidence is not None and r.confidence < t:
                r.kept = False
        if self.records:
            self._sync()

    def grid_view(self):
        from ..core.formats.images import contact_sheet

        layer = self.layers.layer()
        if layer is None:
            return
        tiles = np.array(layer.data, copy=True)
        for k, r in enumerate(self.records):
            if r.kept is False:
                tiles[k] = tiles[k] // 3  # rejected tiles are dimmed
        name = f"grid: {layer.name}"
        sheet = contact_sheet(tiles)
        if name in self.viewer.layers:
            self.viewer.layers[name].data = sheet
        else:
            self.viewer.add_image(sheet, name=name, rgb=True)

    def label_of(self, name: str) -> str:
        if name == "intent":
            return self.intent.label
        return LABELS.get(name) or self.form.label_of(name)

    def _folder_changed(self, *_):
        self.intent.value = default_intent(Path(str(self.out.value)))

    def options(self) -> ExportOptions:
        """The job's options for the current layer's sample folder."""
        folder = self.layers.layer().metadata["histodiff"]["folder"]
        return self.form.read(samples=[Path(folder)], out=Path(str(self.out.value)), intent=self.intent.value)

    def export(self):
        from ..core.base.errors import HistodiffError
        from ..core.jobs.export import export

        layer = self.layers.layer()
        try:
            if layer is None:
                raise HistodiffError("no synthetic layer to export: sample tiles with the Sample widget first")
            if any(r.kept is None for r in self.records):
                raise HistodiffError("some tiles are undecided: accept or reject them (or use Reject all below)")
            self._sync()
            opts = self.options()
        except Exception as e:  # noqa: BLE001
            notify_error(e, self.label_of)
            return
        self.export_button.setEnabled(False)
        # the job refuses a folder that is not our own export before it writes anything
        self.worker = start_worker(export, opts, on_yield=self._event, on_done=self._exported,
                                   on_error=self._failed, on_finish=self._export_finished)

    def _event(self, event):
        if event.stage == "warning":
            notify_warning(event.message, self.label_of)

    def _failed(self, exc):
        notify_error(exc, self.label_of)

    def _export_finished(self):
        self.export_button.setEnabled(True)
        self.worker = None
        self._folder_changed()  # append from now on when the export was written

    def _exported(self, summary):
        from napari.utils.notifications import show_info

        show_info(summary["message"])

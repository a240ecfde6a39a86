"""Review & export: accept / reject synthetic tiles one by one or all at once, undo, grid view, export.

The layer under review is the selected one (napari's active layer, or the tiles behind a selected grid or
class-label layer); the panel names it and follows the selection, and the keys act on it: A accept,
R reject, N next, P previous, U undo (the buttons show them). Each tile shows its class (and decision) on
the canvas: a text layer ``classes: <layer>`` beside every layer of tiles and its grid view.
Every decision is written to the layer's sample folder (``samples.csv``) at once, through the one writer
``core.generate.review.save_decisions``, so a review survives a restart: "Open sample folder…" shows any
folder written by ``histodiff sample`` (or the Sample widget) again with its decisions. A layer only ever
writes to the tiles it shows: the folder's fingerprint is taken when the tiles are loaded and checked
before each write; a folder sampled into again, or whose ``samples.csv`` was rewritten elsewhere, is refused.

Export runs the same job as ``histodiff export`` (``core.jobs.export``) on the checked layers (or the
layer under review): one augmentation set of several classes or sample folders in one action. Its
form is generated from ``ExportOptions``; the intent (new, append, overwrite) follows the folder
(append when it already holds an export), and an overwrite asks first.

"Audit" runs the same job as ``histodiff audit`` (``core.jobs.audit``) on those layers' sample folders
against a folder of real tiles, into ``<sample folder>-audit`` beside the (first) sample folder. Each
tile then shows its similarity to its nearest real tile (``0.93 copy?`` for a near-copy); "sort by
similarity" puts the most copy-like tiles first (Next / Previous and the grid view follow that order);
"Show nearest real tile" shows the current tile's nearest real tile under the layer
(``nearest real: <layer>``, following the current tile). Export then leaves the near-copies out while
"leave out near-copies" is checked (``ExportOptions.audit``, ``keep_near_copies``); a reopened sample
folder finds its audit again when ``<folder>-audit`` covers its tiles and is newer than them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.base.errors import HistodiffError
from ..core.evaluate.audit import AuditOptions
from ..core.generate.export import ExportOptions
from ._common import (
    Job,
    JobPanel,
    activity,
    cancel_on_close,
    form_row,
    jobs_in_process,
    notify_error,
    notify_warning,
    path_edit,
    render,
    scroll_page,
)
from ._forms import OptionsForm, field_edit, output_folder
from ._layers import LayerCombo, tissue_units
from .sample import add_beside, beside, features_table, show_layer
from .settings import Remembered

LABELS = {"out": "export folder", "samples": "layers to export", "threshold": "threshold (Sample widget)",
          "rule": "rule (Sample widget)", "include_real": "real tiles", "audit": "Audit"}
UNDO_LEVELS = 200
KEYS = {"a": "accept", "r": "reject", "n": "next", "p": "previous", "u": "undo"}
NO_LAYER = "no layer to review: sample tiles with the Sample widget, or open a sample folder"
SOURCE = "histodiff_of"  # metadata of a grid or class-label layer: the name of the layer of tiles it shows
DECISION_COLORS = {True: "#66ff66", False: "#ff6666", None: "#ffff66"}  # accepted, rejected, undecided
DECISION_MARKS = {True: " ✓", False: " ✗", None: ""}
NEAREST = "nearest real: "  # + the name of the layer of tiles: its current tile's nearest real tile
AUDIT_TIP = ("audit the sample folders of the checked layers (or the layer under review) against the real tiles "
             "the model was fine-tuned on (`histodiff audit`): each tile's nearest real tile, its similarity and "
             "whether it is a near-copy; written to <sample folder>-audit beside the sample folder")


def default_intent(folder) -> str:
    """``append`` when ``folder`` already holds an exported set (export.json), else ``new``."""
    from ..core.base.outdir import is_marked

    return "append" if is_marked(folder, "export") else "new"


def is_synthetic(layer) -> bool:
    return "histodiff" in getattr(layer, "metadata", {})


def confirm(parent, title: str, text: str) -> bool:
    """Ask before anything is replaced (tests answer through ``QMessageBox.question``)."""
    answer = QMessageBox.question(parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


def tile_files(layer) -> list[str]:
    return [r.file for r in layer.metadata["histodiff"]["records"]]


def check_unchanged(layer) -> None:
    """Refuse (HistodiffError) when the sample folder behind ``layer`` is no longer the one it shows
    (``core.generate.review.check_unchanged``); a layer without a fingerprint adopts the folder when its
    ``samples.csv`` says exactly what the layer holds."""
    from ..core.generate.review import check_unchanged as check

    meta = layer.metadata["histodiff"]
    now = check(meta["folder"], meta["records"], meta.get("fingerprint"), f"layer {layer.name!r}")
    meta.setdefault("fingerprint", now)


def write_decisions(layer) -> None:
    """Write the layer's decisions through the one writer of reviewed folders (``save_decisions``)."""
    from ..core.generate.review import save_decisions

    meta = layer.metadata["histodiff"]
    meta["fingerprint"] = save_decisions(meta["folder"], meta["records"], meta.get("fingerprint"),
                                         f"layer {layer.name!r}")
    layer.metadata["features"] = features_table(meta["records"])


def tile_class(record) -> str:
    return record.target_class or record.predicted_class or "unguided"


def similarity_text(result) -> str:
    """`` 0.93 copy?`` for a near-copy, `` 0.41`` for another audited tile, nothing for a tile not audited."""
    if result is None:
        return ""
    near, sim, _ = result
    return f" {sim:.2f}" + (" copy?" if near else "")


def tile_labels(records, results=None) -> dict:
    """Per tile: its class, decision mark and audit similarity (``TUM ✓ 0.93 copy?``) and the decision's
    colour, as feature columns. ``results``: per record, its audit result (see :func:`audit_results`) or None."""
    results = results or [None] * len(records)
    return {"label": [tile_class(r) + DECISION_MARKS[r.kept] + similarity_text(a) for r, a in zip(records, results)],
            "color": [DECISION_COLORS[r.kept] for r in records]}


def audit_folder_for(folder) -> Path:
    """Where the Review tab writes the audit of a sample folder: ``<folder>-audit`` beside it."""
    from ..core.base.names import safe_name

    folder = Path(folder)
    return folder.parent / safe_name(f"{folder.name}-audit")


def audit_results(folder, audit_dir, records) -> list:
    """Per record of the sample folder ``folder``, its ``(near_copy, similarity, nearest_real)`` in the audit
    ``audit_dir`` (``core.formats.audit.read_audit``), or None for a tile the audit does not cover."""
    from ..core.formats.audit import read_audit, tile_key

    found = read_audit(audit_dir)
    return [found.get(tile_key(Path(folder) / r.file)) for r in records]


def by_similarity(results) -> list[int]:
    """Tile indices, the most copy-like first (highest similarity; tiles not audited last, in their order)."""
    return sorted(range(len(results)), key=lambda k: (results[k] is None, -(results[k] or (0, 0.0))[1], k))


def earlier_audit(folder, records):
    """``(audit folder, results)`` of ``<folder>-audit`` when it covers every tile of the folder and was
    written after them (a folder sampled into again is not covered by its old audit); else None."""
    from ..core.formats.audit import AUDIT_JSON

    audit_dir = audit_folder_for(folder)
    if not (audit_dir / AUDIT_JSON).is_file():
        return None
    try:
        results = audit_results(folder, audit_dir, records)
        written = (audit_dir / AUDIT_JSON).stat().st_mtime_ns
        newer = all((Path(folder) / r.file).stat().st_mtime_ns <= written for r in records)
    except (HistodiffError, OSError):
        return None
    return (audit_dir, results) if newer and all(a is not None for a in results) else None


def label_positions(n: int, tile_shape, grid: bool = False, pad: int = 2) -> np.ndarray:
    """Where each tile's label goes, in the data coordinates of its layer: the tile's top-left pixel in a
    stack (k, 0, 0), or its cell's top-left corner in a contact sheet (``core.formats.images.contact_sheet``)."""
    if not grid:
        return np.stack([np.arange(n), np.zeros(n), np.zeros(n)], axis=1).astype(float)
    h, w = tile_shape
    ncols = int(np.ceil(np.sqrt(n)))
    rows, cols = np.divmod(np.arange(n), ncols)
    return np.stack([pad + rows * (h + pad), pad + cols * (w + pad)], axis=1).astype(float)


class ReviewWidget(JobPanel, QWidget):
    def __init__(self, napari_viewer=None):
        import napari.layers as L

        super().__init__()
        self.viewer = napari_viewer
        self.layers = LayerCombo(napari_viewer, (L.Image,), is_synthetic)
        self.open_button = QPushButton("Open sample folder…")
        self.open_button.setToolTip("review a folder written by `histodiff sample` or the Sample widget again, "
                                    "with its decisions (samples.csv)")
        self.current = QLabel(NO_LAYER)
        self.current.setWordWrap(True)
        buttons = {"previous": QPushButton("Previous (P)"), "next": QPushButton("Next (N)"),
                   "accept": QPushButton("Accept (A)"), "reject": QPushButton("Reject (R)")}
        for key, name in KEYS.items():
            if name in buttons:
                buttons[name].setToolTip(f"{name} the current tile (key {key.upper()} on the layer)")
        self.accept_all_button = QPushButton("Accept all")
        self.accept_all_button.setToolTip("accept every tile of the layer (Undo takes it back)")
        self.reject_all_button = QPushButton("Reject all")
        self.reject_all_button.setToolTip("reject every tile of the layer (Undo takes it back)")
        self.undo_button = QPushButton("Undo (U)")
        from ..core.generate.selection import SelectionRule

        self.threshold = QDoubleSpinBox(minimum=0.0, maximum=1.0, value=SelectionRule().threshold, singleStep=0.05)
        self.threshold.setToolTip("Reject all below: reject the tiles whose confidence is below this")
        self.threshold.setMinimumWidth(70)
        self.bulk_button = QPushButton("Reject all below")
        self.bulk_button.setToolTip("reject the tiles whose confidence is below the threshold (Undo takes it back)")
        self.grid_button = QPushButton("Grid view")
        self.grid_button.setToolTip("show all tiles of the layer as one contact sheet in a new layer (rejected tiles "
                                    "dimmed)")
        self.counts = QLabel()
        self.export_list = QListWidget()
        self.export_list.setToolTip("the layers whose accepted tiles go into one set; none checked: the layer "
                                    "under review")
        self.export_list.setMaximumHeight(90)
        self.out = path_edit("d", output_folder("export"),
                             tip=ExportOptions.__dataclass_fields__["out"].metadata["help"])
        self.form = OptionsForm(ExportOptions)
        self.intent = field_edit(ExportOptions, "intent")
        self.real = path_edit("d", tip="the real tiles the model was fine-tuned on (a folder of tiles, class "
                              "sub-folders allowed): the synthetic tiles are compared with these")
        self.audit_button = QPushButton("Audit")
        self.audit_button.setToolTip(AUDIT_TIP)
        self.audit_progress = QProgressBar()
        self.audit_progress.hide()
        self.audit_status = QLabel("not audited")
        self.audit_status.setWordWrap(True)
        self.leave_out = QCheckBox("leave out near-copies")
        self.leave_out.setChecked(True)
        self.leave_out.setToolTip("Export leaves out the tiles the audit flags as near-copies of real tiles; "
                                  "unchecked, they are exported too, flagged in manifest.csv")
        self.sort_box = QCheckBox("sort by similarity")
        self.sort_box.setToolTip("Next / Previous and the grid view go through the tiles the most copy-like first "
                                 "(highest similarity to a real tile)")
        self.nearest_button = QPushButton("Show nearest real tile")
        self.nearest_button.setToolTip("show the current tile's nearest real tile under the layer (it follows the "
                                       "current tile)")
        self.report_button = QPushButton("Quality report")
        self.report_button.setToolTip("show the audit's quality report (report.html) in a panel: per class the "
                                      "kept rate, class agreement, diversity, precision and recall, the "
                                      "memorisation gap and the most copy-like tiles")
        self.export_button = QPushButton("Export accepted tiles")
        self.export_button.setToolTip("write the accepted tiles of the checked layers (or the layer under review) to "
                                      "the export folder: one sub-folder per class and manifest.csv")

        layout = scroll_page(self)
        layers = QFormLayout()
        form_row(layers, "layer to review", self.layers, "the selected layer of synthetic tiles (from the Sample "
                 "widget or a reopened folder); choosing one here selects it in the layer list")
        layout.addLayout(layers)
        layout.addWidget(self.open_button)
        layout.addWidget(self.current)
        grid = QGridLayout()
        for i, name in enumerate(("previous", "next", "accept", "reject")):
            grid.addWidget(buttons[name], i // 2, i % 2)
        grid.addWidget(self.accept_all_button, 2, 0)
        grid.addWidget(self.reject_all_button, 2, 1)
        layout.addLayout(grid)
        row = QHBoxLayout()
        row.addWidget(QLabel("confidence"))
        row.addWidget(self.threshold)
        row.addWidget(self.bulk_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.undo_button)
        row.addWidget(self.grid_button)
        layout.addLayout(row)
        layout.addWidget(self.counts)
        audit = QGroupBox("audit against real tiles")
        box = QVBoxLayout(audit)
        box.addWidget(QLabel("real tiles (fine-tuning set)"))
        box.addWidget(self.real.native)
        box.addWidget(self.audit_button)
        box.addWidget(self.audit_progress)
        box.addWidget(self.audit_status)
        row = QHBoxLayout()
        row.addWidget(self.sort_box)
        row.addWidget(self.nearest_button)
        box.addLayout(row)
        box.addWidget(self.report_button)
        box.addWidget(self.leave_out)
        layout.addWidget(audit)
        export = QGroupBox("export")
        self.form.add_row(LABELS["samples"], self.export_list, at=0, wide=True)
        self.form.set_shown("keep_near_copies", False)  # "leave out near-copies" in the audit box says it
        self.form.add_row(LABELS["out"], self.out, at=2, wide=True)
        self.form.add_row(self.intent.label, self.intent, at=4)
        box = QVBoxLayout(export)
        box.addWidget(self.form)
        box.addWidget(self.export_button)
        layout.addWidget(export)
        layout.addStretch()

        buttons["previous"].clicked.connect(lambda: self.move(-1))
        buttons["next"].clicked.connect(lambda: self.move(1))
        buttons["accept"].clicked.connect(lambda: self.decide(True))
        buttons["reject"].clicked.connect(lambda: self.decide(False))
        self.accept_all_button.clicked.connect(self.accept_all)
        self.reject_all_button.clicked.connect(self.reject_all)
        self.bulk_button.clicked.connect(self.bulk_reject)
        self.undo_button.clicked.connect(self.undo)
        self.grid_button.clicked.connect(self.grid_view)
        self.open_button.clicked.connect(lambda: self.open_folder())
        self.export_button.clicked.connect(self.export)
        self.audit_button.clicked.connect(self.audit)
        self.sort_box.toggled.connect(self._sort_changed)
        self.nearest_button.clicked.connect(lambda: self.show_nearest())
        self.report_button.clicked.connect(lambda: self.show_report())
        self.out.changed.connect(self._folder_changed)
        self._folder_changed()
        self.layers.currentTextChanged.connect(self._layer_changed)
        if napari_viewer is not None:
            napari_viewer.dims.events.current_step.connect(lambda *_: self._step_changed())
            napari_viewer.layers.events.inserted.connect(self._inserted)
            napari_viewer.layers.events.removed.connect(self._removed)
            napari_viewer.layers.selection.events.active.connect(self._active_changed)
            for layer in napari_viewer.layers:
                layer.events.metadata.connect(self._metadata_changed)
        self.job = Job(self.label_of)
        self.audit_job = Job(self.label_of, process=jobs_in_process(), title="the audit")  # trains an encoder
        self._activity = None
        cancel_on_close(self, self.job, self.audit_job)
        self.settings = Remembered("review", {"audit_real": self.real, "leave_out": self.leave_out})
        self.settings.restore()
        self._metadata_changed()

    # -- state -----------------------------------------------------------------------------
    def source_of(self, layer):
        """The layer of tiles that ``layer`` shows: itself, or the one behind a grid or class-label layer."""
        if layer is None:
            return None
        if is_synthetic(layer):
            return layer
        name = (getattr(layer, "metadata", None) or {}).get(SOURCE)
        if name and self.viewer is not None and name in self.viewer.layers and is_synthetic(self.viewer.layers[name]):
            return self.viewer.layers[name]
        return None

    def reviewed(self):
        """The layer under review: the selected one (or the tiles behind the selected grid / label layer)."""
        if self.viewer is None:
            return None
        return self.source_of(self.viewer.layers.selection.active)

    @property
    def records(self):
        layer = self.reviewed()
        return layer.metadata["histodiff"]["records"] if layer is not None else []

    def index(self) -> int:
        return min(int(self.viewer.dims.current_step[0]), len(self.records) - 1) if self.records else 0

    def _inserted(self, event):
        event.value.events.metadata.connect(self._metadata_changed)
        self._metadata_changed()

    def _removed(self, event):
        """A layer of tiles goes with its class labels."""
        name = event.value.name
        for layer in list(self.viewer.layers):
            if (layer.metadata or {}).get(SOURCE) == name and layer.name.startswith(("classes: ", NEAREST)):
                self.viewer.layers.remove(layer)
        self.layers.refresh()
        self._refresh_export_list()
        self._show()

    def _metadata_changed(self, *_):
        """A layer became (or stopped being) reviewable, e.g. when the Sample widget finished it: it gets
        the review keys and its class labels."""
        self.layers.refresh()
        self._refresh_export_list()
        if self.viewer is not None:
            for layer in list(self.viewer.layers):
                if is_synthetic(layer):
                    self._bind_keys(layer)
                    if not self._labels_of(layer):
                        self.update_labels(layer)
        self._active_changed()

    def _active_changed(self, *_):
        """The panel follows the selection: the layer list's active layer is the one under review."""
        layer = self.reviewed()
        if layer is not None and self.layers.currentText() != layer.name:
            self.layers.blockSignals(True)
            self.layers.setCurrentText(layer.name)
            self.layers.blockSignals(False)
            self._layer_changed()
            return
        if layer is None and self.layers.currentIndex() != -1:
            self.layers.blockSignals(True)
            self.layers.setCurrentIndex(-1)
            self.layers.blockSignals(False)
        self._show()

    def _bind_keys(self, layer) -> None:
        actions = {"a": lambda _: self.decide(True), "r": lambda _: self.decide(False),
                   "n": lambda _: self.move(1), "p": lambda _: self.move(-1), "u": lambda _: self.undo()}
        for key, func in actions.items():
            layer.bind_key(key, func, overwrite=True)

    # -- class labels on the canvas ---------------------------------------------------------
    def _labels_of(self, layer):
        name = f"classes: {layer.name}"
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def update_labels(self, layer, grid=None):
        """Show each tile's class and decision on the canvas: a text layer ``classes: <layer>`` over the
        tiles of ``layer`` and one over its grid view (``grid``, default: the grid if there is one)."""
        if self.viewer is None or not is_synthetic(layer):
            return
        records = layer.metadata["histodiff"]["records"]
        grid = grid if grid is not None else self.viewer.layers[f"grid: {layer.name}"] \
            if f"grid: {layer.name}" in self.viewer.layers else None
        shape = layer.data.shape[1:3]
        results = self.results(layer)
        order = self.order(layer)  # the grid shows the tiles in this order
        for target, positions, labels in (
                (layer, label_positions(len(records), shape), tile_labels(records, results)),
                (grid, label_positions(len(records), shape, grid=True),
                 tile_labels([records[k] for k in order], [results[k] for k in order]))):
            if target is None:
                continue
            self._label_layer(target, layer.name, positions[: len(records)], labels)

    def _label_layer(self, target, source: str, positions, features):
        import pandas as pd

        name = f"classes: {target.name}"
        if name in self.viewer.layers:
            labels = self.viewer.layers[name]
            labels.data = positions
            labels.features = pd.DataFrame(features)
            labels.scale, labels.translate = target.scale, target.translate
            labels.refresh()
            return labels
        active = self.viewer.layers.selection.active
        labels = self.viewer.add_points(
            positions, ndim=positions.shape[1], name=name, features=pd.DataFrame(features), size=1,
            face_color="transparent", border_width=0, scale=target.scale, translate=target.translate,
            units=target.units, metadata={SOURCE: source}, out_of_slice_display=False,
            text={"string": "{label}", "color": {"feature": "color"}, "anchor": "upper_left", "size": 10})
        labels.editable = False
        self._bind_keys(labels)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active  # the labels never take the selection
        return labels

    def _refresh_export_list(self):
        checked = set(self.checked_layer_names())
        names = [self.layers.itemText(i) for i in range(self.layers.count())]
        self.export_list.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in checked else Qt.CheckState.Unchecked)
            self.export_list.addItem(item)

    def checked_layer_names(self) -> list[str]:
        items = (self.export_list.item(i) for i in range(self.export_list.count()))
        return [it.text() for it in items if it.checkState() == Qt.CheckState.Checked]

    def check_for_export(self, *names: str) -> None:
        """Check these layers (and uncheck the others) in the export list."""
        for i in range(self.export_list.count()):
            item = self.export_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    def _layer_changed(self, *_):
        """The layer chosen in the panel becomes the selected layer (the one under review)."""
        if self.layers.refreshing:  # the list was rebuilt: the selection decides
            self._active_changed()
            return
        layer = self.layers.layer()
        if layer is not None:
            shown = self.source_of(self.viewer.layers.selection.active)
            if shown is None or shown.name != layer.name:  # by name: plugins get proxies of the layers
                self.viewer.layers.selection.active = layer
            self._bind_keys(layer)
            try:  # a layer without a fingerprint adopts its folder as early as possible
                if "fingerprint" not in layer.metadata["histodiff"]:
                    check_unchanged(layer)
            except HistodiffError:
                pass  # refused at the first write, with the reason
        self._refresh_export_list()
        self._show()

    def _undo_stack(self, layer) -> list:
        return layer.metadata["histodiff"].setdefault("undo", [])

    def _no_layer_text(self) -> str:
        active = self.viewer.layers.selection.active if self.viewer is not None else None
        if not self.layers.count():
            return NO_LAYER
        if active is None:
            return "select a layer of synthetic tiles in the layer list to review it"
        if active.name.startswith(("synthetic: ", "variations: ")):
            return f"the selected layer {active.name!r} is still being sampled: review it when it is done"
        return (f"the selected layer {active.name!r} holds no synthetic tiles: select one in the layer list (or "
                "here) to review it")

    def _show(self):
        from html import escape

        layer = self.reviewed()
        records = self.records
        stack = self._undo_stack(layer) if layer is not None else []
        self.undo_button.setEnabled(bool(stack))
        self.undo_button.setToolTip(f"undo: {stack[-1]['what']} (key U on the layer)" if stack else "nothing to undo")
        audited = layer is not None and self.audit_of(layer) is not None
        self.sort_box.setEnabled(audited)
        self.nearest_button.setEnabled(audited)
        self.report_button.setEnabled(self.report_file(layer) is not None)
        if not self.audit_job.busy:
            self.audit_status.setText(self._audit_text(layer))
        if not records:
            self.current.setText(self._no_layer_text())
            self.counts.setText("")
            return
        i = self.index()
        r = records[i]
        conf = "n/a" if r.confidence is None else f"{r.confidence:.2f}"
        decision = {True: "accepted", False: "rejected", None: "undecided"}[r.kept]
        self.current.setText(f"reviewing <b>{escape(layer.name)}</b><br>tile {i + 1}/{len(records)}: target "
                             f"{r.target_class or '-'}, predicted {r.predicted_class or '-'} ({conf}), "
                             f"<b>{decision}</b>" + self._similarity_line(layer, i))
        counts = Counter((r.target_class or r.predicted_class or "unguided", r.kept) for r in records)
        classes = sorted({c for c, _ in counts})
        self.counts.setText("<br>".join(f"{c}: {counts[(c, True)]} accepted, {counts[(c, False)]} rejected, "
                                        f"{counts[(c, None)]} undecided" for c in classes))

    # -- review actions ----------------------------------------------------------------------
    def _review(self, what: str, change) -> bool:
        """Apply ``change(records)`` to the layer under review and write it; one undo level. When the
        folder is no longer the layer's, nothing changes (in memory or on disk) and the reason is shown."""
        layer = self.reviewed()
        if layer is None or not self.records:
            return False
        records = self.records
        before = [r.kept for r in records]
        change(records)
        if [r.kept for r in records] == before:
            self._show()
            return True
        if not self._write(layer, records, before):
            return False
        stack = self._undo_stack(layer)
        stack.append({"what": what, "kept": before, "index": self.index()})
        del stack[:-UNDO_LEVELS]
        self.update_labels(layer)
        self._show()
        return True

    def _write(self, layer, records, restore) -> bool:
        """Write the layer's decisions; if that is refused, put back ``restore`` and say why."""
        try:
            write_decisions(layer)
        except Exception as e:  # noqa: BLE001
            for r, kept in zip(records, restore):
                r.kept = kept
            notify_error(e, self.label_of)
            return False
        return True

    def move(self, step: int):
        """To the next (``step`` 1) or previous (-1) tile, in the order shown (:meth:`order`)."""
        if self.records:
            order = self.order(self.reviewed())
            at = order.index(self.index())
            self.viewer.dims.set_current_step(0, order[int(np.clip(at + step, 0, len(order) - 1))])
            self._show()

    def decide(self, keep: bool):
        if not self.records:
            return
        i = self.index()

        def change(records):
            records[i].kept = keep

        if self._review(f"{'accept' if keep else 'reject'} tile {i + 1}", change):
            self.move(1)

    def _set_all(self, keep: bool, what: str, which=lambda r: True):
        def change(records):
            for r in records:
                if which(r):
                    r.kept = keep

        self._review(what, change)

    def accept_all(self):
        self._set_all(True, "accept all")

    def reject_all(self):
        self._set_all(False, "reject all")

    def bulk_reject(self):
        t = self.threshold.value()
        self._set_all(False, f"reject below {t:.2f}", lambda r: r.confidence is not None and r.confidence < t)

    def undo(self):
        """Take back the last review action on the layer under review (several levels)."""
        layer = self.reviewed()
        stack = self._undo_stack(layer) if layer is not None else []
        if not stack:
            return
        entry = stack[-1]
        records = self.records
        now = [r.kept for r in records]
        for r, kept in zip(records, entry["kept"]):
            r.kept = kept
        if not self._write(layer, records, now):
            return
        stack.pop()
        self.update_labels(layer)
        self.viewer.dims.set_current_step(0, entry["index"])
        self._show()

    def grid_view(self):
        from ..core.formats.images import contact_sheet

        layer = self.reviewed()
        if layer is None:
            return
        tiles = np.array(layer.data, copy=True)
        for k, r in enumerate(self.records):
            if r.kept is False:
                tiles[k] = tiles[k] // 3  # rejected tiles are dimmed
        name = f"grid: {layer.name}"
        sheet = contact_sheet(tiles[self.order(layer)])  # sorted by similarity when asked
        labels = f"classes: {name}"
        if name in self.viewer.layers:  # placed again: beside every other layer, never over the tissue
            grid = self.viewer.layers[name]
            grid.data = sheet
            place = beside(self.viewer, exclude=(name, labels), scale=layer.scale)
            grid.scale, grid.translate = place["scale"], place["translate"]
        else:
            place = beside(self.viewer, scale=layer.scale)
            grid = self.viewer.add_image(sheet, name=name, rgb=True, metadata={SOURCE: layer.name},
                                         units=tissue_units(self.viewer, 2), **place)
            self._bind_keys(grid)
        self.update_labels(layer, grid)
        self.viewer.layers.selection.active = grid  # the grid's layer stays the one under review
        show_layer(self.viewer, grid)
        return grid

    # -- audit against real tiles ------------------------------------------------------------
    def audit_of(self, layer):
        """The audit shown for ``layer`` (``{"folder", "results"}``), or None."""
        return layer.metadata["histodiff"].get("audit") if layer is not None and is_synthetic(layer) else None

    def results(self, layer) -> list:
        """Per tile of ``layer``: its audit result ``(near_copy, similarity, nearest_real)`` or None."""
        found = self.audit_of(layer)
        n = len(layer.metadata["histodiff"]["records"])
        return list(found["results"]) if found is not None else [None] * n

    def order(self, layer) -> list[int]:
        """The order the tiles are gone through and shown in the grid: the most copy-like first when
        "sort by similarity" is checked and the layer was audited, else the layer's."""
        n = len(layer.metadata["histodiff"]["records"]) if layer is not None else 0
        if self.sort_box.isChecked() and self.audit_of(layer) is not None:
            return by_similarity(self.results(layer))
        return list(range(n))

    def attach_audit(self, layer, audit_dir, results=None) -> None:
        """Show the audit ``audit_dir`` on ``layer``: similarities on its tiles, sorting, nearest real tiles,
        and Export leaving its near-copies out."""
        meta = layer.metadata["histodiff"]
        if results is None:
            results = audit_results(meta["folder"], audit_dir, meta["records"])
        meta["audit"] = {"folder": str(audit_dir), "results": results}
        self.update_labels(layer)
        if self._grid_of(layer) is not None and self.sort_box.isChecked():
            self._refill_grid(layer)
        self._show()

    def _audit_text(self, layer) -> str:
        found = self.audit_of(layer)
        if layer is None:
            return ""
        if found is None:
            return f"{layer.name!r} not audited: Export cannot tell near-copies of real tiles"
        results = [a for a in found["results"] if a is not None]
        copies = sum(a[0] for a in results)
        return (f"{copies} of {len(results)} tiles are near-copies of real tiles (audit: {found['folder']})"
                + ("" if len(results) == len(found["results"]) else
                   f"; {len(found['results']) - len(results)} tiles not in the audit: audit again"))

    def _similarity_line(self, layer, i: int) -> str:
        from html import escape

        found = self.audit_of(layer)
        result = found["results"][i] if found is not None else None
        if result is None:
            return ""
        near, sim, nearest = result
        return (f"<br>similarity {sim:.2f} to its nearest real tile {escape(Path(nearest).name)}"
                + (": <b>near-copy</b>" if near else ""))

    def _grid_of(self, layer):
        name = f"grid: {layer.name}"
        return self.viewer.layers[name] if self.viewer is not None and name in self.viewer.layers else None

    def _refill_grid(self, layer) -> None:
        """The grid view of ``layer`` again, in the order asked, without moving the selection."""
        active = self.viewer.layers.selection.active
        self.grid_view()
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def _sort_changed(self, *_):
        layer = self.reviewed()
        if layer is None:
            return
        self.update_labels(layer)
        if self._grid_of(layer) is not None:
            self._refill_grid(layer)
        if self.sort_box.isChecked() and self.audit_of(layer) is not None:
            self.viewer.dims.set_current_step(0, self.order(layer)[0])  # the most copy-like first
        self._show()

    def _step_changed(self):
        self._show()
        layer = self.reviewed()
        if layer is not None and f"{NEAREST}{layer.name}" in self.viewer.layers:
            try:
                self.show_nearest(quiet=True)  # the nearest real tile follows the current tile
            except Exception:  # noqa: BLE001 - shown when asked with the button
                pass

    def show_nearest(self, quiet: bool = False):
        """Show the current tile's nearest real tile under its layer (an Image layer ``nearest real: <layer>``
        with the tiles' scale and units); returns it. ``quiet``: raise instead of showing the error."""
        from ..core.data.tiles import read_rgb

        layer = self.reviewed()
        try:
            found = self.audit_of(layer)
            if found is None:
                raise HistodiffError("no audit for this layer: choose the real tiles and press Audit first")
            result = found["results"][self.index()]
            if result is None:
                raise HistodiffError(f"tile {self.index() + 1} is not in the audit {found['folder']}: audit again")
            nearest = Path(result[2])
            if not nearest.is_file():
                raise HistodiffError(f"the nearest real tile {nearest} is not an image file here (moved, or inside "
                                     "a shard or slide): open it from where the audit found it")
            tile = read_rgb(nearest)
        except Exception as e:  # noqa: BLE001
            if quiet:
                raise
            notify_error(e, self.label_of)
            return None
        name = f"{NEAREST}{layer.name}"
        (sy, sx), (ty, tx) = layer.scale[-2:], layer.translate[-2:]
        height = layer.data.shape[1] * sy
        place = {"scale": (sy, sx), "translate": (ty + height + max(0.1 * height, 8 * abs(sy)), tx)}  # under it
        if name in self.viewer.layers:
            shown = self.viewer.layers[name]
            shown.data = tile
            shown.scale, shown.translate = place["scale"], place["translate"]
        else:
            active = self.viewer.layers.selection.active
            shown = self.viewer.add_image(tile, name=name, rgb=True, units=layer.units[-2:],
                                          metadata={SOURCE: layer.name}, **place)
            self._bind_keys(shown)
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
        shown.metadata["nearest"] = str(nearest)
        return shown

    def audit(self):
        """Audit the sample folders of the checked layers (or the layer under review) against the real tiles,
        in the background, into ``<first sample folder>-audit``."""
        if self.audit_job.busy:
            self.audit_job.cancel()  # the button reads "Cancel audit" meanwhile
            return
        from ..core.base.outdir import is_marked
        from ..core.jobs.audit import audit

        try:
            layers = self.export_layers()
            if not layers:
                raise HistodiffError("no layer to audit: sample tiles with the Sample widget or open a sample "
                                     "folder first")
            real = self.real.line_edit.native.text().strip()
            if not real:
                raise HistodiffError("choose the folder of real tiles the model was fine-tuned on (real tiles) "
                                     "before auditing")
            folders = list(dict.fromkeys(Path(layer.metadata["histodiff"]["folder"]) for layer in layers))
            out = audit_folder_for(folders[0])
            opts = AuditOptions(samples=folders, against=[Path(real)], out=out,
                                intent="overwrite" if is_marked(out, "audit") else "new")
            opts.validate()
        except Exception as e:  # noqa: BLE001
            notify_error(e, self.label_of)
            return
        self.settings.save()
        self._audited_layers, self._audit_out = [layer.name for layer in layers], out
        self.audit_button.setText("Cancel audit")
        self.audit_progress.setValue(0)
        self.audit_progress.show()
        self.audit_status.setText(f"auditing {len(folders)} sample folder(s) against {real}…")
        self._activity = activity("histodiff audit", 1, self.audit_job.cancel)
        self._stage = None
        self.audit_job.start(audit, opts, on_yield=self._audit_event, on_done=self._audit_done,
                             on_finish=self._audit_finished, on_release=self._activity.close)

    def _audit_event(self, event):
        if event.stage == "warning":
            notify_warning(event.message, self.label_of)
            return
        if not event.total:
            return
        self.audit_progress.setMaximum(event.total)
        self.audit_progress.setValue(event.step)
        self.audit_status.setText(f"audit: {event.stage} {event.step}/{event.total}")
        bar = self._activity  # napari's bar processes pending events (the end of the run too) as it updates
        if bar is not None:
            if event.stage != self._stage:
                self._stage = event.stage
                bar.n, bar.total = 0, event.total
                bar.set_description(f"histodiff audit: {event.stage}")
            if event.step > bar.n:
                bar.update(event.step - bar.n)

    def _audit_done(self, summary):
        from napari.utils.notifications import show_info

        for name in self._audited_layers:
            if name in self.viewer.layers and is_synthetic(self.viewer.layers[name]):
                self.attach_audit(self.viewer.layers[name], self._audit_out)
        show_info(render(summary["message"], self.label_of) + " (Quality report: the report of the audit)")

    def report_file(self, layer=None):
        """The quality report of ``layer``'s audit (default: the layer under review), or None."""
        layer = self.reviewed() if layer is None else layer
        found = self.audit_of(layer) if layer is not None else None
        path = Path(found["folder"]) / "report.html" if found else None
        return path if path is not None and path.is_file() else None

    def show_report(self):
        """The quality report of the reviewed layer's audit, in its own panel."""
        from .report import show_report

        path = self.report_file()
        if path is not None and self.viewer is not None:
            try:
                show_report(self.viewer, path)
            except (OSError, UnicodeDecodeError) as e:
                notify_error(HistodiffError(f"cannot show the quality report {path}: {e}; open it in a browser"))

    def _audit_finished(self):
        self.audit_button.setText("Audit")
        self.audit_progress.hide()
        self._activity = None
        self._show()
        if self.audit_job.state.name == "STOPPED":
            self.audit_status.setText("audit cancelled; nothing was written")

    # -- sample folders ----------------------------------------------------------------------
    def open_folder(self, folder=None):
        """Show a sample folder (``histodiff sample``) as a layer to review, with its decisions; returns the layer."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Open sample folder", str(Path.home()))
            if not folder:
                return None
        folder = Path(folder)
        try:
            from ..core.generate.review import open_sample_folder

            tiles, records, fingerprint = open_sample_folder(folder)
        except Exception as e:  # noqa: BLE001
            notify_error(e, self.label_of)
            return None
        meta = {"folder": str(folder), "records": records, "fingerprint": fingerprint}
        earlier = earlier_audit(folder, records)
        if earlier is not None:  # its audit, when it still covers these tiles
            meta["audit"] = {"folder": str(earlier[0]), "results": earlier[1]}
        layer = add_beside(self.viewer, tiles, name=f"review: {folder.name}", metadata={
            "features": features_table(records), "histodiff": meta})
        self.viewer.layers.selection.active = layer
        self._metadata_changed()
        self.viewer.dims.set_current_step(0, 0)
        show_layer(self.viewer, layer)
        self._show()
        return layer

    # -- export ------------------------------------------------------------------------------
    def label_of(self, name: str) -> str:
        if name == "intent":
            return self.intent.label
        return LABELS.get(name) or self.form.label_of(name)

    def _folder_changed(self, *_):
        self.intent.value = default_intent(Path(str(self.out.value)))

    def export_layers(self) -> list:
        """The checked layers, or the layer under review when none is checked."""
        names = self.checked_layer_names()
        if not names:
            return [self.reviewed()] if self.reviewed() is not None else []
        return [self.viewer.layers[n] for n in names if n in self.viewer.layers]

    def options(self, layers=None) -> ExportOptions:
        """The job's options for the sample folders of ``layers`` (default: :meth:`export_layers`)."""
        layers = self.export_layers() if layers is None else layers
        folders = [Path(layer.metadata["histodiff"]["folder"]) for layer in layers]
        audits = list(dict.fromkeys(Path(self.audit_of(layer)["folder"]) for layer in layers
                                    if self.audit_of(layer) is not None))
        return self.form.read(samples=folders, out=Path(str(self.out.value)), intent=self.intent.value,
                              audit=audits, keep_near_copies=not self.leave_out.isChecked())

    def export(self):
        if self.job.busy:
            return
        from ..core.base.outdir import is_marked
        from ..core.jobs.export import export

        layers = self.export_layers()
        try:
            if not layers:
                raise HistodiffError("no layer to export: sample tiles with the Sample widget or open a sample "
                                     "folder first")
            opts = self.options(layers)
            for layer in layers:
                check_unchanged(layer)  # the set gets the tiles that were reviewed, or nothing
                if opts.only_kept and any(r.kept is None for r in layer.metadata["histodiff"]["records"]):
                    raise HistodiffError(f"some tiles of layer {layer.name!r} are undecided: accept or reject them "
                                         "(or use Accept all / Reject all below)")
            unaudited = [layer.name for layer in layers if self.audit_of(layer) is None]
            if opts.audit and unaudited:  # the others' near-copies are left out, these are not screened
                notify_warning(f"layer(s) {', '.join(unaudited)} not audited: their near-copies of real tiles (if "
                               "any) are exported; press Audit with them checked first", self.label_of)
        except Exception as e:  # noqa: BLE001
            notify_error(e, self.label_of)
            return
        if opts.intent == "overwrite" and is_marked(opts.out, "export") and not confirm(
                self, "Replace the exported set?",
                f"{opts.out} holds an exported set. Replace it with the tiles of {len(layers)} layer(s)?\n"
                "(Choose intent \"append\" to add to it instead.)"):
            return
        self.export_button.setEnabled(False)
        # the job refuses a folder that is not our own export before it writes anything
        self.job.start(export, opts, on_yield=self._event, on_done=self._exported,
                       on_finish=self._export_finished)

    def _event(self, event):
        if event.stage == "warning":
            notify_warning(event.message, self.label_of)

    def _export_finished(self):
        self.export_button.setEnabled(True)
        self._folder_changed()  # append from now on when the export was written

    def _exported(self, summary):
        from napari.utils.notifications import show_info

        show_info(render(summary["message"], self.label_of))

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
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
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
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.base.errors import HistodiffError
from ..core.generate.export import ExportOptions
from ._common import (
    Job,
    JobPanel,
    cancel_on_close,
    form_row,
    notify_error,
    notify_warning,
    path_edit,
    scroll_page,
)
from ._forms import OptionsForm, field_edit, output_folder
from ._layers import LayerCombo, tissue_units
from .sample import add_beside, beside, features_table, show_layer

LABELS = {"out": "export folder", "samples": "layers to export", "threshold": "threshold (Sample widget)",
          "rule": "rule (Sample widget)", "include_real": "real tiles"}
UNDO_LEVELS = 200
KEYS = {"a": "accept", "r": "reject", "n": "next", "p": "previous", "u": "undo"}
NO_LAYER = "no layer to review: sample tiles with the Sample widget, or open a sample folder"
SOURCE = "histodiff_of"  # metadata of a grid or class-label layer: the name of the layer of tiles it shows
DECISION_COLORS = {True: "#66ff66", False: "#ff6666", None: "#ffff66"}  # accepted, rejected, undecided
DECISION_MARKS = {True: " ✓", False: " ✗", None: ""}


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


def tile_labels(records) -> dict:
    """Per tile: its class and decision mark (``TUM ✓``) and the decision's colour, as feature columns."""
    return {"label": [tile_class(r) + DECISION_MARKS[r.kept] for r in records],
            "color": [DECISION_COLORS[r.kept] for r in records]}


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
        export = QGroupBox("export")
        self.form.add_row(LABELS["samples"], self.export_list, at=0, wide=True)
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
        self.out.changed.connect(self._folder_changed)
        self._folder_changed()
        self.layers.currentTextChanged.connect(self._layer_changed)
        if napari_viewer is not None:
            napari_viewer.dims.events.current_step.connect(lambda *_: self._show())
            napari_viewer.layers.events.inserted.connect(self._inserted)
            napari_viewer.layers.events.removed.connect(self._removed)
            napari_viewer.layers.selection.events.active.connect(self._active_changed)
            for layer in napari_viewer.layers:
                layer.events.metadata.connect(self._metadata_changed)
        self.job = Job(self.label_of)
        cancel_on_close(self, self.job)
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
            if (layer.metadata or {}).get(SOURCE) == name and layer.name.startswith("classes: "):
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
        for target, positions in ((layer, label_positions(len(records), shape)),
                                  (grid, label_positions(len(records), shape, grid=True))):
            if target is None:
                continue
            self._label_layer(target, layer.name, positions[: len(records)], tile_labels(records))

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
                             f"<b>{decision}</b>")
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
        if self.records:
            i = int(np.clip(self.index() + step, 0, len(self.records) - 1))
            self.viewer.dims.set_current_step(0, i)
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
        sheet = contact_sheet(tiles)
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
        layer = add_beside(self.viewer, tiles, name=f"review: {folder.name}", metadata={
            "features": features_table(records),
            "histodiff": {"folder": str(folder), "records": records, "fingerprint": fingerprint}})
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
        return self.form.read(samples=folders, out=Path(str(self.out.value)), intent=self.intent.value)

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

        show_info(summary["message"])

"""Annotate: the class table (name, colour) of an annotation layer, so classes are named in the plugin.

The table follows the active Shapes, Points or Labels layer (or the one chosen in its layer list) and
keeps the classes where the tile extraction (``_layers.extraction``) reads them:

- Shapes and Points: each item's class is its ``class`` feature (else ``name``; see
  ``_layers.class_column``). A row is a class; its colour is kept in ``layer.metadata["class_colors"]``
  (class -> ``#rrggbb``; the GeoJSON reader fills it with QuPath's colours), and items of the class are
  drawn in it (edge = the colour QuPath gets back from the GeoJSON writer; shapes filled see-through, also
  those drawn after a recolouring) and its name is written on the canvas (napari ``text``). "Assign
  selected" gives the selected shapes or points a class (feature and colour); renaming renames every item
  of the class. The class name is kept as it is: folders made from it go through ``core.base.names.safe_name``.
- Labels: a row is a label value; its name is the layer's ``class`` feature for that value (features
  ``index`` = value, ``class`` = name), which the extraction uses instead of ``class <value>``; its
  colour is the layer's own colour of that value. Selecting a row makes it the value to paint with.

The functions below work on napari layers without Qt (the panel is a thin view on them)."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (QAbstractButton, QAbstractItemView, QColorDialog, QHBoxLayout, QHeaderView,
                            QInputDialog, QLabel, QPushButton, QTableWidget, QTableWidgetItem, QWidget)

from ..core.base.errors import HistodiffError
from ._common import notify_error, scroll_page
from ._forms import tooltip
from ._layers import CLASS_COLUMNS, LayerCombo, _unique, class_column

COLORS_KEY = "class_colors"  # layer.metadata: class name -> "#rrggbb" (Shapes and Points)
FACE_ALPHA = 0.3  # shapes are filled see-through (as the GeoJSON reader draws them)
LABEL_SCAN = 1 << 26  # label images up to this many pixels are scanned for their values
TEXT = {"color": "white", "size": 10, "anchor": "center"}  # class names on the canvas


def _palette():
    from .._reader import PALETTE

    return ["#" + "".join(f"{v:02x}" for v in rgb) for rgb in PALETTE]


def hex_of(color) -> str:
    """Any napari / Qt colour (name, ``#rrggbb``, RGB(A) 0-1) -> ``#rrggbb``."""
    if isinstance(color, QColor):
        return color.name()
    from napari.utils.colormaps.standardize_color import transform_color

    rgb = transform_color(color)[0][:3]
    return "#" + "".join(f"{int(round(float(v) * 255)):02x}" for v in rgb)


def rgba(hex_color: str, alpha: float = 1.0) -> np.ndarray:
    c = QColor(hex_color)
    return np.array([c.redF(), c.greenF(), c.blueF(), alpha])


def _swatch(hex_color: str) -> QIcon:
    """A square of the colour (shown on the colour cell, where the highlight of a selected row would hide
    the cell's background)."""
    pixmap = QPixmap(14, 14)
    pixmap.fill(QColor(hex_color))
    return QIcon(pixmap)


def is_labels(layer) -> bool:
    import napari.layers as L

    return isinstance(layer, L.Labels)


def _edge_attr(layer) -> str:
    return "border_color" if hasattr(layer, "border_color") else "edge_color"  # Points: border


def _text(v) -> str:
    return "" if v is None or v != v else str(v).strip()  # NaN -> ""


def show_class_names(layer) -> bool:
    """Write each shape's or point's class on the canvas (napari ``text`` from the class feature), unless
    the layer already shows a text of its own; returns whether the class names are shown."""
    column = class_column(layer)
    if column is None or is_labels(layer):
        return False
    string = layer.text.string
    wanted = "{" + column + "}"
    if getattr(string, "format", None) == wanted:
        return True
    constant = getattr(string, "constant", None)
    if constant is None or str(np.asarray(constant)) != "":
        return False  # a text the user chose
    layer.text = {"string": wanted, **TEXT}
    return True


# -- Shapes and Points ----------------------------------------------------------------------------

def item_classes(layer) -> list[str]:
    """The class of each shape or point, as the extraction reads it ("" where none)."""
    column = class_column(layer)
    if column is None:
        return [""] * len(layer.data)
    return [_text(v) for v in layer.features[column]]


def _set_item_classes(layer, classes: list[str]) -> None:
    feats = layer.features.copy()
    column = class_column(layer) or CLASS_COLUMNS[0]
    feats[column] = np.asarray(classes, dtype=object)
    layer.features = feats


def _member_color(layer, members) -> str | None:
    """The colour the members of a class share (Shapes: edge, Points: face), None if they differ."""
    colors = np.asarray(layer.edge_color if not hasattr(layer, "border_color") else layer.face_color)
    if not len(members) or len(colors) <= max(members):
        return None
    found = {hex_of(colors[k]) for k in members}
    color = found.pop() if len(found) == 1 else None
    return None if color is None or len({color[1:].upper()[i : i + 2] for i in (0, 2, 4)}) == 1 else color


def class_colors(layer) -> dict[str, str]:
    """Class -> colour of a Shapes or Points layer: the stored colours, then the colour the items of a
    class share (if no other class has it), then an unused palette colour. Stored back into the metadata
    (so the colours stay the same, and classes without items are kept)."""
    stored = dict((layer.metadata or {}).get(COLORS_KEY) or {})
    classes = item_classes(layer)
    names = [c for c in dict.fromkeys(classes) if c]
    out = {name: stored[name] for name in stored}
    members = {n: [k for k, c in enumerate(classes) if c == n] for n in names if n not in out}
    shared = {n: _member_color(layer, m) for n, m in members.items()}
    taken = list(shared.values())
    for n in members:
        color = shared[n]
        if color is not None and taken.count(color) == 1 and color not in out.values():  # not napari's grey
            out[n] = color
    spare = [c for c in _palette() if c not in out.values()] or _palette()
    for n in members:
        if n not in out:
            out[n] = spare.pop(0) if spare else "#ffffff"
    if out != stored:
        layer.metadata = {**(layer.metadata or {}), COLORS_KEY: out}
    return out


def _paint(layer, members, color: str) -> None:
    """Draw items ``members`` in ``color`` (Shapes: see-through face, opaque edge; Points: both)."""
    if not len(members):
        return
    members = list(members)
    face = np.array(layer.face_color, dtype=float)
    face[members] = rgba(color, _face_alpha(layer))
    layer.face_color = face
    attr = _edge_attr(layer)
    edge = np.array(getattr(layer, attr), dtype=float)
    edge[members] = rgba(color, 1.0)
    setattr(layer, attr, edge)


def see_through(layer) -> None:
    """Shapes are filled see-through (at most FACE_ALPHA opaque), those drawn next too: the tissue stays
    visible under the annotations. Colours are kept."""
    if hasattr(layer, "border_color") or is_labels(layer):
        return  # Points and Labels: as they are
    face = np.array(layer.face_color, dtype=float)
    if len(face) and (face[:, 3] > FACE_ALPHA).any():
        face[:, 3] = np.minimum(face[:, 3], FACE_ALPHA)
        selected = layer.selected_data
        layer.selected_data = set()
        layer.face_color = face
        layer.selected_data = selected
    current = np.array(rgba_of(layer.current_face_color), dtype=float)
    if current[3] > FACE_ALPHA:
        current[3] = FACE_ALPHA
        selected = layer.selected_data
        layer.selected_data = set()  # napari gives the current colour to the selected shapes
        layer.current_face_color = current
        layer.selected_data = selected


def rgba_of(color) -> np.ndarray:
    from napari.utils.colormaps.standardize_color import transform_color

    return transform_color(color)[0]


def _face_alpha(layer) -> float:
    return 1.0 if hasattr(layer, "border_color") else FACE_ALPHA  # Points: opaque; Shapes: see-through


def _drawing_class(layer) -> str | None:
    """The class new shapes or points get (the layer's feature default), None when none."""
    column = class_column(layer) or CLASS_COLUMNS[0]
    defaults = layer.feature_defaults
    if column not in defaults or not len(defaults):
        return None
    return _text(defaults[column].iloc[0]) or None


def add_class(layer, name: str, color: str | None = None) -> str:
    """A new class (no items yet); returns its colour. For Labels: see :func:`add_label`."""
    name = _check_name(name)
    colors = class_colors(layer)
    if name in colors:
        raise HistodiffError(f"class {name!r} already exists; choose another name.")
    color = color or next((c for c in _palette() if c not in colors.values()), "#ffffff")
    layer.metadata = {**layer.metadata, COLORS_KEY: {**colors, name: hex_of(color)}}
    return colors.get(name, hex_of(color))


def assign_selected(layer, name: str) -> list[int]:
    """Give the selected shapes or points class ``name`` (feature and colour); returns their indices.
    New shapes or points drawn afterwards get this class too."""
    name = _check_name(name)
    chosen = sorted(int(k) for k in layer.selected_data)
    if not chosen:
        raise HistodiffError(f"nothing is selected in {layer.name!r}: select shapes or points first (the "
                             "selection tool, arrow icon in the layer controls), then Assign selected.")
    colors = class_colors(layer)
    if name not in colors:
        add_class(layer, name)
        colors = class_colors(layer)
    classes = item_classes(layer)
    for k in chosen:
        classes[k] = name
    _set_item_classes(layer, classes)
    _paint(layer, chosen, colors[name])
    draw_with(layer, name)
    return chosen


def draw_with(layer, name: str) -> None:
    """New shapes or points get class ``name`` and its colour (selected items are left as they are)."""
    column = class_column(layer) or CLASS_COLUMNS[0]
    if column not in layer.features:
        return
    defaults = layer.feature_defaults
    layer.feature_defaults = {**({k: defaults[k].iloc[0] for k in defaults} if len(defaults) else {}), column: name}
    if not len(layer.selected_data):  # napari applies current colours to the selected items
        color = class_colors(layer).get(name)
        if color:
            layer.current_face_color = rgba(color, _face_alpha(layer))  # new shapes: see-through too
            setattr(layer, f"current_{_edge_attr(layer)}", color)
    show_class_names(layer)


def rename_class(layer, old: str, new: str) -> int:
    """Rename class ``old`` to ``new`` on every item of it (to an existing name: the classes merge);
    returns the number of items renamed."""
    new = _check_name(new)
    colors = class_colors(layer)
    if old not in colors:
        raise HistodiffError(f"no class {old!r} in {layer.name!r}.")
    if new == old:
        return 0
    classes = item_classes(layer)
    members = [k for k, c in enumerate(classes) if c == old]
    if members:
        _set_item_classes(layer, [new if c == old else c for c in classes])
    renamed = {(new if k == old else k): v for k, v in colors.items() if not (k == new and new in colors)}
    if new in colors:  # merged into an existing class: its items take that class's colour
        renamed[new] = colors[new]
        _paint(layer, members, colors[new])
    layer.metadata = {**layer.metadata, COLORS_KEY: renamed}
    column = class_column(layer)
    defaults = layer.feature_defaults
    if column and column in defaults and len(defaults) and _text(defaults[column].iloc[0]) == old:
        draw_with(layer, new)
    return len(members)


def recolor_class(layer, name: str, color) -> None:
    """Class ``name`` and its items get ``color``."""
    colors = class_colors(layer)
    if name not in colors:
        raise HistodiffError(f"no class {name!r} in {layer.name!r}.")
    layer.metadata = {**layer.metadata, COLORS_KEY: {**colors, name: hex_of(color)}}
    _paint(layer, [k for k, c in enumerate(item_classes(layer)) if c == name], hex_of(color))
    if _drawing_class(layer) == name:  # shapes drawn next get the new colour as well
        selected = layer.selected_data
        layer.selected_data = set()  # napari gives the current colours to the selected items
        draw_with(layer, name)
        layer.selected_data = selected


def remove_class(layer, name: str) -> None:
    """Remove a class that no shape or point has."""
    used = item_classes(layer).count(name)
    if used:
        raise HistodiffError(f"{used} item(s) of {layer.name!r} still have class {name!r}; give them another "
                             "class first (select them, then Assign selected), or delete them.")
    colors = class_colors(layer)
    colors.pop(name, None)
    layer.metadata = {**layer.metadata, COLORS_KEY: colors}


def _check_name(name) -> str:
    from ..core.base.names import check_class_name

    name = _text(name)
    if name.lower() == "nan":
        raise HistodiffError("a class needs a name (e.g. TUM, STR).")
    return check_class_name(name, "the class table")


# -- Labels ---------------------------------------------------------------------------------------

def label_names(layer) -> dict[int, str]:
    """Label value -> name from the layer's ``class`` feature (what the extraction reads)."""
    feats = layer.features
    if feats is None or "class" not in feats or not len(feats):
        return {}
    index = feats["index"] if "index" in feats else range(len(feats))
    return {int(v): _text(c) for v, c in zip(index, feats["class"]) if int(v) != 0}


def label_values(layer) -> list[int]:
    """The label values of the table: the named ones and those painted (the coarsest level of a
    multiscale layer; a single array only up to LABEL_SCAN pixels)."""
    data = layer.data[-1] if getattr(layer, "multiscale", False) else layer.data
    found = set(label_names(layer))
    if int(np.prod(data.shape)) <= LABEL_SCAN or getattr(layer, "multiscale", False):
        found |= {int(v) for v in _unique(data) if v != 0}
    return sorted(found)


def set_label_names(layer, names: dict[int, str]) -> None:
    """Write label value -> name into the layer's ``class`` feature (every value of the table named,
    ``class <value>`` where none is given, so the extraction sees them all)."""
    import pandas as pd

    names = {int(v): _text(n) or f"class {int(v)}" for v, n in names.items() if int(v) != 0}
    values = sorted(names)
    layer.features = pd.DataFrame({"index": [0, *values], "class": ["", *(names[v] for v in values)]})


def label_rows(layer) -> list[dict]:
    named = label_names(layer)
    values = label_values(layer)
    if named and set(values) - set(named):
        # painted values the class feature does not name yet: name them ``class <value>``, else the
        # extraction (which reads only the named values once there is a class feature) would skip them
        set_label_names(layer, {v: named.get(v, "") for v in values})
        named = label_names(layer)
    return [{"key": v, "name": named.get(v) or f"class {v}", "color": hex_of(layer.get_color(v)),
             "count": None} for v in values]


def add_label(layer, name: str) -> int:
    """A new label value named ``name`` (the next free one), selected for painting; returns it."""
    name = _check_name(name)
    values = label_values(layer)
    value = max(values, default=0) + 1
    set_label_names(layer, {**{v: r for v, r in ((r["key"], r["name"]) for r in label_rows(layer))}, value: name})
    layer.selected_label = value
    return value


def rename_label(layer, value: int, name: str) -> None:
    """Name label value ``value``: the extraction calls its pixels ``name`` (values may share a name)."""
    name = _check_name(name)
    rows = {r["key"]: r["name"] for r in label_rows(layer)}
    rows[int(value)] = name
    set_label_names(layer, rows)


def recolor_label(layer, value: int, color) -> None:
    """Draw label value ``value`` in ``color`` (a direct colour map keeps the other values' colours)."""
    from napari.utils.colormaps import DirectLabelColormap

    values = label_values(layer)
    top = max([*values, int(value)]) + 16  # values painted later keep distinct colours
    colors = {None: (0.5, 0.5, 0.5, 1.0), 0: (0, 0, 0, 0)}
    colors.update({v: tuple(layer.get_color(v)) for v in range(1, top + 1)})
    colors[int(value)] = tuple(rgba(hex_of(color)))
    layer.colormap = DirectLabelColormap(color_dict=colors)


def remove_label(layer, value: int) -> None:
    """Forget the name of a label value no pixel has."""
    data = layer.data[-1] if getattr(layer, "multiscale", False) else layer.data
    if int(value) in {int(v) for v in _unique(data)}:
        raise HistodiffError(f"label value {value} is painted in {layer.name!r}; erase its pixels first "
                             "(or rename it instead).")
    rows = {r["key"]: r["name"] for r in label_rows(layer) if r["key"] != int(value)}
    set_label_names(layer, rows)


# -- one interface for the panel --------------------------------------------------------------------

def class_rows(layer) -> list[dict]:
    """The table's rows: ``key`` (class name, or label value), ``name``, ``color`` (#rrggbb) and
    ``count`` (items of the class; None for Labels)."""
    if layer is None:
        return []
    if is_labels(layer):
        return label_rows(layer)
    classes = item_classes(layer)
    return [{"key": n, "name": n, "color": c, "count": classes.count(n)} for n, c in class_colors(layer).items()]


TIPS = {
    "layer": "The annotation layer whose classes are listed: a Shapes, Points or Labels layer. It follows "
    "the layer you select in napari's layer list.",
    "table": "The classes of the layer. Double-click a name to rename it (every shape or point of that "
    "class is renamed), double-click a colour to change it. For a Labels layer each row is a label value; "
    "its name is what the tile extraction calls its pixels.",
    "add": "Add a new class. For Shapes and Points: select shapes or points and press Assign selected to "
    "give them this class; shapes drawn next get it too. For Labels: a new label value to paint with.",
    "rename": "Rename the selected class. Every shape or point of that class gets the new name; renaming "
    "to an existing class merges the two.",
    "color": "Choose the colour of the selected class; its shapes or points are drawn in it (and QuPath "
    "gets it when you save as GeoJSON).",
    "remove": "Remove the selected class. Only a class that no shape or point has (or a label value with no "
    "painted pixels) can be removed.",
    "assign": "Give the shapes or points selected in the viewer the selected class (and its colour). "
    "Shapes and points drawn afterwards get this class too. For Labels, paint with the row's value instead "
    "(selecting a row picks it).",
}


class ClassesWidget(QWidget):
    """Annotate: the class table of the active annotation layer (see the module doc)."""

    def __init__(self, napari_viewer=None):
        import napari.layers as L

        super().__init__()
        self.viewer = napari_viewer
        self._layer = None
        self._updating = False
        # the class labels the Review panel draws over tiles (metadata ``histodiff_of``) are not annotations
        self.layers = LayerCombo(napari_viewer, (L.Shapes, L.Points, L.Labels),
                                 lambda layer: "histodiff_of" not in (layer.metadata or {}))
        self.layers.setToolTip(tooltip(TIPS["layer"]))
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["class", "colour", "items"])
        self.table.setToolTip(tooltip(TIPS["table"]))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        corner = self.table.findChild(QAbstractButton)  # the table's select-all corner
        if corner is not None:
            corner.setToolTip(tooltip("Select all rows."))
        self.table.setMinimumHeight(120)
        self.table.setMaximumHeight(260)
        self.add_button = QPushButton("Add class")
        self.rename_button = QPushButton("Rename")
        self.color_button = QPushButton("Colour...")
        self.remove_button = QPushButton("Remove")
        self.assign_button = QPushButton("Assign selected")
        for name, button in (("add", self.add_button), ("rename", self.rename_button), ("color", self.color_button),
                             ("remove", self.remove_button), ("assign", self.assign_button)):
            button.setToolTip(tooltip(TIPS[name]))
        self.status = QLabel("")
        self.status.setWordWrap(True)
        intro = QLabel("Name the classes of an annotation layer and give them colours; Fine-tune extracts tiles "
                       "with these names.")
        intro.setWordWrap(True)
        layout = scroll_page(self)
        layout.addWidget(intro)
        row = QHBoxLayout()
        row.addWidget(QLabel("layer"))
        row.addWidget(self.layers, 1)
        layout.addLayout(row)
        layout.addWidget(self.table)
        edit = QHBoxLayout()
        for b in (self.add_button, self.rename_button, self.color_button, self.remove_button):
            edit.addWidget(b)
        layout.addLayout(edit)
        layout.addWidget(self.assign_button)
        layout.addWidget(self.status)
        layout.addStretch()
        self._refresh_soon = QTimer(self)
        self._refresh_soon.setSingleShot(True)
        self._refresh_soon.setInterval(300)
        self._refresh_soon.timeout.connect(self.refresh)
        self.layers.currentTextChanged.connect(lambda *_: self._follow(self.layers.layer()))
        self.add_button.clicked.connect(self._ask_add)
        self.rename_button.clicked.connect(self._ask_rename)
        self.color_button.clicked.connect(self._ask_color)
        self.remove_button.clicked.connect(lambda: self._act(self.remove, self.current()))
        self.assign_button.clicked.connect(lambda: self._act(self.assign, self.current()))
        self.table.itemChanged.connect(self._edited)
        self.table.cellDoubleClicked.connect(lambda r, c: self._ask_color() if c == 1 else None)
        self.table.itemSelectionChanged.connect(self._row_chosen)
        if napari_viewer is not None:
            napari_viewer.layers.selection.events.active.connect(self._active_changed)
            self._active_changed()
        self._follow(self.layers.layer())

    # -- the layer --------------------------------------------------------------------------------

    @property
    def layer(self):
        return self._layer

    def _active_changed(self, *_):
        active = self.viewer.layers.selection.active
        if active is not None and active.name in [self.layers.itemText(i) for i in range(self.layers.count())]:
            self.layers.setCurrentText(active.name)

    def _follow(self, layer) -> None:
        layer = getattr(layer, "__wrapped__", layer)  # plugin widgets see napari's public-only proxies
        if layer is self._layer:
            self.refresh()
            return
        self._watch(self._layer, False)
        self._layer = layer
        self._watch(layer, True)
        if layer is not None and not is_labels(layer):
            show_class_names(layer)
            see_through(layer)
        self.refresh()

    def _watch(self, layer, on: bool) -> None:
        if layer is None:
            return
        for name in ("features", "data", "paint", "colormap", "set_data"):
            emitter = getattr(layer.events, name, None)
            if emitter is None:
                continue
            if on:
                emitter.connect(self._changed)
            else:
                emitter.disconnect(self._changed)

    def _changed(self, *_):
        if not self._updating:
            self._refresh_soon.start()

    # -- the table --------------------------------------------------------------------------------

    def rows(self) -> list[dict]:
        return class_rows(self._layer)

    def refresh(self) -> None:
        """Show the layer's classes again (keeps the selected row)."""
        keep = self.current()
        self._updating = True
        try:
            rows = self.rows()
            self.table.blockSignals(True)
            self.table.setRowCount(len(rows))
            labels = is_labels(self._layer) if self._layer is not None else False
            self.table.setHorizontalHeaderLabels(["class", "colour", "value" if labels else "items"])
            for r, row in enumerate(rows):
                name = QTableWidgetItem(row["name"])
                name.setData(Qt.ItemDataRole.UserRole, row["key"])
                name.setToolTip(tooltip("Double-click to rename this class."))
                color = QTableWidgetItem("")
                color.setBackground(QColor(row["color"]))
                color.setIcon(_swatch(row["color"]))  # the selected row's highlight hides the background
                color.setFlags(color.flags() & ~Qt.ItemFlag.ItemIsEditable)
                color.setToolTip(tooltip(f"{row['color']}: double-click to change the colour."))
                count = QTableWidgetItem(str(row["key"] if labels else row["count"]))
                count.setFlags(count.flags() & ~Qt.ItemFlag.ItemIsEditable)
                count.setToolTip(tooltip("The label value painted for this class." if labels else
                                         "How many shapes or points have this class."))
                for c, item in enumerate((name, color, count)):
                    self.table.setItem(r, c, item)
                if row["key"] == keep:
                    self.table.selectRow(r)
        finally:
            self.table.blockSignals(False)
            self._updating = False
        self._enable()

    def current(self):
        """The key of the selected row (class name, or label value), None when none is selected."""
        r = self.table.currentRow()
        items = self.table.selectedItems()
        if r < 0 or not items:
            return None
        item = self.table.item(r, 0)
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def select(self, key) -> None:
        """Select the row of class ``key`` (name, or label value)."""
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) == key:
                self.table.selectRow(r)
                return
        raise HistodiffError(f"no class {key!r} in the table.")

    def _enable(self) -> None:
        has_layer, chosen = self._layer is not None, self.current() is not None
        labels = has_layer and is_labels(self._layer)
        self.add_button.setEnabled(has_layer)
        for b in (self.rename_button, self.color_button, self.remove_button):
            b.setEnabled(chosen)
        self.assign_button.setEnabled(chosen and not labels)
        if not has_layer:
            self.status.setText("Add or select a Shapes, Points or Labels layer.")
        elif labels:
            self.status.setText("Each row is a label value: select it to paint with it, name it for the tiles.")
        else:
            column = class_column(self._layer) or CLASS_COLUMNS[0]
            self.status.setText(f"Classes are the `{column}` feature of {self._layer.name!r}.")

    def _row_chosen(self) -> None:
        self._enable()
        key, layer = self.current(), self._layer
        if key is None or layer is None or self._updating:
            return
        self._updating = True
        try:
            if is_labels(layer):
                layer.selected_label = int(key)
            else:
                draw_with(layer, key)
        finally:
            self._updating = False

    def _edited(self, item) -> None:
        if self._updating or item.column() != 0:
            return
        key, text = item.data(Qt.ItemDataRole.UserRole), item.text()
        QTimer.singleShot(0, lambda: self._act(self.rename, key, text))  # not while the table is editing

    # -- actions (each also callable directly) ------------------------------------------------------

    def _act(self, fn, *args):
        try:
            return fn(*args)
        except HistodiffError as e:
            notify_error(e)
            self.refresh()
            return None

    def _need_layer(self):
        if self._layer is None:
            raise HistodiffError("no annotation layer: add a Shapes, Points or Labels layer first.")
        return self._layer

    def _do(self, fn, *args):
        self._updating = True
        try:
            return fn(self._need_layer(), *args)
        finally:
            self._updating = False
            self.refresh()

    def add(self, name: str, color=None):
        """Add a class (Labels: a new value); returns its key and selects it."""
        if is_labels(self._need_layer()):
            key = self._do(add_label, name)
            if color is not None:
                self._do(recolor_label, key, color)
        else:
            self._do(add_class, name, color)
            key = _text(name)
        self.select(key)
        return key

    def rename(self, key, name: str) -> None:
        self._do(rename_label if is_labels(self._need_layer()) else rename_class, key, name)
        if not is_labels(self._layer):
            self.select(_text(name))

    def recolor(self, key, color) -> None:
        self._do(recolor_label if is_labels(self._need_layer()) else recolor_class, key, color)

    def remove(self, key) -> None:
        if key is None:
            raise HistodiffError("select a class in the table first.")
        self._do(remove_label if is_labels(self._need_layer()) else remove_class, key)

    def assign(self, key) -> list[int]:
        if key is None:
            raise HistodiffError("select a class in the table first.")
        if is_labels(self._need_layer()):
            raise HistodiffError("a Labels layer is painted: select the row and paint with its value.")
        return self._do(assign_selected, key)

    # -- dialogs ----------------------------------------------------------------------------------

    def _ask_add(self):
        name, ok = QInputDialog.getText(self, "Add class", "name of the new class:")
        if ok and name.strip():
            self._act(self.add, name)

    def _ask_rename(self):
        key = self.current()
        if key is None:
            return
        old = self.table.item(self.table.currentRow(), 0).text()
        name, ok = QInputDialog.getText(self, "Rename class", f"new name of {old!r}:", text=old)
        if ok and name.strip():
            self._act(self.rename, key, name)

    def _ask_color(self):
        key = self.current()
        if key is None:
            return
        row = next((r for r in self.rows() if r["key"] == key), None)
        color = QColorDialog.getColor(QColor(row["color"] if row else "#ffffff"), self, "Class colour")
        if color.isValid():
            self._act(self.recolor, key, color.name())

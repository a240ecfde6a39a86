"""Option forms generated from the jobs' option dataclasses (``core.base.options``): one editor per
field shown in forms, with the field's default, label, help (tooltip), limits and choices; the CLI is
generated from the same fields."""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
import typing
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtGui import QValidator
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QLineEdit, QSpinBox,
                            QToolButton, QVBoxLayout, QWidget)

from ..core.base.options import field_type
from ._common import compact

# -- tooltips ---------------------------------------------------------------------------------

# What an option means in plain words, for a pathologist: added to the option's help (the CLI's text) in
# the form's tooltip. Keyed ``"OptionsClass.field"`` (the class that declares the field).
PLAIN = {
    "SampleOptions.n": "How many tiles to draw for each class chosen above (in all when unguided).",
    "SampleOptions.guidance": "Guidance scale: while a tile is drawn, a classifier trained on your annotations "
    "pushes it toward the chosen class; this sets how hard. 0: no push (the model draws any tissue it has "
    "learnt). Higher: tiles look more like the class, but too high gives exaggerated, artificial-looking "
    "tissue. Raise it if tiles do not show the class; lower it if they look overdone. Not used when unguided.",
    "SampleOptions.sampler": "The recipe that turns random noise into a tile, one small clean-up step at a "
    "time. ddim: the method of the paper (DDIM). dpm: DPM-Solver++, similar tiles in fewer steps, so "
    "faster. ddpm: the original, slowest method (DDPM), which adds fresh randomness at every step and needs "
    "many steps (hundreds) to look right.",
    "SampleOptions.steps": "Each step removes a little of the noise. More steps: slower, finer detail; "
    "fewer: faster, coarser tiles.",
    "SampleOptions.eta": "Only for the ddim sampler (the other samplers ignore it). How much fresh randomness "
    "is mixed in at every step: 0: none, so each tile follows directly from its starting noise (often "
    "smoother); 1: as much as the paper (more varied texture).",
    "SampleOptions.strength": "Only when starting from annotated tiles. How much of each source tile is "
    "drowned in noise before it is redrawn: low values (0.2-0.4) keep its tissue layout and change the "
    "details; 1 throws the source away (the same as starting from noise).",
    "SampleOptions.seed": "The same seed with the same settings draws the same tiles again; change it for "
    "new tiles.",
    "SampleOptions.batch_size": "Only speed and memory: more at once is faster but needs more memory; "
    "lower it if you run out of memory. The tiles are the same.",
    "SampleOptions.select": "A second classifier, trained during fine-tuning on your annotations, checks "
    "every finished tile and marks it kept or rejected (you can change the decisions in Review & export). "
    "Off: every tile is kept unchecked.",
    "SelectionRule.rule": "Which finished tiles are kept. confidence: the checking classifier is at least "
    "\"threshold\" sure the tile shows its target class. centroid: of the typical (average) appearance of "
    "each class, the tile resembles its target class's most (the original code's rule). both: both checks "
    "agree: the strictest, fewest tiles. none: keep every tile.",
    "SelectionRule.threshold": "Used by the confidence and both rules: 0.8 means the checking classifier "
    "must give the target class at least 80 % probability. Higher: fewer, more typical tiles.",
    "SelectionRule.cap": "Keeps classes balanced: beyond this many kept tiles of a class, the least "
    "convincing ones are rejected.",
    "FinetuneOptions.classifier_steps": "This classifier steers sampling toward a class (guidance). It "
    "learns your classes from the model's compressed, noisy version of the tiles (\"noisy latents\"), "
    "because that is what it sees while a tile is drawn. More steps: better steering, longer training.",
    "FinetuneOptions.selection_steps": "This classifier checks finished tiles and decides which are kept "
    "(the selection rule in the Sample widget).",
    "FinetuneOptions.unet_steps": "The UNet is the network that draws the tiles; more training on your "
    "tiles makes its tissue look more like yours. 0: leave it as pre-trained.",
    "FinetuneOptions.unet_learning_rate": "How big each training step is: too high can spoil the "
    "pre-trained model; the default is safe.",
    "FinetuneOptions.decoder_steps": "The decoder turns the model's compressed tiles (latents) back into "
    "pixels; training it on your tiles can sharpen stain colours and fine detail. 0: leave it as "
    "pre-trained.",
    "FinetuneOptions.decoder_learning_rate": "How big each training step is: too high can spoil the "
    "pre-trained decoder; the default is safe.",
    "FinetuneOptions.clean_latents": "Latents are the compressed form of a tile the model works on; "
    "\"clean\" ones have no noise added. The guidance classifier normally learns on noisy latents, because "
    "it steers tiles while they are still noisy; on: clean ones only, as the original code did (steers "
    "worse). For comparisons only; leave it off.",
    "FinetuneOptions.min_tiles_per_class": "A class with fewer labeled tiles stops the fine-tuning with a "
    "message: annotate more of it, or lower this.",
    "FinetuneOptions.holdout": "These tiles are not trained on; the accuracy measured on them tells you "
    "whether the classifiers learnt the classes or only memorised the tiles.",
    "FinetuneOptions.batch_size": "Only speed and memory: lower it if you run out of memory.",
    "FinetuneOptions.seed": "The same seed with the same tiles and settings trains the same model again.",
    "FinetuneOptions.checkpoint_every": "A cancelled or crashed fine-tuning can resume from the last "
    "checkpoint (intent: resume).",
    "SampleOptions.precision": "auto picks what is faster at the same quality: bf16 on a CPU or GPU that "
    "supports it, else full precision (fp32).",
    "FinetuneOptions.precision": "auto picks what is faster without losing quality: bf16 on a recent GPU, "
    "full precision (fp32) on a CPU; fp16 and bf16 use less memory with slightly less exact arithmetic.",
    "FinetuneOptions.num_workers": "Background processes that read tiles while the model trains; 0 is "
    "right for tiles already in memory.",
    "ExportOptions.fmt": "tif keeps the pixels exactly; png also keeps them exactly and opens everywhere.",
    "ExportOptions.only_kept": "Off: every tile is exported, each with its kept / rejected decision in the "
    "manifest.",
}


def tooltip(*parts: str, width: int = 72) -> str:
    """A plain-text tooltip of paragraphs wrapped to ``width`` (Qt does not wrap plain-text tooltips)."""
    return "\n\n".join(textwrap.fill(p, width) for p in parts if p)


def field_tooltip(f: dataclasses.Field, default, owner=None) -> str:
    """The tooltip of an option field's editor: its help (the CLI's text) with its default, then its
    plain-words explanation from :data:`PLAIN` (``owner``: the options class that declares the field)."""
    help_text = f.metadata["help"]
    tip = help_text if "default" in help_text or default is None else f"{help_text} (default: {default})"
    return tooltip(tip, PLAIN.get(f"{getattr(owner, '__name__', '')}.{f.name}", ""))


def unwrapped(tip: str) -> str:
    """A tooltip's text with the wrapping undone (``"a b\n\nc"`` -> ``"a b c"``)."""
    return " ".join(tip.split())


# -- output folders ---------------------------------------------------------------------------

def source_path(layer) -> Path | None:
    """The file a layer was opened from (napari's ``layer.source.path``, or a slide's ``slide_path``)."""
    if layer is None:
        return None
    path = getattr(getattr(layer, "source", None), "path", None) or \
        (getattr(layer, "metadata", None) or {}).get("slide_path")
    return Path(path) if path else None


def output_folder(name: str, layer=None) -> Path:
    """Where a widget writes by default: beside the image or slide ``layer`` was opened from
    (``<image stem>-<name>``), else ``~/histodiff/<name>``: a place the user sees again, never the temp
    folder (emptied on reboot)."""
    path = source_path(layer)
    if path is not None:
        return path.parent / f"{path.stem}-{name}"
    return Path.home() / "histodiff" / name


def explain_path(edit, tip: str, what: str = "folder") -> None:
    """Tooltips on a magicgui FileEdit (see ``_common.path_edit``) and its parts: its line edit and its
    Browse button."""
    edit.native.setToolTip(tip)
    edit.line_edit.native.setToolTip(tip)
    edit.choose_btn.native.setToolTip(f"choose the {what} in a file dialog")


# -- editors for one option field --------------------------------------------------------------

def _short_default(help_text: str) -> str:
    """What a spin box shows for "not set": ``(default: no cap)`` -> ``no cap``, else ``default``."""
    m = re.search(r"\(default: ([^)]{1,14})\)", help_text)
    return m.group(1) if m else "default"


class FloatSpin(QDoubleSpinBox):
    """A float spin box that shows values as typed (``1e-05``, ``0.8``, ``10``) and accepts exponents."""

    def __init__(self):
        super().__init__()
        self.setDecimals(12)

    def textFromValue(self, value: float) -> str:
        return f"{value:.6g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):
        t = text.strip()
        if self.specialValueText() and t == self.specialValueText():
            return QValidator.State.Acceptable, text, pos
        try:
            v = float(t)
        except ValueError:
            ok = re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d*)?([eE][+-]?\d*)?", t) is not None
            return (QValidator.State.Intermediate if ok else QValidator.State.Invalid), text, pos
        if math.isfinite(v) and self.minimum() <= v <= self.maximum():
            return QValidator.State.Acceptable, text, pos
        return QValidator.State.Intermediate, text, pos


def _float_step(default, maximum) -> float:
    if maximum is not None and maximum <= 1:
        return 0.05
    if not default:
        return 0.1
    return 10 ** math.floor(math.log10(abs(default))) / 10


class FieldEdit:
    """The editor of one option field: ``.value`` (the dataclass value; ``None`` for an optional number
    left at "default"), ``.native`` (the Qt widget), ``.label``, ``.name``, ``.default``. ``owner``: the
    options class that declares the field (its plain-words explanation in :data:`PLAIN`)."""

    def __init__(self, f: dataclasses.Field, tp, default, owner=None):
        m = f.metadata
        self.field, self.name, self.default = f, f.name, default
        self.label = m.get("label") or f.name.replace("_", " ")
        base, self.optional, _ = field_type(tp)
        self.kind = "choice" if m.get("choices") else base.__name__ if base in (bool, int, float, str) else None
        if self.kind is None:
            raise TypeError(f"{f.name}: no form editor for {tp}; mark the field gui=False or add one")
        lo, hi = m.get("min"), m.get("max")
        self._special = None  # the spin value that stands for None
        if self.kind == "bool":
            w = QCheckBox()
            self._changed = w.toggled
        elif self.kind == "choice":
            w = compact(QComboBox())
            self.choices = list(m["choices"]) + ([None] if self.optional else [])
            w.addItems([_short_default(m["help"]) if c is None else str(c) for c in self.choices])
            self._changed = w.currentIndexChanged
        elif self.kind == "int":
            w = QSpinBox()
            lo = (lo + 1 if m.get("min_open") else lo) if lo is not None else -(2**31) + 2
            hi = hi if hi is not None else 2**31 - 1
            if self.optional:
                lo = self._special = lo - 1
                w.setSpecialValueText(_short_default(m["help"]))
            w.setRange(int(lo), int(hi))
            w.setAccelerated(True)
            self._changed = w.valueChanged
        elif self.kind == "float":
            w = FloatSpin()
            step = _float_step(default, hi)
            lo = lo if lo is not None else -1e12
            if self.optional:
                if not m.get("min_open"):
                    lo -= step
                self._special = lo
                w.setSpecialValueText(_short_default(m["help"]))
            w.setRange(lo, hi if hi is not None else 1e12)
            w.setSingleStep(step)
            self._changed = w.valueChanged
        else:
            w = QLineEdit()
            self._changed = w.textChanged
        self.native = w
        self._exact = None  # (shown, given): a float given exactly, read back exactly while not edited
        w.setToolTip(field_tooltip(f, default, owner))
        w.setObjectName(f.name)
        w.setMinimumWidth(80)
        self.value = default

    @property
    def value(self):
        w = self.native
        if self.kind == "bool":
            return w.isChecked()
        if self.kind == "choice":
            return self.choices[w.currentIndex()]
        if self.kind in ("int", "float"):
            v = w.value()
            if self._special is not None and v == self._special:
                return None
            if self._exact is not None and v == self._exact[0]:
                return self._exact[1]
            return int(v) if self.kind == "int" else float(v)
        return w.text()

    @value.setter
    def value(self, v):
        w = self.native
        if self.kind == "bool":
            w.setChecked(bool(v))
        elif self.kind == "choice":
            w.setCurrentIndex(self.choices.index(v))
        elif self.kind in ("int", "float"):
            if v is None and self._special is None:
                raise ValueError(f"{self.name} cannot be empty")
            w.setValue(self._special if v is None else v)
            self._exact = (w.value(), v) if v is not None and self.kind == "float" else None
        else:
            w.setText("" if v is None else str(v))

    @property
    def enabled(self) -> bool:
        return self.native.isEnabled()

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self.native.setEnabled(on)

    def connect(self, callback) -> None:
        self._changed.connect(lambda *_: callback(self))


def field_edit(cls, name: str) -> FieldEdit:
    """An editor for one field of an options class (also a field not shown in forms, e.g. ``intent``)."""
    from ..core.base.options import default_of, fields

    f = next(f for f in fields(cls) if f.name == name)
    return FieldEdit(f, typing.get_type_hints(cls)[name], default_of(f), cls)


# -- a form for a whole options class ----------------------------------------------------------

DEFAULTS = "full (CLI defaults)"
CUSTOM = "custom"


def _form_layout() -> QFormLayout:
    lay = QFormLayout()
    lay.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
    lay.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    lay.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
    return lay


class OptionsForm(QWidget):
    """A form for an options dataclass, generated from its field metadata: one editor per field with
    ``gui=True`` (nested option groups, e.g. ``SampleOptions.selection``, as a titled sub-form),
    defaults from the dataclass. ``advanced``: fields shown under "more options" (collapsed).
    ``profile``: the initial profile when the class declares ``PROFILES``; the form then starts with
    a "profile" combo: ``full (CLI defaults)`` and each named profile.

    ``form["name"]`` (or ``form.name``) is a field's :class:`FieldEdit`; :meth:`read` builds the options."""

    def __init__(self, cls, advanced=(), profile: str | None = None, parent=None):
        super().__init__(parent)
        from ..core.base.options import default_of, fields

        self.cls = cls
        self.edits: dict[str, FieldEdit] = {}
        self.nested: dict[str, type] = {}  # field -> nested options class
        self.groups: dict[str, QGroupBox] = {}  # field -> the titled sub-form of a nested options class
        self.profiles: dict[str, dict] = dict(getattr(cls, "PROFILES", None) or {})
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.rows = rows = _form_layout()  # one layout: every label column lines up
        outer.addLayout(rows)
        self.profile = None
        if self.profiles:
            self.profile = compact(QComboBox())
            self.profile.addItems([DEFAULTS, *self.profiles])
            self.profile.setToolTip("preset values for some options: " + "; ".join(
                f"{name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in values.items())
                for name, values in self.profiles.items()) + f"; {DEFAULTS}: the values the CLI uses")
            rows.addRow(self._label("profile", self.profile.toolTip()), self.profile)
        groups, more = [], []
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if not f.metadata["gui"]:
                continue
            d = default_of(f)
            if dataclasses.is_dataclass(d):
                groups.append(self._group(f, type(d)))
                continue
            edit = self._add(f, hints[f.name], d, cls)
            if f.name in advanced or f.metadata.get("group") == "advanced":
                more.append(edit)
            else:
                rows.addRow(self._label(edit.label, edit.native.toolTip()), edit.native)
        for box in groups:
            rows.addRow(box)
        self._more_rows = []
        self.more_button = None
        if more:
            self.more_button = QToolButton()
            self.more_button.setText(f"more options ({len(more)})")
            self.more_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            self.more_button.setArrowType(Qt.ArrowType.RightArrow)
            self.more_button.setCheckable(True)
            self.more_button.setAutoRaise(True)
            self.more_button.setToolTip(tooltip(
                "show or hide the options most runs leave at their defaults: "
                + ", ".join(edit.label for edit in more)))
            self.more_button.toggled.connect(self.show_more)
            rows.addRow(self.more_button)
            for edit in more:
                label = self._label(edit.label, edit.native.toolTip())
                rows.addRow(label, edit.native)
                self._more_rows.append((label, edit.native))
            self.show_more(False)
        unknown = [n for p in self.profiles.values() for n in p if n not in self.edits]
        if unknown:
            raise ValueError(f"{cls.__name__}.PROFILES names fields not in the form: {unknown}")
        for edit in self.edits.values():
            edit.connect(self._edited)
        if self.profile is not None:
            self.profile.currentTextChanged.connect(self.set_profile)
            self.set_profile(profile or DEFAULTS)
        elif profile:
            raise ValueError(f"{cls.__name__} has no profiles")

    @staticmethod
    def _label(text: str, tip: str) -> QLabel:
        label = QLabel(text)
        label.setToolTip(tip)
        return label

    def _add(self, f, tp, default, owner) -> FieldEdit:
        if f.name in self.edits:
            raise ValueError(f"{self.cls.__name__}: two fields named {f.name!r} in one form")
        edit = self.edits[f.name] = FieldEdit(f, tp, default, owner)
        return edit

    def _group(self, f, sub) -> QGroupBox:
        from ..core.base.options import default_of, fields

        self.nested[f.name] = sub
        box = self.groups[f.name] = QGroupBox(f.metadata.get("label") or f.metadata["help"])
        box.setObjectName(f.name)
        lay = _form_layout()
        hints = typing.get_type_hints(sub)
        for g in fields(sub):
            if g.metadata["gui"]:
                edit = self._add(g, hints[g.name], default_of(g), sub)
                lay.addRow(self._label(edit.label, edit.native.toolTip()), edit.native)
        box.setLayout(lay)
        return box

    def show_more(self, on: bool = True) -> None:
        """Unfold (or fold) the "more options" rows."""
        if self.more_button is None:
            return
        self.more_button.blockSignals(True)
        self.more_button.setChecked(on)
        self.more_button.blockSignals(False)
        self.more_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        for label, field in self._more_rows:
            if hasattr(self.rows, "setRowVisible"):  # Qt >= 6.4: no gap left by hidden rows
                self.rows.setRowVisible(field, on)
            else:
                label.setVisible(on)
                field.setVisible(on)

    def set_shown(self, name: str, on: bool) -> None:
        """Show (or hide) the row of a field, or the sub-form of a nested options class (e.g.
        ``selection``): controls that do not apply are hidden, not just disabled."""
        widget = self.groups[name] if name in self.groups else self.edits[name].native
        lay = self.rows if self.rows.indexOf(widget) >= 0 else widget.parentWidget().layout()
        if hasattr(lay, "setRowVisible"):  # Qt >= 6.4: no gap left by a hidden row
            lay.setRowVisible(widget, on)
            return
        label = lay.labelForField(widget)
        if label is not None:
            label.setVisible(on)
        widget.setVisible(on)

    def is_shown(self, name: str) -> bool:
        """Whether a field's (or nested group's) row is shown (not hidden; the form itself may not be)."""
        widget = self.groups[name] if name in self.groups else self.edits[name].native
        return not widget.isHidden()

    def add_row(self, label: str, widget, tip: str = "", at: int | None = None, wide: bool = False) -> None:
        """A row for a control the widget adds (an output folder, an intent), aligned with the options;
        ``at``: its position (default: after the shown options, before "more options"); ``wide``: the
        control on a line of its own under its label (a folder path)."""
        native = getattr(widget, "native", widget)
        tip = tooltip(tip)
        if tip and not native.toolTip():
            native.setToolTip(tip)
        if at is None:
            at = self.rows.rowCount()
            if self.more_button is not None:
                at = self.rows.getWidgetPosition(self.more_button)[0]
        label_widget = self._label(label, tip or native.toolTip())
        if wide:
            self.rows.insertRow(at, label_widget)
            self.rows.insertRow(at + 1, native)
        else:
            self.rows.insertRow(at, label_widget, native)

    # -- fields ----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> FieldEdit:
        return self.edits[name]

    def __getattr__(self, name: str):
        edits = self.__dict__.get("edits")
        if edits is not None and name in edits:
            return edits[name]
        raise AttributeError(name)

    def __iter__(self):
        return iter(self.edits.values())

    def label_of(self, name: str) -> str:
        return self.edits[name].label if name in self.edits else name.replace("_", " ")

    def values(self) -> dict:
        return {name: edit.value for name, edit in self.edits.items()}

    # -- profiles --------------------------------------------------------------------------
    def _profile_values(self, name: str) -> dict:
        keys = {k for p in self.profiles.values() for k in p}
        values = {k: self.edits[k].default for k in keys}
        values.update(self.profiles.get(name, {}))
        return values

    def set_profile(self, name: str) -> None:
        """Set the fields a profile names (``full (CLI defaults)``: the dataclass defaults)."""
        if name == CUSTOM or self.profile is None:
            return
        if name != DEFAULTS and name not in self.profiles:
            raise ValueError(f"no profile {name!r}; choose one of {DEFAULTS!r}, {', '.join(map(repr, self.profiles))}")
        self._setting = True
        try:
            for key, value in self._profile_values(name).items():
                self.edits[key].value = value
        finally:
            self._setting = False
        self._show_profile(name)

    def _show_profile(self, name: str) -> None:
        self.profile.blockSignals(True)
        if name == CUSTOM and self.profile.findText(CUSTOM) < 0:
            self.profile.addItem(CUSTOM)
        self.profile.setCurrentText(name)
        if name != CUSTOM and self.profile.findText(CUSTOM) >= 0:
            self.profile.removeItem(self.profile.findText(CUSTOM))
        self.profile.blockSignals(False)

    def _edited(self, edit: FieldEdit) -> None:
        if self.profile is None or getattr(self, "_setting", False):
            return
        current = {k: self.edits[k].value for k in self._profile_values(DEFAULTS)}
        match = next((p for p in (self.profile.currentText(), DEFAULTS, *self.profiles)
                      if p != CUSTOM and self._profile_values(p) == current), CUSTOM)
        self._show_profile(match)

    # -- reading ---------------------------------------------------------------------------
    def read(self, **extra):
        """The options the form describes, with ``extra`` values the widget gives (output folder,
        intent, device, ...); validated with ``core.base.options.check``."""
        from ..core.base.options import check

        unused = dict(extra)
        obj = self._build(self.cls, unused)
        if unused:
            raise TypeError(f"{self.cls.__name__} has no field(s) {sorted(unused)}")
        check(obj)
        return obj

    def _build(self, cls, extra: dict):
        from ..core.base.options import fields

        values = {}
        for f in fields(cls):
            if f.name in extra:
                values[f.name] = extra.pop(f.name)
            elif f.name in self.nested and cls is self.cls:
                values[f.name] = self._build(self.nested[f.name], extra)
            elif f.name in self.edits:
                values[f.name] = self.edits[f.name].value
        return cls(**values)


def read_form(form: OptionsForm, cls=None, **extra):
    """The options instance a form describes (plus ``extra`` fields), validated with ``check()``."""
    if cls is not None and cls is not form.cls:
        raise TypeError(f"this form is for {form.cls.__name__}, not {cls.__name__}")
    return form.read(**extra)

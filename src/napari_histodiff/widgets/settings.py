"""What the panels remember, per user, across reopening and napari sessions: the values of their options
(numbers, choices, the folders chosen), never layers, tiles or files of a run.

One small JSON file, ``panels.json`` in the user's config folder (``~/.config/napari-histodiff`` on
Linux: Qt's ``GenericConfigLocation``; ``HISTODIFF_CONFIG`` names another folder), one section per
panel. A value is saved when it changes; an unreadable or unwritable file leaves the panel at its
defaults (logged, never an error)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("napari_histodiff")


def settings_file() -> Path:
    folder = os.environ.get("HISTODIFF_CONFIG")
    if not folder:
        from qtpy.QtCore import QStandardPaths

        base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
        folder = Path(base or Path.home() / ".config") / "napari-histodiff"
    return Path(folder) / "panels.json"


def _read() -> dict:
    path = settings_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("panel settings %s not read (%s); the panels start with their defaults", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def load(panel: str) -> dict:
    """The saved values of ``panel`` (empty when none)."""
    values = _read().get(panel)
    return values if isinstance(values, dict) else {}


def save(panel: str, values: dict) -> None:
    """Replace the saved values of ``panel`` (the other panels' are kept); written atomically."""
    path = settings_file()
    data = _read()
    data[panel] = values
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("panel settings not saved to %s: %s", path, e)


def _binding(control):
    """``(get, set, changed signal)`` of a form field, a combo box, a spin box, a check box or a path edit."""
    from qtpy.QtWidgets import QAbstractSpinBox, QCheckBox, QComboBox

    from ._forms import FieldEdit

    if isinstance(control, FieldEdit):
        def put(v):
            control.value = v
        return (lambda: control.value), put, control._changed
    if isinstance(control, QComboBox):
        def choose(v):
            if control.findText(str(v)) >= 0:
                control.setCurrentText(str(v))
        return control.currentText, choose, control.currentTextChanged
    if isinstance(control, QCheckBox):
        return control.isChecked, lambda v: control.setChecked(bool(v)), control.toggled
    if isinstance(control, QAbstractSpinBox):
        return control.value, control.setValue, control.valueChanged
    edit = getattr(control, "line_edit", None)  # magicgui FileEdit: the text (empty: no path)
    if edit is not None:
        line = edit.native
        return (lambda: line.text().strip()), line.setText, line.textChanged
    raise TypeError(f"no settings binding for {type(control).__name__}")


class Remembered:
    """Binds a panel's controls (name -> control) to its section of the settings: :meth:`restore` sets
    the saved values (a value the control refuses is skipped), then every change saves the section."""

    def __init__(self, panel: str, controls: dict):
        self.panel = panel
        self.bindings = {name: _binding(c) for name, c in controls.items()}
        self._quiet = False
        for _, _, signal in self.bindings.values():
            signal.connect(self._changed)

    def values(self) -> dict:
        return {name: get() for name, (get, _, _) in self.bindings.items()}

    def restore(self) -> dict:
        """Set the saved values; returns those that were saved (also the ones refused)."""
        saved = load(self.panel)
        self._quiet = True
        try:
            for name, value in saved.items():
                if name in self.bindings:
                    try:
                        self.bindings[name][1](value)
                    except (TypeError, ValueError, IndexError) as e:  # an option that changed meanwhile
                        log.info("setting %s.%s=%r not restored: %s", self.panel, name, value, e)
        finally:
            self._quiet = False
        return saved

    def save(self) -> None:
        save(self.panel, self.values())

    def _changed(self, *_):
        if not self._quiet:
            self.save()

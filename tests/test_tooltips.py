"""Every control explains itself (issue 15, item 8): a tooltip on every interactive control, controls shown
only when they apply, output folders in a visible place (pytest-qt, xvfb)."""

import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_widgets import dock, fresh_model  # noqa: E402,F401 (fresh_model: an autouse fixture)
from napari_histodiff.core.jobs.load import open_handle

PANELS = ("Load model", "Annotate", "Fine-tune", "Sample", "Review & export")


def controls(widget):
    """Every interactive control under ``widget``: buttons, combo boxes, spin boxes, line edits."""
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

    found = []
    for cls in (QAbstractButton, QComboBox, QAbstractSpinBox, QLineEdit):
        found += [c for c in widget.findChildren(cls) if c not in found]
    return found


def owner(control):
    """The control whose tooltip Qt shows for ``control``: a spin box's or combo box's own line edit is
    part of it (Qt passes the tooltip event on to it); anything else is its own control."""
    from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QLineEdit

    parent = control.parentWidget()
    if isinstance(control, QLineEdit) and isinstance(parent, (QAbstractSpinBox, QComboBox)):
        return parent
    return control


def describe(control) -> str:
    text = control.text() if hasattr(control, "text") else control.currentText()
    return f"{type(control).__name__} {control.objectName() or ''!s} {text!r}".replace("  ", " ")


@pytest.mark.parametrize("panel", PANELS)
def test_every_control_of_every_panel_has_a_tooltip(make_napari_viewer, panel):
    w = dock(make_napari_viewer(), panel)
    found = controls(w)
    assert len(found) >= 4, panel  # the walk finds the panel's controls
    offenders = sorted({describe(owner(c)) for c in found if not owner(c).toolTip().strip()})
    assert not offenders, f"{panel}: controls without a tooltip: {offenders}"


def test_jargon_is_explained_in_the_tooltips(make_napari_viewer):
    from napari_histodiff.widgets._forms import unwrapped

    viewer = make_napari_viewer()
    s = dock(viewer, "Sample")
    tip = {name: unwrapped(s.form[name].native.toolTip()) for name in ("eta", "guidance", "sampler", "rule")}
    assert "randomness" in tip["eta"] and "Only for the ddim sampler" in tip["eta"]
    assert "pushes it toward the chosen class" in tip["guidance"]
    for word in ("DDIM", "DPM-Solver++", "DDPM"):
        assert word in tip["sampler"]
    for rule in ("confidence:", "centroid:", "both:", "none:"):
        assert rule in tip["rule"]
    assert "noisy latents" in unwrapped(dock(viewer, "Fine-tune").form["classifier_steps"].native.toolTip())
    assert "clean" in unwrapped(dock(viewer, "Fine-tune").form["clean_latents"].native.toolTip())
    load = dock(viewer, "Load model")
    assert "running average" in unwrapped(load.ema.toolTip())
    for line in s.form["guidance"].native.toolTip().splitlines():
        assert len(line) <= 72  # wrapped: Qt shows a plain-text tooltip on one line otherwise


def test_strength_shows_only_for_variations(make_napari_viewer):
    from napari_histodiff.widgets.sample import ANNOTATED, NOISE

    s = dock(make_napari_viewer(), "Sample")
    strength = s.form["strength"]
    label = s.form.rows.labelForField(strength.native)
    assert s.start_from.currentText() == NOISE
    assert strength.native.isHidden() and label.isHidden()
    s.start_from.setCurrentText(ANNOTATED)
    assert not strength.native.isHidden() and not label.isHidden()
    strength.value = 0.3
    s.start_from.setCurrentText(NOISE)
    assert strength.native.isHidden() and strength.value is None  # from noise: always pure noise


def test_selection_controls_show_only_with_a_selection_classifier(make_napari_viewer, trained_bundle,
                                                                  finetuned_bundle, fresh_model):  # noqa: F811
    from napari_histodiff import load_bundle
    from napari_histodiff.widgets.sample import UNGUIDED

    s = dock(make_napari_viewer(), "Sample")
    form = s.form
    names = ("select", "selection")

    def shown():
        return {name: form.is_shown(name) for name in names}

    assert shown() == {"select": False, "selection": False}  # no model
    fresh_model.set(open_handle(trained_bundle, "cpu"))  # pre-trained: no classes, no classifier
    assert shown() == {"select": False, "selection": False}
    assert s.target.currentText() == UNGUIDED and not form["guidance"].enabled  # nothing to guide toward
    fresh_model.set(open_handle(finetuned_bundle[0], "cpu"))
    assert shown() == {"select": True, "selection": True}
    s.target.setCurrentText("DAB-rich")
    assert form["guidance"].enabled and form["rule"].value == "both" and form["threshold"].enabled
    form["rule"].value = "centroid"  # the threshold is the confidence rules'
    assert not form["threshold"].enabled
    form["select"].value = False
    assert not form.groups["selection"].isEnabled()
    assert form["eta"].enabled
    form["sampler"].value = "dpm"  # eta is DDIM's
    assert not form["eta"].enabled
    fresh_model.set(open_handle(trained_bundle, "cpu"))
    assert shown() == {"select": False, "selection": False}


def test_load_shows_the_checkpoint_options_only_for_a_checkpoint(make_napari_viewer, tmp_path):
    w = dock(make_napari_viewer(), "Load model")
    label = w.rows.labelForField(w.config.native)
    assert label is not None and "YAML" in label.text()
    assert w.config.native.isHidden() and label.isHidden() and w.ema.isHidden()
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    w.ckpt.value = ckpt
    assert not w.config.native.isHidden() and not label.isHidden() and not w.ema.isHidden()
    assert w.source()[0] == str(ckpt)
    w.ckpt.line_edit.value = ""  # cleared
    assert w.config.native.isHidden() and w.ema.isHidden()


def test_default_output_folders_are_not_in_the_temp_folder(make_napari_viewer, monkeypatch):
    home = Path("/home/pathologist")
    monkeypatch.setenv("HOME", str(home))
    viewer = make_napari_viewer()
    temp = Path(tempfile.gettempdir()).resolve()
    for panel in ("Fine-tune", "Sample", "Review & export"):
        out = Path(str(dock(viewer, panel).out.value)).resolve()
        assert not out.is_relative_to(temp), f"{panel}: {out}"
        assert out.is_relative_to(home), f"{panel}: {out}"
    assert Path(str(dock(viewer, "Sample").out.value)) == home / "histodiff" / "samples"


def test_sample_folder_defaults_beside_the_opened_image(make_napari_viewer, tmp_path, monkeypatch):
    from skimage.io import imsave

    from napari_histodiff.widgets._forms import output_folder

    monkeypatch.setenv("HOME", "/home/pathologist")
    image = tmp_path / "case12.png"
    imsave(image, np.zeros((16, 16, 3), np.uint8), check_contrast=False)
    viewer = make_napari_viewer()
    s = dock(viewer, "Sample")
    viewer.open(str(image), plugin="napari")
    assert Path(str(s.out.value)) == tmp_path / "case12-samples"
    s.out.value = tmp_path / "mine"  # a folder the user chose stays
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), rgb=True)
    assert Path(str(s.out.value)) == tmp_path / "mine"

    slide = SimpleNamespace(metadata={"slide_path": "/slides/S1.svs"})  # as our slide reader's layers
    assert output_folder("finetuned", slide) == Path("/slides/S1-finetuned")
    assert output_folder("export") == Path("/home/pathologist/histodiff/export")


def _gui_fields():
    """(declaring class, field, default) of every field shown in a form of a job's options (nested groups
    included), and the classes that declare them."""
    import dataclasses

    from napari_histodiff.core.base.options import default_of, fields
    from napari_histodiff.core.jobs import JOBS

    out = []

    def walk(cls):
        for f in fields(cls):
            d = default_of(f)
            if dataclasses.is_dataclass(d):
                walk(type(d))
            elif f.metadata["gui"] and (cls, f) not in [(c, g) for c, g, _ in out]:
                out.append((cls, f, d))
    for job in JOBS:
        walk(job.options_class())
    return out


def test_every_option_field_tooltip_renders():
    """The tooltip text of every form field of every job: its help, the default, the plain words, wrapped."""
    from napari_histodiff.widgets._forms import PLAIN, field_tooltip

    found = _gui_fields()
    assert len(found) > 40
    for cls, f, default in found:
        tip = field_tooltip(f, default, cls)
        flat = "".join(tip.split())
        assert "".join(f.metadata["help"].split()) in flat, (cls.__name__, f.name)
        assert "".join(PLAIN.get(f"{cls.__name__}.{f.name}", "").split()) in flat
        assert all(len(line) <= 72 for line in tip.splitlines()), (cls.__name__, f.name)
    declared = {f"{cls.__name__}.{f.name}" for cls, f, _ in found}
    assert not set(PLAIN) - declared, f"plain words for no form field: {sorted(set(PLAIN) - declared)}"


def test_every_field_of_the_widgets_forms_shows_its_tooltip(qapp):
    from napari_histodiff.core.base.options import fields
    from napari_histodiff.core.generate.export import ExportOptions
    from napari_histodiff.core.jobs.sample import SampleOptions
    from napari_histodiff.core.train.finetune import FinetuneOptions
    from napari_histodiff.widgets._forms import OptionsForm, field_edit, field_tooltip, unwrapped

    for cls in (FinetuneOptions, SampleOptions, ExportOptions):
        form = OptionsForm(cls)
        declaring = {f.name: c for c in (cls, *form.nested.values()) for f in fields(c)}
        assert len(form.edits) >= 2
        for name, edit in form.edits.items():
            owner = declaring[name]
            f = next(f for f in fields(owner) if f.name == name)
            assert edit.native.toolTip() == field_tooltip(f, edit.default, owner), (cls.__name__, name)
    intent = field_edit(FinetuneOptions, "intent")  # a field shown outside the form
    assert unwrapped(intent.native.toolTip()).startswith("new folder, resume the fine-tuning saved in it")

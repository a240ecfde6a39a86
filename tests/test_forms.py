"""napari option forms are generated from the jobs' option dataclasses: same fields and defaults as the CLI,
labels in messages (pytest-qt, xvfb)."""

import dataclasses

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_widgets import dock, fresh_model  # noqa: E402,F401 (fresh_model: an autouse fixture)
from napari_histodiff.core.jobs.load import open_handle


def gui_fields(cls) -> set[str]:
    """Every field a form must show (nested option groups flattened)."""
    from napari_histodiff.core.base.options import default_of, fields

    names = set()
    for f in fields(cls):
        if f.metadata["gui"]:
            d = default_of(f)
            names |= gui_fields(type(d)) if dataclasses.is_dataclass(d) else {f.name}
    return names


def flat(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out.update(flat(v) if dataclasses.is_dataclass(v) else {f.name: v})
    return out


CLI = {"Fine-tune": ["finetune", "pre", "--labeled", "tiles", "--out", "ft"],
       "Sample": ["sample", "ft", "--out", "samples"],
       "Review & export": ["export", "samples", "--out", "set"]}


def test_every_form_shows_every_option_with_the_cli_default(make_napari_viewer):
    from napari_histodiff.cli import build_options, build_parser
    from napari_histodiff.widgets._forms import DEFAULTS

    parser = build_parser()
    viewer = make_napari_viewer()
    for name, argv in CLI.items():
        w = dock(viewer, name)
        ns = parser.parse_args(argv)
        cls = ns.job.options_class()
        cli = flat(build_options(cls, ns))
        form = w.form
        assert form.cls is cls
        assert set(form.edits) == gui_fields(cls), name  # every field marked for forms is shown
        if form.profile is not None:
            profiles = [form.profile.itemText(i) for i in range(form.profile.count())]
            assert profiles == [DEFAULTS, *cls.PROFILES]
            form.set_profile(DEFAULTS)
        shown = form.values()
        assert shown == {k: cli[k] for k in shown}, name
        assert shown == {k: v for k, v in flat(cls()).items() if k in shown}
        read = flat(form.read())
        assert {k: read[k] for k in shown} == shown
        if hasattr(w, "intent"):  # the output intent control starts at the CLI's default
            assert w.intent.value == cli["intent"] == "new"
            assert [w.intent.native.itemText(i) for i in range(w.intent.native.count())] == \
                list(cls.__dataclass_fields__["intent"].metadata["choices"])


def test_finetune_form_starts_with_the_interactive_profile_and_shows_it(make_napari_viewer):
    from napari_histodiff.core.train.finetune import FinetuneOptions
    from napari_histodiff.widgets._forms import CUSTOM, DEFAULTS

    w = dock(make_napari_viewer(), "Fine-tune")
    form = w.form
    assert form.profile.currentText() == "interactive" and not form.profile.isHidden()
    interactive = FinetuneOptions.PROFILES["interactive"]
    assert {k: form[k].value for k in interactive} == interactive
    form["unet_steps"].value = 7  # edited by hand: no profile matches
    assert form.profile.currentText() == CUSTOM
    form["unet_steps"].value = FinetuneOptions.PROFILES["interactive"]["unet_steps"]
    assert form.profile.currentText() == "interactive"
    form.profile.setCurrentText(DEFAULTS)
    assert form["classifier_steps"].value == FinetuneOptions().classifier_steps
    assert form.profile.findText(CUSTOM) < 0


def test_editors_follow_the_field_metadata(qtbot):
    from napari_histodiff.core.generate.sampling import SampleOptions
    from napari_histodiff.core.train.finetune import FinetuneOptions
    from napari_histodiff.widgets._forms import OptionsForm, unwrapped

    form = OptionsForm(SampleOptions)
    qtbot.addWidget(form)
    meta = SampleOptions.__dataclass_fields__
    assert form["n"].label == "tiles (per class)" and form["batch_size"].label == "batch size"
    assert unwrapped(form["n"].native.toolTip()).startswith(meta["n"].metadata["help"])
    assert form["n"].native.minimum() == 1
    sampler = form["sampler"].native
    assert [sampler.itemText(i) for i in range(sampler.count())] == list(meta["sampler"].metadata["choices"])
    # optional numbers: "default" until set; read back as None
    strength = form["strength"]
    assert strength.value is None and strength.native.text() == "default"
    strength.value = 0.25
    assert form.read(classes=[]).strength == 0.25
    strength.value = None
    assert form.read().strength is None
    assert form["cap"].value is None and form["cap"].native.text() == "no cap"  # SelectionRule, nested
    form["cap"].value = 0
    assert form.read().selection.cap == 0
    ft = OptionsForm(FinetuneOptions)
    qtbot.addWidget(ft)
    lr = ft["unet_learning_rate"]
    assert lr.value == 1e-5 and lr.native.text() == "1e-05"  # small floats shown and read back exactly
    lr.native.lineEdit().setText("3e-4")
    lr.native.interpretText()
    assert ft.read().unet_learning_rate == pytest.approx(3e-4)


def test_tooltips_add_the_plain_explanation_of_the_declaring_class(qtbot):
    """The help (the CLI's text) comes first, then what the option means in plain words (``PLAIN``, keyed by
    the class that declares the field, so a nested group's fields get theirs); every key names a form field."""
    from napari_histodiff.core.base.options import fields
    from napari_histodiff.core.generate.export import ExportOptions
    from napari_histodiff.core.generate.sampling import SampleOptions
    from napari_histodiff.core.generate.selection import SelectionRule
    from napari_histodiff.core.train.finetune import FinetuneOptions
    from napari_histodiff.widgets._forms import PLAIN, OptionsForm, field_edit, unwrapped

    classes = {c.__name__: c for c in (SampleOptions, SelectionRule, FinetuneOptions, ExportOptions)}
    for key in PLAIN:
        cls, name = key.split(".")
        f = next((f for f in fields(classes[cls]) if f.name == name), None)
        assert f is not None and f.metadata["gui"], f"PLAIN[{key!r}] names no field shown in forms"
    form = OptionsForm(SampleOptions)
    qtbot.addWidget(form)
    for name, key in (("eta", "SampleOptions.eta"), ("rule", "SelectionRule.rule")):
        tip = unwrapped(form[name].native.toolTip())
        help_text = SampleOptions.__dataclass_fields__.get(name, SelectionRule.__dataclass_fields__.get(name))
        assert tip.startswith(help_text.metadata["help"]) and tip.endswith(unwrapped(PLAIN[key]))
    assert "\n\n" in form["eta"].native.toolTip()  # a paragraph of its own
    assert unwrapped(field_edit(FinetuneOptions, "clean_latents").native.toolTip()).endswith(
        unwrapped(PLAIN["FinetuneOptions.clean_latents"]))
    plain = field_edit(FinetuneOptions, "intent").native.toolTip()  # no explanation: the help alone
    assert "\n\n" not in plain
    assert unwrapped(plain) == FinetuneOptions.__dataclass_fields__["intent"].metadata["help"] + " (default: new)"
    folded = OptionsForm(SampleOptions, advanced=("eta", "batch_size"))
    qtbot.addWidget(folded)
    more = unwrapped(folded.more_button.toolTip())
    assert "eta" in more and "batch size" in more


def test_messages_name_the_form_labels_not_cli_flags(make_napari_viewer, qtbot, trained_bundle, fresh_model,
                                                     tmp_path, monkeypatch):
    import napari.utils.notifications as N

    from napari_histodiff import load_bundle
    from napari_histodiff._sample_data import demo_tissue_annotated
    from napari_histodiff.widgets._common import State

    shown = []
    monkeypatch.setattr(N, "show_error", shown.append)
    viewer = make_napari_viewer()
    fresh_model.set(open_handle(trained_bundle, "cpu"))
    for data, kwargs, kind in demo_tissue_annotated():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    w = dock(viewer, "Fine-tune")
    w.out.value = str(tmp_path / "ft")
    w.extract()
    qtbot.waitUntil(lambda: w.tiles is not None, timeout=30_000)
    # a value the spin box allows but the option refuses: checked when Start is pressed
    w.form["unet_learning_rate"].value = 0.0
    w.start()
    assert shown[-1] == '"unet learning rate" must be greater than 0 (got 0.0)'
    assert w.worker is None and not (tmp_path / "ft").exists()
    w.form["unet_learning_rate"].value = 1e-5
    # a core message that refers to an option: the job checks the tiles in the worker, before writing
    w.form["min_tiles_per_class"].value = 10_000
    w.start()
    qtbot.waitUntil(lambda: w.state == State.FAILED and w.worker is None, timeout=30_000)
    assert 'lower "min tiles per class"' in shown[-1] and "--" not in shown[-1]
    assert not (tmp_path / "ft").exists()

    s = dock(viewer, "Sample")
    s.form["steps"].value = 5000  # more than the model's 1000 training timesteps
    s.start()
    qtbot.waitUntil(lambda: s.state == State.FAILED, timeout=30_000)
    assert shown[-1].startswith('"steps" must be below 1000')


def test_module_paths_in_the_napari_docs_exist():
    """docs/napari.md is maintained with the widgets (tests/test_docs.py leaves it to this file)."""
    import importlib
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "napari.md").read_text()
    paths = set(re.findall(r"`((?:napari_histodiff\.)?core(?:\.\w+)+)`", text))
    assert paths
    for path in paths:
        parts = path.removeprefix("napari_histodiff.").split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module("napari_histodiff." + ".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for name in parts[cut:]:
                obj = getattr(obj, name)
            break
        else:
            raise AssertionError(f"{path} in docs/napari.md does not exist")


def test_panel_settings_persist_across_reopen_and_restart(make_napari_viewer, qtbot, tmp_path):
    """Issue 30, item 5: closing and opening a panel (or napari) keeps its options, the output folder and
    its intent (Start on the old folder resumes), per user in one JSON file."""
    import json
    import os

    from napari_histodiff.widgets.settings import settings_file

    viewer = make_napari_viewer()
    w = dock(viewer, "Fine-tune")
    w.form["unet_steps"].value = 123
    w.form["precision"].value = w.form["precision"].choices[-1]
    w.out.value = str(tmp_path / "old bundle")
    w.intent.value = "resume"
    w.stride.setValue(48)
    viewer.window.remove_dock_widget("all")
    w2 = dock(viewer, "Fine-tune")
    assert w2 is not w
    assert w2.form["unet_steps"].value == 123 and w2.form["precision"].value == w.form["precision"].choices[-1]
    assert str(w2.out.value) == str(tmp_path / "old bundle") and w2.intent.value == "resume"
    assert w2.stride.value() == 48
    assert w2.form.profile.currentText() == "custom"  # the profile combo follows the restored values

    path = settings_file()
    assert str(path.parent) == os.environ["HISTODIFF_CONFIG"]  # (conftest: each test its own)
    saved = json.loads(path.read_text())["finetune"]  # what a new napari session starts from
    assert saved["form.unet_steps"] == 123 and saved["intent"] == "resume" and saved["stride"] == 48
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in saved.values())


def test_sample_class_follows_a_model_with_classes(make_napari_viewer, fresh_model):
    """Issue 30, item 5: "(unguided)" was the only choice of a model without classes; a four-class model then
    gets its first class, a class chosen stays while the next model has it, and a remembered class comes
    back when a model has it."""
    from types import SimpleNamespace

    from napari_histodiff.widgets.sample import ALL_CLASSES, UNGUIDED

    def model(*names):
        return SimpleNamespace(class_names=list(names), device="cpu", has=lambda part: False)

    viewer = make_napari_viewer()
    s = dock(viewer, "Sample")
    fresh_model.set(model())
    assert [s.target.itemText(i) for i in range(s.target.count())] == [UNGUIDED]
    fresh_model.set(model("tumour", "stroma", "mucosa", "fat"))
    assert s.target.currentText() == "tumour" and s.target.findText(ALL_CLASSES) >= 0
    s.target.setCurrentText("fat")
    fresh_model.set(model("fat", "tumour"))
    assert s.target.currentText() == "fat"
    s.target.setCurrentText(UNGUIDED)  # chosen while classes are there: kept
    fresh_model.set(model("tumour", "stroma", "mucosa", "fat"))
    assert s.target.currentText() == UNGUIDED

    s.target.setCurrentText("mucosa")
    viewer.window.remove_dock_widget("all")
    fresh_model.set(model())  # napari restarts with a model without classes
    s2 = dock(viewer, "Sample")
    assert s2.target.currentText() == UNGUIDED
    fresh_model.set(model("tumour", "stroma", "mucosa", "fat"))
    assert s2.target.currentText() == "mucosa"  # remembered

"""Load model: pick a bundle folder, a diffusers LDM folder or a CompVis .ckpt, and a device; shows a model card.

The load job (``core.jobs.load``, in its own process) checks the model and hands back a weights-free handle:
the Fine-tune and Sample jobs open the bundle folder themselves, so the GUI never holds a second copy. Foreign
checkpoints are converted once into a bundle in the user's cache (weights only, nothing executed)."""

from __future__ import annotations

import html
from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QProgressBar, QPushButton, QWidget

from ._common import Job, cancel_on_close, compact, form_row, jobs_in_process, notify_error, path_edit, scroll_page
from ._forms import explain_path, tooltip
from ._state import MODEL, follow_model


TIPS = {
    "builtin": "A model that comes with napari-histodiff, to start from when you have none of your own. "
    "he-starter: 64 px tiles of H&E-stained colon tissue at 0.5 µm/px, pre-trained on 41 tiles of the public "
    "NCT-CRC-HE data (Kather et al. 2019, CC BY 4.0). Fine-tune it on your annotated classes; it is not a "
    "general-purpose or high-resolution model. When chosen, it is used instead of the folder and checkpoint.",
    "path": "The model to use: a bundle folder written by histodiff pretrain, finetune or convert (a "
    "fine-tuned bundle knows your classes), or a diffusers latent-diffusion pipeline folder.",
    "ckpt": "Or a checkpoint file of the original CompVis / HistoDiffusion code (LatentDiffusion .ckpt); "
    "when given, it is used instead of the folder. It is converted in memory; nothing in it is run.",
    "config": "The YAML file that describes the checkpoint's networks (from the same project as the "
    ".ckpt). Leave empty to use one found beside the checkpoint or in ../configs/*-project.yaml.",
    "ema": "Checkpoints often hold two copies of the weights: the \"EMA\" copy, a running average over "
    "the last part of training, which usually draws cleaner tiles, and the raw model weights. On: the EMA "
    "copy when the checkpoint has one; off: the model weights.",
    "device": "Where the model runs: auto picks a GPU when there is one (cuda, then Apple mps), else the "
    "CPU. Fine-tuning and sampling run there too; on a CPU they are slow.",
    "load": "Load the model (in the background). The card below then shows its classes and size; the "
    "Fine-tune and Sample widgets use it.",
}


def resolution_line(meta: dict) -> str:
    """The magnification a model expects: ``tiles 256 px at 0.50 µm/px (128 µm across)``."""
    size, mpp = int(meta["tile_size"]), meta.get("microns_per_pixel")
    if not mpp:
        return (f"tiles {size} px at <b>unknown µm/px</b> (the model does not say which magnification it "
                "expects: tiles are cut at the image's own resolution)")
    return f"tiles {size} px at <b>{float(mpp):.2f} µm/px</b> ({size * float(mpp):.0f} µm across)"


def model_card(model) -> str:
    """The card of a :class:`~..core.formats.handle.ModelHandle`."""
    from ..core.formats.starter import starter_of

    meta = model.meta
    conv = (meta.get("provenance") or {}).get("converted")
    name = model.source.name if model.source is not None else model.path.name
    builtin = starter_of(model.path)
    name = f"{builtin} (built in)" if builtin else name
    lines = [f"<b>{name}</b>",
             resolution_line(meta),
             f"preset {meta['preset']['name']}, device {model.device}",
             "classes: " + (", ".join(model.class_names) or "none (not fine-tuned)"),
             "parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in model.parameters.items())]
    if isinstance(conv, dict):
        weights = {True: ", EMA weights", False: ", model weights"}.get(conv.get("ema"), "")
        lines.append(f"converted from {conv.get('format')} {conv.get('source')}{weights}")
    for stage, prov in (meta.get("provenance") or {}).items():
        if isinstance(prov, dict) and "steps" in prov:
            lines.append(f"{stage}: {prov['steps']} steps on {prov.get('tiles', '?')} tiles")
    starter = meta.get("starter")
    if isinstance(starter, dict) and starter.get("licence"):  # a built-in model, or fine-tuned from one
        lines.append(f"trained on data under {html.escape(starter['licence'].split(' (')[0])}: "
                     f"{html.escape(starter.get('attribution', '?').split(',')[0])} et al. (histodiff info)")
    return "<br>".join(lines)


class LoadWidget(QWidget):
    def __init__(self, napari_viewer=None):
        from ..core.base.devices import available_devices

        super().__init__()
        self.viewer = napari_viewer
        from ..core.formats.convert import ModelSource
        from ..core.formats.starter import LABELS, STARTERS

        helps = {name: f.metadata["help"] for name, f in ModelSource.__dataclass_fields__.items()}
        self.builtin = compact(QComboBox())
        self.builtin.addItem("none", None)
        for name in STARTERS:
            self.builtin.addItem(f"{name} ({LABELS.get(name, 'built in')})", name)
        self.builtin.setToolTip(tooltip(TIPS["builtin"]))
        self.path = path_edit("d")
        explain_path(self.path, tooltip(TIPS["path"]))
        self.ckpt = path_edit("r", filter="*.ckpt *.pt *.pth")
        explain_path(self.ckpt, tooltip(TIPS["ckpt"]), "file")
        self.config = path_edit("r", filter="*.yaml *.yml")
        explain_path(self.config, tooltip(helps["config"], TIPS["config"]), "file")
        self.ema = QCheckBox("EMA weights")
        self.ema.setChecked(True)
        self.ema.setToolTip(tooltip(helps["ema"] + "; off: the model weights", TIPS["ema"]))
        self.device = compact(QComboBox())
        self.device.addItems(["auto", *available_devices()])
        self.device.setToolTip(tooltip(TIPS["device"]))
        self.load_button = QPushButton("Load")
        self.load_button.setToolTip(tooltip(TIPS["load"]))
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.hide()
        self.card = QLabel("No model loaded.")
        self.card.setWordWrap(True)
        intro = QLabel("A bundle folder (from histodiff pretrain / finetune) or a diffusers LDM pipeline folder; "
                       "or a CompVis / HistoDiffusion .ckpt (used instead of the folder when given).")
        intro.setWordWrap(True)
        self.rows = form = QFormLayout()
        form_row(form, "built-in model", self.builtin)
        form_row(form, "bundle folder", self.path)
        form_row(form, "checkpoint", self.ckpt)
        form_row(form, "YAML config (.ckpt)", self.config)  # CompVis checkpoints only: shown with one
        form.addRow(self.ema)
        form_row(form, "device", self.device)
        layout = scroll_page(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.load_button)
        layout.addWidget(self.busy)
        layout.addWidget(self.card)
        layout.addStretch()
        self.load_button.clicked.connect(self.load)
        self.ckpt.changed.connect(self._source_changed)
        self._source_changed()
        follow_model(self, self._show)
        if MODEL.model is not None:
            self._show(MODEL.model)
        self.job = Job(process=jobs_in_process(), title="loading a model")
        cancel_on_close(self, self.job)

    def load(self):
        from ..core.base.errors import HistodiffError
        from ..core.jobs.load import load_model

        if self.job.busy:
            return
        try:
            source, options = self.source()
        except HistodiffError as e:  # a built-in model this copy lacks: the error names the recipe
            return notify_error(e)
        self.load_button.setEnabled(False)
        self.busy.show()
        self.job.start(load_model, source, self.device.currentText(), options.get("config"), options.get("ema"),
                       on_yield=self._event, on_done=MODEL.set, on_error=notify_error, on_finish=self._idle)

    def _event(self, event):
        if event.message:
            self.card.setText(event.message)

    def source(self) -> tuple[str, dict]:
        """What to load and the options for a CompVis checkpoint."""
        if self.builtin.currentData():
            from ..core.formats.starter import starter_folder

            return str(starter_folder(self.builtin.currentData())), {}
        ckpt = str(self.ckpt.value)
        if ckpt not in ("", ".") and Path(ckpt).is_file():
            config = str(self.config.value)
            return ckpt, {"config": config if config not in ("", ".") else None,
                          "ema": None if self.ema.isChecked() else False}
        return str(self.path.value), {}

    @property
    def checkpoint_given(self) -> bool:
        """Whether a CompVis .ckpt is chosen (then the YAML config and EMA choice apply)."""
        text = str(self.ckpt.value).strip()
        return text not in ("", ".") and not Path(text).is_dir()

    def _source_changed(self, *_):
        """The checkpoint's options (YAML config, EMA weights) show only when a checkpoint is chosen."""
        on = self.checkpoint_given
        for widget in (self.config.native, self.ema):
            if hasattr(self.rows, "setRowVisible"):  # Qt >= 6.4: no gap left by a hidden row
                self.rows.setRowVisible(widget, on)
            else:
                label = self.rows.labelForField(widget)
                if label is not None:
                    label.setVisible(on)
                widget.setVisible(on)

    def _idle(self):
        self.busy.hide()
        self.load_button.setEnabled(True)

    def _show(self, model):
        self.card.setText(model_card(model) if model is not None else "No model loaded.")

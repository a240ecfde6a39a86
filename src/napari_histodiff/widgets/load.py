"""Load model: pick a bundle folder, a diffusers LDM folder or a CompVis .ckpt, and a device; shows a model card.

Foreign checkpoints are converted in memory by ``core.formats.convert.open_model`` (weights only, nothing
executed); `histodiff convert` saves them as a bundle once."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QProgressBar, QPushButton, QWidget

from ._common import compact, form_row, notify_error, path_edit, scroll_page, start_worker
from ._state import MODEL, follow_model


def model_card(bundle) -> str:
    meta = bundle.meta
    counts = {type(m).__name__: sum(p.numel() for p in m.parameters()) for m in bundle.models()}
    conv = (meta.get("provenance") or {}).get("converted")
    source = Path(conv["source"]).name if isinstance(conv, dict) and conv.get("source") else "bundle"
    lines = [f"<b>{bundle.path.name if bundle.path else source}</b>",
             f"preset {meta['preset']['name']}, tiles {bundle.tile_size} px, device {bundle.device}",
             "classes: " + (", ".join(bundle.class_names) or "none (not fine-tuned)"),
             "parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items())]
    if isinstance(conv, dict):
        weights = {True: ", EMA weights", False: ", model weights"}.get(conv.get("ema"), "")
        lines.append(f"converted from {conv.get('format')} {conv.get('source')}{weights}")
    for stage, prov in (meta.get("provenance") or {}).items():
        if isinstance(prov, dict) and "steps" in prov:
            lines.append(f"{stage}: {prov['steps']} steps on {prov.get('tiles', '?')} tiles")
    return "<br>".join(lines)


class LoadWidget(QWidget):
    def __init__(self, napari_viewer=None):
        from ..core.base.devices import available_devices

        super().__init__()
        self.viewer = napari_viewer
        from ..core.formats.convert import ModelSource

        helps = {name: f.metadata["help"] for name, f in ModelSource.__dataclass_fields__.items()}
        self.path = path_edit("d")
        self.ckpt = path_edit("r", filter="*.ckpt *.pt *.pth")
        self.config = path_edit("r", filter="*.yaml *.yml")
        self.ema = QCheckBox("EMA weights")
        self.ema.setChecked(True)
        self.ema.setToolTip(helps["ema"] + "; off: the model weights")
        self.device = compact(QComboBox())
        self.device.addItems(["auto", *available_devices()])
        self.load_button = QPushButton("Load")
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.hide()
        self.card = QLabel("No model loaded.")
        self.card.setWordWrap(True)
        intro = QLabel("A bundle folder (from histodiff pretrain / finetune) or a diffusers LDM pipeline folder; "
                       "or a CompVis / HistoDiffusion .ckpt (used instead of the folder when given).")
        intro.setWordWrap(True)
        form = QFormLayout()
        form_row(form, "bundle folder", self.path, "bundle folder or diffusers LDM pipeline folder")
        form_row(form, "checkpoint", self.ckpt, "CompVis / HistoDiffusion LatentDiffusion .ckpt")
        form_row(form, "YAML config", self.config, helps["config"])
        form.addRow(self.ema)
        form_row(form, "device", self.device, "auto (cuda > mps > cpu), or a device found on this machine; "
                 "fine-tuning and sampling run there")
        layout = scroll_page(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.load_button)
        layout.addWidget(self.busy)
        layout.addWidget(self.card)
        layout.addStretch()
        self.load_button.clicked.connect(self.load)
        follow_model(self, self._show)
        if MODEL.bundle is not None:
            self._show(MODEL.bundle)
        self.worker = None

    def load(self):
        from ..core.formats.convert import open_model

        def job(source, device, options):
            yield
            return open_model(source, device=device, **options)

        self.load_button.setEnabled(False)
        self.busy.show()
        source, options = self.source()
        self.worker = start_worker(job, source, self.device.currentText(), options,
                                   on_done=MODEL.set, on_error=notify_error, on_finish=self._idle)

    def source(self) -> tuple[str, dict]:
        """What to load and the options for a CompVis checkpoint."""
        ckpt = str(self.ckpt.value)
        if ckpt not in ("", ".") and Path(ckpt).is_file():
            config = str(self.config.value)
            return ckpt, {"config": config if config not in ("", ".") else None,
                          "ema": None if self.ema.isChecked() else False}
        return str(self.path.value), {}

    def _idle(self):
        self.busy.hide()
        self.load_button.setEnabled(True)

    def _show(self, bundle):
        self.card.setText(model_card(bundle) if bundle is not None else "No model loaded.")

"""Load model: pick a bundle folder, a diffusers LDM folder or a CompVis .ckpt, and a device; shows a model card.

Foreign checkpoints are converted in memory by ``core.formats.convert.open_model`` (weights only, nothing
executed); `histodiff convert` saves them as a bundle once."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QComboBox, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ._common import notify_error, start_worker
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
        from magicgui.widgets import FileEdit

        from ..core.base.devices import available_devices

        super().__init__()
        self.viewer = napari_viewer
        self.path = FileEdit(mode="d", label="bundle folder")
        self.ckpt = FileEdit(mode="r", filter="*.ckpt *.pt *.pth", label="checkpoint")
        self.config = FileEdit(mode="r", filter="*.yaml *.yml", label="config")
        self.ema = QCheckBox("EMA weights (when the checkpoint has them)")
        self.ema.setChecked(True)
        self.device = QComboBox()
        self.device.addItems(["auto", *available_devices()])
        self.load_button = QPushButton("Load")
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.hide()
        self.card = QLabel("No model loaded.")
        self.card.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Bundle folder (from histodiff pretrain / finetune) or diffusers LDM pipeline folder:"))
        layout.addWidget(self.path.native)
        layout.addWidget(QLabel("or a CompVis / HistoDiffusion .ckpt (overrides the folder), its YAML if not beside it:"))
        layout.addWidget(self.ckpt.native)
        layout.addWidget(self.config.native)
        layout.addWidget(self.ema)
        layout.addWidget(QLabel("Device:"))
        layout.addWidget(self.device)
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

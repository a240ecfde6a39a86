"""Load model: pick a bundle folder and a device; shows a model card."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ._common import notify_error, start_worker
from ._state import MODEL, follow_model


def model_card(bundle) -> str:
    meta = bundle.meta
    counts = {type(m).__name__: sum(p.numel() for p in m.parameters()) for m in bundle.models()}
    lines = [f"<b>{bundle.path.name if bundle.path else 'bundle'}</b>",
             f"preset {meta['preset']['name']}, tiles {bundle.tile_size} px, device {bundle.device}",
             "classes: " + (", ".join(bundle.class_names) or "none (not fine-tuned)"),
             "parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items())]
    for stage, prov in (meta.get("provenance") or {}).items():
        if isinstance(prov, dict) and "steps" in prov:
            lines.append(f"{stage}: {prov['steps']} steps on {prov.get('tiles', '?')} tiles")
    return "<br>".join(lines)


class LoadWidget(QWidget):
    def __init__(self, napari_viewer=None):
        from magicgui.widgets import FileEdit

        from ..core.devices import available_devices

        super().__init__()
        self.viewer = napari_viewer
        self.path = FileEdit(mode="d", label="bundle folder")
        self.device = QComboBox()
        self.device.addItems(["auto", *available_devices()])
        self.load_button = QPushButton("Load")
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.hide()
        self.card = QLabel("No model loaded.")
        self.card.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Bundle folder (from histodiff pretrain / finetune):"))
        layout.addWidget(self.path.native)
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
        from ..core.bundle import load_bundle

        def job(path, device):
            yield
            return load_bundle(path, device=device)

        self.load_button.setEnabled(False)
        self.busy.show()
        self.worker = start_worker(job, str(self.path.value), self.device.currentText(),
                                   on_done=MODEL.set, on_error=notify_error, on_finish=self._idle)

    def _idle(self):
        self.busy.hide()
        self.load_button.setEnabled(True)

    def _show(self, bundle):
        self.card.setText(model_card(bundle) if bundle is not None else "No model loaded.")

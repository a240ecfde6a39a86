"""What the widgets share: the loaded model and whether a training is running."""

from __future__ import annotations

from psygnal import Signal


class LoadedModel:
    """The bundle loaded by the Load widget (or produced by the Fine-tune widget)."""

    changed = Signal(object)

    def __init__(self):
        self.bundle = None
        self.training = False  # one training at a time
        self.labeled = None  # the tiles last extracted by the Fine-tune widget (sources of variations)

    def set(self, bundle) -> None:
        self.bundle = bundle
        self.changed.emit(bundle)

    def require(self):
        from ..core.base.errors import HistodiffError

        if self.bundle is None:
            raise HistodiffError("no model loaded: open Plugins > HistoDiffusion > Load model and load a bundle")
        return self.bundle


MODEL = LoadedModel()


def follow_model(widget, method) -> None:
    """Call ``method(bundle)`` when the model changes, until ``widget`` is deleted."""
    MODEL.changed.connect(method)
    widget.destroyed.connect(lambda *_: MODEL.changed.disconnect(method, missing_ok=True))

"""What the widgets share: the loaded model and whether a training is running."""

from __future__ import annotations

from psygnal import Signal


class LoadedModel:
    """The model chosen in the Load widget (or produced by the Fine-tune widget): a
    :class:`~..core.formats.handle.ModelHandle`, its folder and description; jobs open its weights."""

    changed = Signal(object)

    def __init__(self):
        self.model = None
        self.training = False  # one training at a time
        self.labeled = None  # the tiles last extracted by the Fine-tune widget (sources of variations)

    def set(self, model) -> None:
        self.model = model
        self.changed.emit(model)

    def require(self):
        from ..core.base.errors import HistodiffError

        if self.model is None:
            raise HistodiffError("no model loaded: open Plugins > HistoDiffusion > Load model and load a bundle")
        return self.model


MODEL = LoadedModel()


def follow_model(widget, method) -> None:
    """Call ``method(model)`` when the model changes, until ``widget`` is deleted."""
    MODEL.changed.connect(method)
    widget.destroyed.connect(lambda *_: MODEL.changed.disconnect(method, missing_ok=True))

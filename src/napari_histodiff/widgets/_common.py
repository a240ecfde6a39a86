"""Shared widget helpers: plain messages, generator workers, controls and scrolling pages.
The option forms are in :mod:`._forms`."""

from __future__ import annotations

from enum import Enum

from qtpy.QtWidgets import (QComboBox, QFormLayout, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget)


class State(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


# -- messages ----------------------------------------------------------------------------------

def _shower(labels):
    """``name -> text`` from a mapping, a callable or None (then: the field name with spaces)."""
    if callable(labels):
        return labels
    labels = dict(labels or {})
    return lambda name: labels.get(name, name.replace("_", " "))


def render(text: str, labels=None) -> str:
    """A core message with its option references ``{opt:field}`` / ``{opt:field=value}`` shown as the
    form's labels: ``"classifier steps"``, ``"intent: resume"``, ``"kept tiles only" off``."""
    from ..core.base.errors import refs

    label = _shower(labels)

    def show_field(name):
        return f'"{label(name)}"'

    def show_value(name, value):
        if value.lower() in ("true", "false"):
            return f'"{label(name)}" {"on" if value.lower() == "true" else "off"}'
        return f'"{label(name)}: {value}"'

    return refs(text, show_field, show_value)


def plain_message(exc: BaseException, labels=None) -> str:
    """A message a pathologist can act on; option references name the widget's labels."""
    from ..core.base.errors import HistodiffError
    from ..core.base.memory import memory_kind
    from ..core.base.options import OptionError

    if isinstance(exc, OptionError):
        return render(exc.render(lambda name: render("{opt:" + name + "}", labels)), labels)
    if isinstance(exc, HistodiffError):
        return render(exc.raw, labels)
    if memory_kind(exc):  # workers get this from guard_memory already; this is for the GUI thread
        return "out of memory: lower the batch size (or the number of tiles per batch) and try again"
    return f"{type(exc).__name__}: {exc}"


def notify_error(exc: BaseException, labels=None) -> None:
    from napari.utils.notifications import show_error

    show_error(plain_message(exc, labels))


def notify_warning(text: str, labels=None) -> None:
    from napari.utils.notifications import show_warning

    show_warning(render(text, labels))


# -- workers -----------------------------------------------------------------------------------

STOPPED = object()  # what a worker returns when it was asked to stop


def _stoppable(flag: dict, gen_func, *args):
    """Drive a core generator; on a stop request, close it in the worker thread so that its
    clean-up (a resumable checkpoint, removing partial output) runs before the worker ends.
    Out of memory becomes a plain error whose fix names fields of the first argument (the job's options)."""
    import dataclasses

    from ..core.base.memory import guard_memory

    opts = args[0] if args and dataclasses.is_dataclass(args[0]) else None
    names = [f.name for f in dataclasses.fields(opts)] if opts is not None else ()
    gen = flag["gen"] = guard_memory(gen_func(*args), names)
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            yield event
            if flag["stop"]:
                return STOPPED
    finally:
        gen.close()


def start_worker(gen_func, *args, on_yield=None, on_done=None, on_error=None, on_finish=None):
    """Run a core generator in a napari generator worker (pausable). ``worker.request_stop()``
    stops it at the next progress event; ``on_done`` is then not called."""
    import gc

    from napari.qt.threading import create_worker

    # A full garbage collection over napari's many objects holds the GIL for a few hundred ms,
    # and model loading in the worker triggers one; frozen objects are not scanned again.
    gc.freeze()
    flag = {"stop": False}
    # errors go to ``on_error`` only (create_worker would also re-raise them in the event loop,
    # where napari shows a second notification with the raw exception)
    worker = create_worker(_stoppable, flag, gen_func, *args, _start_thread=False, _ignore_errors=True)
    worker.request_stop = lambda: flag.update(stop=True)
    # napari quits workers when the viewer closes; close the core generator then too, so its
    # clean-up (checkpoint, removing partial output) runs (the worker no longer touches it)
    worker.aborted.connect(lambda: flag["gen"].close() if "gen" in flag else None)
    if on_yield is not None:
        worker.yielded.connect(on_yield)
    if on_done is not None:
        worker.returned.connect(lambda result: None if result is STOPPED else on_done(result))
    worker.errored.connect(on_error or notify_error)
    if on_finish is not None:
        worker.finished.connect(on_finish)
    worker.start()
    return worker


# -- controls --------------------------------------------------------------------------------

def compact(combo: QComboBox) -> QComboBox:
    """A combo box whose longest item does not set the dock's width (it elides instead)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(6)
    combo.setMinimumWidth(80)
    return combo


def path_edit(mode: str = "d", value=None, filter: str | None = None, tip: str = ""):
    """A magicgui FileEdit with a short button (the dock is narrow)."""
    from magicgui.widgets import FileEdit

    edit = FileEdit(mode=mode, filter=filter) if value is None else FileEdit(mode=mode, filter=filter, value=value)
    edit.choose_btn.text = "Browse…"
    edit.native.setToolTip(tip)
    return edit


def form_row(layout: QFormLayout, label: str, widget, tip: str = "") -> None:
    """A labelled row whose label carries the widget's tooltip."""
    native = getattr(widget, "native", widget)
    label_widget = QLabel(label)
    label_widget.setToolTip(tip or native.toolTip())
    if tip and not native.toolTip():
        native.setToolTip(tip)
    layout.addRow(label_widget, native)


def scroll_page(widget: QWidget) -> QVBoxLayout:
    """The layout of a vertically scrolling page filling ``widget`` (napari dock widgets do not scroll,
    and a tall widget would otherwise set the whole window's minimum height). The page is
    ``widget.page`` (e.g. to take a screenshot of all of it)."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    widget.page = QWidget()
    area.setWidget(widget.page)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return QVBoxLayout(widget.page)

"""Shared widget helpers: plain messages, generator workers, forms built from core dataclasses."""

from __future__ import annotations

import dataclasses
from enum import Enum


class State(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


def plain_message(exc: BaseException) -> str:
    """A message a pathologist can act on."""
    from ..core.base.errors import HistodiffError

    text = str(exc)
    if isinstance(exc, HistodiffError):
        return text
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return "out of memory: lower the batch size (or the number of tiles per batch) and try again"
    return f"{type(exc).__name__}: {text}"


def notify_error(exc: BaseException) -> None:
    from napari.utils.notifications import show_error

    show_error(plain_message(exc))


STOPPED = object()  # what a worker returns when it was asked to stop


def _stoppable(flag: dict, gen_func, *args):
    """Drive a core generator; on a stop request, close it in the worker thread so that its
    clean-up (a resumable checkpoint, removing partial output) runs before the worker ends."""
    gen = flag["gen"] = gen_func(*args)
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
    worker = create_worker(_stoppable, flag, gen_func, *args, _start_thread=False)
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


def dataclass_form(cls, names: list[str], **values):
    """A magicgui Container with one widget per dataclass field (defaults from the dataclass)."""
    from magicgui.widgets import Container, create_widget

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(names) - known
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    defaults = cls()
    widgets = []
    for name in names:
        value = values.get(name, getattr(defaults, name))
        options = {"max": 10**7} if isinstance(value, int) and not isinstance(value, bool) else {}
        if isinstance(value, float):
            options = {"max": 10**7, "step": 0.01 if value < 1 else 0.5}
        widgets.append(create_widget(value=value, annotation=type(value), name=name,
                                     label=name.replace("_", " "), options=options))
    return Container(widgets=widgets)


def read_form(form, cls, **extra):
    """The dataclass instance a form describes (plus ``extra`` fields), validated."""
    obj = cls(**{w.name: w.value for w in form}, **extra)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj

"""Progress events yielded by long-running core generators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generator, TypeVar

R = TypeVar("R")


@dataclass
class Progress:
    """One step of long work: ``stage`` names it, ``step`` of ``total`` says how far."""

    stage: str
    step: int
    total: int
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    data: Any = None  # a payload, e.g. finished tiles while sampling


def relay(gen, on_event):
    """``yield from gen`` (sends and throws forwarded), calling ``on_event(event)`` before each event is
    passed on; returns ``gen``'s result."""
    try:
        event = next(gen)
        while True:
            on_event(event)
            try:
                sent = yield event
            except GeneratorExit:
                raise
            except BaseException as e:  # noqa: BLE001 - forwarded like yield from
                event = gen.throw(e)
            else:
                event = gen.send(sent)
    except StopIteration as stop:
        return stop.value


def warning(text: str) -> Progress:
    """An event that carries a warning for the user (the CLI prints it, napari shows it)."""
    return Progress("warning", 0, 0, message=text)


def run_to_end(gen: Generator[Progress, None, R], on_event=None) -> R:
    """Drain a progress generator, calling ``on_event`` for each event; return its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)



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



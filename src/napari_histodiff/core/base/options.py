"""Job options declared once: a dataclass field carries its default, help, choices and limits.

The CLI (``napari_histodiff.cli``) and the napari forms are generated from these fields, and
:func:`check` validates any options object against them. Messages name the field
(``classifier_steps must be at least 1``); the CLI shows it as its flag, napari as its label.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from .errors import HistodiffError, plain, refs  # noqa: F401 (refs, plain: for the CLI and forms)

INTENTS = ("new", "resume", "overwrite", "append")


def option(default: Any = dataclasses.MISSING, *, help: str, factory=None, choices=None, min=None, max=None,
           min_open=False, flags: tuple[str, ...] = (), consts: dict | None = None, positional=False,
           required=False, metavar=None, cli=True, gui=True, label=None, group=None, aliases=None):
    """A dataclass field with what the CLI, the forms and :func:`check` need.

    ``min``/``max``: inclusive limits (``min_open``: the minimum itself is refused); ``flags``:
    extra spellings kept working; ``consts``: extra flags that set a fixed value (``{"--png": "png"}``);
    ``cli``/``gui``: shown there; ``required``: must be given (inputs such as folders); ``aliases``: old
    values still accepted for a choice (``{"no": "fp32"}``), read as the value they stand for."""
    meta = dict(help=help, choices=tuple(choices) if choices else None, min=min, max=max, min_open=min_open,
                flags=tuple(flags), consts=dict(consts or {}), positional=positional, required=required,
                metavar=metavar, cli=cli, gui=gui, label=label, group=group,
                aliases=dict(aliases or {}))
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class OptionError(HistodiffError):
    """A bad option value. ``str()`` names the field; :meth:`render` names it as the CLI or a form does."""

    def __init__(self, name: str, problem: str):
        self.name, self.problem = name, problem
        super().__init__(f"{name} {problem}")

    def render(self, show) -> str:
        return f"{show(self.name)} {self.problem}"


def field_type(tp) -> tuple[type, bool, bool]:
    """(element type, optional, a list) of ``T``, ``T | None``, ``list[T]`` or ``list[T] | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1
    if optional:
        tp = args[0]
    if typing.get_origin(tp) in (list, tuple):
        return typing.get_args(tp)[0], optional, True
    return tp, optional, False


def fields(obj_or_cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(obj_or_cls) if "help" in f.metadata]


def default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _numbers(value) -> list:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def check(obj) -> None:
    """Validate every declared field of ``obj``: finite, limits, choices. (Inputs marked ``required``
    may come in memory instead, e.g. from napari; the jobs check them with :func:`require`.)"""
    for f in fields(obj):
        m, value = f.metadata, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check(value)
            continue
        if value is None:
            continue
        for v in _numbers(value):
            if isinstance(v, float) and not math.isfinite(v):
                raise OptionError(f.name, f"must be a finite number, not {v}")
            if m["min"] is not None and (v < m["min"] or (m["min_open"] and v == m["min"])):
                word = "greater than" if m["min_open"] else "at least"
                raise OptionError(f.name, f"must be {word} {m['min']} (got {v})")
            if m["max"] is not None and v > m["max"]:
                raise OptionError(f.name, f"must be at most {m['max']} (got {v})")
        if m["choices"] is not None:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if v not in m["choices"] and v not in m.get("aliases", {}):
                    raise OptionError(f.name, f"must be one of {', '.join(map(str, m['choices']))} (got {v!r})")


def require(obj, *names) -> None:
    """Refuse missing inputs (``None`` or empty)."""
    for name in names:
        if getattr(obj, name) in (None, "", [], ()):
            help_text = next(f.metadata["help"] for f in fields(obj) if f.name == name)
            raise OptionError(name, f"is required: {help_text}")


def record(obj) -> dict:
    """The options as JSON-safe values (paths as strings), for provenance records."""
    def safe(v):
        if dataclasses.is_dataclass(v):
            return record(v)
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [safe(x) for x in v]
        return v
    return {f.name: safe(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def device_option(**kw):
    """The ``device`` field every job that runs a model has (napari takes it from the Load widget)."""
    return option("auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps", gui=False, **kw)


def seed_option(**kw):
    return option(0, min=0, help="random seed", **kw)


def precision_option(**kw):
    """The ``precision`` field of the jobs that run models (``--mixed-precision no|bf16|fp16`` still works)."""
    from .precision import ALIASES, HELP, PRECISIONS

    return option("auto", choices=PRECISIONS, aliases=ALIASES, flags=("--mixed-precision",), help=HELP, **kw)

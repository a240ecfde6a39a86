"""Explicit key tables between a foreign state dict layout and a diffusers model, both ways.

A table is a list of :class:`Entry`: source keys, target keys and a pair of functions that move
the tensors (most entries are one key to one key, unchanged). ``apply`` checks every key: source
keys that no entry takes, target keys that no entry fills, and shapes that do not fit, and
reports all of them in one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..base.errors import HistodiffError


def _same(ts):
    return list(ts)


@dataclass(frozen=True)
class Entry:
    src: tuple[str, ...]
    dst: tuple[str, ...]
    forward: Callable = _same  # list of src tensors -> list of dst tensors
    backward: Callable = _same  # list of dst tensors -> list of src tensors


def plain(src: str, dst: str, names=("weight", "bias")) -> list[Entry]:
    return [Entry((f"{src}.{n}",), (f"{dst}.{n}",)) for n in names]


def renamed(src: str, dst: str, parts: dict[str, str], names=("weight", "bias")) -> list[Entry]:
    return [e for a, b in parts.items() for e in plain(f"{src}.{a}", f"{dst}.{b}", names)]


def conv_as_linear(src: str, dst: str, ndim: int) -> list[Entry]:
    def fwd(ts):
        w = ts[0]
        return [w.reshape(w.shape[0], w.shape[1])]

    def bwd(ts):
        return [ts[0].reshape(*ts[0].shape, *([1] * (ndim - 2)))]

    return [Entry((f"{src}.weight",), (f"{dst}.weight",), fwd, bwd), Entry((f"{src}.bias",), (f"{dst}.bias",))]


def _few(items, n=8) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def apply(entries, source: dict, expected: dict, what: str) -> dict:
    """Move ``source`` tensors into the layout of ``expected`` (key -> shape); one error lists every problem."""
    out, used, problems, missing, missing_dst = {}, set(), [], [], set()
    for e in entries:
        src, dst, fn = e.src, e.dst, e.forward
        if not all(k in expected for k in dst):
            continue
        if not all(k in source for k in src):
            missing += [k for k in src if k not in source]
            missing_dst.update(dst)
            continue
        tensors = fn([source[k] for k in src])
        used.update(src)
        for k, t in zip(dst, tensors):
            if tuple(t.shape) != tuple(expected[k]):
                problems.append(f"{'/'.join(src)} has shape {tuple(source[src[0]].shape)}, "
                                f"{k} needs {tuple(expected[k])}")
            out[k] = t.contiguous()
    unexpected = [k for k in source if k not in used]
    unfilled = [k for k in expected if k not in out and k not in missing_dst]
    if missing:
        problems.insert(0, f"missing keys: {_few(missing)}")
    if unfilled:
        problems.insert(0, f"no source for: {_few(unfilled)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if problems:
        raise HistodiffError(f"{what} does not match its configuration: " + "; ".join(problems))
    return out


def apply_backward(entries, source: dict, what: str) -> dict:
    """The foreign layout of a diffusers state dict; every diffusers key must be taken by an entry."""
    out, used = {}, set()
    for e in entries:
        if all(k in source for k in e.dst):
            out.update(zip(e.src, (t.contiguous() for t in e.backward([source[k] for k in e.dst]))))
            used.update(e.dst)
    left = [k for k in source if k not in used]
    if left:
        raise HistodiffError(f"{what} has weights that the target layout cannot hold: {_few(left)}")
    return out

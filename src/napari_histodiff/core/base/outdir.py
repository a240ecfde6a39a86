"""Output folders have an owner: one rule for every job that writes.

A job states its intent: ``new`` (the folder must not exist or be empty), ``resume`` (continue the
project's own output of that kind), ``overwrite`` (replace it) or ``append`` (add to it). A folder
is replaced, resumed or added to only if its ownership record (:mod:`.owner`) is of that kind and
covers everything in it; then only what the record lists is removed or replaced. Anything else is
refused, naming what is not ours. A run that fails before it wrote its output removes the folder it
created, so the same command can simply be run again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .devices import is_main_process, wait_for_everyone, world_size
from .errors import HistodiffError
from .fsfaults import check_writable
from .owner import LOCK, MARKER, claim, foreign, owned, read_owner, remove_owned, seal

OUTPUT_FILES = {  # kind -> files (globs) a finished or resumable output of that kind holds
    "bundle": ("histodiff.json", "training/*/step-*/checkpoint.json", "training/*/checkpoint.json"),
    "samples": ("samples.csv",),
    "export": ("export.json",),
    "evaluation": ("results.json",),
    "demo": ("histodiff-demo.json",),
    "tiles": ("tiles.csv",),
}
MARKERS = OUTPUT_FILES  # older name
WHAT = {"bundle": "model bundle", "samples": "sample folder", "export": "exported set",
        "evaluation": "evaluation folder", "demo": "demo folder", "tiles": "tile folder"}
A = {"bundle": "a", "samples": "a", "export": "an", "evaluation": "an", "demo": "a", "tiles": "a"}
OUTPUT_FILES["audit"], WHAT["audit"], A["audit"] = ("audit.json",), "audit folder", "an"


def has_output(folder, kind: str) -> bool:
    """Whether ``folder`` holds the files of a ``kind`` output (what it is, not whose it is)."""
    folder = Path(folder)
    return folder.is_dir() and any(p.is_file() for m in OUTPUT_FILES[kind] for p in folder.glob(m))


def _resumable(folder: Path, kind: str) -> bool:
    """Whether a failed run left something to continue from: a training checkpoint for a bundle (parts
    copied from the pre-trained model are not), the kind's output files otherwise."""
    globs = OUTPUT_FILES[kind][1:] if kind == "bundle" else OUTPUT_FILES[kind]
    return any(p.is_file() for g in globs for p in folder.glob(g))


def is_marked(folder, kind: str) -> bool:
    """Whether ``folder`` is our output of ``kind``: our ownership record of that kind is there."""
    return owned(folder, kind)


def kind_of(folder) -> str | None:
    """Which kind of output ``folder`` looks like (by its files), or None."""
    return next((kind for kind in OUTPUT_FILES if has_output(folder, kind)), None)


def _is_empty(folder: Path) -> bool:
    """Nothing in it, or nothing but our record (a run that stopped before writing anything)."""
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    return not names or (names <= {MARKER, LOCK} and read_owner(folder) is not None and not foreign(folder))


def _named(paths, n: int = 5) -> str:
    shown = ", ".join(paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def check_output(out, kind: str, intent: str = "new", allowed=("new", "overwrite")) -> None:
    """Refuse an output folder that this intent may not use; touches nothing."""
    out = Path(out)
    if not is_main_process():
        return  # under a launcher, the main process checks and owns the folder
    if intent not in allowed:
        raise HistodiffError(f"intent must be one of {', '.join(allowed)} for {A[kind]} {WHAT[kind]} (got {intent!r})")
    if out.exists() and not out.is_dir():
        raise HistodiffError(f"output {out} is a file; choose a folder path")
    check_writable(out)
    if not out.exists() or _is_empty(out):
        if intent == "append":
            raise HistodiffError(f"there is no {WHAT[kind]} in {out} to append to; leave out {{opt:intent=append}}")
        return
    rec = read_owner(out)
    if rec is None:
        raise HistodiffError(f"output folder {out} holds files and is not a folder napari-histodiff wrote (it has "
                             f"no {MARKER}; a file name such as {OUTPUT_FILES[kind][0]} proves nothing); it is never "
                             f"replaced or changed: choose a new or empty folder for the {WHAT[kind]}")
    if rec.get("kind") != kind:
        other = rec.get("kind")
        what = f"{A[other]} {WHAT[other]}" if other in WHAT else f"another kind of output ({other})"
        raise HistodiffError(f"output folder {out} holds {what}, not {A[kind]} {WHAT[kind]}; it is not replaced: "
                             f"choose a new or empty folder for the {WHAT[kind]}")
    if intent == "new":
        fixes = [f"{{opt:intent={i}}}" for i in ("resume", "overwrite", "append") if i in allowed]
        raise HistodiffError(f"output folder {out} already holds {A[kind]} {WHAT[kind]}; choose another folder"
                             + (f", or choose {' or '.join(fixes)}" if fixes else ""))
    check_foreign(out, kind)


def check_foreign(out, kind: str) -> None:
    """Refuse, naming them, when ``out`` holds anything our record does not list."""
    extra = foreign(out)
    if extra:
        raise HistodiffError(f"{WHAT[kind]} {out} holds files napari-histodiff did not write (or that changed since): "
                             f"{_named(extra)}; nothing was changed: move them elsewhere, or choose a new folder")


def prepare_output(out, kind: str, intent: str = "new", allowed=("new", "overwrite")) -> Path:
    """:func:`check_output`, then remove what we wrote there when overwriting; creates the folder and
    records (claims) what a job of this kind will write in it."""
    out = Path(out)
    check_output(out, kind, intent, allowed)
    if not is_main_process():
        return out
    if intent == "overwrite" and is_marked(out, kind):
        remove_owned(out)
    out.mkdir(parents=True, exist_ok=True)
    claim(out, kind)
    return out


class output_folder:
    """``with output_folder(out, kind, intent):`` prepares ``out``; on success lists what was written
    (:func:`.owner.seal`); if the body fails before the kind's output exists, removes the folder when
    this run created it (empties nothing else)."""

    def __init__(self, out, kind: str, intent: str = "new", allowed=("new", "overwrite")):
        self.out, self.kind, self.intent, self.allowed = Path(out), kind, intent, allowed

    def __enter__(self) -> Path:
        self.created = not self.out.exists()
        out = prepare_output(self.out, self.kind, self.intent, self.allowed)
        wait_for_everyone()  # under a launcher the others start once the main process has prepared it
        return out

    def __exit__(self, exc_type, exc, tb):
        if not is_main_process() or (exc_type is not None and world_size() > 1):
            return False  # one failing process never removes the folder under the others
        if exc_type is None:
            seal(self.out, self.kind)
        elif self.created and not _resumable(self.out, self.kind):
            shutil.rmtree(self.out, ignore_errors=True)
        return False

"""Output folders have an owner: one rule for every job that writes.

A job states its intent: ``new`` (the folder must not exist or be empty), ``resume`` (continue the
project's own output of that kind), ``overwrite`` (replace it) or ``append`` (add to it). A folder
is replaced or added to only if it carries the project's marker for that kind of output; any
other non-empty folder is refused, whatever the intent. A run that fails before it wrote a marker
removes the folder it created, so the same command can simply be run again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .devices import is_main_process
from .errors import HistodiffError

MARKERS = {  # kind -> files (globs) that mark a folder as the project's own output of that kind
    "bundle": ("histodiff.json", "training/*/step-*/checkpoint.json", "training/*/checkpoint.json"),  # or a run to resume
    "samples": ("samples.csv",),
    "export": ("export.json",),
    "evaluation": ("results.json",),
    "demo": ("histodiff-demo.json",),
    "tiles": ("tiles.csv",),
}
WHAT = {"bundle": "model bundle", "samples": "sample folder", "export": "exported set",
        "evaluation": "evaluation folder", "demo": "demo folder", "tiles": "tile folder"}
A = {"bundle": "a", "samples": "a", "export": "an", "evaluation": "an", "demo": "a", "tiles": "a"}


def is_marked(folder, kind: str) -> bool:
    """Whether ``folder`` carries the project's marker for ``kind``."""
    folder = Path(folder)
    return folder.is_dir() and any(p.is_file() for m in MARKERS[kind] for p in folder.glob(m))


def kind_of(folder) -> str | None:
    """Which kind of our output ``folder`` is (by its marker), or None."""
    return next((kind for kind in MARKERS if is_marked(folder, kind)), None)


def _is_empty(folder: Path) -> bool:
    return folder.is_dir() and not any(folder.iterdir())


def check_output(out, kind: str, intent: str = "new", allowed=("new", "overwrite")) -> None:
    """Refuse an output folder that this intent may not use; touches nothing."""
    out = Path(out)
    if not is_main_process():
        return  # under a launcher, the main process checks and owns the folder
    if intent not in allowed:
        raise HistodiffError(f"intent must be one of {', '.join(allowed)} for {A[kind]} {WHAT[kind]} (got {intent!r})")
    if out.exists() and not out.is_dir():
        raise HistodiffError(f"output {out} is a file; choose a folder path")
    if not out.exists() or _is_empty(out):
        if intent == "append":
            raise HistodiffError(f"there is no {WHAT[kind]} in {out} to append to; leave out {{opt:intent=append}}")
        return
    mine = is_marked(out, kind)
    if not mine:
        other = kind_of(out)
        what = f"{A[other]} {WHAT[other]}" if other else "not a folder napari-histodiff wrote"
        raise HistodiffError(f"output folder {out} holds files and is {what}; it is never replaced or changed: "
                             f"choose a new or empty folder for the {WHAT[kind]}")
    if intent == "new":
        fixes = [f"{{opt:intent={i}}}" for i in ("resume", "overwrite", "append") if i in allowed]
        raise HistodiffError(f"output folder {out} already holds {A[kind]} {WHAT[kind]}; choose another folder"
                             + (f", or choose {' or '.join(fixes)}" if fixes else ""))


def prepare_output(out, kind: str, intent: str = "new", allowed=("new", "overwrite")) -> Path:
    """:func:`check_output`, then remove our own folder when overwriting; creates the folder."""
    out = Path(out)
    check_output(out, kind, intent, allowed)
    if intent == "overwrite" and is_marked(out, kind) and is_main_process():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


class output_folder:
    """``with output_folder(out, kind, intent):`` prepares ``out``; if the body fails before the
    kind's marker exists, removes the folder when this run created it (empties nothing else)."""

    def __init__(self, out, kind: str, intent: str = "new", allowed=("new", "overwrite")):
        self.out, self.kind, self.intent, self.allowed = Path(out), kind, intent, allowed

    def __enter__(self) -> Path:
        self.created = not self.out.exists()
        return prepare_output(self.out, self.kind, self.intent, self.allowed)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.created and not is_marked(self.out, self.kind):
            shutil.rmtree(self.out, ignore_errors=True)
        return False

"""Names from users' data (class names, slide names, ids) become file names here, and only here.

:func:`safe_name` gives a file or folder name that is valid on Windows, macOS and Linux and unique
among the names already taken; :func:`inside` checks that a path read from a CSV or JSON file stays
inside its folder. The original name is kept in manifests and layer names, never recovered from a path.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

from .errors import HistodiffError

_BAD = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')  # not allowed in a name on Windows (and / anywhere)
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
MAX_BYTES = 120  # well under the 255-byte limit of common file systems, leaving room for suffixes


def _short_hash(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _clean(name: str) -> str:
    s = _BAD.sub("_", unicodedata.normalize("NFC", str(name))).strip()
    s = s.rstrip(". ")  # Windows drops trailing dots and spaces
    if not s or set(s) <= {"."}:
        s = "_"
    if s.split(".")[0].upper() in _RESERVED:
        s = "_" + s
    while len(s.encode("utf-8")) > MAX_BYTES:
        s = s[:-1]
    return s


def safe_name(name: str, taken=None) -> str:
    """A file or folder name for ``name`` (a class name, slide name or id from the user's data).

    Safe characters are kept as they are (``Tumör ✓`` stays ``Tumör ✓``); anything that is not a valid
    name on Windows, macOS or Linux (slashes, ``..``, ``:``, reserved device names, trailing dots) is
    replaced, and a short hash of the original name is appended so that different names never meet.
    ``taken``: names already used in the same folder (compared without case, as macOS and Windows do);
    the result is added to it when it is a set."""
    name = str(name)
    s = _clean(name)
    if s != unicodedata.normalize("NFC", name):
        s = f"{s}-{_short_hash(name)}"
    if taken is not None:
        used = {t.casefold() for t in taken}
        base, k = s, 1
        while s.casefold() in used:
            k += 1
            s = f"{base}-{_short_hash(name)}" if k == 2 else f"{base}-{k}"
        if isinstance(taken, set):
            taken.add(s)
    return s


def folder_names(names) -> dict:
    """``{name: safe_name}`` for names that share one folder, in the given order (unique there)."""
    taken: set = set()
    return {n: safe_name(n, taken) for n in dict.fromkeys(names)}


def inside(folder, relative, what: str = "a path") -> Path:
    """``folder / relative`` after checking that it stays inside ``folder`` (no ``..``, no absolute path,
    no symbolic link out of it); raises :class:`HistodiffError` naming ``what`` (e.g. the file it was read from)."""
    folder = Path(folder)
    rel = str(relative)
    target = folder / rel
    root = folder.resolve()
    if not rel or Path(rel).is_absolute() or (root != target.resolve() and root not in target.resolve().parents):
        raise HistodiffError(f"{what} names {rel!r}, which is outside {folder}; the file was edited or is not "
                             "ours: restore it, or write the folder again")
    return target


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_class_name(name, where: str) -> str:
    """``name`` as a class name, or a :class:`HistodiffError` naming ``where`` it came from (a class folder,
    a shard, a napari layer, an option): a class name must show at least one visible character and no
    control character (line break, tab), else it cannot be shown, typed or told apart from another."""
    text = str(name)
    if all(c.isspace() or unicodedata.category(c) == "Cf" for c in text):  # Cf: zero-width space, ...
        raise HistodiffError(f"{where}: the class name {text!r} is empty or only white space; give the class a "
                             "name with visible characters (e.g. TUM, STR)")
    if _CONTROL.search(text):
        raise HistodiffError(f"{where}: the class name {text!r} holds a control character (a line break or tab); "
                             "rename the class")
    return text

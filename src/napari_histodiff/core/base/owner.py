"""What the project wrote in a folder: the ownership record ``.histodiff-owner.json``.

Every output folder the project writes carries this one file. It names the kind of output and lists
what the project wrote there: files with their size and sha256 (once a job has finished), or, while a
job that writes in place runs, the names it may create (:data:`LAYOUT`). Overwrite and append remove or
replace only what it lists, unchanged; anything else in the folder (a file the user added, a file
changed since it was written, a file that merely has one of our names) is foreign and makes them refuse,
naming it. No other file, ``export.json`` included, marks a folder as ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

MARKER = ".histodiff-owner.json"
LOCK = ".histodiff.lock"  # the writer's lock (:mod:`.lock`); never part of the output
FORMAT = "napari-histodiff-owner"
_PARTS = ("vae", "unet", "scheduler", "latent_classifier", "selection_classifier")
LAYOUT = {  # kind -> names a job of that kind writes in place, claimed before they exist
    "bundle": ("histodiff.json", "histodiff.json.tmp", "training", *_PARTS,
               *(f".{p}.{s}" for p in _PARTS for s in ("tmp", "old"))),
    "demo": ("histodiff-demo.json", "bundle", "finetuned", "samples", "samples-unguided", "augmentation-set",
             "report.md", "real_*.png", ".*.tmp-*"),
    "evaluation": ("results.json", "results.png", ".results.*"),
}


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_owner(folder) -> dict | None:
    """The ownership record of ``folder``, or None when it has none (or an unreadable one)."""
    try:
        rec = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or not isinstance(rec.get("files"), dict):
        return None
    if not isinstance(rec.get("claims", []), list):
        return None
    return rec


def owned(folder, kind: str | None = None) -> bool:
    """Whether ``folder`` carries our ownership record (for ``kind``, when given)."""
    rec = read_owner(folder)
    return rec is not None and (kind is None or rec.get("kind") == kind)


def write_owner(folder, kind: str, files: dict, claims=()) -> None:
    """Write the record atomically."""
    folder = Path(folder)
    tmp = folder / f"{MARKER}.tmp-{os.getpid()}"
    rec = {"format": FORMAT, "version": 1, "kind": kind, "claims": sorted(set(claims)), "files": files}
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def claim(folder, kind: str, names=None) -> None:
    """Record that a job of ``kind`` writes ``names`` (default: the kind's :data:`LAYOUT`) in ``folder``
    (top-level names or glob patterns; a claimed folder is ours as a whole) before it writes them."""
    rec = read_owner(folder) or {"files": {}, "claims": []}
    names = LAYOUT.get(kind, ()) if names is None else names
    write_owner(folder, kind, rec["files"], [*rec.get("claims", []), *names])


def seal(folder, kind: str) -> None:
    """List every file now in ``folder`` with its size and sha256 (the claims are replaced by the files
    they cover). A sub-folder with a record of its own stays a claim: its record lists its files."""
    folder = Path(folder)
    files, claims = {}, []
    for path in sorted(folder.iterdir()):
        if _ours_anyway(path.name):
            continue
        if path.is_dir() and not path.is_symlink() and (path / MARKER).is_file():
            claims.append(path.name)
        elif path.is_dir() and not path.is_symlink():
            for f in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
                files[f.relative_to(folder).as_posix()] = _entry(f)
        else:
            files[path.name] = _entry(path)
    write_owner(folder, kind, files, claims)


def refresh(folder, *relpaths) -> None:
    """Record files just (re)written in place in our ``folder`` (e.g. ``samples.csv`` after a new
    selection), so that they stay ours; does nothing in a folder without a record."""
    folder = Path(folder)
    rec = read_owner(folder)
    if rec is None:
        return
    for rel in relpaths:
        rel = Path(rel).as_posix()
        if not _claimed(rel.split("/")[0], rec.get("claims", [])):
            rec["files"][rel] = _entry(folder / rel)
    write_owner(folder, rec["kind"], rec["files"], rec.get("claims", []))


def _entry(path: Path) -> dict:
    if path.is_symlink():
        return {"link": os.readlink(path)}
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _ours_anyway(name: str) -> bool:
    return name == MARKER or name.startswith(MARKER + ".tmp-") or name == LOCK


def _claimed(name: str, claims) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, c) for c in claims)


def foreign(folder, limit: int = 20) -> list[str]:
    """What in ``folder`` our record does not cover (relative paths; at most ``limit``), each with why
    when it is a file we wrote that changed since. A folder without a record is foreign as a whole."""
    folder = Path(folder)
    rec = read_owner(folder)
    if rec is None:
        return [f"{folder.name}/ (no {MARKER})"] if folder.exists() else []
    found: list[str] = []
    files, claims = rec["files"], rec.get("claims", [])
    parents = {p for f in files for p in _parents(f)}

    def walk(d: Path, rel: str):
        for path in sorted(d.iterdir()):
            if len(found) >= limit:
                return
            r = f"{rel}{path.name}"
            if not rel and (_ours_anyway(path.name) or _claimed(path.name, claims)):
                if path.is_dir() and (path / MARKER).is_file():  # a sub-output: its own record decides
                    found.extend(f"{path.name}/{x}" for x in foreign(path, limit - len(found)))
                continue
            if r.endswith(".tmp") and r[:-4] in files and path.is_file():
                continue  # an atomic write's leftover, ours
            if r in files:
                why = _changed(path, files[r])
                if why:
                    found.append(f"{r} ({why})")
            elif r in parents and path.is_dir() and not path.is_symlink():
                walk(path, r + "/")
            else:
                found.append(r + ("/" if path.is_dir() else ""))

    walk(folder, "")
    return found


def _parents(rel: str):
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i + 1]) for i in range(len(parts))]


def _changed(path: Path, entry: dict) -> str | None:
    if "link" in entry:
        return None if path.is_symlink() and os.readlink(path) == entry["link"] else "changed since it was written"
    if path.is_symlink() or not path.is_file():
        return "not the file that was written"
    if path.stat().st_size != entry.get("size") or sha256_file(path) != entry.get("sha256"):
        return "changed since it was written"
    return None


def remove_owned(folder) -> None:
    """Remove what the record lists (call only when :func:`foreign` found nothing); keeps the record."""
    folder = Path(folder)
    rec = read_owner(folder)
    if rec is None:
        return
    claims = rec.get("claims", [])
    for path in list(folder.iterdir()):
        if not _ours_anyway(path.name) and _claimed(path.name, claims):
            if path.is_dir() and not path.is_symlink() and (path / MARKER).is_file():
                remove_owned(path)
                _remove_record(path)
            else:
                _remove(path)
    for rel in rec["files"]:
        _remove(folder / rel)
    for parent in sorted({p for f in rec["files"] for p in _parents(f)}, key=len, reverse=True):
        try:
            (folder / parent).rmdir()
        except OSError:
            pass
    write_owner(folder, rec["kind"], {}, [])


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_record(folder: Path) -> None:
    for p in (folder / MARKER, folder / LOCK):
        p.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass

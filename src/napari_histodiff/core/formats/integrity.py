"""Is a bundle's weights intact? Checksums recorded at save, and cheap safetensors header checks.

Every part folder (``vae/``, ``unet/``, ...) holds ``files.json`` = ``{filename: {"size", "sha256"}}``,
written by :func:`write_manifest` when the part is saved. ``verify_*`` return readable problems,
each naming the file; an empty list means intact. ``training/`` (checkpoints) is not checked here.

Jobs that use a bundle check it before loading (:func:`damaged_parts`) with a :class:`Verified` cache: a
file whose sha256 matched is not hashed again while its path, size, inode, modification and change
times stay the same (any write changes them), so sampling again with the same model costs no hashing.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

MANIFEST = "files.json"
CHUNK = 1 << 20
MAX_HEADER = 100 << 20  # the safetensors format's own limit
SKIP = ("training",)
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
               "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder) -> dict:
    """Record size and sha256 of every file in ``folder`` (not in sub-folders) in ``files.json``."""
    folder = Path(folder)
    files = {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)}
             for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST and not f.name.endswith(".tmp")}
    _write(folder, files)
    return files


def record_files(folder, *names: str) -> None:
    """Re-record ``names`` after a deliberate change (other entries kept); no-op without a manifest."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return
    for name in names:
        f = folder / name
        files[name] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    _write(folder, files)


def _write(folder: Path, files: dict) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(files, indent=2, sort_keys=True))
    os.replace(tmp, folder / MANIFEST)


def size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _of(have: int, want: int) -> str:
    a, b = size_text(have), size_text(want)
    return f"{have} of {want} bytes" if a == b or "bytes" in a + b else f"{a} of {b}"


def safetensors_problem(path) -> str | None:
    """What is wrong with a .safetensors file's header or length (no tensor is loaded), or None."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"is too short to be a safetensors file ({size} bytes)"
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, MAX_HEADER):
            return f"safetensors header is damaged (header length {n} does not fit in the {size}-byte file)"
        try:
            header = json.loads(fh.read(n))
            ends = [_tensor_end(name, t) for name, t in header.items() if name != "__metadata__"]
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            return f"safetensors header is damaged ({type(e).__name__}: {str(e)[:120]})"
    data = size - 8 - n
    if ends and max(ends) > data:
        return f"is truncated: {_of(data, max(ends))} of tensor data present"
    return None


def _tensor_end(name: str, t: dict) -> int:
    begin, end = t["data_offsets"]
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
        raise ValueError(f"tensor {name!r} has data_offsets {[begin, end]}")
    width = DTYPE_BYTES.get(t["dtype"])
    count = 1
    for d in t["shape"]:
        count *= int(d)
    if width is not None and count * width != end - begin:
        raise ValueError(f"tensor {name!r} of shape {t['shape']} does not match its {end - begin} bytes")
    return end


def verify_part(folder, checksums: bool = True, label: str | None = None, cache: Verified | None = None) -> list[str]:
    """Problems of one part folder: files missing or of another size than recorded, sha256 differing
    (``checksums``), damaged safetensors headers. Files are named ``label/name`` (default: the folder's
    name, e.g. ``unet/diffusion_pytorch_model.safetensors``). ``cache``: files it knows as verified, unchanged
    since, are not hashed again; files that match are added to it."""
    folder = Path(folder)
    label = folder.name if label is None else label
    problems, recorded = [], {}
    if (folder / MANIFEST).is_file():
        try:
            recorded = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            recorded = e
        if not isinstance(recorded, dict):
            why = recorded if isinstance(recorded, Exception) else "not a JSON object"
            problems.append(f"{label}/{MANIFEST} (the checksums recorded at save) is unreadable ({why})")
            recorded = {}
    names = sorted(set(recorded) | {f.name for f in folder.glob("*.safetensors")})
    for name in names:
        problem = _file_problem(folder / name, recorded.get(name), checksums, cache)
        if problem:
            problems.append(f"{label}/{name} {problem}")
    return problems


def _file_problem(f: Path, rec: dict | None, checksums: bool, cache: Verified | None = None) -> str | None:
    if not f.is_file():
        return "is missing"
    size = f.stat().st_size
    if isinstance(rec, dict) and isinstance(rec.get("size"), int) and size != rec["size"]:
        word = "truncated" if size < rec["size"] else "longer than recorded"
        return f"is {word}: {_of(size, rec['size'])} recorded at save"
    if f.suffix == ".safetensors":
        problem = safetensors_problem(f)
        if problem:
            return problem
    if checksums and isinstance(rec, dict) and rec.get("sha256"):
        if cache is not None and cache.knows(f, rec["sha256"]):
            return None
        if sha256_file(f) != rec["sha256"]:
            state = "is corrupt" if f.suffix == ".safetensors" else "was changed after saving"
            return f"{state}: its checksum differs from the one recorded at save"
        if cache is not None:
            cache.add(f, rec["sha256"])
    return None


def part_folders(path) -> list[Path]:
    """The part folders of a bundle (``training/`` and hidden temporary folders left out)."""
    return [p for p in sorted(Path(path).iterdir())
            if p.is_dir() and p.name not in SKIP and not p.name.startswith(".")]


def verify_bundle(path, checksums: bool = True) -> list[str]:
    """Problems of every part of the bundle folder ``path`` (see :func:`verify_part`)."""
    return [p for folder in part_folders(path) for p in verify_part(folder, checksums)]


def checked_files(path, parts=None) -> int:
    """How many files of ``parts`` (folder names; default: all) have a recorded sha256."""
    n = 0
    for folder in part_folders(path) if parts is None else [Path(path) / p for p in parts]:
        try:
            n += len(json.loads((folder / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError):
            pass
    return n


STAGES = {"vae": "`histodiff pretrain-autoencoder`", "unet": "`histodiff pretrain`",
          "scheduler": "`histodiff pretrain`", "latent_classifier": "`histodiff finetune`",
          "selection_classifier": "`histodiff finetune`"}


def repair_hint(parts, meta: dict | None = None) -> str:
    """How to repair the damaged ``parts`` (folder names) of a bundle described by ``meta``."""
    prov = (meta or {}).get("provenance") or {}
    if "converted" in prov:
        return ("restore the bundle from a backup, or write it again with `histodiff convert` from the "
                "original checkpoint")
    stages = {**STAGES, **({"unet": "`histodiff finetune`"} if "pretrained_from" in prov else {})}
    redo = sorted({stages.get(p, "the stage that wrote it") for p in parts})
    folders = ", ".join(f"{p}/" for p in dict.fromkeys(parts))
    return f"restore the bundle from a backup, or re-run {' and '.join(redo)} to write {folders} again"


class Verified:
    """Files whose sha256 matched their record, keyed by what any write changes (path, size, inode,
    modification and change times), kept in a small JSON file (at most ``MOST`` entries, newest kept)."""

    MOST = 2000

    def __init__(self, path):
        self.path = Path(path)
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            entries = {}
        self.entries = entries if isinstance(entries, dict) else {}

    @staticmethod
    def key(f: Path) -> str:
        st = os.stat(f)
        return f"{Path(f).resolve()}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}|{st.st_ctime_ns}"

    def knows(self, f: Path, sha256: str) -> bool:
        return self.entries.get(self.key(f)) == sha256

    def add(self, f: Path, sha256: str) -> None:
        self.entries.pop(self.key(f), None)
        self.entries[self.key(f)] = sha256
        while len(self.entries) > self.MOST:
            self.entries.pop(next(iter(self.entries)))

    def save(self) -> None:
        """Write the cache (atomically); a cache that cannot be written is only a slower next check."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)
        except OSError:
            pass


def cache_folder() -> Path:
    """The user's cache folder of the project: ``$XDG_CACHE_HOME`` or ``~/.cache``, then ``napari-histodiff/``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-histodiff"


def verified_cache() -> Verified:
    """The user's cache of verified weight files."""
    return Verified(cache_folder() / "verified-weights.json")


def damaged_parts(path) -> dict[str, list[str]]:
    """``{part: problems}`` of the bundle folder ``path``'s damaged parts (empty: intact), every file hashed
    unless :func:`verified_cache` knows it unchanged since it last matched. Files are named by full path."""
    cache = verified_cache()
    problems = {p.name: verify_part(p, label=str(p), cache=cache) for p in part_folders(path)}
    cache.save()
    return {part: found for part, found in problems.items() if found}

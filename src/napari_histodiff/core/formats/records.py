"""One record per synthetic tile: how it was made and what selection decided.

A sample folder holds the tiles (``<class>/<id>.tif``) and ``samples.csv`` with these records.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..base.errors import HistodiffError
from ..base.names import inside

RECORDS_FILE = "samples.csv"


@dataclass
class TileRecord:
    id: str  # unique in its folder, e.g. "TUM_00012"
    file: str  # path relative to the folder
    target_class: str  # "" for unguided samples
    index: int  # position in the run
    seed: int  # the run's seed
    sample_seed: int  # this tile's own seed
    sampler: str
    steps: int
    eta: float
    guidance: float
    bundle_hash: str
    source: str = "synthetic"  # or "real"
    strength: float = 1.0  # < 1: a variation of source_tile
    source_tile: str = ""
    predicted_class: str = ""
    confidence: float | None = None  # selection classifier's probability of target_class
    centroid_distance: float | None = None  # feature distance to the target class centroid
    nearest_centroid: str = ""
    kept: bool | None = None  # None: not yet selected
    tissue: float | None = None  # fraction of the tile that is stained tissue (data.tiles.tissue_mask)
    extra: dict = field(default_factory=dict, repr=False)  # not written

    def as_row(self) -> dict:
        row = dataclasses.asdict(self)
        row.pop("extra")
        return {k: ("" if v is None else v) for k, v in row.items()}


COLUMNS = [f.name for f in dataclasses.fields(TileRecord) if f.name != "extra"]
_TYPES = {"index": int, "seed": int, "sample_seed": int, "steps": int, "eta": float, "guidance": float,
          "strength": float, "confidence": float, "centroid_distance": float, "tissue": float}
_OPTIONAL = ("strength", "source_tile", "tissue")


DECIMAL_COMMA = re.compile(r"^\s*([-+]?\d+),(\d+(?:[eE][-+]?\d+)?)\s*$")
TRUE = ("true", "1", "yes", "y")
FALSE = ("false", "0", "no", "n")


def _named(where) -> str:
    return where() if callable(where) else str(where)


def parse_bool(value, where) -> bool | None:
    """A true/false cell as a spreadsheet may have saved it: TRUE, True, true, 1, yes (and their
    opposites); empty is None. Anything else is refused, naming ``where`` (file, row and column; a
    string, or a function that returns it)."""
    text = (value or "").strip().lower()
    if text == "":
        return None
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise HistodiffError(f"{_named(where)} holds {value!r}, which is not true or false (write TRUE or FALSE, or leave "
                         "it empty)")


def parse_number(value, kind, where):
    """An int or float cell (``kind``); empty is None; anything else is refused, naming ``where``."""
    text = (value or "").strip()
    if text == "":
        return None
    try:
        return kind(text)
    except ValueError:
        pass
    if kind is int:
        try:
            number = float(text)
            if number.is_integer():  # "12.0": a spreadsheet's number format
                return int(number)
        except ValueError:
            pass
    name = "a whole number" if kind is int else "a number"
    hint = " (use a point, not a comma, for decimals)" if "," in text else ""
    raise HistodiffError(f"{_named(where)} holds {value!r}, which is not {name}{hint}")


def read_csv(path) -> list[dict]:
    """The rows of a CSV file we wrote, as a spreadsheet may have saved it again: a byte-order mark,
    ``;`` as the separator with decimal commas (spreadsheets in such locales), blank lines and spaces
    around the column names are tolerated. Each row gets ``"_line"``, its line number in the file
    (the row number a spreadsheet shows). Raises ``ValueError`` for text that is not UTF-8."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path.name} is not UTF-8 text; save it as \"CSV UTF-8\"") from None
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if reader.fieldnames:
        reader.fieldnames = [(name or "").strip() for name in reader.fieldnames]
    rows = []
    for row in reader:
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue  # an empty line
        row.pop(None, None)  # cells beyond the header
        if delimiter == ";":
            row = {k: DECIMAL_COMMA.sub(r"\1.\2", v) if isinstance(v, str) else v for k, v in row.items()}
        row["_line"] = reader.line_num
        rows.append(row)
    return rows


def _parse(row: dict, where: str) -> TileRecord:
    values = {}
    for name in COLUMNS:
        if name not in row and name in _OPTIONAL:
            continue  # a file written before the column existed
        raw = row.get(name) or ""
        cell = lambda: f"{where} row {row.get('_line', '?')}, column {name},"  # noqa: E731 (built on error)
        if name == "kept":
            values[name] = parse_bool(raw, cell)
        elif name in _TYPES:
            values[name] = parse_number(raw, _TYPES[name], cell)
        else:
            values[name] = raw
    return TileRecord(**values)


def write_records(path, records: list[TileRecord]) -> None:
    """Write ``samples.csv`` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in records:
            writer.writerow(r.as_row())
    os.replace(tmp, path)
    from ..base.owner import refresh

    refresh(path.parent, path.name)


def read_records(path) -> list[TileRecord]:
    path = Path(path)
    if path.is_dir():
        path = path / RECORDS_FILE
    if not path.is_file():
        raise HistodiffError(f"{path} not found: give a folder written by `histodiff sample`")
    try:
        rows = read_csv(path)
        missing = set(COLUMNS) - set(_OPTIONAL) - set(rows[0]) if rows else set()
        if missing:
            raise ValueError(f"missing columns {sorted(missing)}")
        records = [_parse(r, str(path)) for r in rows]
        for r in records:  # a file named in the CSV stays inside its folder
            inside(path.parent, r.file, f"{path} (tile {r.id!r})")
        return records
    except HistodiffError:
        raise
    except (OSError, ValueError, TypeError) as e:
        raise HistodiffError(f"{path} is not a readable sample record file ({e})") from None


def folder_fingerprint(folder, files) -> dict:
    """What identifies the sample folder a review is writing to: ``records``, a hash of ``samples.csv``
    as it is now, and ``tiles``, a hash of each tile file's identity (inode, size, modification time).

    Sampling again into the folder (``histodiff sample --overwrite``) swaps in new tile files, and
    ``histodiff select`` or another review rewrites ``samples.csv``: compare the fingerprint taken when
    the tiles were shown with a fresh one before writing decisions for them."""
    import hashlib

    folder = Path(folder)
    try:
        records = hashlib.sha256((folder / RECORDS_FILE).read_bytes()).hexdigest()
    except OSError:
        records = "missing"
    tiles = hashlib.sha256()
    for name in files:
        try:
            st = os.stat(folder / name)
            tiles.update(f"{name}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            tiles.update(f"{name}\0missing\n".encode())
    return {"records": records, "tiles": tiles.hexdigest()}


def same_records(a: list[TileRecord], b: list[TileRecord]) -> bool:
    """Whether two record lists say the same (as ``samples.csv`` writes them)."""
    def text(records):
        return [{k: str(v) for k, v in r.as_row().items()} for r in records]

    return len(a) == len(b) and text(a) == text(b)

"""The files of a memorisation audit: ``audit.csv`` (one row per synthetic tile) and ``audit.json``
(threshold, how it was set, per-class summaries), and :func:`read_audit` for export and review."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..base.errors import HistodiffError

AUDIT_CSV = "audit.csv"
AUDIT_JSON = "audit.json"
FORMAT = "napari-histodiff-audit"
COLUMNS = ["tile", "class", "nearest_real", "similarity", "near_copy", "feature_similarity", "source_folder", "file"]


def neighbour_columns(k: int) -> list[str]:
    """Columns of the 2nd..k-th nearest real tiles."""
    return [c for i in range(2, k + 1) for c in (f"nearest_real_{i}", f"similarity_{i}")]


def tile_key(path) -> str:
    """How :func:`read_audit` names a tile: its absolute path, symlinks resolved."""
    return str(Path(path).resolve())


def write_audit(folder, rows: list[dict], summary: dict, k: int) -> None:
    """Write ``audit.csv`` then ``audit.json`` (each atomically) into ``folder``."""
    folder = Path(folder)
    tmp = folder / (AUDIT_CSV + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + neighbour_columns(k), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({key: (str(v).lower() if isinstance(v, bool) else v) for key, v in r.items()})
    os.replace(tmp, folder / AUDIT_CSV)
    tmp = folder / (AUDIT_JSON + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "version": 1, **summary}, indent=2), encoding="utf-8")
    os.replace(tmp, folder / AUDIT_JSON)


def read_audit(folder) -> dict[str, tuple[bool, float, str]]:
    """``{tile_key(tile): (near_copy, similarity, nearest_real)}`` of an audit folder's ``audit.csv``.

    Keys are absolute paths (:func:`tile_key`), so a sample folder named differently later (relative
    or absolute) still finds its tiles: look a tile up as ``result.get(tile_key(path))``."""
    folder = Path(folder)
    path = folder / AUDIT_CSV
    if not path.is_file() or not (folder / AUDIT_JSON).is_file():
        raise HistodiffError(f"{folder} is not an audit folder (no {AUDIT_CSV} and {AUDIT_JSON}); run "
                             "`histodiff audit SAMPLES --against REAL --out DIR` and give DIR")
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                near = {"true": True, "false": False}[row["near_copy"].strip().lower()]
                sim = float(row["similarity"])
                src, rel = row.get("source_folder") or "", row.get("file") or ""
                tile = Path(src) / rel if src and rel else Path(row["tile"])
            except (KeyError, ValueError, AttributeError) as e:
                raise HistodiffError(f"{path} line {n} is not an audit row ({type(e).__name__}: {e}); run the audit "
                                     "again") from e
            out[tile_key(tile)] = (near, sim, row["nearest_real"])
    return out

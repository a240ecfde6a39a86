"""napari reader for exported augmentation sets: a tile stack with the manifest as features."""

from __future__ import annotations

from pathlib import Path


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() and (p / "manifest.csv").is_file() and (p / "export.json").is_file():
        return read_set
    return None


def read_set(path):
    import pandas as pd

    from .core.generate.export import read_export

    p = Path(path[0] if isinstance(path, list) else path)
    tiles, rows = read_export(p)
    meta = {"features": pd.DataFrame(rows), "histodiff_export": str(p)}
    return [(tiles, {"name": f"augmentation set: {p.name}", "rgb": True, "metadata": meta}, "image")]

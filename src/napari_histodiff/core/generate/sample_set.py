"""Sample folders: tiles ``<class>/<id>.tif`` + ``samples.csv`` + a contact sheet per class.

Written to a temporary folder and renamed at the end, so an interrupted run leaves nothing; an
existing folder is replaced only when it is a sample folder (``samples.csv``, see :mod:`..base.outdir`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..base.atomic import partial_path, remove_dead_partials, swap_in
from ..base.errors import HistodiffError
from ..base.outdir import check_output
from ..base.names import folder_names, safe_name
from ..base.owner import refresh
from ..formats.images import contact_sheet, write_png, write_tile
from ..formats.records import RECORDS_FILE, TileRecord, read_records, write_records
from .sampling import SampleOptions, sample_tiles
from .selection import (SelectionRule, annotate, class_report, decide, measure_tissue, missing_selection, score,
                        tissue_floors)

SHEET_MAX = 64
SELECTION_FILE = "selection.json"  # the rule a sample folder was selected with, and what it kept per class


def write_selection(folder, records, rule: SelectionRule, classes=None) -> dict:
    """Record ``rule`` and the per-class outcome beside ``samples.csv``; returns the report."""
    import json
    import os
    from dataclasses import asdict

    report = class_report(records, rule, classes)
    tmp = Path(folder) / (SELECTION_FILE + ".tmp")
    tmp.write_text(json.dumps({"rule": asdict(rule), **report}, indent=2), encoding="utf-8")
    os.replace(tmp, Path(folder) / SELECTION_FILE)
    refresh(folder, SELECTION_FILE)
    return report


def read_selection_rule(folder) -> SelectionRule | None:
    """The rule a sample folder was last selected with (None: unknown, e.g. an older folder)."""
    import json

    try:
        rule = json.loads((Path(folder) / SELECTION_FILE).read_text(encoding="utf-8"))["rule"]
        return SelectionRule(**{k: rule[k] for k in ("rule", "threshold", "cap", "tissue_check") if k in rule})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_samples(bundle, options: SampleOptions, out, rule: SelectionRule | None = None, intent: str = "new",
                  sources=None):
    """Sample into ``out``; score and select inline when ``rule`` is given (needs a fine-tuned
    bundle); variations of ``sources`` when ``options.strength < 1``. Yields progress; returns the
    list of :class:`TileRecord`.

    ``intent``: ``new`` (``out`` must not exist or be empty) or ``overwrite`` (replace our sample
    folder there, one with ``samples.csv``); any other folder is refused untouched. The folder is
    built in a hidden sibling and swapped in at the end, so an interrupted run changes nothing."""
    from ..formats.bundle import bundle_hash

    out = Path(out)
    check_output(out, "samples", intent)
    options = options.resolved(sources is not None)
    if rule is not None:
        rule.validate()
        if bundle.selection_classifier is None:
            raise HistodiffError(missing_selection(bundle, ", so it cannot select") + " (or sample without "
                                 "selection: {opt:select=false})")
    digest = bundle_hash(bundle.path) if bundle.path else ""
    remove_dead_partials(out)
    tmp = partial_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    records, sheets = [], {}
    try:
        for event in sample_tiles(bundle, options, sources):
            if event.data:
                records += _write_batch(tmp, event.data, options, digest, bundle, rule, sheets)
            yield event
        if rule is not None:
            decide(records, rule, tissue_floors(bundle))
            write_selection(tmp, records, rule, options.classes or None)
        write_records(tmp / RECORDS_FILE, records)
        for name, tiles in sheets.items():
            write_png(tmp / f"contact_{name}.png", contact_sheet(np.stack(tiles)))
        swap_in(tmp, out, "samples")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return records


def _write_batch(folder, data, opts, digest, bundle, rule, sheets) -> list[TileRecord]:
    batch = []
    folders = folder_names(bundle.class_names or [])
    folders[None] = safe_name("unguided", set(folders.values()))
    for k, tile in enumerate(data["tiles"]):
        i, cls = data["start"] + k, data["classes"][k]
        name = folders.get(cls or None) or safe_name(cls)  # the class name itself stays in the record
        rec = TileRecord(
            id=f"{name}_{i:05d}", file=f"{name}/{name}_{i:05d}.tif", target_class=cls, index=i,
            seed=opts.seed, sample_seed=data["seeds"][k], sampler=opts.sampler, steps=opts.steps,
            eta=opts.eta if opts.sampler == "ddim" else 0.0, guidance=opts.guidance if cls else 0.0,
            bundle_hash=digest, strength=opts.strength, source_tile=data["sources"][k],
        )
        batch.append(rec)
        if len(sheets.setdefault(name, [])) < SHEET_MAX:
            sheets[name].append(tile)
    measure_tissue(batch, data["tiles"])
    if rule is not None:
        annotate(batch, *score(bundle, data["tiles"]), bundle.class_names)
    for rec, tile in zip(batch, data["tiles"]):
        (folder / rec.file).parent.mkdir(exist_ok=True)
        write_tile(folder / rec.file, tile, rec.as_row())
    return batch


def select_folder(folder, bundle, rule: SelectionRule) -> list[TileRecord]:
    """Re-score the tiles of a sample folder with ``bundle`` and rewrite ``samples.csv``."""
    import tifffile

    folder = Path(folder)
    records = read_records(folder)
    unknown = sorted({r.target_class for r in records if r.target_class and r.target_class not in bundle.class_names})
    if unknown:
        raise HistodiffError(f"{folder} has target classes {unknown} that this bundle does not know "
                             f"({', '.join(bundle.class_names)}); select with the bundle that made them")
    for i in range(0, len(records), 64):
        part = records[i : i + 64]
        try:
            tiles = np.stack([tifffile.imread(folder / r.file) for r in part])
        except (OSError, ValueError) as e:
            raise HistodiffError(f"cannot read the tiles of {folder} ({e}); was the folder changed by hand?") from None
        annotate(part, *score(bundle, tiles), bundle.class_names)
        measure_tissue(part, tiles)
    decide(records, rule, tissue_floors(bundle))
    write_records(folder / RECORDS_FILE, records)
    write_selection(folder, records, rule)
    return records

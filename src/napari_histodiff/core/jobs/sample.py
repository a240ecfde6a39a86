"""The sampling and selection jobs: which classes, from noise or variations, scored and selected."""

from __future__ import annotations

from ..base.threads import fit_threads
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from ..base.errors import HistodiffError
from ..base.options import check, device_option, option, require
from ..generate.sampling import SampleOptions
from ..generate.selection import SelectionRule, class_report

__all__ = ["SampleOptions", "SelectOptions", "sample", "select", "plan_classes", "kept_counts"]


def plan_classes(opts: SampleOptions, bundle, has_sources: bool) -> SampleOptions:
    """The options with the target classes and tile count in effect: ``per_class`` means every class of
    the bundle; with source tiles and no class, each variation keeps its source's class."""
    if opts.per_class is not None and not bundle.class_names and not has_sources:
        raise HistodiffError("{opt:per_class} needs a fine-tuned bundle with classes; run `histodiff finetune` "
                             "first")
    classes = list(opts.classes)
    if opts.per_class is not None and not classes and not has_sources:
        classes = list(bundle.class_names)
    for name in classes:
        bundle.class_index(name)
    return replace(opts, classes=classes, n=opts.per_class or opts.n, per_class=None)


def open_checked(path, device, **foreign):
    """``open_model`` after checking a bundle folder's weights against the checksums recorded at save, as
    ``histodiff info`` does: loading checks sizes and safetensors headers only, so data damaged behind an
    intact header would be used. A file verified before and unchanged since is not hashed again."""
    from ..base.errors import BundleError
    from ..formats.bundle import read_meta
    from ..formats.convert import detect_format, open_model
    from ..formats.integrity import damaged_parts, repair_hint
    from ..formats.starter import resolve_model

    path = resolve_model(path)  # a built-in model's name: its folder in the package
    if (foreign.get("format") or detect_format(path)) == "bundle":
        damaged = damaged_parts(path)
        if damaged:
            listed = "; ".join(p for found in damaged.values() for p in found)
            raise BundleError(f"the bundle {path} is damaged: {listed}; {repair_hint(list(damaged), read_meta(path))}")
    return open_model(path, device=device, **foreign)


def kept_counts(records) -> str:
    kept = Counter(r.target_class or r.predicted_class or "unguided" for r in records if r.kept)
    made = Counter(r.target_class or r.predicted_class or "unguided" for r in records)
    return ", ".join(f"{c}: {kept.get(c, 0)}/{n} kept" for c, n in sorted(made.items()))


def sample(opts: SampleOptions, model=None, sources=None):
    """Sample into ``opts.out`` with ``model`` (default: opened from ``opts.model``); ``sources``: tiles
    to make variations of (default: opened from ``opts.sources``). Yields progress; returns the
    records and a ``message``."""
    from ..base.events import warning
    from ..base.outdir import check_output
    from ..generate.sample_set import write_samples
    from ..generate.selection import missing_selection
    from .finetune import open_labeled

    fit_threads()
    check(opts)
    require(opts, "out", *(["model"] if model is None else []))
    check_output(opts.out, "samples", opts.intent)
    bundle = model if model is not None else open_checked(opts.model, opts.device, **opts.foreign.kwargs())
    if sources is None and opts.sources is not None:
        sources, notes = open_labeled([opts.sources], bundle.tile_size, mpp=bundle.meta.get("microns_per_pixel"))
        for note in notes:
            yield warning(note)
    plan = plan_classes(opts, bundle, sources is not None)
    plan.validate(bundle.scheduler.config.num_train_timesteps)
    check_disk(plan, bundle, sources, opts.out)
    select = opts.select and bundle.selection_classifier is not None
    if opts.select and not select and bundle.latent_classifier is not None:
        guided = plan.guidance > 0 and (plan.classes or getattr(sources, "class_names", None))
        made = "guided" if guided else "made"
        yield warning(missing_selection(bundle, f"; tiles are {made} but not selected"))
    records = yield from write_samples(bundle, plan, opts.out, opts.selection if select else None, opts.intent,
                                       sources=sources)
    summary = kept_counts(records) if select else f"{len(records)} tiles (not selected)"
    result = {"records": records, "selected": select,
              "message": f"{len(records)} tiles written to {opts.out} ({summary})"}
    if select:
        result.update(class_report(records, opts.selection, plan.classes or None))
        yield from _report_missing(result)
    return result


def check_disk(plan: SampleOptions, bundle, sources, out) -> None:
    """Refuse a run whose tiles (uncompressed TIFF) cannot fit on the disk of ``out``, before anything is written."""
    from ..base.disk import check_free_space, tile_bytes
    from ..generate.sampling import plan_variations

    count = len(plan_variations(plan, sources)[0] if sources is not None else plan.plan())
    check_free_space(out, count * tile_bytes(bundle.tile_size, "tif"), f"{count} tiles of {bundle.tile_size} px",
                     fix="free some space, write to another disk ({opt:out}) or ask for fewer tiles ({opt:n})")


def _report_missing(result: dict):
    """Warn about every class that kept no tile, and say so at the end of the result message."""
    from ..base.events import warning
    from ..generate.selection import report_lines

    for line in report_lines(result):
        yield warning(line)
    missing = result["classes_without_tiles"]
    if missing:
        result["message"] += (f"; WARNING: no tile kept for class{'es' * (len(missing) > 1)} "
                              f"{', '.join(missing)}: " + "; ".join(f"{c}: {why}" for c, why in missing.items()))


@dataclass
class SelectOptions:
    """``histodiff select``: score a sample folder again and rewrite its keep / reject decisions."""

    WRITES: ClassVar[str] = "samples"  # the folder this job writes (its lock)

    samples: Path | None = option(None, positional=True, required=True, gui=False, metavar="SAMPLES",
                                  help="sample folder (from `histodiff sample`)")
    model: Path | None = option(None, required=True, flags=("--bundle",), metavar="BUNDLE", gui=False,
                                help="fine-tuned bundle whose selection classifier scores the tiles")
    device: str = device_option()
    selection: SelectionRule = option(factory=SelectionRule, help="selection rule")


def select(opts: SelectOptions, model=None):
    """Re-score ``opts.samples``; returns the records and a ``message``."""
    from ..generate.sample_set import select_folder

    fit_threads()
    check(opts)
    require(opts, "samples", *(["model"] if model is None else []))
    if False:
        yield  # a generator, like every job
    bundle = model if model is not None else open_checked(opts.model, opts.device)
    records = select_folder(opts.samples, bundle, opts.selection)
    result = {"records": records, "message": f"{opts.samples}/samples.csv updated: {kept_counts(records)}",
              **class_report(records, opts.selection)}
    yield from _report_missing(result)
    return result

"""The fine-tuning job: one path for the CLI and napari, for bundles, foreign and in-memory models."""

from __future__ import annotations

from pathlib import Path

from ..base.errors import HistodiffError
from ..base.shell import command
from ..base.events import warning
from ..base.options import require
from ..base.threads import fit_threads
from ..train.finetune import FinetuneOptions

__all__ = ["FinetuneOptions", "finetune", "open_labeled"]


def open_labeled(paths, tile_size: int, scale=None, mpp=None, opts: FinetuneOptions | None = None,
                 labeled: bool = True):
    """Labeled tile folders or annotated slides (at ``mpp``) at the model's tile size; returns
    ``(tiles, warnings)`` (odd sizes, grey tiles). ``labeled=False``: unlabelled tiles (folders, slides:
    their tissue, annotations ignored)."""
    from ..data.survey import survey_warnings
    from ..data.opening import open_tiles

    opts = opts or FinetuneOptions()
    labels = {"annotations": opts.annotations, "min_fraction": opts.min_fraction} if labeled else {}
    tiles = open_tiles(paths, tile_size, scale=scale, mpp=mpp, slide_mpp=opts.slide_mpp, **labels)
    return tiles, survey_warnings(tiles)


def _source(opts: FinetuneOptions, model):
    """What fine-tuning starts from: the given in-memory bundle, a bundle folder, or a converted model."""
    from ..formats.convert import detect_format, open_model
    from ..formats.starter import resolve_model

    if model is not None:
        return model
    path = resolve_model(opts.model)  # a built-in model's name: its folder in the package
    fmt = opts.foreign.format or detect_format(path)
    if fmt == "bundle":
        if opts.foreign.config is not None or opts.foreign.ema is not None:
            raise HistodiffError("{opt:config} and {opt:ema} apply to CompVis .ckpt checkpoints only")
        return Path(path)
    return open_model(path, device="cpu", **opts.foreign.kwargs())


def finetune(opts: FinetuneOptions, model=None, tiles=None):
    """Fine-tune ``model`` (an in-memory bundle; default: opened from ``opts.model``) on ``tiles``
    (default: opened from ``opts.labeled``) into ``opts.out``. Every check runs before the output
    folder is touched. Yields progress; returns the summary with a ``message``."""
    from ..base.outdir import check_output, output_folder
    from ..formats.bundle import Bundle, read_meta
    from ..models.presets import Preset
    from ..train.finetune import check_labeled, check_source
    from ..train.finetune import finetune as run_stages

    fit_threads(opts.num_workers)
    opts.validate()
    require(opts, "out", *(["model"] if model is None else []), *(["labeled"] if tiles is None else []))
    out = Path(opts.out)
    intents = ("new", "resume", "overwrite")
    check_output(out, "bundle", opts.intent, allowed=intents)
    source = _source(opts, model)
    origin = source.path if isinstance(source, Bundle) else source
    if origin is not None and out.resolve() == Path(origin).resolve():
        raise HistodiffError("{opt:out} must be a new folder, not the pre-trained bundle itself")
    if origin is not None and Path(origin).is_dir() and Path(origin).resolve() in out.resolve().parents:
        raise HistodiffError(f"{{opt:out}} must be a folder outside the pre-trained bundle {origin}")
    check_source(source)
    preset = source.preset if isinstance(source, Bundle) else Preset.from_dict(read_meta(source)["preset"])
    mpp = source.meta.get("microns_per_pixel") if isinstance(source, Bundle) else \
        read_meta(source).get("microns_per_pixel")
    if tiles is None:
        tiles, notes = open_labeled(opts.labeled, preset.tile_size, opts.scale, mpp if opts.scale is None else None,
                                    opts)
        for note in notes:
            yield warning(note)
    if tiles.tile_size != preset.tile_size:
        raise HistodiffError(f"labeled tiles are {tiles.tile_size} px; the model needs {preset.tile_size} px")
    check_labeled(tiles, opts.min_tiles_per_class)
    unlabeled = None
    if opts.unlabeled:
        unlabeled, notes = open_labeled(opts.unlabeled, preset.tile_size, opts.scale,
                                        mpp if opts.scale is None else None, opts, labeled=False)
        for note in notes:
            yield warning(note)
    with output_folder(out, "bundle", opts.intent, allowed=intents):
        result = yield from run_stages(source, tiles, out, preset, opts, unlabeled)
        from ..formats.starter import note_storage

        note_storage(out)  # from a float16 starter: which parts are still stored so
    counts = ", ".join(f"{c} {n}" for c, n in result["class_counts"].items())
    if result.get("nothing_to_do"):
        result["message"] = (f"nothing to do: {out} is already fine-tuned with these options and tiles "
                             f"({counts}); choose {{opt:intent=overwrite}} to train it again")
        return result
    from ..train.pseudo import pseudo_summary

    counts += pseudo_summary(result)
    from ..formats.retention import retention_line
    from ..evaluate.verdict import from_result

    result["verdict"] = from_result(result, tiles.class_names)
    kept = retention_line(result.get("retention"))
    result["message"] = (f"fine-tuned bundle written to {out} (tiles per class: {counts})\n"
                         f"{result['verdict'].text(details=True)}\n"
                         + (f"class retention of the autoencoder: {kept}\n" if kept else "") +
                         f"try: {command('sample', out, '--per-class', 16, '--out', 'samples')}")
    return result


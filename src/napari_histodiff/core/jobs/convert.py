"""The convert and info jobs: foreign checkpoints as bundles (and back), and a readable summary."""

from __future__ import annotations

from ..base.threads import fit_threads
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import HistodiffError
from ..base.options import check, option, require
from ..formats.convert import ModelSource

__all__ = ["ConvertOptions", "InfoOptions", "convert", "info"]


@dataclass
class ConvertOptions:
    """``histodiff convert``: a CompVis / HistoDiffusion LatentDiffusion .ckpt (+ YAML) or a diffusers
    LDMPipeline folder as a bundle (safetensors), read with ``torch.load(weights_only=True)``: nothing in it
    is executed. With ``to_compvis``, a bundle as a CompVis .ckpt + YAML instead."""

    source: Path | None = option(None, positional=True, required=True, metavar="SOURCE",
                                 help="CompVis .ckpt, diffusers pipeline folder (or a bundle with --to-compvis)")
    out: Path | None = option(None, positional=True, required=True, metavar="OUT",
                              help="bundle folder to write (with --to-compvis: the .ckpt file)")
    to_compvis: bool = option(False, help="write SOURCE (a bundle) as a CompVis .ckpt + .yaml")
    intent: str = option("new", choices=("new", "overwrite"), consts={"--overwrite": "overwrite"},
                         help="new output, or overwrite our output there")
    foreign: ModelSource = option(factory=ModelSource, help="how to read a foreign model")


def convert(opts: ConvertOptions):
    """Convert ``opts.source``; returns a summary with a ``message``."""
    fit_threads()
    check(opts)
    require(opts, "source", "out")
    if False:
        yield  # a generator, like every job
    out = Path(opts.out)
    if opts.to_compvis:
        from ..formats.compvis import check_compvis_output, write_compvis
        from ..formats.convert import open_model

        if out.suffix != ".ckpt":
            raise HistodiffError(f"with {{opt:to_compvis}} the output is a .ckpt file, not {out}")
        check_compvis_output(out, opts.intent)
        write_compvis(open_model(opts.source, device="cpu", **opts.foreign.kwargs()), out, intent=opts.intent)
        return {"message": f"CompVis checkpoint written to {out} with its config {out.with_suffix('.yaml')}"}
    from ..formats.convert import convert_to_bundle

    bundle = convert_to_bundle(opts.source, out, intent=opts.intent, **opts.foreign.kwargs())
    prov = bundle.meta["provenance"]["converted"]
    weights = {True: "EMA weights", False: "model weights"}.get(prov.get("ema"), "weights")
    return {"bundle": bundle, "message": f"bundle written to {out} ({prov['format']}, {weights}, tile size "
            f"{bundle.tile_size} px, latent scale factor {bundle.scale_factor:.5g}); try: histodiff sample "
            f"{out} -n 16 --out samples"}


@dataclass
class InfoOptions:
    """``histodiff info``: a readable summary of a bundle (or of a foreign checkpoint, converted in memory).
    A bundle's weights are verified (sizes, sha256 recorded at save, safetensors headers); damaged files
    are named, with the fix, and the command exits with code 2."""

    model: Path | None = option(None, positional=True, required=True, metavar="BUNDLE",
                                help="bundle folder, CompVis .ckpt or diffusers LDM pipeline folder")
    json: bool = option(False, help="print histodiff.json as it is")
    foreign: ModelSource = option(factory=ModelSource, help="how to read a foreign model")


def info(opts: InfoOptions):
    """The summary text (``message``) of ``opts.model``; a damaged bundle raises a HistodiffError that
    holds the whole summary, its damaged files and the fix included."""
    import json
    import tempfile

    from ..formats.bundle import describe, read_meta, save_bundle, summary
    from ..formats.convert import convert_source, detect_format
    from ..formats.starter import resolve_model

    check(opts)
    require(opts, "model")
    if False:
        yield  # a generator, like every job
    model = resolve_model(opts.model)  # a built-in model's name: its folder in the package
    fmt = opts.foreign.format or detect_format(model)
    if fmt == "bundle":
        if opts.foreign.config is not None or opts.foreign.ema is not None:
            raise HistodiffError("{opt:config} and {opt:ema} apply to CompVis .ckpt checkpoints only")
        folder = Path(model)
        if opts.json:
            return {"message": json.dumps(read_meta(folder), indent=2, sort_keys=True)}
        text, problems = describe(folder)
        if problems:
            raise HistodiffError(f"bundle {folder} is DAMAGED: {len(problems)} problem"
                                 f"{'s' * (len(problems) > 1)} with its files, listed below with the fix\n{text}")
        return {"message": text}
    with tempfile.TemporaryDirectory(prefix="histodiff-converted-") as tmp:
        folder = Path(tmp) / "bundle"
        save_bundle(convert_source(model, fmt, **{k: v for k, v in opts.foreign.kwargs().items()
                                                       if k != "format"}), folder)
        if opts.json:
            return {"message": json.dumps(read_meta(folder), indent=2, sort_keys=True)}
        text = summary(folder, verify=False).replace(f"bundle      {folder}", f"source      {opts.model} (converted in "
                                       "memory; save it with `histodiff convert`)")
    return {"message": text}

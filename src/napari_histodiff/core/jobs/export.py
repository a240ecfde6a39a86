"""The export job: kept tiles of sample folders as an ImageFolder-style augmentation set."""

from __future__ import annotations

from ..base.options import require
from ..generate.export import ExportOptions

__all__ = ["ExportOptions", "export"]


def export(opts: ExportOptions, real_tiles=None):
    """Write (or append to) the set in ``opts.out``; yields progress; returns the summary with a ``message``."""
    from ..generate.export import export_set

    opts.validate()
    require(opts, "samples", "out")
    params = {"samples": [str(s) for s in opts.samples], "include_real": str(opts.include_real or "")}
    summary = yield from export_set(opts.samples, opts.out, opts, real_tiles=real_tiles, params=params)
    message = f"{summary['total']} tiles exported to {opts.out}"
    if not summary.get("audited"):
        message += "; not audited: near-copies of the real tiles may be among them ({opt:audit} screens them)"
    missing = summary.get("classes_without_tiles") or {}
    if missing:
        message += (f"; WARNING: no synthetic tile of class{'es' * (len(missing) > 1)} {', '.join(missing)}: "
                    + "; ".join(f"{c}: {why}" for c, why in missing.items()))
    return {**summary, "message": message}

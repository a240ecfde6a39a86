"""The audit job: are the synthetic tiles near-copies of the real tiles the model saw?"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..base.errors import HistodiffError
from ..base.options import require
from ..base.threads import fit_threads
from ..evaluate.audit import AuditOptions

__all__ = ["AuditOptions", "audit"]


def audit(opts: AuditOptions):
    """Write ``audit.csv``, ``audit.json`` and ``features/`` into ``opts.out``; yields progress; returns the
    summary with a ``message``."""
    from ..base.atomic import partial_path, remove_dead_partials, swap_in
    from ..base.outdir import check_output
    from ..evaluate.audit import open_real, open_samples, run_audit
    from ..evaluate.features import features_folder, load_encoder, save_encoder
    from ..evaluate.report import REPORT_HTML, open_reference, write_report
    from ..formats.audit import AUDIT_CSV, AUDIT_JSON, write_audit

    fit_threads()
    opts.validate()
    require(opts, "samples", "against", "out")
    out = Path(opts.out)
    check_output(out, "audit", opts.intent)
    samples = open_samples(opts.samples, opts.feature_size)
    real = open_real(opts.against, opts.feature_size)
    if opts.held_out and not opts.report:
        raise HistodiffError("{opt:held_out} is read by the report only: leave out {opt:report=False} or the "
                             "held-out tiles")
    reference = open_reference(opts, real) if opts.report else None
    encoder = load_encoder(opts.features) if opts.features is not None else None
    reused = features_folder(opts.features) if opts.features is not None else None
    rows, summary, model, info = yield from run_audit(samples, real, opts, encoder)
    summary.update(samples=[str(p) for p in opts.samples], against=[str(p) for p in opts.against])
    remove_dead_partials(out)
    tmp = partial_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if reused is not None:
            shutil.copytree(reused, tmp / "features")
        else:
            save_encoder(model.cpu(), tmp / "features", info)
        write_audit(tmp, rows, summary, opts.neighbours)
        if opts.report:
            yield from write_report(tmp, rows, summary, model, samples, real, reference, opts)
        swap_in(tmp, out, "audit")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    flagged = sum(r["near_copy"] for r in rows)
    cal = summary["calibration"]
    message = (f"{flagged} of {len(rows)} synthetic tiles are near-copies of real tiles (similarity above "
               f"{summary['threshold']:.3f}; at it, {100 * cal['positive_recall_at_threshold']:.1f}% of planted copies "
               f"of real tiles and {100 * cal['negative_flag_rate_at_threshold']:.1f}% of real tiles against the "
               f"others are flagged); written to {out / AUDIT_CSV} and {out / AUDIT_JSON}"
               + (f"; quality report: {out / REPORT_HTML}" if opts.report else ""))
    return {**summary, "near_copies": flagged, "message": message}

"""The evaluation job: downstream classifiers on real tiles and on real + augmentation tiles."""

from __future__ import annotations

from ..base.threads import fit_threads
from ..base.options import require
from ..evaluate.evaluate import EvaluateOptions

__all__ = ["EvaluateOptions", "evaluate"]


def evaluate(opts: EvaluateOptions):
    """Train and test the classifiers over the seeds; writes results.json and results.png into ``opts.out``."""
    from ..base.outdir import check_output, prepare_output
    from ..evaluate.evaluate import evaluate as run, open_labeled, write_results

    fit_threads()
    opts.validate()
    require(opts, "train", "test", "out")
    check_output(opts.out, "evaluation", opts.intent)
    train = open_labeled(opts.train, opts.tile_size)
    test = open_labeled(opts.test, opts.tile_size)
    augment = open_labeled(opts.augment, opts.tile_size) if opts.augment is not None else None
    results = yield from run(train, test, augment, opts)
    prepare_output(opts.out, "evaluation", opts.intent)
    write_results(results, opts.out)
    n = len(opts.seeds)
    lines = [f"{arm:>10}: accuracy {100 * r['mean']['accuracy']:.1f} +- {100 * r['sd']['accuracy']:.1f}, "
             f"macro-F1 {r['mean']['macro_f1']:.3f} +- {r['sd']['macro_f1']:.3f} ({n} seed{'s' * (n > 1)})"
             for arm, r in results["arms"].items()]
    d = results.get("paired_difference")
    if d:
        lines.append(f"augmented - real: {d['mean']:+.1f} points of accuracy, 95% CI [{d['ci95_low']:+.1f}, "
                     f"{d['ci95_high']:+.1f}]" + (f" ({d['note']})" if "note" in d else ""))
    lines.append(f"results written to {opts.out}/results.json and results.png")
    return {**results, "message": "\n".join(lines)}

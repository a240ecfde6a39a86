"""Selective augmentation (DESIGN.md step 4): keep synthetic tiles the selection classifier
confidently assigns to their target class and/or whose nearest feature centroid is that class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base.errors import HistodiffError
from ..base.shell import command
from ..base.options import check, option

RULES = ("confidence", "centroid", "both", "none")


@dataclass
class SelectionRule:
    """Which synthetic tiles to keep (DESIGN.md step 4)."""

    rule: str = option("both", choices=RULES,
                       help="keep a tile when the selection classifier is confident of its target class "
                       "(confidence), when its nearest class centroid is the target (centroid, as the original "
                       "code), when both hold (both), or always (none)")
    threshold: float = option(0.8, min=0, max=1, help="lowest confidence (probability of the target class) "
                              "a kept tile may have")
    cap: int | None = option(None, min=0, help="keep at most this many tiles per class, the most confident first "
                             "(default: no cap)")
    tissue_check: bool = option(True, help="with a rule: also drop a tile with less than half the tissue of its "
                                "class's least-stained labelled tile (blank or nearly blank tiles; bundles "
                                "fine-tuned before this check have no such bound)")

    def validate(self) -> None:
        check(self)


def missing_selection(bundle, what: str = "") -> str:
    """Why ``bundle`` (which has no selection classifier) cannot select, ``what`` happens instead, and the fix."""
    if bundle.latent_classifier is None:
        return f"this bundle has no selection classifier{what}; run `histodiff finetune` first"
    out = bundle.path or "FOLDER"
    return (f"this bundle has no selection classifier yet (fine-tuning was interrupted before that stage){what}: "
            f"resume the fine-tuning with "
            f"`{command('finetune', 'PRETRAINED', '--labeled', 'TILES', '--out', out, '--resume')}` "
            "(napari: Fine-tune into that folder with intent resume)")


def score(bundle, tiles: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Selection classifier probabilities and centroid distances (N, C) of uint8 NHWC tiles."""
    import torch

    from ..models.pixels import to_model_input

    clf = bundle.selection_classifier
    if clf is None:
        raise HistodiffError(missing_selection(bundle))
    probs, dists = [], []
    with torch.no_grad():
        for i in range(0, len(tiles), batch_size):
            out = clf.score(to_model_input(torch.from_numpy(tiles[i : i + batch_size]), bundle.device))
            probs.append(out["probs"].cpu().numpy())
            dists.append(out["distances"].cpu().numpy())
    return np.concatenate(probs), np.concatenate(dists)


def annotate(records, probs: np.ndarray, dists: np.ndarray, class_names: list[str]) -> None:
    """Fill each record's prediction, confidence and centroid distance (for its target class,
    or for the predicted class when it has no target)."""
    for rec, p, d in zip(records, probs, dists):
        pred = int(p.argmax())
        k = class_names.index(rec.target_class) if rec.target_class else pred
        rec.predicted_class = class_names[pred]
        rec.confidence = float(p[k])
        rec.centroid_distance = float(d[k])
        rec.nearest_centroid = class_names[int(d.argmin())]


def tissue_floors(bundle) -> dict[str, float] | None:
    """Per class, the least tissue fraction a kept tile may have (from fine-tuning), or None (older bundle)."""
    clf = getattr(bundle, "selection_classifier", None)
    floor = getattr(getattr(clf, "config", None), "tissue_floor", None)
    return dict(zip(bundle.class_names, floor)) if floor else None


def measure_tissue(records, tiles: np.ndarray) -> None:
    """Fill each record's tissue fraction from its uint8 tile."""
    from ..data.tiles import tissue_fractions

    for rec, f in zip(records, tissue_fractions(tiles)):
        rec.tissue = round(float(f), 4)


def decide(records, rule: SelectionRule, floors: dict[str, float] | None = None) -> None:
    """Set ``kept`` on every record by the rule (and, with ``floors`` and the rule's tissue check, its
    class's least tissue fraction), then apply the per-class cap (best first)."""
    rule.validate()
    for rec in records:
        target = rec.target_class or rec.predicted_class
        confident = rec.confidence is not None and rec.predicted_class == target and rec.confidence >= rule.threshold
        nearest = rec.nearest_centroid == target
        rec.kept = {"confidence": confident, "centroid": nearest, "both": confident and nearest,
                    "none": True}[rule.rule]
        blank = bool(rule.rule != "none" and rule.tissue_check and floors and rec.tissue is not None
                     and rec.tissue < floors.get(target, 0.0))
        rec.extra["blank"] = blank
        rec.kept = rec.kept and not blank
    if rule.cap is None:
        return
    by_class: dict[str, list] = {}
    for rec in records:
        if rec.kept:
            by_class.setdefault(rec.target_class or rec.predicted_class, []).append(rec)
    for kept in by_class.values():
        kept.sort(key=lambda r: (-(r.confidence or 0.0), r.centroid_distance or 0.0, r.index))
        for rec in kept[rule.cap:]:
            rec.kept = False


def class_report(records, rule: SelectionRule | None = None, classes=None) -> dict:
    """Kept tiles per target class and, for every class that kept none, why.

    ``classes``: the classes to report (default: the target classes of ``records``). Returns
    ``{"kept_per_class": {class: n}, "classes_without_tiles": {class: reason}}``; a class with no
    tile at all is reported as "no tile was made for it"."""
    made: dict[str, list] = {}
    for rec in records:
        made.setdefault(rec.target_class or rec.predicted_class or "unguided", []).append(rec)
    names = list(classes) if classes is not None else list(made)
    kept = {c: sum(bool(r.kept) for r in made.get(c, [])) for c in names}
    missing = {c: _why_none(made.get(c, []), rule) for c in names if not kept[c]}
    return {"kept_per_class": kept, "classes_without_tiles": missing}


def _why_none(records, rule: SelectionRule | None) -> str:
    if not records:
        return "no tile was made for it"
    scores = [r.confidence for r in records if r.confidence is not None]
    if not scores:
        return "its tiles were not scored by the selection classifier"
    top = max(scores)
    rule_name = rule.rule if rule is not None else None
    threshold = rule.threshold if rule is not None else None
    if rule is not None and rule.cap == 0:
        return "the per-class cap is 0"
    if all(r.extra.get("blank") for r in records):
        return (f"all its {len(records)} tiles were blank or nearly so (less than half the tissue of its "
                "least-stained labelled tile); look at them, or turn {opt:tissue_check} off to keep them")
    if rule_name in ("confidence", "both") and top < threshold:
        return (f"the selection classifier was never confident on it (highest confidence {top:.2f} < "
                f"threshold {threshold:.2f}, over {len(records)} tiles)")
    predicted = sum(r.predicted_class == (r.target_class or r.predicted_class) for r in records)
    nearest = sum(r.nearest_centroid == (r.target_class or r.predicted_class) for r in records)
    if rule_name in ("centroid", "both") and not nearest:
        return (f"its nearest class centroid was never the target class (over {len(records)} tiles; highest "
                f"confidence {top:.2f})")
    if rule_name is None:
        return f"no tile was kept (highest confidence {top:.2f}, predicted as it {predicted} of {len(records)} times)"
    return (f"no tile passed the {rule_name} rule (highest confidence {top:.2f}, threshold {threshold:.2f}; "
            f"predicted as it {predicted} and nearest centroid {nearest} of {len(records)} times)")


def report_lines(report: dict) -> list[str]:
    """One warning per class that kept no tile."""
    return [f"class {c} kept no synthetic tile: {why}; the augmentation set will have no {c} tile "
            "(lower {opt:threshold}, choose another {opt:rule}, sample more tiles of it, or train the "
            "classifiers on more labeled tiles)" for c, why in report["classes_without_tiles"].items()]

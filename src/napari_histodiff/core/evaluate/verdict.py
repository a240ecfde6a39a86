"""After fine-tuning: is the model good enough to sample, and if not, what to annotate next (plain words).

:func:`verdict` turns what fine-tuning measured (tiles per class, the held-out confusion of the tile checker
(the selection classifier) and the accuracy of the classifier that steers sampling (the guidance classifier))
into one headline, a short list of actions and the figures behind them. :func:`from_result` reads a
fine-tuning job's result, :func:`from_meta` a bundle's ``histodiff.json``. No Qt or torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FEW_TILES = 20  # fewer labeled tiles than this in a class: ask for more
GOOD_ACCURACY = 0.75  # the tile checker's held-out accuracy needed to call a model ready
CONFUSED = 0.25  # share of a class's held-out tiles taken for one other class that counts as confusion
WEAK_RECALL = 0.5  # a class whose held-out tiles are recognised less often than this is weak
NEAR_CHANCE = 0.1  # steering accuracy within this of chance: sampling barely steers


@dataclass
class Verdict:
    ready: bool  # good enough to sample
    headline: str  # one sentence
    actions: list[str] = field(default_factory=list)  # what to do, most important first
    details: list[str] = field(default_factory=list)  # the figures behind it

    def text(self, details: bool = False) -> str:
        lines = [self.headline, *(f"- {a}" for a in self.actions)]
        if details and self.details:
            lines += ["Figures:", *(f"  {d}" for d in self.details)]
        return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _pairs(names, confusion) -> tuple[list[tuple[str, str, float]], dict[str, float], list[str]]:
    """Confused pairs (a, b, share of a's tiles taken for b, largest first), recall per class, and lines."""
    pairs, recall, lines = [], {}, []
    for i, a in enumerate(names):
        row = [int(x) for x in confusion[i]]
        total = sum(row)
        if not total:
            continue
        recall[a] = row[i] / total
        lines.append(f"{a}: {row[i]} of {total} held-out tiles recognised ({_pct(recall[a])})" + "".join(
            f"; {n} taken for {names[j]}" for j, n in enumerate(row) if j != i and n))
        for j, n in enumerate(row):
            if j != i and n and n / total >= CONFUSED:
                pairs.append((a, names[j], n / total))
    pairs.sort(key=lambda p: -p[2])
    return pairs, recall, lines


def verdict(class_names, class_counts: dict | None = None, confusion=None, checker_accuracy: float | None = None,
            steering_accuracy: float | None = None) -> Verdict:
    """The verdict on a fine-tuned model.

    ``class_counts``: labeled tiles per class; ``confusion``: rows = true class, columns = predicted class,
    counts of held-out tiles of the tile checker (the selection classifier); ``checker_accuracy``: its
    held-out accuracy (default: from ``confusion``); ``steering_accuracy``: the guidance classifier's
    held-out accuracy on clean latents (t = 0)."""
    names = [str(n) for n in class_names]
    counts = {str(k): int(v) for k, v in (class_counts or {}).items()}
    actions, details, blocking = [], [], False
    if len(names) < 2:
        return Verdict(False, "Not fine-tuned on classes: there is nothing to judge.",
                       ["annotate at least two classes and fine-tune"])
    pairs, recall, lines = ([], {}, [])
    if confusion is not None and len(confusion) == len(names):
        pairs, recall, lines = _pairs(names, confusion)
        if checker_accuracy is None:
            total = sum(sum(int(x) for x in row) for row in confusion)
            right = sum(int(confusion[i][i]) for i in range(len(names)))
            checker_accuracy = right / total if total else None
    seen = set()
    for a, b, share in pairs:
        key = frozenset((a, b))
        if key in seen:
            continue
        seen.add(key)
        blocking = True
        actions.append(f"classes {a} and {b} are confused ({_pct(share)} of the held-out {a} tiles were taken for "
                       f"{b}): add tiles of them, especially ones that show what tells them apart")
    confused = {c for p in seen for c in p}
    for c, r in sorted(recall.items(), key=lambda kv: kv[1]):
        if r < WEAK_RECALL and c not in confused:
            blocking = True
            actions.append(f"class {c} is often not recognised ({_pct(r)} of its held-out tiles): add tiles of {c}")
    few = sorted((n, c) for c, n in counts.items() if n < FEW_TILES)
    for n, c in few:
        actions.append(f"too few tiles of {c} ({n}): annotate at least {FEW_TILES - n} more")
    chance = 1.0 / len(names)
    if steering_accuracy is not None and steering_accuracy <= chance + NEAR_CHANCE:
        blocking = True
        actions.append("sampling will barely steer toward the class you choose (the classifier that steers it is "
                       f"right on {_pct(steering_accuracy)} of held-out tiles, chance is {_pct(chance)}): train it "
                       "longer (more classifier steps) or add tiles of every class")
    if checker_accuracy is not None and checker_accuracy < GOOD_ACCURACY:
        blocking = True
        if not actions:
            actions.append("add tiles of every class")
    if checker_accuracy is not None:
        details.append(f"the tile checker recognises {_pct(checker_accuracy)} of held-out tiles (chance "
                       f"{_pct(chance)}; {_pct(GOOD_ACCURACY)} needed)")
    if steering_accuracy is not None:
        details.append(f"the classifier that steers sampling is right on {_pct(steering_accuracy)} of held-out tiles")
    details += lines
    if counts:
        details.append("labeled tiles: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    if checker_accuracy is None and steering_accuracy is None:
        return Verdict(False, "No figures were recorded, so the model cannot be judged: fine-tune it again.",
                       actions, details)
    if blocking:
        return Verdict(False, "Not good enough yet: " + actions[0] + ".", actions[1:], details)
    headline = "Good enough to sample."
    if few:
        headline += " More tiles of the small classes would make it more reliable."
    return Verdict(True, headline, actions, details)


def _latent_clean(latent) -> float | None:
    if not isinstance(latent, dict):
        return None
    acc = latent["history"][-1][1] if latent.get("history") else latent
    return acc.get("acc_t0") if isinstance(acc, dict) else None


def _checker(selection) -> tuple[list | None, float | None]:
    if not isinstance(selection, dict):
        return None, None
    acc = selection.get("best_heldout_acc", selection.get("heldout_acc"))
    return selection.get("confusion"), acc


def from_result(result: dict, class_names) -> Verdict:
    """The verdict from a fine-tuning job's result (``core.jobs.finetune``)."""
    confusion, acc = _checker(result.get("selection_classifier"))
    return verdict(class_names, result.get("class_counts"), confusion, acc,
                   _latent_clean(result.get("latent_classifier")))


def from_meta(meta: dict) -> Verdict:
    """The verdict from a fine-tuned bundle's ``histodiff.json``."""
    prov, metrics = meta.get("provenance") or {}, meta.get("metrics") or {}
    confusion, acc = _checker({**(metrics.get("selection_classifier") or {}),
                               **(prov.get("selection_classifier") or {})})
    return verdict(meta.get("class_names") or [], meta.get("class_counts"), confusion, acc,
                   _latent_clean(metrics.get("latent_classifier")))

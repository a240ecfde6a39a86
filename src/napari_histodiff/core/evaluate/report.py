"""The audit's quality report (``report.html``, self-contained, and ``report.json``): per class the kept
rate, class agreement, diversity, precision / recall and a Fréchet distance in the audit's feature
space (:mod:`.quality`), the memorisation gap as a histogram and a contact sheet of the most copy-like
tiles beside their nearest real tile.

The real reference of a class is, in this order: the labelled held-out tiles of that class
(``--held-out``), else the ``--against`` tiles in a sub-folder named after the class, else all real
tiles (a random sample). An independent classifier (a logistic regression on the audit's features)
exists only when held-out tiles are given; the selection classifier's verdicts in ``samples.csv`` are
shown too, marked as not independent.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from ..base.errors import HistodiffError
from ..base.events import Progress
from .audit import AuditTiles, _read_small
from .quality import (
    K,
    cross_validated_accuracy,
    diversity_ratio,
    fit_softmax,
    frechet_distance,
    precision_recall,
    predict_softmax,
)

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
SHEET = 12  # tiles on the contact sheet
SHOW = 128  # their size, pixels
FEATURE_NOTE = ("Diversity, precision, recall and the Fréchet distance are measured in the audit's own feature "
                "space (a small encoder trained contrastively on your real tiles, saved in features/), not in "
                "Inception's: they compare sample sets audited with the same encoder and are not comparable to "
                "published FID or precision / recall figures. With few tiles per class they are rough: the Fréchet "
                "distance grows as sets get smaller, so compare sets of similar size.")


# -- the real reference of each class ------------------------------------------------------------

def open_reference(opts, real: AuditTiles) -> tuple[AuditTiles, str]:
    """(reference tiles with a class each, where they come from): held-out tiles, else the labelled ``--against``
    tiles, else a random sample of all real tiles (class ""); at most ``opts.report_tiles`` per class."""
    from ..data.tiles import TileFolder

    files, classes = [], []
    if opts.held_out:
        for root in map(Path, opts.held_out):
            folder = TileFolder(root, opts.feature_size)
            for i, path in enumerate(folder.paths):
                label = folder.label(i)
                if label is not None:
                    files.append(path), classes.append(folder.class_names[label])
        if not files:
            raise HistodiffError(f"no labelled tiles in {', '.join(map(str, opts.held_out))}: {{opt:held_out}} takes "
                                 "folders with one sub-folder of tiles per class")
        source = "held-out"
    elif real.tileset is None:
        roots = [Path(p).resolve() for p in opts.against]
        for path in real.files:
            rel = _relative(Path(path).resolve(), roots)
            if rel is not None and len(rel.parts) > 1:
                files.append(path), classes.append(rel.parts[0])
        source = "against"
    if not files:  # nothing labelled: a sample of all real tiles
        pick = np.random.default_rng(opts.seed).choice(len(real), min(len(real), opts.report_tiles), replace=False)
        tiles = AuditTiles(real.size, tileset=_Subset(real, np.sort(pick)))
        return tiles, "all"
    keep = _per_class(classes, opts.report_tiles, opts.seed)
    return AuditTiles(opts.feature_size, [files[i] for i in keep], [classes[i] for i in keep],
                      [str(files[i]) for i in keep]), source


def _relative(path: Path, roots):
    for root in roots:
        try:
            return path.relative_to(root)
        except ValueError:
            continue
    return None


def _per_class(classes, limit: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    out = []
    for c in sorted(set(classes)):
        idx = [i for i, k in enumerate(classes) if k == c]
        out += sorted(rng.choice(idx, min(limit, len(idx)), replace=False).tolist())
    return sorted(out)


class _Subset:
    """Some tiles of an :class:`AuditTiles`, read as a tile set (class "")."""

    def __init__(self, tiles: AuditTiles, idx):
        self.tiles, self.idx = tiles, idx

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.tiles.read([self.idx[i]])[0]

    def origin(self, i):
        return self.tiles.name(int(self.idx[i]))


def reference_classes(tiles: AuditTiles) -> list[str]:
    return list(tiles.classes) if tiles.tileset is None else [""] * len(tiles)


# -- measuring ----------------------------------------------------------------------------------

def _records(samples: AuditTiles) -> list:
    """Each synthetic tile's record in its folder's ``samples.csv`` (None for plain folders of tiles)."""
    from ..formats.records import RECORDS_FILE, read_records

    found = {}
    for folder in sorted(set(samples.folders)):
        if (Path(folder) / RECORDS_FILE).is_file():
            found.update({(folder, r.file): r for r in read_records(folder)})
    return [found.get((f, r)) for f, r in zip(samples.folders, samples.rel)]


def _embed_all(model, tiles: AuditTiles, device, stage: str):
    from .audit import BATCH
    from .features import embed

    out = []
    for idx, batch in tiles.batches(BATCH):
        out.append(embed(model, batch, device))
        yield Progress(stage, int(idx[-1]) + 1, len(tiles))
    return np.concatenate(out) if out else np.zeros((0, model.config.dim), np.float32)


def _share(flags) -> float | None:
    flags = list(flags)
    return round(float(np.mean(flags)), 4) if flags else None


def _distribution(real: np.ndarray, fake: np.ndarray) -> dict:
    out = {"diversity_ratio": None, "precision": None, "recall": None, "frechet_distance": None}
    if len(real) >= 2 and len(fake) >= 2:
        out["diversity_ratio"] = round(diversity_ratio(real, fake), 4)
        out["frechet_distance"] = round(frechet_distance(real, fake), 4)
    if len(real) > K and len(fake) > K:
        p, r = precision_recall(real, fake, K)
        out["precision"], out["recall"] = round(p, 4), round(r, 4)
    return out


def measure(rows, records, fake, ref, ref_classes, ref_source, classifier=None) -> dict:
    """Per class (and ``all``): counts, kept rate, agreement and distribution figures. ``fake``/``ref``:
    features of the synthetic / reference tiles; ``classifier``: (class names, predictions per synthetic
    tile) of the independent classifier, or None."""
    from ..base.names import safe_name

    ref_classes = np.array(ref_classes, dtype=object)
    classes = sorted({r["class"] for r in rows})
    out, all_measured = {}, []
    for cls in classes + [None]:
        idx = [i for i, r in enumerate(rows) if cls is None or r["class"] == cls]
        kept = [records[i].kept for i in idx if records[i] is not None and records[i].kept is not None]
        measured = [i for i in idx if records[i] is not None and records[i].kept] if kept else idx
        if cls is None:
            measured = all_measured
            ref_idx, where = np.arange(len(ref_classes)), f"all {ref_source} tiles"
        else:
            all_measured += measured
            match = (ref_classes == cls) | (ref_classes == safe_name(cls)) if cls else np.zeros(len(ref_classes), bool)
            ref_idx = np.flatnonzero(match)
            where = f"{ref_source} tiles of the class"
            if not len(ref_idx):
                ref_idx, where = np.arange(len(ref_classes)), f"all {ref_source} tiles (none of this class)"
        sims = np.array([rows[i]["similarity"] for i in idx])
        entry = {
            "tiles": len(idx), "kept": int(sum(kept)) if kept else None,
            "kept_rate": _share(kept), "measured": "kept" if kept else "all", "measured_tiles": len(measured),
            "selection_agreement": _share(records[i].predicted_class == records[i].target_class for i in idx
                                          if records[i] is not None and records[i].target_class
                                          and records[i].predicted_class),
            "independent_agreement": None,
            "reference": where, "reference_tiles": int(len(ref_idx)),
            "near_copies": int(sum(rows[i]["near_copy"] for i in idx)),
            "similarity_median": round(float(np.median(sims)), 4) if len(sims) else None,
        }
        if classifier is not None and cls is not None and cls in classifier[0]:
            entry["independent_agreement"] = _share(classifier[1][i] == cls for i in measured)
        elif classifier is not None and cls is None:
            entry["independent_agreement"] = _share(classifier[1][i] == rows[i]["class"] for i in measured
                                                    if rows[i]["class"] in classifier[0])
        entry.update(_distribution(ref[ref_idx], fake[measured]))
        out["all" if cls is None else (cls or "(no class)")] = entry
    return out


def independent_classifier(ref, ref_classes, fake, seed: int):
    """(class names, predicted class per synthetic tile, cross-validated accuracy on the reference tiles)."""
    names = sorted(set(ref_classes))
    if len(names) < 2:
        return None
    y = np.array([names.index(c) for c in ref_classes])
    accuracy = cross_validated_accuracy(ref, y, len(names), seed=seed)
    w = fit_softmax(ref, y, len(names))
    return names, [names[k] for k in predict_softmax(w, fake)], accuracy


# -- figures ------------------------------------------------------------------------------------

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def gap_figure(synthetic, negatives, positives, threshold) -> bytes:
    """Histogram of nearest-real similarities: synthetic tiles, genuine real tiles, planted copies."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.add_subplot()
    every = np.concatenate([np.asarray(a, float) for a in (synthetic, negatives, positives) if len(a)])
    bins = np.linspace(min(every.min(), threshold) - 0.01, max(every.max(), threshold) + 0.01, 41)
    for values, label, colour in ((negatives, "real tiles, each against the others (held out)", "tab:green"),
                                  (positives, "planted copies of real tiles", "tab:red"),
                                  (synthetic, "synthetic tiles", "tab:blue")):
        if len(values):
            ax.hist(values, bins=bins, density=True, histtype="stepfilled" if colour == "tab:blue" else "step",
                    alpha=0.45 if colour == "tab:blue" else 1, color=colour, lw=1.5, label=f"{label} ({len(values)})")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"near-copy threshold {threshold:.3f}")
    ax.set_xlabel("similarity to the nearest real tile (1 = same pixels)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def contact_sheet(pairs) -> bytes:
    """Pairs (synthetic tile, nearest real tile, caption) side by side, three pairs a row."""
    from matplotlib.figure import Figure

    cols = 3
    rows = max(1, -(-len(pairs) // cols))
    fig = Figure(figsize=(2 * cols * 1.45, rows * 1.7), layout="constrained")
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, (fake, real, caption) in enumerate(pairs):
        a, b = axes[n // cols, 2 * (n % cols)], axes[n // cols, 2 * (n % cols) + 1]
        a.imshow(fake), b.imshow(real)
        a.set_title(caption, fontsize=7, loc="left"), b.set_title("nearest real", fontsize=7)
    return _png(fig)


def _show(tiles: AuditTiles, i: int) -> np.ndarray:
    return _read_small(tiles.files[i], SHOW) if tiles.tileset is None else tiles.read([i])[0]


# -- the page -----------------------------------------------------------------------------------

def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _num(v, fmt="{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(classes: dict) -> str:
    head = ["class", "synthetic tiles", "kept", "selection classifier agrees", "independent classifier agrees",
            "measured tiles", "real reference", "diversity", "precision", "recall", "Fréchet distance",
            "near-copies", "median similarity"]
    body = []
    for name, c in classes.items():
        kept = "–" if c["kept"] is None else f"{c['kept']} ({_pct(c['kept_rate'])})"
        cells = [name, c["tiles"], kept, _pct(c["selection_agreement"]), _pct(c["independent_agreement"]),
                 f"{c['measured_tiles']} ({c['measured']})", f"{c['reference_tiles']}: {c['reference']}",
                 _num(c["diversity_ratio"], "{:.2f}"), _pct(c["precision"]), _pct(c["recall"]),
                 _num(c["frechet_distance"]), c["near_copies"], _num(c["similarity_median"])]
        tag = ' class="all"' if name == "all" else ""
        body.append(f"<tr{tag}>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>\n" + "\n".join(body) + "</table>")


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
         "td:first-child,th{text-align:left}tr.all{font-weight:bold}.note{color:#555;font-size:13px}"
         "img{max-width:100%}")


def page(report: dict, gap_png: bytes, sheet_png: bytes | None) -> str:
    s, agree = report["summary"], report["agreement"]
    gap = report["memorisation"]
    copies = report["most_copy_like"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Quality report</title><style>{STYLE}</style>"
        "</head><body>",
        f"<h1>Quality report: {s['synthetic_tiles']} synthetic tiles, {s['classes']} classes</h1>",
        f"<p>Samples: {html.escape(', '.join(s['samples']))}<br>Real tiles: {html.escape(', '.join(s['against']))} "
        f"({s['real_tiles']})<br>Written {html.escape(s['written'])}</p>",
        f'<p class="note">{html.escape(FEATURE_NOTE)}</p>',
        '<h2 id="classes">Per class</h2>', _table(report["classes"]),
        '<p class="note"><b>kept</b>: tiles the selection kept (samples.csv). <b>measured tiles</b>: the kept tiles '
        "where a selection ran, else all; diversity, precision, recall, Fréchet distance and the independent "
        "classifier use these. <b>diversity</b>: mean pairwise cosine distance of the synthetic features over that of "
        "the real reference (1: as varied as the real tiles; far below 1: a few textures repeated). "
        f"<b>precision</b>: share of synthetic tiles inside the real tiles' manifold (k-NN balls, k={K}; "
        "Kynkäänniemi et al. 2019): are they realistic? <b>recall</b>: share of real tiles inside the synthetic "
        "manifold: do they cover the class? <b>Fréchet distance</b>: between Gaussians fitted to both feature sets "
        "(0 = the same; not an Inception FID). <b>near-copies</b> and <b>median similarity</b>: from audit.csv.</p>",
        '<h2 id="agreement">Class agreement</h2>', f"<p>{html.escape(agree['text'])}</p>",
        '<h2 id="memorisation">Memorisation gap</h2>', _img(gap_png, "histogram of nearest-real similarities"),
        f"<p>{html.escape(gap['text'])}</p>",
        '<h2 id="copies">Most copy-like tiles</h2>',
    ]
    if sheet_png is not None:
        parts += [_img(sheet_png, "most copy-like synthetic tiles beside their nearest real tile"),
                  "<p class='note'>Each synthetic tile (left) beside its nearest real tile (right), the most similar "
                  "first; caption: class, similarity, and <b>COPY</b> when flagged.</p><ol>"]
        parts += [f"<li>{html.escape(c['tile'])} ~ {html.escape(c['nearest_real'])} ({c['similarity']:.3f}"
                  f"{', near-copy' if c['near_copy'] else ''})</li>" for c in copies]
        parts.append("</ol>")
    else:
        parts.append("<p>No synthetic tiles.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _agreement_text(classifier, accuracy, source, has_selection) -> str:
    text = []
    if classifier is not None:
        acc = "" if accuracy is None else \
            f" (its accuracy on those tiles, 5-fold cross-validated: {100 * accuracy:.0f}%)"
        text.append("Independent classifier: a logistic regression on the audit's features, trained on the "
                    f"labelled held-out tiles{acc}. It never saw the selection, so its agreement with each tile's "
                    "target class is an unbiased check of class fidelity, as far as those features separate classes.")
    else:
        why = "" if source == "held-out" else " Give --held-out (labelled real tiles the model never saw) to get one."
        text.append(f"No independent classifier was trained.{why}")
    if has_selection:
        text.append("'Selection classifier agrees': the share of all synthetic tiles that the fine-tuned bundle's "
                    "selection classifier assigned to their target class (samples.csv predicted_class). This is the "
                    "selection classifier, not an independent one: it chose which tiles were kept, so among kept "
                    "tiles it agrees by construction.")
    return " ".join(text)


def write_report(folder, rows, summary, model, samples: AuditTiles, real: AuditTiles, reference, opts,
                 device: str = "cpu"):
    """Write ``report.html`` and ``report.json`` into ``folder``; yields progress; returns the report dict."""
    reference, source = reference
    records = _records(samples)
    fake = yield from _embed_all(model, samples, device, "report: synthetic tiles")
    ref = yield from _embed_all(model, reference, device, "report: real tiles")
    ref_classes = reference_classes(reference)
    fitted = independent_classifier(ref, ref_classes, fake, opts.seed) if source == "held-out" else None
    classifier, accuracy = (fitted[:2], fitted[2]) if fitted is not None else (None, None)
    classes = measure(rows, records, fake, ref, ref_classes, source, classifier)

    cal = summary.get("calibration_scores", {})
    synthetic = [r["similarity"] for r in rows]
    negatives, positives = cal.get("negatives", []), cal.get("positives", [])
    med = lambda a: f"{np.median(a):.3f}" if len(a) else "–"  # noqa: E731
    gap_text = (f"Similarity of each synthetic tile to its nearest real tile (median {med(synthetic)}) beside the "
                f"same for real tiles against the other real tiles, each left out (median {med(negatives)}): what a "
                f"genuine unseen tile scores. Synthetic tiles far to the right of the real ones are memorised; "
                f"{sum(r['near_copy'] for r in rows)} of {len(rows)} are above the near-copy threshold "
                f"({summary['threshold']:.3f}). Planted copies of real tiles (median {med(positives)}) show where "
                "copies land.")
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["similarity"])[:SHEET]
    copies = [{k: rows[i][k] for k in ("tile", "class", "nearest_real", "similarity", "near_copy")} for i in order]
    report = {
        "format": "napari-histodiff-quality-report", "version": 1, "feature_space": FEATURE_NOTE,
        "summary": {"synthetic_tiles": len(rows), "classes": len({r["class"] for r in rows}),
                    "samples": [str(p) for p in opts.samples], "against": [str(p) for p in opts.against],
                    "held_out": [str(p) for p in opts.held_out], "real_tiles": len(real),
                    "reference": source, "reference_tiles": len(reference), "k": K,
                    "written": time.strftime("%Y-%m-%d %H:%M:%S")},
        "agreement": {"independent_classifier": "logistic regression on the audit features of the held-out tiles"
                      if classifier is not None else None,
                      "independent_cross_validated_accuracy": None if accuracy is None else round(accuracy, 4),
                      "selection_classifier": "samples.csv predicted_class (not independent)",
                      "text": _agreement_text(classifier, accuracy, source,
                                              any(r is not None and r.predicted_class for r in records))},
        "classes": classes,
        "memorisation": {"synthetic_median": float(np.median(synthetic)) if synthetic else None,
                         "real_median": float(np.median(negatives)) if len(negatives) else None,
                         "threshold": summary["threshold"], "text": gap_text},
        "most_copy_like": copies,
    }
    yield Progress("report: figures", 0, 1)
    gap_png = gap_figure(synthetic, negatives, positives, summary["threshold"])
    sheet = None
    if order:
        pairs = [(_show(samples, i), _show(real, rows[i]["real_index"]),
                  f"{rows[i]['class'] or '-'} {rows[i]['similarity']:.3f}{' COPY' if rows[i]['near_copy'] else ''}")
                 for i in order]
        sheet = contact_sheet(pairs)
    folder = Path(folder)
    for name, text in ((REPORT_JSON, json.dumps(report, indent=2)), (REPORT_HTML, page(report, gap_png, sheet))):
        tmp = folder / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)
    yield Progress("report: figures", 1, 1)
    return report

"""The memorisation audit: for every synthetic tile, its nearest real tiles and whether it is a near-copy.

1. A feature encoder trained on the real tiles (:mod:`.features`) embeds every tile; the real
   embeddings go into a nearest-neighbour index (:mod:`.neighbours`), read in batches.
2. Each synthetic tile, in its 8 flips / rotations, shortlists the real tiles closest in that space;
   a pixel-level check (:mod:`.verify`) scores each candidate; the best score is the tile's
   ``similarity`` and its candidate the ``nearest_real``.
3. The threshold is calibrated on the real tiles: copies of them made with :mod:`.copies`
   (positives) and the real tiles against the other real tiles (negatives); it is the
   (1 - false_flag_rate) quantile of the negatives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.errors import HistodiffError
from ..base.events import Progress
from ..base.options import check, device_option, option, seed_option

BATCH = 256


@dataclass
class AuditOptions:
    """``histodiff audit``: are synthetic tiles near-copies of real ones? Nearest real tiles, a similarity
    and a near-copy flag per synthetic tile, with a threshold calibrated on the real tiles."""

    samples: list[Path] = option(factory=list, positional=True, required=True, gui=False, metavar="SAMPLES",
                                 help="sample folders (from `histodiff sample`) or folders of synthetic tiles")
    against: list[Path] = option(factory=list, required=True, gui=False, metavar="REAL",
                                 help="real tiles the model saw: labeled tile folders, pre-training tiles, shards")
    out: Path | None = option(None, required=True, gui=False, help="audit folder to write")
    intent: str = option("new", choices=("new", "overwrite"), consts={"--overwrite": "overwrite"}, gui=False,
                         help="new folder, or overwrite our earlier audit there")
    features: Path | None = option(None, metavar="DIR",
                                   help="reuse the feature encoder of an earlier audit (its folder) instead of training one")
    false_flag_rate: float = option(0.01, min=0.0, max=0.5, min_open=True,
                                    help="share of genuine tiles that may be flagged: sets the threshold")
    threshold: float | None = option(None, min=-1.0, max=1.0,
                                     help="a fixed similarity threshold instead of the calibrated one")
    neighbours: int = option(3, min=1, max=20, help="nearest real tiles listed per synthetic tile")
    shortlist: int = option(10, min=1, max=200, help="candidates from the feature index checked pixel by pixel")
    feature_size: int = option(64, min=16, max=256, help="tiles are compared at this size (pixels)")
    feature_steps: int = option(200, min=1, help="training steps of the feature encoder")
    feature_batch: int = option(64, min=2, help="tiles per training step of the feature encoder")
    train_tiles: int = option(5000, min=2, help="at most this many real tiles (at random) train the encoder")
    calibration_tiles: int = option(500, min=2, help="real tiles (at random) that calibrate the threshold")
    report: bool = option(True, help="also write report.html: per class the kept rate, class agreement, diversity, "
                          "precision / recall, a Fréchet distance, the memorisation gap and the most copy-like tiles")
    held_out: list[Path] = option(factory=list, gui=False, metavar="LABELED",
                                  help="labelled real tiles the model never saw (a sub-folder per class): the report's "
                                       "real reference and its independent classifier")
    report_tiles: int = option(500, min=4, help="at most this many real tiles per class (at random) in the report")
    seed: int = seed_option()
    device: str = device_option()

    def validate(self) -> None:
        check(self)


# -- tiles read in batches at the audit's size ------------------------------------------------------

def _read_small(path: Path, size: int) -> np.ndarray:
    """One image file as a uint8 (size, size, 3) centre square; JPEGs decoded at reduced scale."""
    from PIL import Image

    from ..data.tiles import read_rgb

    if path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            with Image.open(path) as im:
                im.draft("RGB", (size, size))
                img = im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - the project's reader names the problem
            read_rgb(path)
            raise HistodiffError(f"cannot read tile {path} ({type(e).__name__}: {e})") from e
    else:
        img = Image.fromarray(read_rgb(path))
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=None))


class AuditTiles:
    """Tiles to compare: image files (``names``, ``classes``) or a project tile set; read by index."""

    def __init__(self, size: int, files=(), classes=(), names=(), folders=(), rel=(), tileset=None):
        self.size, self.files, self.classes, self.names = size, list(files), list(classes), list(names)
        self.folders, self.rel, self.tileset = list(folders), list(rel), tileset

    def __len__(self) -> int:
        return len(self.tileset) if self.tileset is not None else len(self.files)

    def name(self, i: int) -> str:
        return self.tileset.origin(i) if self.tileset is not None else self.names[i]

    def read(self, idx) -> np.ndarray:
        if self.tileset is not None:
            return np.stack([self.tileset[int(i)] for i in idx])
        return np.stack([_read_small(self.files[int(i)], self.size) for i in idx])

    def batches(self, batch: int = BATCH):
        for start in range(0, len(self), batch):
            idx = np.arange(start, min(len(self), start + batch))
            yield idx, self.read(idx)


def open_samples(paths, size: int) -> AuditTiles:
    """Sample folders (their ``samples.csv``), folders of tiles (class = first sub-folder) or image files."""
    from ..data.tiles import IMAGE_SUFFIXES, _image_files
    from ..formats.records import RECORDS_FILE, read_records

    files, classes, names, folders, rel = [], [], [], [], []
    for p in map(Path, paths):
        if not p.exists():
            raise HistodiffError(f"no such sample folder or tile: {p}. Check the path.")
        if p.is_dir() and (p / RECORDS_FILE).is_file():
            items = [(r.file, r.target_class or "unguided") for r in read_records(p) if r.source != "real"]
        elif p.is_dir():
            items = [(f.relative_to(p).as_posix(), f.relative_to(p).parts[0] if len(f.relative_to(p).parts) > 1
                      else "") for f in _image_files(p)]
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p), classes.append(""), names.append(str(p))
            folders.append(str(p.resolve().parent)), rel.append(p.name)
            continue
        else:
            raise HistodiffError(f"{p} is not a folder of tiles or an image file ({', '.join(IMAGE_SUFFIXES)})")
        if not items:
            raise HistodiffError(f"{p} holds no tiles to audit; give a sample folder or a folder of tiles")
        for file, cls in items:
            files.append(p / file), classes.append(cls), names.append(str(p / file))
            folders.append(str(p.resolve())), rel.append(file)
    return AuditTiles(size, files, classes, names, folders, rel)


def open_real(paths, size: int) -> AuditTiles:
    """Real tiles: folders of image files read directly; shards, slides and large images as tile sets."""
    from ..data.opening import open_tiles
    from ..data.tiles import _image_files

    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise HistodiffError(f"no such folder of real tiles: {p}. Check the path given to {{opt:against}}.")
    if all(p.is_dir() and not any(p.glob("*.tar")) for p in paths):
        files = [f for p in paths for f in _image_files(p)]
        if not files:
            raise HistodiffError(f"no image files found under {', '.join(map(str, paths))}; give the real tiles "
                                 "the model was trained on to {opt:against}")
        return AuditTiles(size, files, names=[str(f) for f in files])
    return AuditTiles(size, tileset=open_tiles(paths, size))


# -- embedding, shortlists and the pixel check ---------------------------------------------------

def _dihedral(tiles: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(np.rot90(tiles[:, :, ::-1] if k >= 4 else tiles, k % 4, axes=(1, 2)))
            for k in range(8)]


def _shortlist(model, index, tiles, k, device, exclude=None):
    """(candidate indices, their feature similarities) per tile: the best ``k`` over its 8 flips / rotations."""
    from .features import embed

    sims, idx = [], []
    for view in _dihedral(tiles):
        s, i = index.search(embed(model, view, device), k + (exclude is not None))
        sims.append(s), idx.append(i)
    sims, idx = np.concatenate(sims, 1), np.concatenate(idx, 1)
    out = []
    for row in range(len(tiles)):
        best = {}
        for s, i in sorted(zip(sims[row], idx[row]), key=lambda t: -t[0]):
            if i >= 0 and i not in best and (exclude is None or i != exclude[row]):
                best[int(i)] = float(s)
        out.append(list(best.items())[:k])
    return out


def _verify(tiles, lists, real: AuditTiles, cache: dict):
    """Per tile: [(real index, pixel score, feature similarity)] best first."""
    from .verify import aligned_correlation

    out = []
    for tile, cands in zip(tiles, lists):
        need = [i for i, _ in cands if i not in cache]
        if need:
            for i, t in zip(need, real.read(need)):
                cache[i] = t
        scores = aligned_correlation(tile, np.stack([cache[i] for i, _ in cands]))
        out.append(sorted(((i, float(s), f) for (i, f), s in zip(cands, scores)), key=lambda t: -t[1]))
    if len(cache) > 20000:
        cache.clear()
    return out


def calibrate(model, index, real: AuditTiles, opts: AuditOptions, cache: dict, device="cpu"):
    """Scores of copies of real tiles (positives) and of real tiles against the others (negatives)."""
    from .copies import copy_tiles

    rng = np.random.default_rng(opts.seed + 1)
    idx = np.sort(rng.choice(len(real), min(opts.calibration_tiles, len(real)), replace=False))
    pos, neg, found = [], [], []
    for start in range(0, len(idx), BATCH):
        part = idx[start : start + BATCH]
        tiles = real.read(part)
        lists = _shortlist(model, index, tiles, opts.shortlist, device, exclude=part)
        neg += [v[0][1] if v else -1.0 for v in _verify(tiles, lists, real, cache)]
        copies = copy_tiles(tiles, seed=opts.seed + 2 + start)
        res = _verify(copies, _shortlist(model, index, copies, opts.shortlist, device), real, cache)
        pos += [v[0][1] for v in res]
        found += [bool(v and v[0][0] == i) for v, i in zip(res, part)]
        yield Progress("calibration", min(len(idx), start + BATCH), len(idx))
    return np.array(pos), np.array(neg), np.array(found)


def _quantiles(a) -> dict:
    return {f"q{int(q * 100):02d}": round(float(np.quantile(a, q)), 4) for q in (0.01, 0.05, 0.5, 0.95, 0.99)} \
        if len(a) else {}


def threshold_record(pos, neg, found, opts: AuditOptions) -> dict:
    if opts.threshold is not None:
        t, how = float(opts.threshold), "given with --threshold"
    else:
        t = float(np.quantile(neg, 1 - opts.false_flag_rate, method="higher"))
        how = (f"calibrated: the {100 * (1 - opts.false_flag_rate):g}th percentile of the similarities of "
               f"{len(neg)} real tiles to their nearest other real tile (negatives), so that about "
               f"{100 * opts.false_flag_rate:g}% of genuine tiles are flagged; a tile is a near-copy when its "
               "similarity is above it")
    return {"threshold": round(t, 6), "how": how, "false_flag_rate_target": opts.false_flag_rate,
            "calibration": {
                "positives": int(len(pos)), "negatives": int(len(neg)),
                "positive_recall_at_threshold": round(float((pos > t).mean()), 4) if len(pos) else None,
                "negative_flag_rate_at_threshold": round(float((neg > t).mean()), 4) if len(neg) else None,
                "positives_matched_to_their_source": round(float(found.mean()), 4) if len(found) else None,
                "positive_similarity": _quantiles(pos), "negative_similarity": _quantiles(neg),
                "positives_are": "copies of the calibration tiles made with the audit's transforms "
                                 "(flips / rotations, stain jitter, crop, translation, blur, JPEG)",
                "negatives_are": "each calibration tile against the other real tiles (itself left out)"}}


def run_audit(samples: AuditTiles, real: AuditTiles, opts: AuditOptions, encoder=None):
    """Yields progress; returns (rows, summary, encoder, encoder info). ``encoder``: (model, info) to reuse."""
    from ..base.devices import pick_device
    from .features import embed, train_encoder
    from .neighbours import NearestIndex

    device = pick_device(opts.device)

    if len(real) < 2:
        raise HistodiffError(f"the audit needs at least 2 real tiles to calibrate its threshold (got {len(real)}); "
                             "give more real tiles to {opt:against}")
    seconds, t0 = {}, time.perf_counter()
    if encoder is None:
        rng = np.random.default_rng(opts.seed)
        pick = np.sort(rng.choice(len(real), min(opts.train_tiles, len(real)), replace=False))
        train = np.concatenate([real.read(pick[i : i + BATCH]) for i in range(0, len(pick), BATCH)])
        seconds["reading_training_tiles"] = round(time.perf_counter() - t0, 2)
        model, info = yield from train_encoder(train, opts.feature_steps, opts.feature_batch, opts.seed, device)
        del train
    else:
        model, info = encoder
        if model.config.tile_size != opts.feature_size:
            raise HistodiffError(f"the encoder in {opts.features} compares tiles at {model.config.tile_size} px, not "
                                 f"{opts.feature_size}; give {{opt:feature_size={model.config.tile_size}}}")
    model = model.to(device).eval()
    seconds["feature_encoder"] = round(time.perf_counter() - t0, 2)

    t = time.perf_counter()
    index = NearestIndex(model.config.dim)
    for idx, tiles in real.batches():
        index.add(embed(model, tiles, device))
        yield Progress("real tiles", int(idx[-1]) + 1, len(real))
    seconds["embedding_real_tiles"] = round(time.perf_counter() - t, 2)

    t, cache = time.perf_counter(), {}
    pos, neg, found = yield from calibrate(model, index, real, opts, cache, device)
    record = threshold_record(pos, neg, found, opts)
    seconds["calibration"] = round(time.perf_counter() - t, 2)

    t, rows = time.perf_counter(), []
    for idx, tiles in samples.batches():
        lists = _shortlist(model, index, tiles, max(opts.shortlist, opts.neighbours), device)
        for i, found_ in zip(idx, _verify(tiles, lists, real, cache)):
            rows.append(_row(samples, int(i), found_, record["threshold"], opts.neighbours, real))
        yield Progress("synthetic tiles", int(idx[-1]) + 1, len(samples))
    seconds["synthetic_tiles"] = round(time.perf_counter() - t, 2)
    seconds["total"] = round(time.perf_counter() - t0, 2)

    summary = {**record, "classes": class_summary(rows), "real_tiles": len(real), "synthetic_tiles": len(samples),
               "index": index.kind, "seconds": seconds, "feature_encoder": info,
               "similarity": "best normalised cross-correlation of band-passed grey levels over the 8 flips / "
                             "rotations, 3 zooms and shifts, between the tile and each of its shortlisted real "
                             "tiles (1 = the same pixels); the shortlist comes from the feature encoder",
               "held_out_real_similarity": _quantiles(neg),
               "calibration_scores": {"negatives": np.round(neg, 4).tolist(), "positives": np.round(pos, 4).tolist()}}
    return rows, summary, model, info


def _row(samples: AuditTiles, i: int, found, threshold: float, k: int, real: AuditTiles) -> dict:
    best = found[0]
    row = {"tile": samples.names[i], "class": samples.classes[i], "nearest_real": real.name(best[0]),
           "similarity": round(best[1], 4), "near_copy": best[1] > threshold,
           "feature_similarity": round(best[2], 4), "source_folder": samples.folders[i], "file": samples.rel[i],
           "real_index": best[0]}  # not written: for the report
    for n, (j, s, _) in enumerate(found[1:k], start=2):
        row[f"nearest_real_{n}"], row[f"similarity_{n}"] = real.name(j), round(s, 4)
    return row


def class_summary(rows) -> dict:
    out = {}
    for cls in sorted({r["class"] for r in rows}):
        sims = np.array([r["similarity"] for r in rows if r["class"] == cls])
        flagged = sum(r["near_copy"] for r in rows if r["class"] == cls)
        out[cls or "(no class)"] = {"tiles": int(len(sims)), "near_copies": int(flagged),
                                    "near_copy_rate": round(flagged / len(sims), 4),
                                    "similarity_median": round(float(np.median(sims)), 4),
                                    "similarity_max": round(float(sims.max()), 4)}
    return out

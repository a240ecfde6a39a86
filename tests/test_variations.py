"""Variations of source tiles (SDEdit): closeness grows with lower strength, classes and sources recorded."""

import csv

import numpy as np
import pytest

from napari_histodiff import load_bundle
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.formats.records import read_records
from napari_histodiff.core.generate.sample_set import write_samples
from napari_histodiff.core.generate.sampling import SampleOptions, sample_tiles
from napari_histodiff.core.data.tiles import ArrayTiles


@pytest.fixture(scope="module")
def bundle(finetuned_bundle):
    return load_bundle(finetuned_bundle[0], device="cpu")


@pytest.fixture(scope="module")
def sources(labeled_tiles):
    """Four tiles of each class, with their origins."""
    idx = np.concatenate([np.flatnonzero(labeled_tiles.labels == k)[:4] for k in range(2)])
    return ArrayTiles(labeled_tiles.tiles[idx], labeled_tiles.labels[idx], labeled_tiles.class_names,
                      [f"src{i}" for i in idx], description="test sources")


def variations(bundle, sources, **kw):
    out = {}
    for event in sample_tiles(bundle, SampleOptions(**{"steps": 20, "batch_size": 8, **kw}), sources):
        if event.data is not None:
            for k, tile in enumerate(event.data["tiles"]):
                out[event.data["start"] + k] = (tile, event.data["classes"][k], event.data["sources"][k])
    return [out[i] for i in sorted(out)]


def distance_to_source(results, sources):
    by_origin = {sources.origin(i): sources[i].astype(float) for i in range(len(sources))}
    return float(np.mean([np.abs(t.astype(float) - by_origin[o]).mean() for t, _, o in results]))


def test_variations_stay_closer_to_their_sources_at_lower_strength(bundle, sources):
    d = {s: distance_to_source(variations(bundle, sources, n=4, guidance=0.0, strength=s), sources)
         for s in (0.2, 0.6, 1.0)}
    assert d[0.2] < d[0.6] < d[1.0], d
    # a weak variation is closer to its own source than to the other sources
    results = variations(bundle, sources, n=4, guidance=0.0, strength=0.2)
    own = 0
    for tile, _, origin in results:
        dist = {sources.origin(i): np.abs(tile.astype(float) - sources[i]).mean() for i in range(len(sources))}
        own += min(dist, key=dist.get) == origin
    assert own >= 0.75 * len(results), f"{own} of {len(results)} variations are nearest their own source"


def test_each_variation_keeps_its_source_class_cycling_through_sources(bundle, sources):
    results = variations(bundle, sources, n=6, guidance=5.0, strength=0.5)
    names = sources.class_names
    assert [c for _, c, _ in results] == [names[0]] * 6 + [names[1]] * 6
    origin_class = {sources.origin(i): names[sources.label(i)] for i in range(len(sources))}
    assert all(origin_class[o] == c for _, c, o in results)
    firsts = [o for _, _, o in results[:4]]
    assert len(set(firsts)) == 4 and [o for _, _, o in results[4:6]] == firsts[:2]
    for tile, _, _ in results:
        assert tile.dtype == np.uint8 and tile.shape == (bundle.tile_size, bundle.tile_size, 3)


def test_variations_are_reproducible_and_batch_size_independent_in_noise(bundle, sources):
    a = variations(bundle, sources, n=2, guidance=0.0, strength=0.4, batch_size=4, eta=0.0)
    b = variations(bundle, sources, n=2, guidance=0.0, strength=0.4, batch_size=4, eta=0.0)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))
    c = variations(bundle, sources, n=2, guidance=0.0, strength=0.4, batch_size=1, eta=0.0)
    diff = np.mean([np.abs(x[0].astype(int) - y[0]).max() for x, y in zip(a, c)])
    assert diff <= 2, "a variation should not depend on the batch it was made in (beyond float rounding)"


def test_records_name_source_and_strength_and_read_back(bundle, sources, tmp_path):
    out = tmp_path / "v"
    records = run_to_end(write_samples(bundle, SampleOptions(n=2, steps=10, strength=0.3, classes=["DAB-rich"]),
                                       out, sources=sources))
    again = read_records(out)
    assert [(r.source_tile, r.strength, r.target_class) for r in again] == \
        [(r.source_tile, 0.3, "DAB-rich") for r in records]
    assert {r.source_tile for r in again} <= {sources.origin(i) for i in range(len(sources))}
    # a samples.csv written before these columns existed still reads, with the defaults
    rows = list(csv.DictReader(open(out / "samples.csv")))
    old = [k for k in rows[0] if k not in ("strength", "source_tile")]
    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert {(r.strength, r.source_tile) for r in read_records(out)} == {(1.0, "")}


def test_records_store_the_strength_in_effect(bundle, sources, tmp_path):
    """No strength given: records say 0.5 for variations and 1 from noise (what was run), not empty."""
    run_to_end(write_samples(bundle, SampleOptions(n=1, steps=4, classes=["DAB-rich"]), tmp_path / "v",
                             sources=sources))
    run_to_end(write_samples(bundle, SampleOptions(n=1, steps=4, guidance=0.0), tmp_path / "n"))
    assert [r.strength for r in read_records(tmp_path / "v")] == [0.5]
    assert [r.strength for r in read_records(tmp_path / "n")] == [1.0]


@pytest.mark.parametrize("kw, given_sources, message", [
    (dict(strength=0.5), False, "give them with sources"),
    (dict(strength=0.0), True, "strength must be greater than 0"),
    (dict(strength=0.5, classes=["stroma"]), True, "no source tiles of class 'stroma'"),
])
def test_bad_variation_input_is_named(bundle, sources, kw, given_sources, message):
    with pytest.raises(HistodiffError, match=message.replace("(", r"\(").replace(")", r"\)")):
        variations(bundle, sources if given_sources else None, n=1, **kw)


def test_wrong_size_and_unlabelled_sources_are_refused(bundle, sources):
    big = ArrayTiles(np.zeros((2, 48, 48, 3), np.uint8), [0, 1], sources.class_names, description="big")
    with pytest.raises(HistodiffError, match="48 px"):
        variations(bundle, big, n=1, strength=0.5)
    flat = ArrayTiles(sources.tiles, description="flat")
    with pytest.raises(HistodiffError, match="no classes"):
        variations(bundle, flat, n=1, strength=0.5, classes=["DAB-rich"])
    assert [c for _, c, _ in variations(bundle, flat, n=3, strength=0.5, guidance=0.0)] == [""] * 3

"""Selection rules and caps on constructed records; inline selection on a fine-tuned bundle."""

import numpy as np
import pytest

from napari_histodiff.core.formats.records import TileRecord, read_records, write_records
from napari_histodiff.core.generate.selection import SelectionRule, annotate, decide


def rec(i, target, **kw):
    return TileRecord(id=f"t{i}", file=f"{target or 'unguided'}/t{i}.tif", target_class=target, index=i, seed=0, sample_seed=i,
                      sampler="ddim", steps=10, eta=1.0, guidance=10.0, bundle_hash="h", **kw)


CLASSES = ["A", "B"]


def annotated():
    records = [rec(0, "A"), rec(1, "A"), rec(2, "A"), rec(3, "B"), rec(4, "")]
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.3, 0.7], [0.1, 0.9], [0.2, 0.8]])
    dists = np.array([[1.0, 3.0], [4.0, 2.0], [1.0, 2.0], [5.0, 1.0], [3.0, 1.0]])
    annotate(records, probs, dists, CLASSES)
    return records


def test_annotate_reads_target_class_probability_and_distance():
    r = annotated()
    assert [x.predicted_class for x in r] == ["A", "A", "B", "B", "B"]
    assert r[2].confidence == pytest.approx(0.3) and r[2].centroid_distance == 1.0  # of target A
    assert r[4].confidence == pytest.approx(0.8) and r[4].nearest_centroid == "B"  # unguided: predicted


@pytest.mark.parametrize("rule, kept", [
    ("confidence", [True, True, False, True, True]),
    ("centroid", [True, False, True, True, True]),
    ("both", [True, False, False, True, True]),
    ("none", [True] * 5),
])
def test_rules_keep_exactly_the_tiles_that_satisfy_them(rule, kept):
    r = annotated()
    decide(r, SelectionRule(rule=rule, threshold=0.8))
    assert [x.kept for x in r] == kept


def test_cap_keeps_the_most_confident_per_class():
    r = annotated()
    decide(r, SelectionRule(rule="none", cap=1))
    assert [x.id for x in r if x.kept] == ["t0", "t3"]  # A: 0.95 beats 0.85 and 0.3; B: 0.9 beats 0.8


def test_records_round_trip_through_csv(tmp_path):
    r = annotated()
    decide(r, SelectionRule())
    write_records(tmp_path / "samples.csv", r)
    back = read_records(tmp_path)
    assert [x.as_row() for x in back] == [x.as_row() for x in r]


def test_inline_selection_and_reselection(finetuned_bundle, tmp_path):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.generate.sample_set import select_folder, write_samples
    from napari_histodiff.core.generate.sampling import SampleOptions

    b = load_bundle(finetuned_bundle[0], device="cpu")
    out = tmp_path / "s"
    records = run_to_end(write_samples(b, SampleOptions(n=4, classes=b.class_names, steps=10), out,
                                       SelectionRule(threshold=0.8)))
    assert len(records) == 8 and all(r.kept is not None for r in records)
    for r in records:
        assert r.kept == (r.predicted_class == r.target_class and r.confidence >= 0.8
                          and r.nearest_centroid == r.target_class)
    assert {p.name for p in out.iterdir()} == {"samples.csv", "DAB-rich", "hematoxylin-rich",
                                               "contact_DAB-rich.png", "contact_hematoxylin-rich.png",
                                               "selection.json", ".histodiff-owner.json"}
    again = select_folder(out, b, SelectionRule(rule="none", cap=2))
    assert sum(r.kept for r in again) == 4
    assert [r.confidence for r in again] == pytest.approx([r.confidence for r in records])


def test_interrupted_sampling_leaves_no_folder(finetuned_bundle, tmp_path):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.generate.sample_set import write_samples
    from napari_histodiff.core.generate.sampling import SampleOptions

    b = load_bundle(finetuned_bundle[0], device="cpu")
    gen = write_samples(b, SampleOptions(n=8, classes=b.class_names, steps=10, batch_size=4), tmp_path / "s")
    for _ in range(15):  # past the first finished batch
        next(gen)
    gen.close()
    assert list(tmp_path.iterdir()) == []


def test_class_report_names_every_class_that_kept_nothing_and_why():
    from napari_histodiff.core.generate.selection import class_report, report_lines

    r = annotated() + [rec(5, "C")]
    annotate(r[5:], np.array([[0.5, 0.3]]), np.array([[1.0, 2.0]]), ["C", "B"])
    decide(r, SelectionRule(rule="both", threshold=0.99))
    report = class_report(r, SelectionRule(rule="both", threshold=0.99), classes=["A", "B", "C", "D"])
    assert report["kept_per_class"] == {"A": 0, "B": 0, "C": 0, "D": 0}
    assert report["classes_without_tiles"]["A"].startswith(
        "the selection classifier was never confident on it (highest confidence 0.95 < threshold 0.99")
    assert "0.50 < threshold 0.99" in report["classes_without_tiles"]["C"]
    assert report["classes_without_tiles"]["D"] == "no tile was made for it"
    assert len(report_lines(report)) == 4
    decide(r, SelectionRule(rule="both", threshold=0.8))
    report = class_report(r, SelectionRule(rule="both", threshold=0.8))
    assert report["kept_per_class"] == {"A": 1, "B": 2, "C": 0}  # the unguided tile counts for B, predicted
    assert list(report["classes_without_tiles"]) == ["C"]


def test_sample_job_says_which_class_kept_nothing(finetuned_bundle, tmp_path):
    """A class that keeps nothing is named in a warning event, the result message and selection.json."""
    import json

    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.jobs.sample import SampleOptions, sample, select

    b = load_bundle(finetuned_bundle[0], device="cpu")
    b.selection_classifier.register_to_config(temperature=1e6)  # no tile reaches the threshold (probs ~ 1/2)
    events = []
    opts = SampleOptions(per_class=2, steps=5, out=tmp_path / "s", selection=SelectionRule(rule="confidence",
                                                                                       threshold=0.99))
    result = run_to_end(sample(opts, model=b), events.append)
    assert result["kept_per_class"] == {c: 0 for c in b.class_names}
    warnings = [e.message for e in events if e.stage == "warning"]
    assert len(warnings) == 2 and all("never confident" in w and "< threshold 0.99" in w for w in warnings)
    assert "WARNING: no tile kept for classes DAB-rich, hematoxylin-rich" in result["message"]
    saved = json.loads((tmp_path / "s" / "selection.json").read_text())
    assert saved["rule"]["threshold"] == 0.99 and saved["classes_without_tiles"].keys() == set(b.class_names)
    again = run_to_end(select(__import__("napari_histodiff.core.jobs.sample", fromlist=["SelectOptions"])
                              .SelectOptions(samples=tmp_path / "s", selection=SelectionRule(rule="none")), model=b))
    assert again["classes_without_tiles"] == {} and "WARNING" not in again["message"]


def test_tissue_fractions_of_blank_half_and_stained_tiles():
    from napari_histodiff.core.data.tiles import tissue_fractions

    white = np.full((64, 64, 3), 245, np.uint8)
    stained = np.zeros_like(white) + np.array([200, 120, 180], np.uint8)  # H&E-like pink, saturation 0.4
    half = white.copy()
    half[:, :32] = stained[:, :32]
    f = tissue_fractions(np.stack([white, half, stained]))
    assert f[0] == 0.0 and f[2] == 1.0 and 0.4 < f[1] < 0.6


def test_blank_tiles_fall_under_their_class_tissue_floor():
    from napari_histodiff.core.generate.selection import class_report

    r = annotated()
    for x, t in zip(r, [0.05, 0.9, 0.9, 0.05, None]):
        x.tissue = t
    floors = {"A": 0.4, "B": 0.0}  # B: a mostly white class (e.g. fat) keeps its pale tiles
    both = SelectionRule(rule="both", threshold=0.8)
    decide(r, both, floors)
    assert [x.kept for x in r] == [False, False, False, True, True]  # t0 is blank for A; t3 is not for B
    decide(r, SelectionRule(rule="both", threshold=0.8, tissue_check=False), floors)
    assert [x.kept for x in r] == [True, False, False, True, True]
    decide(r, both, None)  # a bundle from before the check: no bound
    assert [x.kept for x in r] == [True, False, False, True, True]
    decide(r, SelectionRule(rule="none"), floors)  # no selection: every tile, blank or not
    assert all(x.kept for x in r)
    only_blank = r[:1]
    decide(only_blank, both, floors)
    why = class_report(only_blank, both)["classes_without_tiles"]["A"]
    assert why.startswith("all its 1 tiles were blank") and "tissue_check" in why


def test_fine_tuning_records_tissue_floors_and_blank_samples_are_dropped(finetuned_bundle, tmp_path):
    import tifffile

    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.generate.sample_set import select_folder, write_samples
    from napari_histodiff.core.generate.sampling import SampleOptions
    from napari_histodiff.core.generate.selection import tissue_floors

    b = load_bundle(finetuned_bundle[0], device="cpu")
    floors = tissue_floors(b)
    assert set(floors) == set(b.class_names) and all(0 < v <= 0.5 for v in floors.values())
    out = tmp_path / "s"
    records = run_to_end(write_samples(b, SampleOptions(n=2, classes=b.class_names, steps=4), out,
                                       SelectionRule(rule="none")))
    assert all(r.kept for r in records) and all(0 <= r.tissue <= 1 for r in records)
    blank = records[0]
    tifffile.imwrite(out / blank.file, np.full((b.tile_size, b.tile_size, 3), 250, np.uint8))
    unchecked = [r.kept for r in select_folder(out, b, SelectionRule(tissue_check=False))]
    again = select_folder(out, b, SelectionRule())
    assert [r.extra["blank"] for r in again] == [r.id == blank.id for r in again]
    assert [r.kept for r in again] == [k and r.id != blank.id for k, r in zip(unchecked, again)]
    assert again[0].tissue == 0.0 and read_records(out)[0].tissue == 0.0

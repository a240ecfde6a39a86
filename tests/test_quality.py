"""Quality report: the metrics on features whose answer is known, and the report the audit writes."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.evaluate.copies import copy_tiles
from napari_histodiff.core.evaluate.quality import (
    cross_validated_accuracy,
    diversity_ratio,
    fit_softmax,
    frechet_distance,
    mean_pairwise_cosine_distance,
    precision_recall,
    predict_softmax,
)
from napari_histodiff.core.evaluate.report import REPORT_HTML, REPORT_JSON
from napari_histodiff.core.formats.records import RECORDS_FILE, TileRecord, write_records
from napari_histodiff.core.jobs.audit import AuditOptions, audit

S = 32


# -- the metrics ------------------------------------------------------------------------------------

def gaussian(n, d=16, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_identical_sets_have_precision_and_recall_1_and_no_frechet_distance():
    a = gaussian(300)
    assert precision_recall(a, a) == (1.0, 1.0)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert diversity_ratio(a, a) == pytest.approx(1)


def test_two_samples_of_one_distribution_score_high_and_close():
    a, b = gaussian(400, seed=0), gaussian(400, seed=1)
    p, r = precision_recall(a, b)
    assert p > 0.6 and r > 0.6
    assert frechet_distance(a, b) < 1.0  # 16 dimensions of unit variance: the sampling error alone
    assert diversity_ratio(a, b) == pytest.approx(1, abs=0.05)


def test_disjoint_sets_have_precision_and_recall_0_and_a_large_frechet_distance():
    a, b = gaussian(200), gaussian(200, shift=10.0, seed=1)
    assert precision_recall(a, b) == (0.0, 0.0)
    # the means differ by 10 in each of 16 dimensions: |mu_a - mu_b|^2 = 1600
    assert frechet_distance(a, b) == pytest.approx(1600, rel=0.05)


def test_a_collapsed_synthetic_set_keeps_precision_but_loses_recall_and_diversity():
    real = gaussian(400)
    collapsed = real[0] + 0.01 * gaussian(200, seed=2)  # one real texture, repeated
    p, r = precision_recall(real, collapsed)
    assert p == 1.0 and r < 0.05
    assert diversity_ratio(real, collapsed) < 0.05
    assert frechet_distance(real, collapsed) > 10 * frechet_distance(real, gaussian(200, seed=3))


def test_pairwise_cosine_distance_matches_the_definition():
    x = gaussian(30, d=5)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = u @ u.T
    expected = np.mean(1 - cos[~np.eye(30, dtype=bool)])
    assert mean_pairwise_cosine_distance(x) == pytest.approx(expected)


def test_the_softmax_classifier_separates_separable_classes_and_cross_validates():
    x = np.concatenate([gaussian(40, d=4), gaussian(40, d=4, shift=4.0, seed=1), gaussian(40, d=4, shift=-4.0, seed=2)])
    y = np.repeat([0, 1, 2], 40)
    w = fit_softmax(x, y, 3)
    assert (predict_softmax(w, x) == y).mean() > 0.95
    assert cross_validated_accuracy(x, y, 3) > 0.9
    noise = gaussian(120, d=4, seed=5)  # labels unrelated to the features: chance
    assert cross_validated_accuracy(noise, y, 3) < 0.6


# -- the report -------------------------------------------------------------------------------------

def tissue(n, seed, tint):
    """H&E-like tiles: haematoxylin and eosin blobs; ``tint`` weighs the eosin (class colour)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = ndi.gaussian_filter(rng.random((S, S)), 1.5)
        e = ndi.gaussian_filter(rng.random((S, S)), 3)
        h, e = (h - h.min()) / np.ptp(h), (e - e.min()) / np.ptp(e)
        rgb = 255 - h[..., None] * [90, 160, 60] * (1.6 - tint) - e[..., None] * [20, 110, 60] * tint
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(out)


def save(folder, tiles, prefix):
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(folder / f"{prefix}_{i:03d}.png")


def record(cls, i, kept, predicted):
    return TileRecord(id=f"{cls}_{i}", file=f"{cls}/{cls}_{i:03d}.png", target_class=cls, index=i, seed=0,
                      sample_seed=i, sampler="ddim", steps=5, eta=0.0, guidance=1.0, bundle_hash="x",
                      predicted_class=predicted, confidence=0.9, kept=kept)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """Real A (eosin-heavy) and B (haematoxylin-heavy) tiles; held-out tiles of both; a sample folder with
    A: 4 copies of real A tiles and 8 new A tiles, 9 of 12 kept; B: one new texture repeated 12 times."""
    root = tmp_path_factory.mktemp("quality")
    real_a, real_b = tissue(16, 1, tint=1.4), tissue(16, 2, tint=0.2)
    save(root / "real" / "A", real_a, "a"), save(root / "real" / "B", real_b, "b")
    save(root / "held" / "A", tissue(10, 3, tint=1.4), "a"), save(root / "held" / "B", tissue(10, 4, tint=0.2), "b")
    samples = root / "samples"
    fake_a = np.concatenate([copy_tiles(real_a[:4], seed=5), tissue(8, 6, tint=1.4)])
    fake_b = np.repeat(tissue(1, 7, tint=0.2), 12, axis=0)
    save(samples / "A", fake_a, "A"), save(samples / "B", fake_b, "B")
    records = [record("A", i, kept=i < 9, predicted="A" if i < 10 else "B") for i in range(12)]
    records += [record("B", i, kept=True, predicted="B") for i in range(12)]
    write_records(samples / RECORDS_FILE, records)
    opts = AuditOptions(samples=[samples], against=[root / "real"], held_out=[root / "held"], out=root / "out",
                        feature_size=S, feature_steps=30, feature_batch=16, calibration_tiles=32,
                        false_flag_rate=0.05)
    result = run_to_end(audit(opts))
    return root, result


def test_the_report_holds_each_section_with_its_figures(audited):
    root, result = audited
    page = (root / "out" / REPORT_HTML).read_text(encoding="utf-8")
    for section in ("classes", "agreement", "memorisation", "copies"):
        assert f'id="{section}"' in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2  # the histogram and the contact sheet, inside the page
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.format == "PNG" and im.width > 300
    assert "not comparable to published FID" in page and "Kynkäänniemi" in page
    assert "not an independent one" in page and "logistic regression" in page
    assert str(root / "out" / REPORT_HTML) in result["message"]


def test_the_report_figures_per_class(audited):
    root, _ = audited
    report = json.loads((root / "out" / REPORT_JSON).read_text())
    a, b, both = report["classes"]["A"], report["classes"]["B"], report["classes"]["all"]
    assert (a["tiles"], a["kept"], a["kept_rate"]) == (12, 9, 0.75)
    assert (b["kept"], b["kept_rate"]) == (12, 1.0)
    assert a["selection_agreement"] == round(10 / 12, 4) and b["selection_agreement"] == 1.0
    assert (a["measured"], a["measured_tiles"], b["measured_tiles"], both["measured_tiles"]) == ("kept", 9, 12, 21)
    assert a["reference"] == "held-out tiles of the class" and a["reference_tiles"] == 10
    assert report["summary"]["reference"] == "held-out"
    for c in (a, b):
        assert c["independent_agreement"] is not None and 0 <= c["independent_agreement"] <= 1
        assert c["precision"] is not None and c["frechet_distance"] > 0
    assert report["agreement"]["independent_cross_validated_accuracy"] >= 0.8  # A and B differ in colour
    # B is one texture repeated: far less diverse than A, and it covers little of the real B tiles
    assert b["diversity_ratio"] < 0.2 < a["diversity_ratio"]
    assert b["recall"] < a["recall"] or b["recall"] <= 0.2
    # the contact sheet starts with the planted copies of real A tiles
    top = report["most_copy_like"][:4]
    assert all(c["class"] == "A" and c["near_copy"] for c in top)
    assert {c["tile"] for c in top} == {str(root / "samples" / "A" / f"A_{i:03d}.png") for i in range(4)}
    assert report["memorisation"]["synthetic_median"] is not None and report["memorisation"]["real_median"] < 1


def test_without_held_out_tiles_the_against_class_folders_are_the_reference(audited, tmp_path):
    root, _ = audited
    opts = AuditOptions(samples=[root / "samples"], against=[root / "real"], out=tmp_path / "out", feature_size=S,
                        features=root / "out", calibration_tiles=32, false_flag_rate=0.05)
    run_to_end(audit(opts))
    report = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    assert report["summary"]["reference"] == "against"
    assert report["classes"]["A"]["reference"] == "against tiles of the class"
    assert report["classes"]["A"]["reference_tiles"] == 16
    assert report["classes"]["A"]["independent_agreement"] is None
    assert "Give --held-out" in (tmp_path / "out" / REPORT_HTML).read_text(encoding="utf-8")


def test_no_report_when_turned_off_and_held_out_tiles_need_it(audited, tmp_path):
    root, _ = audited
    opts = AuditOptions(samples=[root / "samples"], against=[root / "real"], out=tmp_path / "out", feature_size=S,
                        features=root / "out", calibration_tiles=8, report=False)
    result = run_to_end(audit(opts))
    assert not (tmp_path / "out" / REPORT_HTML).exists() and "quality report" not in result["message"]
    opts.held_out, opts.intent = [root / "held"], "overwrite"
    with pytest.raises(HistodiffError, match="held_out is read by the report only"):
        run_to_end(audit(opts))

"""Temperature scaling of the selection classifier: it lowers the calibration error, keeps the accuracy,
is stored in the classifier's config and applied when scoring; bundles without one score at T = 1."""

import json

import numpy as np
import pytest
import torch

from napari_histodiff.core.train.calibration import expected_calibration_error, fit_temperature


def overconfident_problem(n=2000, classes=5, seed=0):
    """Labels drawn from softmax(logits) (calibrated by construction), logits returned scaled up by 3."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, classes, generator=g)
    y = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]
    return logits * 3, y


def test_ece_of_known_cases():
    y = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2), y) == pytest.approx(0.5)
    assert expected_calibration_error(torch.tensor([[0.75, 0.25]] * 4), torch.tensor([0, 0, 0, 1])) \
        == pytest.approx(0.0)


def test_temperature_scaling_lowers_ece_and_keeps_accuracy():
    logits, y = overconfident_problem()
    fit, test = slice(0, 1000), slice(1000, None)
    t = fit_temperature(logits[fit], y[fit])
    before = expected_calibration_error(logits[test].softmax(-1), y[test])
    after = expected_calibration_error((logits[test] / t).softmax(-1), y[test])
    assert t == pytest.approx(3, rel=0.2)  # undoes the scaling
    assert before > 0.15 and after < 0.05, (before, after)  # on logits the fit did not see
    assert ((logits / t).argmax(-1) == logits.argmax(-1)).all()


def test_already_calibrated_logits_are_left_about_alone():
    logits, y = overconfident_problem()
    logits = logits / 3
    t = fit_temperature(logits[:1000], y[:1000])
    assert t == pytest.approx(1, abs=0.15)
    after = expected_calibration_error((logits[1000:] / t).softmax(-1), y[1000:])
    assert after <= expected_calibration_error(logits[1000:].softmax(-1), y[1000:]) + 0.01


def test_selection_classifier_applies_its_temperature_and_loads_without_one(tmp_path):
    from napari_histodiff.core.models.classifiers import SelectionClassifier

    torch.manual_seed(0)
    m = SelectionClassifier(num_classes=3, channels=(8, 8, 8)).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        plain = m.score(x)["probs"]
        m.register_to_config(temperature=2.0)
        m.save_pretrained(tmp_path / "t2")
        back = SelectionClassifier.from_pretrained(tmp_path / "t2").eval()
        assert back.config.temperature == 2.0
        torch.testing.assert_close(back.score(x)["probs"], (m(x) / 2).softmax(-1))
        cfg = json.loads((tmp_path / "t2" / "config.json").read_text())
        del cfg["temperature"]  # a bundle written before calibration existed
        (tmp_path / "t2" / "config.json").write_text(json.dumps(cfg))
        old = SelectionClassifier.from_pretrained(tmp_path / "t2").eval()
        torch.testing.assert_close(old.score(x)["probs"], plain)


def test_selection_training_stores_a_temperature_and_reports_ece(tmp_path, ihc_tiles, labeled_tiles):
    """A selection classifier trained on the demo's two stain classes: ECE before/after in the metrics."""
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.formats.bundle import new_meta, read_meta, write_meta
    from napari_histodiff.core.models.classifiers import SelectionClassifier
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.classifiers import ClassifierOptions, train_selection_classifier

    preset = tiny()
    out = tmp_path / "b"
    out.mkdir()
    write_meta(out, {**new_meta(preset), "class_names": labeled_tiles.class_names})
    result = run_to_end(train_selection_classifier(labeled_tiles, out, preset, ClassifierOptions(
        steps=40, device="cpu", holdout=0.3)))
    metrics = read_meta(out)["metrics"]["selection_classifier"]
    assert {"temperature", "ece_before", "ece_after"} <= set(metrics) and metrics["temperature"] > 0
    assert metrics["ece_after"] <= metrics["ece_before"] + 1e-9  # fitted on these tiles: never worse
    assert result["temperature"] == metrics["temperature"]
    clf = SelectionClassifier.from_pretrained(out / "selection_classifier")
    assert clf.config.temperature == pytest.approx(metrics["temperature"])
    assert np.isfinite(metrics["ece_after"])

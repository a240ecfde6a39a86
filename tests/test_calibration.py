"""Temperature scaling of the selection classifier: it lowers the calibration error, keeps the accuracy,
is stored in the classifier's config and applied when scoring; bundles without one score at T = 1."""

import json

import numpy as np
import pytest
import torch

from napari_histodiff.core.train.calibration import (calibrate, crossfit_probs, expected_calibration_error,
                                                     fit_temperature)


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


def noisy_ensemble(n, seed, members=5, classes=5):
    """Labels drawn from softmax(L); each member's logits are 3 L plus its own noise, so one member is
    overconfident and noisy, and their mean (the ensemble) is less noisy than any member."""
    g = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, classes, generator=g)
    y = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]
    return torch.stack([3 * logits + 4 * torch.randn(n, classes, generator=g) for _ in range(members)]), y


@pytest.mark.parametrize("seed", [0, 1])
def test_the_ensemble_is_calibrated_on_its_own_logits(seed):
    """The old fit (one temperature for the members' out-of-fold logits) leaves the thresholded ensemble far
    from calibrated; the temperature of the ensemble's mean logits on tiles used for nothing else is right."""
    members, y = noisy_ensemble(3000, seed)
    fit, held, test = slice(0, 1000), slice(1000, 1500), slice(1500, None)
    old = fit_temperature(members[:, fit].reshape(-1, 5), y[fit].repeat(5))
    ensemble = members.mean(0)
    new = calibrate(ensemble[held], y[held])
    ece_old = expected_calibration_error((ensemble[test] / old).softmax(-1), y[test])
    ece_new = expected_calibration_error((ensemble[test] / new["temperature"]).softmax(-1), y[test])
    assert ece_old > 0.1 and ece_new < 0.04 and ece_new < ece_old / 3, (ece_old, ece_new)
    # the reported error (out of fold, 500 tiles) is near the one on 1500 fresh tiles, not below it by the fit's optimism
    assert new["ece_after"] == pytest.approx(ece_new, abs=0.04) and new["calibration_tiles"] == 500


def test_reported_calibration_error_never_uses_a_tiles_own_label():
    """Out of fold: the calibrated probabilities of a tile do not change when only its own label changes,
    and the reported ECE after scaling is the ECE of exactly those probabilities."""
    logits, y = overconfident_problem(n=60)
    probs = crossfit_probs(logits, y, seed=3)
    for i in (0, 17, 59):
        other = y.clone()
        other[i] = (y[i] + 1) % 5
        again = crossfit_probs(logits, other, seed=3)
        torch.testing.assert_close(again[i], probs[i])
        assert not torch.allclose(again, probs)  # other tiles' temperatures did use that label
    # fitted on all 60 and scored on the same 60, the figure would be the fit's own (lower) one
    in_sample = expected_calibration_error((logits / fit_temperature(logits, y)).softmax(-1), y)
    result = calibrate(logits, y, seed=3)
    assert result["ece_after"] == pytest.approx(expected_calibration_error(probs, y))
    assert result["ece_after"] != pytest.approx(in_sample)
    # rows of one tile (one tile at several timesteps) share a fold
    groups = np.repeat(np.arange(30), 2)
    grouped = crossfit_probs(logits, y, groups, seed=3)
    other = y.clone()
    other[10] = (y[10] + 1) % 5
    torch.testing.assert_close(crossfit_probs(logits, other, groups, seed=3)[[10, 11]], grouped[[10, 11]])
    assert calibrate(logits[:1], y[:1]) == {"temperature": 1.0, "ece_before": None, "ece_after": None,
                                            "calibration_tiles": 1}


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
    assert np.isfinite(metrics["ece_after"]) and np.isfinite(metrics["ece_before"])
    assert result["temperature"] == metrics["temperature"]
    clf = SelectionClassifier.from_pretrained(out / "selection_classifier").eval()
    assert clf.config.temperature == pytest.approx(metrics["temperature"])
    # three kinds of tiles: training, validation (chose the step), held out (temperature and figures)
    held = result["splits"]["heldout"]
    ((train, val),) = result["splits"]["folds"]
    assert held and val and not set(held) & set(val) and not set(held) & set(train) and not set(val) & set(train)
    assert sorted(held + val + train) == list(range(len(labeled_tiles)))
    assert metrics["calibration_tiles"] == len(held)
    x = torch.from_numpy(np.stack([labeled_tiles[i] for i in held])).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.tensor([labeled_tiles.label(i) for i in held])
    with torch.no_grad():
        logits = clf(x).double()
    assert metrics["temperature"] == pytest.approx(fit_temperature(logits, y), rel=1e-4)
    assert metrics["heldout_acc"] == result["best_heldout_acc"] == pytest.approx(
        float((logits.argmax(-1) == y).double().mean()))

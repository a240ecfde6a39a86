"""The selection classifier as an ensemble of ResNets trained on folds of the labeled tiles (selection_folds)."""

import shutil

import numpy as np
import pytest
import torch


def test_every_tile_is_held_out_in_exactly_one_fold():
    from napari_histodiff.core.train.loop import stratified_folds

    labels = np.array([0] * 5 + [1] * 7 + [2] * 3)
    folds = stratified_folds(labels, 5, seed=0)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(len(labels)))
    for train, h in folds:
        assert not set(train) & set(h) and len(train) + len(h) == len(labels)
        assert (labels[h] == 0).sum() == 1  # a class of 5 gives each of 5 folds one tile
    assert [len(h) for _, h in folds] == [3] * 5  # the small class continues where the others ended
    assert all((a[1] == b[1]).all() for a, b in zip(folds, stratified_folds(labels, 5, seed=0)))


def labelled_bundle(trained_bundle, tmp_path, labeled_tiles):
    """A copy of a pre-trained bundle named with the tiles' classes, ready for a selection classifier."""
    from napari_histodiff.core.formats.bundle import read_meta, write_meta

    out = tmp_path / "b"
    shutil.copytree(trained_bundle, out, ignore=shutil.ignore_patterns("training", "latent_classifier"))
    meta = read_meta(out)
    meta["class_names"] = labeled_tiles.class_names
    write_meta(out, meta)
    return out


def test_folds_train_an_ensemble_calibrated_on_tiles_that_trained_nothing(trained_bundle, tmp_path, labeled_tiles,
                                                                          monkeypatch):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.formats.bundle import read_meta
    from napari_histodiff.core.generate.selection import score
    from napari_histodiff.core.models.classifiers import SelectionEnsemble
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train import classifiers
    from napari_histodiff.core.train.calibration import fit_temperature
    from napari_histodiff.core.train.classifiers import ClassifierOptions, train_selection_classifier

    seen = []  # (training, validation) tiles each member was given
    fit = classifiers._fit_selection

    def spy(tiles, labels, train_idx, val_idx, *rest):
        seen.append((np.asarray(train_idx).tolist(), np.asarray(val_idx).tolist()))
        return (yield from fit(tiles, labels, train_idx, val_idx, *rest))

    monkeypatch.setattr(classifiers, "_fit_selection", spy)
    out = labelled_bundle(trained_bundle, tmp_path, labeled_tiles)
    events = []
    result = run_to_end(train_selection_classifier(labeled_tiles, out, tiny(), ClassifierOptions(
        steps=30, device="cpu", folds=3, eval_every=10)), events.append)
    # progress: one stage counting through all folds
    steps = [(e.step, e.total) for e in events if e.stage == "selection_classifier"]
    assert steps == [(s, 90) for s in range(1, 91)]
    clf = load_bundle(out, device="cpu", require_unet=False).selection_classifier
    assert isinstance(clf, SelectionEnsemble) and len(clf.nets) == 3
    # members trained on other folds differ; the ensemble's logits are their mean
    w = [m.head.weight for m in clf.nets]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    x = np.stack([labeled_tiles[i] for i in range(len(labeled_tiles))])
    y = np.array([labeled_tiles.label(i) for i in range(len(labeled_tiles))])
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        torch.testing.assert_close(clf(xt), torch.stack([m(xt) for m in clf.nets]).mean(0))
    probs, dists = score(load_bundle(out, device="cpu", require_unet=False), x)
    assert probs.shape == dists.shape == (len(x), 2)
    assert (probs.argmax(1) == y).mean() >= 0.8  # the two stain classes of the demo image; chance 0.5
    meta = read_meta(out)
    rec = meta["provenance"]["selection_classifier"]
    assert rec["folds"] == 3 and len(rec["fold_validation_acc"]) == 3
    # the held-out tiles trained no member and chose no member's step; every other tile validates one member
    held = result["splits"]["heldout"]
    assert held and len(seen) == 3 and [list(v) for _, v in seen] == [v for _, v in result["splits"]["folds"]]
    for train_idx, val_idx in seen:
        assert not set(held) & set(train_idx) and not set(held) & set(val_idx)
    assert sorted(held + [i for _, v in seen for i in v]) == list(range(len(y)))
    # the temperature is that of the ensemble's own (mean) logits on the held-out tiles
    with torch.no_grad():
        logits = clf(xt[held]).double()
    assert clf.config.temperature == result["temperature"] == pytest.approx(fit_temperature(logits, y[held]), rel=1e-4)
    assert {"ece_before", "ece_after"} <= set(result) and result["calibration_tiles"] == len(held)
    acc = meta["metrics"]["selection_classifier"]["heldout_acc"]
    assert result["best_heldout_acc"] == acc == pytest.approx(float((logits.argmax(-1).numpy() == y[held]).mean()))
    assert np.array(rec["confusion"]).sum() == len(held)
    assert clf.centroids.shape == (2, 3 * clf.nets[0].config.channels[-1])


def test_folds_need_the_scratch_trunk_and_are_kept_on_resume():
    from napari_histodiff.core.base.errors import HistodiffError
    from napari_histodiff.core.train.classifiers import ClassifierOptions, train_selection_classifier
    from napari_histodiff.core.train.finetune import SAME_ON_RESUME, FinetuneOptions
    from napari_histodiff.core.models.presets import tiny

    assert FinetuneOptions().selection_folds == 5 and "selection_folds" in SAME_ON_RESUME
    with pytest.raises(HistodiffError, match="folds"):
        ClassifierOptions(folds=0).validate()
    with pytest.raises(HistodiffError, match="scratch"):
        next(train_selection_classifier(None, None, tiny(), ClassifierOptions(folds=3, trunk="autoencoder")))

    class FourTiles:
        def __len__(self):
            return 4

        def label(self, i):
            return i % 2

    with pytest.raises(HistodiffError, match="5 selection folds need at least 5 labeled tiles besides the held-out "
                                             "ones, there are 2; choose fewer"):
        next(train_selection_classifier(FourTiles(), None, tiny(), ClassifierOptions(folds=5)))

"""Pseudo-labels: unlabelled tiles labelled by the calibrated selection classifier for the latent classifier."""

import json

import numpy as np
import pytest
from test_cli import run
from test_cli_method import write_labeled


@pytest.fixture(scope="module")
def other_tiles():
    """Tiles of the demo image at other positions than the labeled ones, with their colour-deconvolution class."""
    from napari_histodiff.core.jobs.demo import demo_labeled_tiles

    return demo_labeled_tiles(32, stride=24)


def test_confident_tiles_get_their_class_within_the_limit(finetuned_bundle, other_tiles):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.tiles import ArrayTiles
    from napari_histodiff.core.train.pseudo import pseudo_label

    bundle = load_bundle(finetuned_bundle[0], device="cpu")
    unlabeled = ArrayTiles(other_tiles.tiles)
    events = []
    pseudo, report = run_to_end(pseudo_label(bundle, unlabeled, 0.9, 10**6), events.append)
    assert report["scored"] == len(unlabeled) and events[-1].step == events[-1].total == len(unlabeled)
    assert sum(report["per_class"].values()) == len(pseudo) > len(unlabeled) // 3
    assert min(report["per_class"].values()) > 0
    truth = other_tiles.labels[pseudo.indices]
    assert np.mean([pseudo.label(i) for i in range(len(pseudo))] == truth) >= 0.9
    assert np.array_equal(pseudo[0], unlabeled[int(pseudo.indices[0])]) and pseudo.class_names == bundle.class_names
    # a seeded random choice of at most max_tiles, the same each time
    a, ra = run_to_end(pseudo_label(bundle, unlabeled, 0.9, 10, seed=3))
    b, _ = run_to_end(pseudo_label(bundle, unlabeled, 0.9, 10, seed=3))
    assert ra["scored"] == 10 and ra["of"] == len(unlabeled) and np.array_equal(a.indices, b.indices)


def test_the_joined_set_keeps_the_labeled_class_order():
    from napari_histodiff.core.data.tiles import ArrayTiles
    from napari_histodiff.core.train.pseudo import PseudoLabelled, WithPseudoLabels

    tiles = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    labeled = ArrayTiles(tiles[:2], [0, 1], ["tumour", "stroma"])  # not in sorted order
    pseudo = PseudoLabelled(ArrayTiles(tiles[2:]), [2, 0], [1, 0], ["tumour", "stroma"])
    joined = WithPseudoLabels(labeled, pseudo)
    assert joined.class_names == ["tumour", "stroma"] and len(joined) == 4
    assert [joined.label(i) for i in range(4)] == [0, 1, 1, 0]
    assert np.array_equal(joined[2], tiles[4]) and np.array_equal(joined[3], tiles[2])


def test_a_class_no_unlabelled_tile_reaches_is_reported(finetuned_bundle, other_tiles):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.tiles import ArrayTiles
    from napari_histodiff.core.train.pseudo import pseudo_label

    bundle = load_bundle(finetuned_bundle[0], device="cpu")
    only_dab = ArrayTiles(other_tiles.tiles[other_tiles.labels == 0])
    events = []
    _, report = run_to_end(pseudo_label(bundle, only_dab, 0.9, 10**6), events.append)
    assert report["per_class"]["hematoxylin-rich"] == 0 < report["per_class"]["DAB-rich"]
    warned = [e.message for e in events if e.stage == "warning"]
    assert len(warned) == 1 and "hematoxylin-rich" in warned[0] and "DAB-rich" not in warned[0]


def test_finetune_with_unlabeled_tiles_through_the_cli(tmp_path, trained_bundle, labeled_tiles, other_tiles,
                                                        capsys):
    import imageio.v3 as iio

    data = write_labeled(tmp_path / "labeled", labeled_tiles)
    unl = tmp_path / "unlabeled"
    unl.mkdir()
    for i, tile in enumerate(other_tiles.tiles[:40]):
        iio.imwrite(unl / f"u{i}.png", tile)
    out = tmp_path / "ft"
    code, text, err = run(capsys, "finetune", trained_bundle, "--labeled", data, "--unlabeled", unl, "--out", out,
                          "--classifier-steps", 4, "--selection-steps", 30, "--finetune-unet-steps", 0,
                          "--pseudo-label-threshold", 0.6, "--device", "cpu")
    assert code == 0, err
    meta = json.loads((out / "histodiff.json").read_text())
    pseudo = meta["provenance"]["finetune"]["pseudo_labels"]
    assert pseudo["scored"] == 40 and pseudo["threshold"] == 0.6
    kept = sum(pseudo["per_class"].values())
    assert f"pseudo-labelled: DAB-rich {pseudo['per_class']['DAB-rich']}" in text + err
    # the latent classifier trained on the labeled tiles and the pseudo-labelled ones
    assert meta["provenance"]["latent_classifier"]["tiles"] == 12 + kept > 12
    # a missing unlabelled folder is refused before anything is written
    code, _, err = run(capsys, "finetune", trained_bundle, "--labeled", data, "--unlabeled", tmp_path / "nope",
                       "--out", tmp_path / "ft2", "--device", "cpu")
    assert code == 2 and "nope" in err and not (tmp_path / "ft2").exists()


def test_pseudo_labelled_tiles_only_train_and_figures_come_from_labeled_tiles_that_trained_nothing(
        trained_bundle, tmp_path, labeled_tiles, other_tiles):
    from test_selection_folds import labelled_bundle

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.tiles import ArrayTiles
    from napari_histodiff.core.formats.bundle import read_meta
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.classifiers import (ClassifierOptions, heldout_split, tile_labels,
                                                         train_latent_classifier)
    from napari_histodiff.core.train.pseudo import PseudoLabelled, WithPseudoLabels

    n = len(labeled_tiles)
    pool = ArrayTiles(other_tiles.tiles)
    pseudo = PseudoLabelled(pool, np.arange(40), other_tiles.labels[:40], labeled_tiles.class_names)
    joined = WithPseudoLabels(labeled_tiles, pseudo)
    assert joined.labeled_count == n and len(joined) == n + 40
    train, held = heldout_split(joined, tile_labels(joined), 0.2, seed=0)
    # the same labeled tiles are held out as for the selection classifier (which never sees pseudo-labels)
    assert held.tolist() == heldout_split(labeled_tiles, tile_labels(labeled_tiles), 0.2, seed=0)[1].tolist()
    assert held.max() < n and set(range(n, n + 40)) <= set(train.tolist())
    assert sorted(train.tolist() + held.tolist()) == list(range(n + 40))

    out = labelled_bundle(trained_bundle, tmp_path, labeled_tiles)
    result = run_to_end(train_latent_classifier(joined, out, tiny(), ClassifierOptions(
        steps=4, device="cpu", checkpoint_every=10**6)))
    assert result["splits"]["heldout"] == held.tolist()
    meta = read_meta(out)
    assert meta["provenance"]["latent_classifier"]["heldout_tiles"] == len(held)
    # every accuracy is a fraction of the held-out labeled tiles
    for key, value in meta["metrics"]["latent_classifier"].items():
        if key.startswith("acc_t"):
            assert value * len(held) == pytest.approx(round(value * len(held))), (key, value)
    assert meta["metrics"]["latent_classifier"]["calibration_tiles"] == len(held)

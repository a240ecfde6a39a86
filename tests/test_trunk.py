"""The guidance classifier on the pre-trained UNet's encoder (classifier_trunk unet) and the pixel-space
augmentation of the classifiers' training tiles."""

import shutil

import numpy as np
import pytest
import torch


def test_hed_conversions_match_scikit_image_and_jitter_is_mild():
    from skimage.color import hed2rgb as sk_hed2rgb
    from skimage.color import rgb2hed as sk_rgb2hed

    from napari_histodiff.core.train.augment import augment, dihedral, hed2rgb, rgb2hed, stain_jitter

    img = np.random.default_rng(0).random((8, 8, 3))
    np.testing.assert_allclose(rgb2hed(torch.tensor(img)[None]).numpy()[0], sk_rgb2hed(img), atol=1e-10)
    np.testing.assert_allclose(hed2rgb(torch.tensor(sk_rgb2hed(img))[None]).numpy()[0],
                               sk_hed2rgb(sk_rgb2hed(img)), atol=1e-10)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16) * 1.6 - 0.8
    torch.testing.assert_close(stain_jitter(x, g, sigma=0.0), x, atol=1e-5, rtol=0)  # no jitter: the same tile
    assert 0 < (stain_jitter(x, g) - x).abs().mean() < 0.1
    flipped = dihedral(x, g)
    assert torch.equal(flipped.flatten(1).sort(-1).values, x.flatten(1).sort(-1).values)  # pixels only move
    y = augment(x, g)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1


@pytest.fixture(scope="module")
def trunk_bundle(trained_bundle, tmp_path_factory, labeled_tiles):
    """A copy of the briefly pre-trained bundle with a UNet-trunk latent classifier trained on two classes."""
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.formats.bundle import read_meta, write_meta
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.classifiers import ClassifierOptions, train_latent_classifier

    out = tmp_path_factory.mktemp("trunk") / "b"
    shutil.copytree(trained_bundle, out, ignore=shutil.ignore_patterns("training"))
    meta = read_meta(out)
    meta["class_names"] = labeled_tiles.class_names
    write_meta(out, meta)
    result = run_to_end(train_latent_classifier(labeled_tiles, out, tiny(), ClassifierOptions(
        steps=30, device="cpu", trunk="unet", augment=True)))
    return out, result


def test_unet_trunk_classifier_is_saved_loaded_and_guides(trunk_bundle):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.formats.bundle import read_meta
    from napari_histodiff.core.generate.sampling import SampleOptions, classifier_grad, sample_tiles
    from napari_histodiff.core.models.trunk import UNetTrunkClassifier

    out, result = trunk_bundle
    b = load_bundle(out, device="cpu")
    clf = b.latent_classifier
    assert isinstance(clf, UNetTrunkClassifier) and clf.config.frozen_trunk
    assert read_meta(out)["provenance"]["latent_classifier"]["trunk"] == "unet"
    # the trunk holds the UNet's encoder weights, unchanged by training (frozen)
    unet = b.unet.state_dict()
    for k, v in clf.trunk.state_dict().items():
        torch.testing.assert_close(v, unet[k], msg=k)
    assert not any(p.requires_grad for p in clf.trunk.parameters())
    assert all(p.requires_grad for p in clf.head.parameters())
    # the gradient with respect to the noisy latent flows through the frozen trunk
    z = torch.randn(2, 3, 8, 8)
    grad = classifier_grad(clf, z, torch.tensor([500, 500]), torch.tensor([0, 1]))
    assert grad.shape == z.shape and grad.abs().sum() > 0
    events = []
    run_to_end(sample_tiles(b, SampleOptions(n=2, classes=b.class_names[:1], steps=3, guidance=5.0)), events.append)
    tiles = [e.data["tiles"] for e in events if e.data]
    assert sum(len(t) for t in tiles) == 2
    assert {"temperature", "ece_before", "ece_after"} <= set(read_meta(out)["metrics"]["latent_classifier"])


def test_finetune_option_reaches_the_classifier():
    from napari_histodiff.core.train.classifiers import ClassifierOptions
    from napari_histodiff.core.train.finetune import SAME_ON_RESUME, FinetuneOptions
    from napari_histodiff.core.base.errors import HistodiffError

    assert FinetuneOptions().classifier_trunk == "scratch" and "classifier_trunk" in SAME_ON_RESUME
    assert FinetuneOptions().selection_trunk == "scratch" and "selection_trunk" in SAME_ON_RESUME
    assert not FinetuneOptions().selection_augment and "selection_augment" in SAME_ON_RESUME
    with pytest.raises(HistodiffError, match="trunk"):
        ClassifierOptions(trunk="resnet").validate()


def test_autoencoder_trunk_selection_classifier_is_saved_loaded_and_scores(trained_bundle, tmp_path, labeled_tiles):
    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.formats.bundle import read_meta
    from napari_histodiff.core.generate.selection import score
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.models.trunk import AutoencoderTrunkClassifier
    from napari_histodiff.core.train.classifiers import ClassifierOptions, train_selection_classifier

    from test_selection_folds import labelled_bundle

    out = labelled_bundle(trained_bundle, tmp_path, labeled_tiles)
    result = run_to_end(train_selection_classifier(labeled_tiles, out, tiny(), ClassifierOptions(
        steps=40, device="cpu", trunk="autoencoder")))
    b = load_bundle(out, device="cpu", require_unet=False)
    clf = b.selection_classifier
    assert isinstance(clf, AutoencoderTrunkClassifier) and read_meta(out)["provenance"]["selection_classifier"][
        "trunk"] == "autoencoder"
    encoder = b.vae.encoder.state_dict()
    for k, v in clf.trunk.state_dict().items():  # the autoencoder's encoder, unchanged (frozen)
        torch.testing.assert_close(v, encoder[k], msg=k)
    assert not any(p.requires_grad for p in clf.trunk.parameters())
    # the head learns the two stain classes of the demo image in 40 steps; scores are probabilities
    x = np.stack([labeled_tiles[i] for i in range(len(labeled_tiles))])
    y = np.array([labeled_tiles.label(i) for i in range(len(labeled_tiles))])
    probs, dists = score(b, x)
    assert probs.shape == dists.shape == (len(x), 2)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == y).mean() >= 0.8 and result["best_heldout_acc"] >= 0.8  # chance: 0.5
    assert float(clf.centroids.abs().sum()) > 0
    from napari_histodiff.core.base.errors import HistodiffError

    with pytest.raises(HistodiffError, match="selection classifier's trunk"):
        run_to_end(train_selection_classifier(labeled_tiles, out, tiny(), ClassifierOptions(steps=1, trunk="unet")))

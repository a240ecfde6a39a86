"""The perceptual loss from the audit's own-tiles encoder (core/train/feature_loss.py)."""

import json

import numpy as np
import pytest
import torch

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.evaluate.features import save_encoder, train_encoder
from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder
from napari_histodiff.core.train.feature_loss import FeatureDistance, load_perceptual


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory, ihc_tiles):
    real = np.stack([ihc_tiles[i] for i in range(len(ihc_tiles))])
    encoder, info = run_to_end(train_encoder(real, steps=5, batch=16))
    folder = tmp_path_factory.mktemp("features")
    save_encoder(encoder, folder, info)
    return folder


def test_distance_is_zero_for_the_same_tile_and_grows_with_blur(encoder_folder, ihc_tiles):
    dist = load_perceptual(encoder_folder)
    assert isinstance(dist, FeatureDistance)
    dist.train()
    assert not dist.trunk.training and not any(p.requires_grad for p in dist.parameters())
    x = torch.tensor(np.stack([ihc_tiles[i] for i in range(4)])).permute(0, 3, 1, 2).float() / 127.5 - 1
    mild = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    strong = torch.nn.functional.avg_pool2d(x, 7, 1, 3)
    same, d_mild, d_strong = dist(x, x), dist(x, mild), dist(x, strong)
    assert same.shape == (4,) and torch.allclose(same, torch.zeros(4), atol=1e-6)
    assert (d_mild > 0).all() and (d_strong > d_mild).all()
    y = mild.clone().requires_grad_(True)
    dist(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_autoencoder_trains_with_it_and_records_it(tmp_path, encoder_folder, ihc_tiles, fast_preset):
    result = run_to_end(train_autoencoder(ihc_tiles, tmp_path / "b", fast_preset, AutoencoderOptions(
        steps=40, eval_every=10, device="cpu", perceptual_weights=str(encoder_folder))))
    hist = result["psnr_history"]
    assert hist[-1][1] > hist[0][1]
    meta = json.loads((tmp_path / "b" / "histodiff.json").read_text())
    assert meta["provenance"]["autoencoder"]["perceptual_weights"] == str(encoder_folder)


def test_missing_weights_name_the_fix(tmp_path):
    with pytest.raises(HistodiffError, match="features/ folder of an audit"):
        load_perceptual(tmp_path / "absent")


def test_a_folder_without_an_encoder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(HistodiffError, match="cannot load an audit feature encoder"):
        load_perceptual(tmp_path)

"""Class retention of the first stage (issue 29): core/train/retention.py."""

import math

import numpy as np
import pytest

from napari_histodiff.core.train.retention import (class_retention, from_metrics, image_quality,
                                                      retention_line)


def flat(value):
    return np.full((16, 16, 3), value, np.uint8)


def checker(lo=100, hi=200):
    t = np.full((16, 16, 3), lo, np.uint8)
    t[(np.indices((16, 16)).sum(0) % 2) == 1] = hi
    return t


def textured(x):
    """A classifier that tells textured tiles (class 1) from flat ones (class 0)."""
    return (x.reshape(len(x), -1).std(1) > 1).astype(int)


def mean_colour(x):
    """A known-lossy autoencoder: every tile becomes its mean colour."""
    return np.broadcast_to(x.mean((1, 2), keepdims=True).round().astype(np.uint8), x.shape).copy()


# two flat tiles of class 0, two textured of class 1, and a textured tile labelled 0 (wrong on the original)
TILES = np.stack([flat(40), flat(220), checker(), checker(), checker()])
LABELS = np.array([0, 0, 1, 1, 0])


def test_lossless_autoencoder_keeps_every_class():
    res = class_retention(textured, lambda x: x.copy(), TILES, LABELS)
    assert res["acc_original"] == pytest.approx(4 / 5)
    assert res["acc_reconstructed"] == pytest.approx(4 / 5)
    assert res["retention"] == 1.0
    assert res["psnr"] == math.inf and res["ssim"] == pytest.approx(1.0)
    assert res["tiles"] == 5


def test_mean_colour_autoencoder_loses_the_texture_class():
    res = class_retention(textured, mean_colour, TILES, LABELS, batch_size=2)
    # originals: 4 of 5 right; reconstructions are all flat, so all predicted 0: the three class-0 tiles right
    assert res["acc_original"] == pytest.approx(0.8)
    assert res["acc_reconstructed"] == pytest.approx(0.6)
    assert res["retention"] == pytest.approx(0.75)
    # the checkers (100/200, mean 150) are off by 50 everywhere, the flat tiles not at all: MSE 3/5 * 2500
    assert res["psnr"] == pytest.approx(10 * math.log10(255**2 / 1500))
    assert res["ssim"] < 0.7


def test_retention_is_undefined_when_no_original_is_right():
    res = class_retention(lambda x: np.full(len(x), 2), lambda x: x.copy(), TILES, LABELS)
    assert res["acc_original"] == 0 and res["retention"] is None
    assert retention_line(res).startswith("n/a")


def test_psnr_and_ssim_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    q = image_quality(a, b)
    assert q["psnr"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))
    mse = np.mean((a.astype(float) - b) ** 2)
    assert q["psnr"] == pytest.approx(10 * math.log10(255**2 / mse))
    ssim = np.mean([structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b)])
    assert q["ssim"] == pytest.approx(ssim) and 0 < q["ssim"] < 1


def test_mismatched_stacks_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        image_quality(TILES, TILES[:2])
    with pytest.raises(ValueError, match="labelled tiles"):
        class_retention(textured, mean_colour, TILES, LABELS[:3])


def test_line_and_metrics_round_trip():
    res = class_retention(textured, mean_colour, TILES, LABELS)
    metrics = {f"autoencoder_{k}": v for k, v in res.items()}
    back = from_metrics(metrics)
    assert back["retention"] == pytest.approx(0.75) and back["tiles"] == 5
    line = retention_line(back)
    assert line.startswith("0.75 (selection classifier on 5 held-out tiles: 80% right on the tiles, 60% on")
    assert "SSIM" in line and from_metrics({}) is None


def test_finetuning_records_retention_in_its_result_meta_and_info(finetuned_bundle, labeled_tiles):
    from napari_histodiff.core.train.retention import bundle_retention
    from napari_histodiff.core.formats.bundle import describe, load_bundle, read_meta

    out, result = finetuned_bundle
    res = result["retention"]
    held = result["selection_classifier"]["splits"]["heldout"]
    assert res["tiles"] == len(held) > 0
    # the same figures again from the bundle's own classifier and autoencoder on the held-out tiles
    x = np.stack([labeled_tiles[i] for i in held])
    again = bundle_retention(load_bundle(out, device="cpu"), x, [labeled_tiles.label(i) for i in held])
    for key in ("acc_original", "acc_reconstructed", "psnr", "ssim"):
        assert res[key] == pytest.approx(again[key], abs=1e-6)
    assert res["retention"] == pytest.approx(res["acc_reconstructed"] / res["acc_original"])
    metrics = read_meta(out)["metrics"]
    assert metrics["autoencoder_retention"] == pytest.approx(res["retention"])
    assert metrics["autoencoder_tiles"] == len(held)
    text, _ = describe(out, verify=False)
    lines = [line for line in text.splitlines() if line.startswith("retention")]
    assert lines == [f"retention   {retention_line(res)}"]
    assert "metric      autoencoder_retention" not in text

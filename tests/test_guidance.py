"""Class-guided sampling: guidance works, scale 0 is unguided exactly, every sampler runs."""

import numpy as np
import pytest
from skimage.color import rgb2hed

from napari_histodiff import load_bundle
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.generate.sampling import SampleOptions, sample_tiles


def collect(bundle, **kw):
    tiles, classes = {}, {}
    for event in sample_tiles(bundle, SampleOptions(**kw)):
        if event.data is not None:
            for k, tile in enumerate(event.data["tiles"]):
                tiles[event.data["start"] + k] = tile
                classes[event.data["start"] + k] = event.data["classes"][k]
    order = sorted(tiles)
    return np.stack([tiles[i] for i in order]), [classes[i] for i in order]


def stain_features(tiles):
    hed = np.stack([rgb2hed(t).reshape(-1, 3).mean(0) for t in tiles])
    return hed[:, [0, 2]]  # hematoxylin, DAB


@pytest.fixture(scope="module")
def bundle(finetuned_bundle):
    return load_bundle(finetuned_bundle[0], device="cpu")


def test_guided_tiles_land_in_their_class_more_often(bundle, labeled_tiles):
    # an independent judge: nearest class mean of stain content, fitted on the real labeled tiles
    feats = stain_features(labeled_tiles.tiles)
    means = np.stack([feats[labeled_tiles.labels == k].mean(0) for k in range(2)])
    scale = feats.std(0)

    def judge(tiles):
        f = stain_features(tiles) / scale
        return np.argmin(((f[:, None] - means[None] / scale) ** 2).sum(-1), axis=1)

    rates = {}
    for g in (0.0, 10.0):
        tiles, classes = collect(bundle, n=24, classes=bundle.class_names, guidance=g, steps=20, batch_size=24)
        target = np.array([bundle.class_index(c) for c in classes])
        rates[g] = float((judge(tiles) == target).mean())
    assert rates[10.0] >= 0.75 and rates[10.0] >= rates[0.0] + 0.2, (
        f"judge agrees with the target class for {rates[10.0]:.0%} of guided tiles (scale 10) "
        f"and {rates[0.0]:.0%} of unguided ones")


def test_guidance_zero_is_unguided_sampling_bit_exactly(bundle):
    a, _ = collect(bundle, n=3, classes=bundle.class_names, guidance=0.0, steps=10)
    b, _ = collect(bundle, n=6, steps=10)
    assert np.array_equal(a, b)


def test_guided_sample_i_is_independent_of_batch_size(bundle):
    a, _ = collect(bundle, n=3, classes=bundle.class_names, steps=10, batch_size=6)
    b, _ = collect(bundle, n=3, classes=bundle.class_names, steps=10, batch_size=4)
    diff = np.abs(a.astype(int) - b)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.parametrize("sampler", ["ddim", "dpm", "ddpm"])
@pytest.mark.parametrize("steps", [5, 10, 50])
def test_every_sampler_runs_guided_at_any_step_count(bundle, sampler, steps):
    tiles, classes = collect(bundle, n=1, classes=bundle.class_names, sampler=sampler, steps=steps)
    assert tiles.shape == (2, 32, 32, 3) and tiles.dtype == np.uint8 and tiles.std() > 3
    assert classes == bundle.class_names


def test_noisy_classifier_beats_chance_at_mid_timesteps(finetuned_bundle):
    _, result = finetuned_bundle
    last = result["latent_classifier"]["history"][-1][1]
    assert last["acc_t250"] > 0.65 and last["acc_t500"] > 0.6, last  # two classes: chance is 0.5


@pytest.mark.parametrize("kw, message", [
    (dict(classes=["TUM"]), "unknown class 'TUM'; this bundle knows DAB-rich, hematoxylin-rich"),
    (dict(n=0), "^n must be at least 1"),
    (dict(guidance=-1.0, classes=["DAB-rich"]), "^guidance must be at least 0"),
    (dict(steps=1001), r"steps must be below 1000 \(the model has 1000 training timesteps\)"),
    (dict(sampler="euler"), "sampler must be one of ddim, dpm, ddpm"),
])
def test_bad_sampling_options_are_named(bundle, kw, message):
    with pytest.raises(HistodiffError, match=message):
        collect(bundle, **kw)


def test_guidance_needs_a_finetuned_bundle(trained_bundle):
    b = load_bundle(trained_bundle, device="cpu")
    with pytest.raises(HistodiffError, match="histodiff finetune"):
        collect(b, classes=["x"])

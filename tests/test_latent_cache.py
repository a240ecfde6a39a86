"""Latents encoded once per tile and augmentation: the same posterior as encoding every batch, and the
same bits on resume, from memory and from disk shards."""

import shutil

import numpy as np
import pytest
import torch

from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.formats.bundle import load_bundle
from napari_histodiff.core.train import latents as L
from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion
from napari_histodiff.core.train.loop import BatchStream, dihedral, to_model_input


def losses_of(gen, stop_after=None):
    out, stages = [], set()
    for event in gen:
        stages.add(event.stage)
        if event.stage.endswith("latents"):
            continue
        out.append(event.loss)
        if stop_after is not None and len(out) == stop_after:
            gen.close()
            break
    return out, stages


@pytest.fixture(scope="module")
def vae(trained_bundle):
    return load_bundle(trained_bundle, device="cpu").vae.requires_grad_(False)


@pytest.mark.parametrize("on_disk", [False, True])
def test_cached_mean_and_std_are_the_posterior_of_each_augmentation(vae, ihc_tiles, tmp_path, monkeypatch, on_disk):
    if on_disk:
        monkeypatch.setenv("HISTODIFF_LATENT_CACHE_BYTES", "1")
        monkeypatch.setattr(L, "SHARD_TILES", 3)  # several shards, the last one short
    idx = np.array([3, 40, 41, 500, 1234, 2000, 2544])
    cache = run_to_end(L.encode_all(vae, ihc_tiles, idx, "cpu", tmp_path / "latents"))
    assert cache.on_disk == on_disk and len(cache) == len(idx)
    if on_disk:
        assert len(list((tmp_path / "latents").glob("mean-*.npy"))) == 3
    for k in range(8):
        mean, std = cache.get(idx, np.full(len(idx), k))
        x = np.stack([dihedral(ihc_tiles[int(i)], k) for i in idx])
        with torch.no_grad():
            post = vae.encode(to_model_input(torch.from_numpy(np.ascontiguousarray(x)), "cpu")).latent_dist
        torch.testing.assert_close(mean, post.mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(std, post.std, rtol=1e-4, atol=1e-5)
    cache.close()
    assert not (tmp_path / "latents").exists()


def test_a_cached_batch_is_the_posterior_of_the_pixel_batch(vae, ihc_tiles, tmp_path):
    stream = BatchStream(ihc_tiles, np.arange(0, len(ihc_tiles), 5), 16, seed=3)
    cache = run_to_end(L.encode_all(vae, ihc_tiles, stream.indices, "cpu", tmp_path / "latents"))
    for step in (0, 7, 60):  # 60: a later epoch
        pixels = stream[step]
        stream.latents = cache
        mean, std = stream[step]
        stream.latents = None
        with torch.no_grad():
            post = vae.encode(to_model_input(pixels, "cpu")).latent_dist
        torch.testing.assert_close(mean, post.mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(std, post.std, rtol=1e-4, atol=1e-5)


def test_when_the_cache_pays():
    assert L.wanted("auto", 1000, 16, 2000)  # 16,000 per-step encodings against 16,000
    assert not L.wanted("auto", 100, 16, 2000)
    assert L.wanted("on", 1, 1, 10**6) and not L.wanted("off", 10**6, 64, 1)
    assert L.cache_bytes(1000, (3, 64, 64)) == 1000 * 8 * 2 * 3 * 64 * 64 * 4


def _bundle(trained_bundle, folder, keep_unet=False):
    shutil.copytree(trained_bundle, folder, ignore=shutil.ignore_patterns(*(() if keep_unet else ("unet",)), "training"))
    return folder


@pytest.mark.parametrize("on_disk", [False, True])
def test_diffusion_with_the_cache_resumes_bit_exact(tmp_path, ihc_tiles, fast_preset, trained_bundle, monkeypatch,
                                                     on_disk):
    if on_disk:
        monkeypatch.setenv("HISTODIFF_LATENT_CACHE_BYTES", "1")
    tiles = _Subset(ihc_tiles, 64)

    def train(out, steps, mode="on", **kw):
        return train_diffusion(tiles, out, fast_preset, DiffusionOptions(
            steps=steps, device="cpu", checkpoint_every=100, latent_cache=mode, batch_size=8, **kw))

    a, b, c = (_bundle(trained_bundle, tmp_path / n) for n in "abc")
    straight, stages = losses_of(train(a, 12))
    assert "diffusion latents" in stages
    first, _ = losses_of(train(b, 12), stop_after=5)
    rest, _ = losses_of(train(b, 12))
    assert first + rest == straight  # bit-identical with the cache rebuilt on resume
    assert not (b / "training" / "diffusion" / "latents-rank0").exists()
    # the same method as encoding every batch: the same losses up to float noise
    uncached, stages = losses_of(train(c, 12, "off"))
    assert "diffusion latents" not in stages
    np.testing.assert_allclose(uncached, straight, rtol=2e-3)


def test_latent_classifier_with_the_cache_resumes_bit_exact(tmp_path, labeled_tiles, trained_bundle):
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.classifiers import ClassifierOptions, train_latent_classifier

    tiles = _Subset(labeled_tiles, 40)

    def train(out, steps, mode="on"):
        return train_latent_classifier(tiles, out, tiny(), ClassifierOptions(
            steps=steps, device="cpu", latent_cache=mode, batch_size=8, checkpoint_every=100))

    a, b, c = (_bundle(trained_bundle, tmp_path / n, keep_unet=True) for n in "abc")
    straight, stages = losses_of(train(a, 10))
    assert "latent_classifier latents" in stages
    first, _ = losses_of(train(b, 10), stop_after=4)
    rest, _ = losses_of(train(b, 10))
    assert first + rest == straight
    uncached, _ = losses_of(train(c, 10, "off"))
    np.testing.assert_allclose(uncached, straight, rtol=2e-3)


class _Subset:
    """Every few tiles of a tile set (fewer tiles to encode in a test)."""

    def __init__(self, tiles, n):
        self.base, self.idx = tiles, np.linspace(0, len(tiles) - 1, n).round().astype(int)
        self.tile_size, self.class_names = tiles.tile_size, tiles.class_names
        self.description = "subset"

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.base[int(self.idx[i])]

    def label(self, i):
        return self.base.label(int(self.idx[i]))

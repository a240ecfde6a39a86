"""Training engines on the tiny preset: losses fall, PSNR rises, resume is exact, stops are safe."""

import json

import numpy as np
import pytest

from napari_histodiff.core.formats.bundle import load_bundle
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder
from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion
from napari_histodiff.core.train.loop import checkpoints


def losses_of(gen, stop_after=None):
    out = []
    for event in gen:
        out.append(event.loss)
        if stop_after is not None and len(out) == stop_after:
            gen.close()  # as a cancelled worker or Ctrl-C would
            break
    return out


def test_autoencoder_psnr_rises(tmp_path, ihc_tiles, fast_preset):
    result = run_to_end(train_autoencoder(
        ihc_tiles, tmp_path / "b", fast_preset, AutoencoderOptions(steps=100, eval_every=10, device="cpu")))
    hist = result["psnr_history"]
    first, last = hist[0][1], hist[-1][1]
    assert last > first + 3.0, f"held-out PSNR went {first:.2f} -> {last:.2f} dB"
    meta = json.loads((tmp_path / "b" / "histodiff.json").read_text())
    assert meta["metrics"]["autoencoder_psnr_heldout"] == pytest.approx(last)


def test_diffusion_loss_falls_and_scale_is_from_data(trained_bundle, ihc_tiles, tmp_path):
    import shutil

    from napari_histodiff.core.models.presets import tiny

    out = tmp_path / "b"
    shutil.copytree(trained_bundle, out, ignore=shutil.ignore_patterns("unet", "training"))
    losses = []
    run_to_end(train_diffusion(ihc_tiles, out, tiny(), DiffusionOptions(steps=150, device="cpu")),
               lambda e: losses.append(e.loss))
    head, tail = np.mean(losses[:20]), np.mean(losses[-20:])
    assert tail < 0.75 * head, f"diffusion L1 loss {head:.3f} -> {tail:.3f}"
    b = load_bundle(out, device="cpu")
    # the stored factor makes the latents unit-variance
    import torch

    x = torch.from_numpy(np.stack([ihc_tiles[i] for i in range(0, len(ihc_tiles), 7)]))
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = b.vae.encode(x).latent_dist.sample() * b.scale_factor
    assert 0.8 < float(z.std()) < 1.25
    assert b.vae.config.scaling_factor == pytest.approx(b.scale_factor)


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_resume_reproduces_uninterrupted_losses(tmp_path, ihc_tiles, fast_preset, trained_bundle, stage):
    import shutil

    def train(out, steps):
        if stage == "autoencoder":
            return train_autoencoder(ihc_tiles, out, fast_preset,
                                     AutoencoderOptions(steps=steps, device="cpu", checkpoint_every=100))
        return train_diffusion(ihc_tiles, out, fast_preset,
                               DiffusionOptions(steps=steps, device="cpu", checkpoint_every=100))

    a, b = tmp_path / "a", tmp_path / "b"
    if stage == "diffusion":  # both start from the same trained autoencoder
        for d in (a, b):
            shutil.copytree(trained_bundle, d, ignore=shutil.ignore_patterns("unet", "training"))
    straight = losses_of(train(a, 12))
    first = losses_of(train(b, 12), stop_after=5)  # stopped early: leaves a checkpoint
    ckpt = json.loads((checkpoints(b / "training" / stage)[0] / "checkpoint.json").read_text())
    assert ckpt["step"] == 5
    rest = losses_of(train(b, 12))
    assert len(rest) == 7
    assert first + rest == straight  # bit-identical loss trajectory


def test_early_stop_leaves_a_loadable_checkpoint(tmp_path, ihc_tiles, fast_preset, trained_bundle):
    import shutil

    out = tmp_path / "b"
    shutil.copytree(trained_bundle, out, ignore=shutil.ignore_patterns("unet", "training"))
    gen = train_diffusion(ihc_tiles, out, fast_preset, DiffusionOptions(steps=1000, device="cpu"))
    losses_of(gen, stop_after=3)
    assert not (out / "unet").exists()  # unfinished: no half-trained bundle part
    # resuming with a target reached finishes the bundle from the checkpoint
    result = run_to_end(train_diffusion(ihc_tiles, out, fast_preset, DiffusionOptions(steps=3, device="cpu")))
    assert result["steps"] == 3
    bundle = load_bundle(out, device="cpu")
    assert bundle.unet is not None and bundle.meta["provenance"]["diffusion"]["steps"] == 3


def test_wrong_tile_size_is_refused(tmp_path, ihc_tiles):
    from napari_histodiff.core.base.errors import HistodiffError
    from napari_histodiff.core.models.presets import small

    with pytest.raises(HistodiffError, match="32 px but preset small needs 64 px"):
        run_to_end(train_autoencoder(ihc_tiles, tmp_path, small(), AutoencoderOptions(steps=1, device="cpu")))


def test_fused_adamw_gives_the_same_training(tmp_path, ihc_tiles, fast_preset, trained_bundle, monkeypatch):
    """The fused optimizer step (on by default) is a speed setting: the same losses and weights as unfused."""
    import shutil

    import torch

    from napari_histodiff.core.train import diffusion as D

    runs = {}
    for fused in (True, False):
        out = tmp_path / f"fused-{fused}"
        shutil.copytree(trained_bundle, out, ignore=shutil.ignore_patterns("unet", "training"))
        monkeypatch.setattr(D, "FUSED_ADAMW", fused)
        losses = losses_of(train_diffusion(ihc_tiles, out, fast_preset, DiffusionOptions(steps=8, device="cpu")))
        runs[fused] = losses, load_bundle(out, device="cpu").unet.state_dict()
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    for k, v in runs[True][1].items():
        torch.testing.assert_close(v, runs[False][1][k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_losses_reported_every_n_steps_are_the_means_of_those_steps(tmp_path, ihc_tiles, fast_preset,
                                                                     trained_bundle, stage):
    """On a GPU the loops read their losses back every N steps only (one host sync); the figures are the
    means of the steps since the last report, and nothing else changes."""
    import shutil

    def run(folder, every):
        if stage == "autoencoder":
            gen = train_autoencoder(ihc_tiles, folder, fast_preset, AutoencoderOptions(
                steps=6, batch_size=4, device="cpu", log_every=every, checkpoint_every=100))
        else:
            shutil.copytree(trained_bundle, folder, ignore=shutil.ignore_patterns("unet", "training"))
            gen = train_diffusion(ihc_tiles, folder, fast_preset, DiffusionOptions(
                steps=6, batch_size=4, device="cpu", log_every=every, checkpoint_every=100))
        events = []
        result = run_to_end(gen, lambda e: events.append(e) if e.stage == stage else None)
        return [e.loss for e in events], result

    each, _ = run(tmp_path / "a", None)  # the CPU default: every step
    assert len(each) == 6 and None not in each
    grouped, result = run(tmp_path / "b", 4)
    assert grouped[:3] == [None] * 3 and grouped[4] is None
    assert grouped[3] == pytest.approx(np.mean(each[:4]), rel=1e-6)
    assert grouped[5] == pytest.approx(np.mean(each[4:]), rel=1e-6)  # the last step always reports
    if stage == "diffusion":
        assert result["losses"] == [grouped[3], grouped[5]]

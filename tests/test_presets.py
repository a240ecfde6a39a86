import json

import torch

from napari_histodiff.core.models.presets import Preset, get_preset, paper, small, tiny


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_tiny_is_about_a_million_parameters():
    p = tiny()
    total = n_params(p.build_vae()) + n_params(p.build_unet())
    assert 0.5e6 < total < 1.5e6, total


def test_small_unet_is_10_to_20_million():
    assert 10e6 < n_params(small().build_unet()) < 20e6


def test_paper_matches_reference_configuration():
    p = paper()
    assert p.tile_size == 256 and p.latent_size == 64
    a = p.autoencoder
    assert a.block_out_channels == (128, 256, 512) and a.layers_per_block == 2 and a.latent_channels == 3
    assert a.kl_weight == 1e-6
    u = p.unet
    assert u.block_out_channels == tuple(192 * m for m in (1, 2, 2, 4, 4))
    assert u.attention_levels == (True, True, True, True, False)  # latent 64/32/16/8
    assert u.scale_shift_norm and u.resnet_updown
    s = p.build_scheduler()
    assert s.config.beta_schedule == "scaled_linear" and s.config.num_train_timesteps == 1000
    # CompVis "linear": linspace in sqrt(beta) from sqrt(0.0015) to sqrt(0.0155)
    expect = torch.linspace(0.0015**0.5, 0.0155**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(s.betas.double(), expect, atol=1e-7)
    d = p.diffusion
    assert (d.learning_rate, d.warmup_steps, d.ema_decay, d.loss) == (5e-5, 10000, 0.9999, "l1")


def test_paper_models_build_with_expected_blocks():
    p = paper()
    unet = p.build_unet()
    cfg = unet.config
    assert cfg.resnet_time_scale_shift == "scale_shift"
    assert cfg.downsample_type == "resnet" and cfg.upsample_type == "resnet"
    assert [type(b).__name__ for b in unet.down_blocks] == ["AttnDownBlock2D"] * 4 + ["ResnetDownsampleBlock2D"]
    vae = p.build_vae()
    x = torch.zeros(1, 3, 32, 32)
    assert vae.encode(x).latent_dist.mean.shape == (1, 3, 8, 8)  # f = 4


def test_presets_round_trip_through_json():
    for name in ("tiny", "small", "paper"):
        p = get_preset(name)
        q = Preset.from_dict(json.loads(p.to_json()))
        assert q == p


def test_incomplete_preset_is_refused_with_a_hint():
    import pytest

    from napari_histodiff.core.base.errors import HistodiffError

    with pytest.raises(HistodiffError, match="missing autoencoder, unet, schedule, diffusion"):
        Preset.from_dict({"name": "x", "tile_size": 64})
    d = tiny().to_dict()
    d["unet"]["heads"] = 3
    with pytest.raises(HistodiffError, match="unknown preset field"):
        Preset.from_dict(d)

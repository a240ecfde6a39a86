"""Converting CompVis / HistoDiffusion checkpoints into bundles: reference outputs, keys, schedule, errors, round trip."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from compvis_sets import payload_paths

from napari_histodiff import load_bundle
from napari_histodiff.core.formats import compvis_unet
from napari_histodiff.core.formats import compvis_vae
from napari_histodiff.core.formats.bundle import Bundle, new_meta, save_bundle
from napari_histodiff.core.formats.convert import detect_format
from napari_histodiff.core.formats.compvis import convert, read_ldm_config, to_compvis, write_compvis
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.formats.foreign import read_yaml_config, safe_load_checkpoint, unet_state_dict
from napari_histodiff.core.models.presets import AutoencoderConfig, Preset, UNetConfig, tiny
from napari_histodiff.core.models.unet import HistodiffUNet2DModel, head_counts

TOL = dict(atol=1e-4, rtol=1e-4)
SETS = ["public", "public_full"]


@pytest.fixture(scope="module", params=SETS)
def converted(request, compvis):
    name = request.param
    ref = dict(np.load(compvis(f"{name}_reference.npz")))
    return name, ref, convert(compvis(f"{name}.ckpt")), convert(compvis(f"{name}.ckpt"), ema=False)


def _close(actual, expected, what):
    actual = actual.detach().numpy() if torch.is_tensor(actual) else actual
    err = float(np.abs(actual - expected).max())
    print(f"{what}: max abs error {err:.2e}")  # shown with pytest -s
    assert np.allclose(actual, expected, **TOL), f"{what}: max abs error {err:.2e}"
    return err


def test_unet_matches_reference_ema_and_not(converted):
    name, ref, ema, plain = converted
    x, t = torch.tensor(ref["x_latent"]), torch.tensor(ref["t"])
    with torch.no_grad():
        out_ema, out_plain = ema.unet(x, t).sample, plain.unet(x, t).sample
    _close(out_ema, ref["unet_eps_ema"], f"{name} UNet EMA")
    _close(out_plain, ref["unet_eps"], f"{name} UNet")
    assert float((out_ema - out_plain).abs().max()) > 0.05  # EMA and model weights really differ
    assert ema.meta["provenance"]["converted"]["ema"] is True
    assert plain.meta["provenance"]["converted"]["ema"] is False


def test_first_stage_matches_reference(converted):
    name, ref, bundle, _ = converted
    vae = bundle.vae
    img, x = torch.tensor(ref["img"]), torch.tensor(ref["x_latent"])
    with torch.no_grad():
        _close(vae.quant_conv(vae.encoder(img)), ref["posterior_moments"], f"{name} moments")
        post = vae.encode(img).latent_dist
        _close(post.mean, ref["posterior_mean"], f"{name} posterior mean")
        _close(post.logvar, ref["posterior_logvar"], f"{name} posterior logvar")
        _close(post.std, ref["posterior_std"], f"{name} posterior std")
        _close(post.mode() * bundle.scale_factor, ref["z_mode_scaled"], f"{name} scaled latent")
        _close(vae.decode(x / bundle.scale_factor).sample, ref["decoded"], f"{name} decoded")
        _close(vae.decode(post.mode()).sample, ref["recon_mode"], f"{name} reconstruction")
    assert bundle.scale_factor == pytest.approx(float(ref["scale_factor"]))
    assert vae.config.scaling_factor == pytest.approx(float(ref["scale_factor"]))


def test_schedule_matches_stored_buffers(converted):
    name, ref, bundle, _ = converted
    s = bundle.scheduler
    assert s.config.beta_schedule == "scaled_linear" and s.config.num_train_timesteps == 1000
    err = float((s.alphas_cumprod.double() - torch.tensor(ref["alphas_cumprod"]).double()).abs().max())
    print(f"{name} alphas_cumprod: max abs error {err:.2e}")
    assert err < 1e-6
    assert float((s.betas.double() - torch.tensor(ref["betas"]).double()).abs().max()) < 1e-6
    assert bundle.meta["provenance"]["converted"]["schedule_max_abs_error"] < 1e-6


@pytest.mark.parametrize("name", SETS)
def test_every_key_is_mapped(name, compvis):
    ckpt = safe_load_checkpoint(compvis(f"{name}.ckpt"))
    _, u, f = read_ldm_config(read_yaml_config(compvis(f"{name}.yaml")), name)
    sd = ckpt["state_dict"]
    for prefix, table, model in (
            ("model.diffusion_model.", compvis_unet.key_table(u), compvis_unet.build_unet(u)),
            ("first_stage_model.", compvis_vae.key_table(f.levels, f.num_res_blocks, f.kind),
             compvis_vae.build_first_stage(f, 1.0))):
        source = {k[len(prefix):] for k in sd if k.startswith(prefix)}
        taken = {k for e in table if set(e.dst) <= set(model.state_dict()) for k in e.src}
        filled = {k for e in table if set(e.src) <= source for k in e.dst}
        assert source == taken, f"unmapped {sorted(source - taken)[:5]}, absent {sorted(taken - source)[:5]}"
        assert filled == set(model.state_dict()), sorted(set(model.state_dict()) ^ filled)[:5]
    weights, used = unet_state_dict(ckpt)
    assert used and len(weights) == len([k for k in sd if k.startswith("model.diffusion_model.")])


@pytest.mark.parametrize("name", SETS)
def test_first_stage_keys_agree_with_diffusers_converter(name, compvis):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from napari_histodiff.core.formats.keymap import apply

    sd = safe_load_checkpoint(compvis(f"{name}.ckpt"))["state_dict"]
    _, _, f = read_ldm_config(read_yaml_config(compvis(f"{name}.yaml")), name)
    vae = compvis_vae.build_first_stage(f, 1.0)
    ours = apply(compvis_vae.key_table(f.levels, f.num_res_blocks, f.kind),
                 {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")},
                 {k: v.shape for k, v in vae.state_dict().items()}, "vae")
    theirs = convert_ldm_vae_checkpoint(sd, vae.config)
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_converted_bundle_samples_and_saves(tmp_path, compvis):
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.generate.sampling import SampleOptions, sample_tiles

    src = compvis("public.ckpt")
    bundle = load_bundle(src, device="cpu")
    tiles = []
    run_to_end(sample_tiles(bundle, SampleOptions(n=2, steps=3, seed=1, batch_size=2)),
               lambda e: e.data and tiles.append(e.data["tiles"]))
    tiles = np.concatenate(tiles)
    assert tiles.shape == (2, 32, 32, 3) and tiles.dtype == np.uint8 and tiles.std() > 1

    out = save_bundle(bundle, tmp_path / "b")
    again = load_bundle(out, device="cpu")
    prov = again.meta["provenance"]["converted"]
    assert prov["format"] == "compvis" and prov["ema"] is True and prov["global_step"] == 4321
    assert prov["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert again.tile_size == 32 and again.preset.name == "converted"
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert same_output(again.unet(x, 10).sample, bundle.unet(x, 10).sample)
    # the preset written with it rebuilds the same architecture
    built = again.preset.build_unet().state_dict()
    assert {k: v.shape for k, v in built.items()} == {k: v.shape for k, v in again.unet.state_dict().items()}


def test_convert_cli(tmp_path, capsys, compvis):
    from napari_histodiff.cli import main

    out = tmp_path / "conv"
    assert main(["convert", str(compvis("public_full.ckpt")), str(out), "--no-ema"]) == 0
    assert "model weights" in capsys.readouterr().out
    assert load_bundle(out, device="cpu").meta["provenance"]["converted"]["ema"] is False
    assert main(["convert", str(compvis("public_full.ckpt")), str(out)]) == 2
    assert "already holds a model bundle" in capsys.readouterr().err
    assert main(["info", str(compvis("public.ckpt"))]) == 0
    text = capsys.readouterr().out
    assert "converted in memory" in text and "UNet2DModel" in text
    ckpt = tmp_path / "back.ckpt"
    assert main(["convert", str(out), str(ckpt), "--to-compvis"]) == 0
    assert ckpt.is_file() and ckpt.with_suffix(".yaml").is_file()


def test_malicious_checkpoint_refused_everywhere(tmp_path, monkeypatch, capsys, compvis):
    from napari_histodiff.cli import main

    mal = compvis("malicious.ckpt")
    targets = payload_paths(mal)
    assert targets, "expected the payload's target path in the pickle"
    existed = {t: t.exists() for t in targets}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HistodiffError, match="io.open"):
        load_bundle(mal)
    assert main(["convert", str(mal), str(tmp_path / "out")]) == 2
    assert "io.open" in capsys.readouterr().err
    assert main(["info", str(mal)]) == 2
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    assert {t: t.exists() for t in targets} == existed


# -- bad inputs --------------------------------------------------------------------------------

def _with_yaml(compvis, tmp_path, ckpt_bytes: bytes, name="model.ckpt", yaml="public.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(ckpt_bytes)
    path.with_suffix(".yaml").write_text(compvis(yaml).read_text())
    return path


def test_truncated_and_random_files(tmp_path, compvis):
    data = compvis("public.ckpt").read_bytes()
    for name, content in (("half.ckpt", data[: len(data) // 2]), ("noise.ckpt", os.urandom(5000))):
        path = _with_yaml(compvis, tmp_path, content, name)
        with pytest.raises(HistodiffError, match="not a readable PyTorch checkpoint") as info:
            load_bundle(path)
        assert str(path) in str(info.value)


def test_yaml_of_another_model_lists_shape_mismatches(tmp_path, compvis):
    path = _with_yaml(compvis, tmp_path, compvis("public_full.ckpt").read_bytes(), yaml="public.yaml")
    with pytest.raises(HistodiffError) as info:
        convert(path)
    msg = str(info.value)
    assert "cannot be converted" in msg and "shape" in msg
    assert "first_stage_model" in msg and "model.diffusion_model" in msg  # both parts are reported at once


def test_wrong_yaml_kinds(tmp_path, compvis):
    ckpt = compvis("public.ckpt")
    not_ldm = tmp_path / "ae.yaml"
    not_ldm.write_text("model:\n  target: ldm.models.autoencoder.AutoencoderKL\n  params: {}\n")
    with pytest.raises(HistodiffError, match="not a LatentDiffusion"):
        convert(ckpt, config=not_ldm)
    nothing = tmp_path / "other.yaml"
    nothing.write_text("trainer:\n  gpus: 1\n")
    with pytest.raises(HistodiffError, match="no model.target"):
        convert(ckpt, config=nothing)
    text = compvis("public.yaml").read_text()
    cond = tmp_path / "cond.yaml"
    cond.write_text(text.replace("cond_stage_config: __is_unconditional__",
                                 "cond_stage_config:\n      target: ldm.modules.encoders.modules.ClassEmbedder")
                    .replace("channel_mult: [1, 1]", "channel_mult: [1, 1]\n        context_dim: 512"))
    with pytest.raises(HistodiffError) as info:
        convert(ckpt, config=cond)
    assert "ClassEmbedder" in str(info.value) and "cross-attention" in str(info.value)
    sched = tmp_path / "sched.yaml"
    sched.write_text(text.replace("linear_end: 0.0155", "linear_end: 0.012"))
    with pytest.raises(HistodiffError, match="alphas_cumprod"):
        convert(ckpt, config=sched)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "a.ckpt").write_bytes(ckpt.read_bytes())
    with pytest.raises(HistodiffError, match="No YAML config found"):
        load_bundle(lonely / "a.ckpt")


def test_missing_first_stage_and_stray_keys(tmp_path, compvis):
    ckpt = safe_load_checkpoint(compvis("public.ckpt"))
    sd = ckpt["state_dict"]
    no_fs = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}
    path = tmp_path / "unet_only.ckpt"
    torch.save({"state_dict": no_fs}, path)
    path.with_suffix(".yaml").write_text(compvis("public.yaml").read_text())
    with pytest.raises(HistodiffError, match="no first stage"):
        convert(path)
    broken = dict(sd)
    dropped = "model.diffusion_model.out.2.weight"
    del broken[dropped]
    broken["model.diffusion_model.extra.weight"] = torch.zeros(1)
    broken["cond_stage_model.x"] = torch.zeros(1)
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": broken}, path)
    path.with_suffix(".yaml").write_text(compvis("public.yaml").read_text())
    with pytest.raises(HistodiffError) as info:
        convert(path, ema=False)
    msg = str(info.value)
    assert "out.2.weight" in msg and "extra.weight" in msg and "cond_stage_model.x" in msg


def test_detect_format(tmp_path, compvis):
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "histodiff.json").write_text("{}")
    assert detect_format(tmp_path / "ours") == "bundle"
    assert detect_format(compvis("public.ckpt")) == "compvis"
    (tmp_path / "pipe" / "unet").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "LDMPipeline"}')
    assert detect_format(tmp_path / "pipe") == "diffusers"
    (tmp_path / "pipe" / "model_index.json").unlink()
    assert detect_format(tmp_path / "pipe") == "bundle"  # load_bundle then says histodiff.json is missing
    with pytest.raises(HistodiffError, match="histodiff.json is missing.*format=diffusers"):
        load_bundle(tmp_path / "pipe")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistodiffError, match="not a napari-histodiff bundle"):
        detect_format(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(HistodiffError, match="not a known model file"):
        detect_format(tmp_path / "x.txt")
    with pytest.raises(HistodiffError, match="does not exist"):
        load_bundle(tmp_path / "nope.ckpt")


# -- per-block heads and the paper-style round trip ---------------------------------------------

def paper_style() -> Preset:
    """The paper's UNet shape, small: num_heads (head size changes per level), scale-shift norm,
    resnet up/down, 4 levels x 2 res blocks (input/output block indices up to 11)."""
    p = tiny()
    p.autoencoder = AutoencoderConfig(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=3,
                                      norm_num_groups=32)
    p.unet = UNetConfig(block_out_channels=(32, 64, 64, 128), layers_per_block=2,
                        attention_levels=(True, True, True, False), num_heads=2, norm_num_groups=32,
                        scale_shift_norm=True, resnet_updown=True, mid_attention_norm=True)
    return p


def same_output(a, b) -> bool:
    """Bit-identical weights give the same outputs up to float rounding: CPU kernels may pick another
    summation order for separately allocated tensors (seen: 1e-6 with OMP_NUM_THREADS=1)."""
    return torch.allclose(a, b, atol=1e-5, rtol=0)


def _randomised(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_paper_preset_has_eight_heads_per_level():
    from napari_histodiff.core.models.presets import paper

    u = paper().unet
    assert u.num_heads == 8 and u.mid_attention_norm
    small = paper_style()
    small.unet.num_heads = 8
    small.unet.block_out_channels = (64, 128, 128, 256)
    unet = small.build_unet()
    assert isinstance(unet, HistodiffUNet2DModel)
    assert head_counts(unet) == [8, 8, 8, 0, 8, 0, 8, 8, 8]
    assert compvis_unet.compvis_params(unet).num_heads == 8


def test_heads_per_block_change_the_output_and_survive_saving(tmp_path):
    p = paper_style()
    unet = _randomised(p.build_unet(), 0)
    assert head_counts(unet) == [2, 2, 2, 0, 2, 0, 2, 2, 2]
    one_head = HistodiffUNet2DModel(**{**unet.config, "attention_heads": [1, 1, 1, 0, 1, 0, 1, 1, 1]}).eval()
    one_head.load_state_dict(unet.state_dict())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = unet(x, 500).sample, one_head(x, 500).sample
    assert float((a - b).abs().max()) > 1e-3
    unet.save_pretrained(tmp_path / "u")
    again = HistodiffUNet2DModel.from_pretrained(tmp_path / "u")
    assert head_counts(again) == head_counts(unet)
    with torch.no_grad():
        assert same_output(again(x, 500).sample, a)


def test_paper_style_round_trip_through_compvis_layout(tmp_path):
    p = paper_style()
    meta = new_meta(p)
    meta["latent_scale_factor"] = 0.7
    bundle = Bundle(vae=_randomised(p.build_vae(), 1), unet=_randomised(p.build_unet(), 2),
                    scheduler=p.build_scheduler(), meta=meta)
    folder = save_bundle(bundle, tmp_path / "ours")
    ours = load_bundle(folder, device="cpu")
    assert type(ours.unet).__name__ == "HistodiffUNet2DModel"

    sd, config = to_compvis(ours)
    assert "model.diffusion_model.input_blocks.11.0.in_layers.0.weight" in sd
    assert "model.diffusion_model.output_blocks.11.1.qkv.weight" in sd  # level 0 comes last and has attention
    assert "model.diffusion_model.output_blocks.2.1.in_layers.0.weight" in sd  # level 3: no attention, resnet up
    assert "model.diffusion_model.input_blocks.3.0.in_layers.0.weight" in sd  # resnet downsampler
    unet_params = config["model"]["params"]["unet_config"]["params"]
    assert unet_params["num_heads"] == 2 and "num_head_channels" not in unet_params
    assert unet_params["use_scale_shift_norm"] and unet_params["resblock_updown"]
    assert unet_params["attention_resolutions"] == [1, 2, 4]

    ckpt = write_compvis(ours, tmp_path / "exported.ckpt")
    back = convert(ckpt, ema=False)
    assert type(back.unet).__name__ == "HistodiffUNet2DModel" and head_counts(back.unet) == head_counts(ours.unet)
    for a, b in ((ours.unet, back.unet), (ours.vae, back.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    t = torch.tensor([10, 900])
    with torch.no_grad():
        assert same_output(ours.unet(x, t).sample, back.unet(x, t).sample)
        assert same_output(ours.vae.decode(x).sample, back.vae.decode(x).sample)
        assert same_output(ours.vae.encode(img).latent_dist.mean, back.vae.encode(img).latent_dist.mean)
    assert back.scale_factor == pytest.approx(0.7)
    assert torch.equal(back.scheduler.alphas_cumprod, ours.scheduler.alphas_cumprod)


def test_bundles_compvis_cannot_express_are_refused():
    p = tiny()  # 16 groups, no group norm in the middle attention
    meta = new_meta(p)
    meta["latent_scale_factor"] = 1.0
    bundle = Bundle(vae=p.build_vae(), unet=p.build_unet(), scheduler=p.build_scheduler(), meta=meta)
    with pytest.raises(HistodiffError) as info:
        to_compvis(bundle)
    assert "norm_num_groups" in str(info.value) and "group norm" in str(info.value)


# -- VQ first stage and diffusers pipeline folders ----------------------------------------------

def _vq_and_unet():
    from diffusers import UNet2DModel, VQModel

    torch.manual_seed(0)
    vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64), layers_per_block=1,
                 latent_channels=3, num_vq_embeddings=32, norm_num_groups=32, sample_size=32).eval()
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       layers_per_block=1, attention_head_dim=32, norm_num_groups=32, attn_norm_num_groups=32).eval()
    return _randomised(vq, 5), _randomised(unet, 6)



def vq_bundle():
    """An in-memory bundle with a VQ first stage (as a diffusers LDM pipeline converts to)."""
    from diffusers import DDPMScheduler

    vq, unet = _vq_and_unet()
    meta = new_meta(tiny())
    meta["tile_size"], meta["latent_scale_factor"] = 32, 1.0
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0155)
    return Bundle(vae=vq, unet=unet, scheduler=sched, meta=meta)

def test_variations_work_on_a_vq_first_stage():
    from diffusers import DDPMScheduler

    from napari_histodiff.core.generate.sampling import SampleOptions, sample_tiles
    from napari_histodiff.core.data.tiles import ArrayTiles

    vq, unet = _vq_and_unet()
    meta = new_meta(tiny())
    meta["tile_size"], meta["latent_scale_factor"] = 32, 1.0
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0155)
    bundle = Bundle(vae=vq, unet=unet, scheduler=sched, meta=meta)
    sources = ArrayTiles(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    opts = SampleOptions(n=3, guidance=0.0, steps=4, strength=0.5)
    tiles = np.concatenate([e.data["tiles"] for e in sample_tiles(bundle, opts, sources) if e.data])
    assert tiles.shape == (3, 32, 32, 3) and tiles.dtype == np.uint8


def test_vq_first_stage_round_trip_and_default_scale(tmp_path):
    vq, unet = _vq_and_unet()
    meta = new_meta(tiny())
    meta["tile_size"], meta["latent_scale_factor"] = 32, 1.0
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0155)
    ckpt = write_compvis(Bundle(vae=vq, unet=unet, scheduler=sched, meta=meta), tmp_path / "vq.ckpt")
    cfg = read_yaml_config(ckpt.with_suffix(".yaml"))
    fs = cfg["model"]["params"]["first_stage_config"]
    assert fs["target"] == "ldm.models.autoencoder.VQModelInterface" and fs["params"]["n_embed"] == 32
    sd = safe_load_checkpoint(ckpt)["state_dict"]
    assert "first_stage_model.quantize.embedding.weight" in sd
    del sd["scale_factor"]  # no stored buffer and no scale_factor in the config: 1.0, as CompVis
    torch.save({"state_dict": sd}, ckpt)
    back = convert(ckpt)
    assert type(back.vae).__name__ == "VQModel" and back.scale_factor == 1.0
    assert back.meta["provenance"]["converted"]["ema"] is False  # no EMA weights in this file
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert same_output(back.vae.decode(z).sample, vq.decode(z).sample)
        assert same_output(back.unet(z, 5).sample, unet(z, 5).sample)
    fast = tmp_path / "scaled.yaml"
    fast.write_text(ckpt.with_suffix(".yaml").read_text().replace("scale_by_std: true", "scale_factor: 0.5"))
    assert convert(ckpt, config=fast).scale_factor == 0.5


def test_diffusers_ldm_pipeline_folder(tmp_path):
    from diffusers import DDIMScheduler, LDMPipeline

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.generate.sampling import SampleOptions, sample_tiles

    vq, unet = _vq_and_unet()
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0155, clip_sample=False)
    LDMPipeline(vqvae=vq, unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    bundle = load_bundle(tmp_path / "pipe", device="cpu")
    assert bundle.meta["provenance"]["converted"]["format"] == "diffusers"
    assert bundle.meta["provenance"]["converted"]["pipeline"] == "LDMPipeline"
    assert bundle.scale_factor == 1.0 and bundle.tile_size == 32  # LDMPipeline decodes latents unscaled
    assert torch.equal(bundle.scheduler.alphas_cumprod, sched.alphas_cumprod)
    sd = bundle.unet.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in unet.state_dict().items())
    tiles = []
    run_to_end(sample_tiles(bundle, SampleOptions(n=2, steps=2, batch_size=2)),
               lambda e: e.data and tiles.append(e.data["tiles"]))
    assert tiles[0].shape == (2, 32, 32, 3)
    save_bundle(bundle, tmp_path / "b")
    assert type(load_bundle(tmp_path / "b", device="cpu").vae).__name__ == "VQModel"


def test_diffusers_pixel_space_and_broken_folders_refused(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    _, unet = _vq_and_unet()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(HistodiffError, match="pixel-space") as info:
        load_bundle(tmp_path / "ddpm")
    assert "DDPMPipeline" in str(info.value) and "latent" in str(info.value)
    broken = tmp_path / "broken"
    (broken / "unet").mkdir(parents=True)
    (broken / "vae").mkdir()
    (broken / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(HistodiffError) as info:
        load_bundle(broken, format="diffusers")
    assert "scheduler/ has no scheduler_config.json" in str(info.value) and "vae/ has no config.json" in str(info.value)


def test_guided_diffusion_latent_classifier_is_explained(tmp_path, capsys):
    """An EncoderUNetModel state dict (keys and shapes of guided-diffusion's classifier) is recognised."""
    from napari_histodiff.cli import main
    from napari_histodiff.core.formats.keymap import apply_backward

    p = paper_style()
    unet = p.build_unet()
    u = compvis_unet.compvis_params(unet)
    full = apply_backward(compvis_unet.key_table(u), unet.state_dict(), "unet")
    sd = {k: v for k, v in full.items() if k.startswith(("time_embed.", "input_blocks.", "middle_block."))}
    c = 128
    sd.update({"out.0.weight": torch.ones(c), "out.0.bias": torch.zeros(c),
               "out.2.positional_embedding": torch.randn(c, 2), "out.2.qkv_proj.weight": torch.randn(3 * c, c, 1),
               "out.2.qkv_proj.bias": torch.zeros(3 * c), "out.2.c_proj.weight": torch.randn(9, c, 1),
               "out.2.c_proj.bias": torch.zeros(9)})
    path = tmp_path / "classifier.pt"
    torch.save(sd, path)
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    msg = capsys.readouterr().err
    assert "EncoderUNetModel" in msg and "9 classes" in msg and "each of the 1 latent positions" in msg
    assert "resblock_updown" in msg and "histodiff finetune" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM")), reason="needs a display (xvfb-run)")
def test_load_widget_converts_a_checkpoint(qtbot, compvis):
    pytest.importorskip("napari")
    from napari_histodiff.widgets._state import MODEL
    from napari_histodiff.widgets.load import LoadWidget

    ckpt = compvis("public.ckpt")
    MODEL.model = None
    try:
        w = LoadWidget()
        qtbot.addWidget(w)
        w.ckpt.value = str(ckpt)
        w.ema.setChecked(False)
        assert w.source() == (str(ckpt), {"config": None, "ema": False})
        w.device.setCurrentText("cpu")
        w.load()
        qtbot.waitUntil(lambda: MODEL.model is not None, timeout=60_000)
        assert MODEL.model.meta["provenance"]["converted"]["ema"] is False
        assert "converted from compvis" in w.card.text() and "public.ckpt" in w.card.text()
    finally:
        MODEL.model = None

"""The bundle: diffusers-loadable, bit-exact round trip, clear errors for broken folders."""

import json
import shutil

import pytest
import torch

from napari_histodiff import load_bundle
from napari_histodiff.core.formats.bundle import new_meta, save_part, summary, write_meta
from napari_histodiff.core.base.errors import BundleError
from napari_histodiff.core.models.presets import tiny


def test_save_load_is_bit_exact(tmp_path):
    p = tiny()
    torch.manual_seed(1)
    vae, unet, sched = p.build_vae().eval(), p.build_unet().eval(), p.build_scheduler()
    tmp_path.mkdir(exist_ok=True)
    for model, name in ((vae, "vae"), (unet, "unet"), (sched, "scheduler")):
        save_part(model, tmp_path, name)
    meta = new_meta(p)
    meta["latent_scale_factor"] = 0.5
    write_meta(tmp_path, meta)
    b = load_bundle(tmp_path, device="cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(vae.encode(x).latent_dist.mean, b.vae.encode(x).latent_dist.mean)
        assert torch.equal(vae.decode(z).sample, b.vae.decode(z).sample)
        assert torch.equal(unet(z, t).sample, b.unet(z, t).sample)
    assert b.scale_factor == 0.5 and b.tile_size == 32 and b.preset == p


def test_bundle_loads_with_plain_diffusers(trained_bundle):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    vae = AutoencoderKL.from_pretrained(trained_bundle / "vae")
    unet = UNet2DModel.from_pretrained(trained_bundle / "unet")
    sched = DDPMScheduler.from_pretrained(trained_bundle / "scheduler")
    meta = json.loads((trained_bundle / "histodiff.json").read_text())
    assert vae.config.scaling_factor == pytest.approx(meta["latent_scale_factor"])
    assert unet.config.sample_size == 8 and sched.config.num_train_timesteps == 1000
    assert sorted(p.name for p in (trained_bundle / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors", "files.json"]  # files.json: checksums


def test_info_summary_is_readable(trained_bundle):
    text = summary(trained_bundle)
    assert "preset      tiny" in text and "32 px" in text and "UNet2DModel" in text
    assert "autoencoder: 60 steps" in text


@pytest.mark.parametrize("damage, message", [
    (lambda d: shutil.rmtree(d / "unet"), "missing unet/"),
    (lambda d: (d / "histodiff.json").unlink(), "histodiff.json is missing"),
    (lambda d: (d / "histodiff.json").write_text("{not json"), "not JSON"),
    (lambda d: (d / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 10), "cannot load autoencoder"),
])
def test_broken_bundle_gives_one_clear_error(trained_bundle, tmp_path, damage, message):
    d = tmp_path / "b"
    shutil.copytree(trained_bundle, d)
    damage(d)
    with pytest.raises(BundleError, match=message):
        load_bundle(d, device="cpu")


def test_mismatched_parts_are_named(trained_bundle, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(trained_bundle, d)
    meta = json.loads((d / "histodiff.json").read_text())
    meta["tile_size"] = 64
    (d / "histodiff.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="do not fit together.*sample_size 8 != tile_size/4 = 16"):
        load_bundle(d, device="cpu")


def test_unknown_device_is_refused(trained_bundle):
    from napari_histodiff.core.base.errors import HistodiffError

    with pytest.raises(HistodiffError, match="not available on this machine"):
        load_bundle(trained_bundle, device="cuda:7")


@pytest.mark.parametrize("kept, removed", [("latent_classifier", "selection_classifier"),
                                           ("selection_classifier", "latent_classifier")])
def test_each_classifier_loads_without_the_other(finetuned_bundle, tmp_path, kept, removed):
    d = tmp_path / "ft"
    shutil.copytree(finetuned_bundle[0], d)
    shutil.rmtree(d / removed)
    b = load_bundle(d, device="cpu")
    assert getattr(b, removed) is None
    assert getattr(b, kept).config.num_classes == len(b.class_names) == 2
    parts = [line.split()[0] for line in summary(d).splitlines()]
    assert kept in parts and removed not in parts


def test_a_lone_classifier_is_still_checked_against_the_class_names(finetuned_bundle, tmp_path):
    d = tmp_path / "ft"
    shutil.copytree(finetuned_bundle[0], d)
    shutil.rmtree(d / "latent_classifier")
    meta = json.loads((d / "histodiff.json").read_text())
    meta["class_names"].append("third")
    (d / "histodiff.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="Selection(Classifier|Ensemble) has 2 classes, histodiff.json names 3"):
        load_bundle(d, device="cpu")

"""Safety layer for foreign (CompVis / Lightning) checkpoints: loading, refusal, configs, EMA keys."""

import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from compvis_sets import payload_paths, write_malicious

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.formats.foreign import (
    ModelCheckpointStandIn,
    ema_key_table,
    find_config,
    read_yaml_config,
    safe_load_checkpoint,
    unet_state_dict,
)

SCHEDULE = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
]
UNET = "model.diffusion_model."


@pytest.fixture(scope="module")
def public_ckpt(compvis):
    return safe_load_checkpoint(compvis("public.ckpt"))


@pytest.mark.parametrize("name", ["public.ckpt", "public_full.ckpt"])
def test_public_checkpoints_load(name, compvis):
    ckpt = safe_load_checkpoint(compvis(name))
    assert ckpt["global_step"] == 4321
    sd = ckpt["state_dict"]
    for key in SCHEDULE:
        assert sd[key].shape == (1000,), key
    assert float(sd["scale_factor"]) == pytest.approx(0.8)
    callbacks = ckpt["callbacks"]
    (cls, state), = callbacks.items()
    assert cls is ModelCheckpointStandIn
    assert "monitor" in state


def _listing(*folders: Path) -> set:
    return {p for folder in folders for p in folder.rglob("*")}


def test_malicious_checkpoint_refused(tmp_path, monkeypatch, compvis):
    mal = compvis("malicious.ckpt")
    targets = payload_paths(mal)
    assert targets, "expected the payload's target path in the pickle"
    existed = {t: t.exists() for t in targets}
    monkeypatch.chdir(tmp_path)
    before = _listing(tmp_path)
    with pytest.raises(HistodiffError) as info:
        safe_load_checkpoint(mal)
    msg = str(info.value)
    assert "io.open" in msg
    assert "not loaded" in msg and "run code" in msg
    assert _listing(tmp_path) == before
    for target, was in existed.items():
        assert target.exists() == was, target


def test_generated_payload_is_live_and_refused(tmp_path):
    """The generated malicious checkpoint really acts when unpickled with code execution allowed
    (so refusing it means something), and safe_load_checkpoint refuses it."""
    proof, refused = tmp_path / "proof.txt", tmp_path / "refused.txt"
    write_malicious(tmp_path / "live.ckpt", proof)
    torch.load(tmp_path / "live.ckpt", weights_only=False)  # our own file, run on purpose
    assert proof.is_file()
    write_malicious(tmp_path / "mal.ckpt", refused)
    assert payload_paths(tmp_path / "mal.ckpt") == [refused]
    with pytest.raises(HistodiffError, match="io.open"):
        safe_load_checkpoint(tmp_path / "mal.ckpt")
    assert not refused.exists()


def test_legacy_pickle_with_foreign_global_refused(tmp_path):
    from fractions import Fraction

    path = tmp_path / "legacy.pt"
    torch.save({"x": torch.ones(2), "obj": Fraction(1, 3)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(HistodiffError, match="fractions.Fraction"):
        safe_load_checkpoint(path)


def test_bad_files_give_clear_errors(tmp_path, compvis):
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint\n")
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(os.urandom(4096))
    bad = [text, noise]
    public = compvis("public.ckpt")
    half = tmp_path / "half.ckpt"
    data = public.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    bad.append(half)
    for path in bad:
        with pytest.raises(HistodiffError) as info:
            safe_load_checkpoint(path)
        assert str(path) in str(info.value)
        assert "not a readable PyTorch checkpoint" in str(info.value)
    with pytest.raises(HistodiffError, match="does not exist"):
        safe_load_checkpoint(tmp_path / "missing.ckpt")


def test_non_dict_checkpoint_refused(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(HistodiffError, match="not a checkpoint dictionary"):
        safe_load_checkpoint(path)


def test_read_yaml_config(tmp_path, compvis):
    cfg = read_yaml_config(compvis("public.yaml"))
    assert "model" in cfg
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(HistodiffError, match="broken.yaml"):
        read_yaml_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(HistodiffError, match="scalar.yaml"):
        read_yaml_config(scalar)
    with pytest.raises(HistodiffError, match="missing.yaml"):
        read_yaml_config(tmp_path / "missing.yaml")


def test_find_config(tmp_path, compvis):
    ckpt, yaml_file = compvis("public.ckpt"), compvis("public.yaml")
    beside = tmp_path / "beside"
    beside.mkdir()
    shutil.copy(ckpt, beside / "public.ckpt")
    shutil.copy(yaml_file, beside / "public.yaml")
    (beside / "other.yaml").write_text("a: 1\n")
    assert find_config(beside / "public.ckpt") == beside / "public.yaml"

    only = tmp_path / "only"
    only.mkdir()
    (only / "model.ckpt").write_bytes(b"")
    (only / "config.yaml").write_text("a: 1\n")
    assert find_config(only / "model.ckpt") == only / "config.yaml"

    run = tmp_path / "logs" / "2023-01-01T00-00-00_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "configs").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "configs" / "x-project.yaml").write_text("a: 1\n")
    (run / "configs" / "x-lightning.yaml").write_text("b: 1\n")
    assert find_config(run / "checkpoints" / "last.ckpt") == run / "configs" / "x-project.yaml"

    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("a: 1\n")
    assert find_config(run / "checkpoints" / "last.ckpt", explicit) == explicit
    with pytest.raises(HistodiffError, match="given with config"):
        find_config(run / "checkpoints" / "last.ckpt", tmp_path / "nope.yaml")

    lonely = tmp_path / "lonely" / "checkpoints"
    lonely.mkdir(parents=True)
    (lonely / "last.ckpt").write_bytes(b"")
    with pytest.raises(HistodiffError) as info:
        find_config(lonely / "last.ckpt")
    msg = str(info.value)
    assert "with config" in msg and "last.yaml" in msg and "project.yaml" in msg


def test_ema_key_table_covers_unet(public_ckpt):
    sd = public_ckpt["state_dict"]
    table = ema_key_table(sd)
    unet_params = [k for k in sd if k.startswith(UNET)]
    assert (
        "model_ema.diffusion_modelinput_blocks10in_layers0weight" in table
        or not any(".input_blocks.1.0.in_layers.0.weight" in k for k in unet_params)
    )
    assert all(v in sd and v.startswith(UNET) for v in table.values())
    assert len(set(table.values())) == len(table)
    with_ema = [k for k in unet_params if k in set(table.values())]
    assert len(table) == len(with_ema) == len(unet_params)
    ema_buffers = [k for k in sd if k.startswith("model_ema.") and k not in ("model_ema.decay", "model_ema.num_updates")]
    assert sorted(table) == sorted(ema_buffers)


def test_unet_state_dict_ema_choice(public_ckpt):
    ema, used_ema = unet_state_dict(public_ckpt, ema=True)
    plain, used_plain = unet_state_dict(public_ckpt, ema=False)
    default, used_default = unet_state_dict(public_ckpt)
    assert used_ema and used_default and not used_plain
    assert set(ema) == set(plain) == set(default)
    assert not any(k.startswith("model.") for k in ema)
    assert any(not torch.equal(ema[k], plain[k]) for k in ema)
    assert all(torch.equal(default[k], ema[k]) for k in ema)
    sd = public_ckpt["state_dict"]
    assert all(torch.equal(plain[k], sd[UNET + k]) for k in plain)


def test_unet_state_dict_ema_errors(public_ckpt):
    sd = public_ckpt["state_dict"]
    no_ema = {k: v for k, v in sd.items() if not k.startswith("model_ema.")}
    with pytest.raises(HistodiffError, match="no EMA weights"):
        unet_state_dict({"state_dict": no_ema}, ema=True)
    weights, used = unet_state_dict({"state_dict": no_ema})
    assert not used and weights
    table = ema_key_table(sd)
    dropped = sorted(table)[:7]
    partial = {k: v for k, v in sd.items() if k not in dropped}
    with pytest.raises(HistodiffError, match="incomplete") as info:
        unet_state_dict({"state_dict": partial}, ema=True)
    assert any(table[k] in str(info.value) for k in dropped) and "2 more" in str(info.value)
    with pytest.raises(HistodiffError, match="no UNet weights"):
        unet_state_dict({"state_dict": {"scale_factor": torch.tensor(1.0)}})


def test_stand_ins_are_ours_and_other_lightning_classes_refused(tmp_path, monkeypatch):
    import sys
    import types

    from napari_histodiff.core.formats.foreign import ALLOWED_STAND_INS

    assert all(cls.__module__ == "napari_histodiff.core.formats.foreign" for cls in ALLOWED_STAND_INS.values())
    fake = types.ModuleType("pytorch_lightning.trainer.trainer")

    class Trainer:
        pass

    Trainer.__module__, Trainer.__qualname__ = fake.__name__, "Trainer"
    fake.Trainer = Trainer
    for parent in ("pytorch_lightning", "pytorch_lightning.trainer"):
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    path = tmp_path / "trainer.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "trainer": Trainer()}, path)
    with pytest.raises(HistodiffError, match="pytorch_lightning.trainer.trainer.Trainer"):
        safe_load_checkpoint(path)

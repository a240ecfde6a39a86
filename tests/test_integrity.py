"""Damaged weights are found and named: sizes and sha256 recorded at save, safetensors headers."""

import hashlib
import json
import shutil
import struct

import pytest

from napari_histodiff import load_bundle
from napari_histodiff.cli import main
from napari_histodiff.core.base.errors import BundleError
from napari_histodiff.core.formats.bundle import summary
from napari_histodiff.core.formats.integrity import MANIFEST, repair_hint, verify_bundle, verify_part

UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture()
def bundle(trained_bundle, tmp_path):
    """A copy of the trained bundle that a test may damage."""
    d = tmp_path / "b"
    shutil.copytree(trained_bundle, d)
    return d


def truncate(f, n):
    data = f.read_bytes()
    f.write_bytes(data[:-n])


def header_length(f):
    return struct.unpack("<Q", f.read_bytes()[:8])[0]


def rewrite_header(data, change):
    """``data`` with its safetensors header JSON changed by ``change``, padded to the same length."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    return data[:8] + text.ljust(n) + data[8 + n:]


def first_tensor(header):
    return header[min(k for k in header if k != "__metadata__")]


def test_save_part_records_size_and_sha256_of_every_file(bundle):
    for part in ("vae", "unet", "scheduler"):
        recorded = json.loads((bundle / part / MANIFEST).read_text())
        files = sorted(f.name for f in (bundle / part).iterdir() if f.name != MANIFEST)
        assert sorted(recorded) == files
        for name in files:
            data = (bundle / part / name).read_bytes()
            assert recorded[name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_healthy_bundle_has_no_problems_and_info_says_verified(bundle, capsys):
    # vae/config.json was rewritten after saving (scaling factor): its record was updated with it
    assert verify_bundle(bundle) == []
    assert "weights     verified (sha256 of 5 files)" in summary(bundle)
    assert main(["info", str(bundle)]) == 0
    out, err = capsys.readouterr()
    assert "weights     verified (sha256 of 5 files)" in out and "DAMAGED" not in out + err


def test_truncated_weights_are_named_by_verify_load_and_info(bundle, capsys):
    f = bundle / UNET
    size = f.stat().st_size
    truncate(f, 100)
    assert verify_bundle(bundle) == [f"{UNET} is truncated: {size - 100} of {size} bytes recorded at save"]
    with pytest.raises(BundleError) as e:
        load_bundle(bundle, device="cpu")
    assert f"{f} is truncated" in str(e.value) and "re-run `histodiff pretrain`" in str(e.value)
    assert main(["info", str(bundle)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"bundle {bundle} is DAMAGED: 1 problem" in err
    assert f"damaged     {UNET} is truncated" in err and "unet        UNet2DModel" in err
    assert "fix         restore the bundle from a backup, or re-run `histodiff pretrain` to write unet/ again" in err
    assert "preset      tiny" in err  # the rest of the summary is still shown


def test_truncation_is_found_from_the_header_without_a_manifest(bundle):
    (bundle / "unet" / MANIFEST).unlink()
    truncate(bundle / UNET, 100)
    [problem] = verify_bundle(bundle)
    assert problem.startswith(f"{UNET} is truncated: ") and problem.endswith(" of tensor data present")
    with pytest.raises(BundleError, match=f"cannot load diffusion UNet: {bundle / UNET} is truncated"):
        load_bundle(bundle, device="cpu")


def test_flipped_byte_is_a_checksum_mismatch_and_loading_does_not_hash(bundle):
    f = bundle / UNET
    data = bytearray(f.read_bytes())
    i = 8 + header_length(f) + (len(data) - 8 - header_length(f)) // 2  # inside the tensor data
    data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    assert verify_bundle(bundle) == [f"{UNET} is corrupt: its checksum differs from the one recorded at save"]
    assert verify_bundle(bundle, checksums=False) == []
    assert load_bundle(bundle, device="cpu").unet is not None  # loading checks sizes and headers only


@pytest.mark.parametrize("manifest", [True, False])
@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:8] + b"{" * 10 + d[18:], "safetensors header is damaged (JSONDecodeError"),
    (lambda d: struct.pack("<Q", len(d)) + d[8:], "safetensors header is damaged (header length"),
    (lambda d: rewrite_header(d, lambda h: first_tensor(h).update(shape=[1])),
     "safetensors header is damaged (ValueError: tensor "),
    (lambda d: rewrite_header(d, lambda h: first_tensor(h).update(data_offsets=first_tensor(h)["data_offsets"][::-1])),
     "safetensors header is damaged (ValueError: tensor "),
])
def test_damaged_header_is_named(bundle, manifest, damage, message):
    if not manifest:
        (bundle / "unet" / MANIFEST).unlink()
    f = bundle / UNET
    data = f.read_bytes()
    f.write_bytes(damage(data))
    assert f.stat().st_size == len(data)
    [problem] = verify_bundle(bundle)
    assert problem.startswith(f"{UNET} {message}")
    with pytest.raises(BundleError, match="cannot load diffusion UNet: " + str(bundle / UNET)):
        load_bundle(bundle, device="cpu")


def test_missing_file_and_unreadable_manifest_are_named(bundle):
    (bundle / UNET).unlink()
    (bundle / "vae" / MANIFEST).write_text("{cut")
    unet, vae = verify_bundle(bundle)
    assert unet == f"{UNET} is missing"
    assert vae.startswith(f"vae/{MANIFEST} (the checksums recorded at save) is unreadable (Expecting")


def test_training_checkpoints_are_not_checked(bundle):
    (bundle / "training").mkdir(exist_ok=True)
    (bundle / "training" / "broken.safetensors").write_bytes(b"\x00" * 3)
    assert verify_bundle(bundle) == []


def test_old_bundle_without_manifests_gets_header_checks(bundle):
    for part in ("vae", "unet", "scheduler"):
        (bundle / part / MANIFEST).unlink()
    assert verify_bundle(bundle) == []
    assert "weights     sizes and safetensors headers checked (no checksums were recorded at save)" in summary(bundle)
    (bundle / UNET).write_bytes(b"\x01\x00")
    assert verify_part(bundle / "unet") == [f"{UNET} is too short to be a safetensors file (2 bytes)"]


def test_repair_hint_names_the_stage():
    assert "re-run `histodiff pretrain-autoencoder` to write vae/ again" in repair_hint(["vae"], {})
    both = repair_hint(["unet", "latent_classifier"], {"provenance": {"pretrained_from": "/pre"}})
    assert both.endswith("re-run `histodiff finetune` to write unet/, latent_classifier/ again")
    mixed = repair_hint(["vae", "unet"], {})
    assert "re-run `histodiff pretrain-autoencoder` and `histodiff pretrain` to write vae/, unet/ again" in mixed
    assert "`histodiff convert`" in repair_hint(["unet"], {"provenance": {"converted": {}}})


def test_an_edited_config_is_reported_as_changed(bundle):
    cfg = bundle / "unet" / "config.json"
    cfg.write_text(cfg.read_text().replace('"sample_size": 8', '"sample_size": 9'))
    assert verify_bundle(bundle) == [
        "unet/config.json was changed after saving: its checksum differs from the one recorded at save"]

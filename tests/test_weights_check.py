"""The check of a bundle's weights before a job uses them (issue 31, item 7): every sha256, with a cache of
files verified and unchanged since, so sampling again with the same model does not hash it again."""

import os
import shutil

import pytest

from napari_histodiff.core.formats import integrity
from napari_histodiff.core.formats.integrity import Verified, damaged_parts

UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture()
def bundle(trained_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = tmp_path / "b"
    shutil.copytree(trained_bundle, d)
    return d


@pytest.fixture()
def hashed(monkeypatch):
    """The files hashed, in order."""
    seen = []
    real = integrity.sha256_file

    def counting(path):
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(integrity, "sha256_file", counting)
    return seen


def test_a_file_verified_and_unchanged_is_not_hashed_again(bundle, hashed, tmp_path):
    assert damaged_parts(bundle) == {}
    first = len(hashed)
    assert first >= 4 and "diffusion_pytorch_model.safetensors" in hashed  # every recorded file hashed once
    assert (tmp_path / "cache" / "napari-histodiff" / "verified-weights.json").is_file()
    assert damaged_parts(bundle) == {} and len(hashed) == first  # the second check hashes nothing


def test_a_rewritten_file_is_hashed_again_even_with_its_old_times(bundle, hashed):
    assert damaged_parts(bundle) == {}
    f = bundle / UNET
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    hashed.clear()
    problems = damaged_parts(bundle)
    assert hashed == ["diffusion_pytorch_model.safetensors"]
    assert problems == {"unet": [f"{f} is corrupt: its checksum differs from the one recorded at save"]}
    assert damaged_parts(bundle) == problems  # a damaged file is never cached as verified


def test_an_unreadable_or_unwritable_cache_only_costs_hashing(bundle, tmp_path, hashed):
    cache = tmp_path / "cache" / "napari-histodiff" / "verified-weights.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert damaged_parts(bundle) == {} and hashed
    v = Verified(tmp_path / "a-file" / "sub" / "cache.json")
    (tmp_path / "a-file").write_text("")  # its folder cannot be made
    v.add(bundle / UNET, "0" * 64)
    v.save()  # no error


def test_the_cache_keeps_the_newest_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(Verified, "MOST", 3)
    v = Verified(tmp_path / "c.json")
    files = []
    for i in range(5):
        f = tmp_path / f"f{i}"
        f.write_text(str(i))
        files.append(f)
        v.add(f, f"h{i}")
    v.save()
    w = Verified(tmp_path / "c.json")
    assert [w.knows(f, f"h{i}") for i, f in enumerate(files)] == [False, False, True, True, True]

"""The `histodiff` command: exit code 2 with one clear line for bad input; outputs written whole."""

import subprocess
import sys

import numpy as np
import pytest

from napari_histodiff.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_tiles(folder, n=24, size=32, seed=0):
    import imageio.v3 as iio
    import skimage.data

    folder.mkdir(parents=True)
    img = skimage.data.immunohistochemistry()
    rng = np.random.default_rng(seed)
    for i in range(n):
        y, x = rng.integers(0, 512 - size, 2)
        iio.imwrite(folder / f"t{i:03d}.png", img[y : y + size, x : x + size])
    return folder


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "napari_histodiff", "--help"], capture_output=True, text=True).stdout
    for cmd in ("pretrain-autoencoder", "pretrain", "sample", "info", "demo"):
        assert cmd in out


def test_pretrain_sample_info_end_to_end(tmp_path, capsys):
    data = write_tiles(tmp_path / "tiles")
    b = tmp_path / "bundle"
    code, out, err = run(capsys, "pretrain", data, "--out", b, "--preset", "tiny", "--autoencoder-steps", 8,
                         "--steps", 8, "--device", "cpu")
    assert code == 0, err
    assert "bundle written" in out
    code, out, err = run(capsys, "info", b)
    assert code == 0 and "tiny" in out and "diffusion: 8 steps on 24 tiles" in out
    s = tmp_path / "samples"
    code, out, err = run(capsys, "sample", b, "-n", 3, "--steps", 4, "--out", s, "--device", "cpu")
    assert code == 0, err
    from napari_histodiff.core.formats.images import read_tile_record

    tifs = sorted((s / "unguided").glob("*.tif"))
    assert len(tifs) == 3 and (s / "contact_unguided.png").is_file() and (s / "samples.csv").is_file()
    assert read_tile_record(tifs[2])["index"] == 2
    # an existing output is refused, and left as it was
    before = sorted(p.name for p in s.iterdir())
    code, out, err = run(capsys, "sample", b, "-n", 1, "--out", s, "--device", "cpu")
    assert code == 2 and "--overwrite" in err and sorted(p.name for p in s.iterdir()) == before
    # resuming a finished run with more steps continues it
    code, out, err = run(capsys, "pretrain", data, "--out", b, "--resume", "--autoencoder-steps", 8,
                         "--steps", 10, "--device", "cpu")
    assert code == 0, err
    code, out, err = run(capsys, "info", b)
    assert "diffusion: 10 steps" in out


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "{tmp}/nope", "--out", "{tmp}/o"], "nope"),
    (["pretrain", "{tmp}/empty", "--out", "{tmp}/o"], "no image files"),
    (["pretrain", "{tmp}/tiles", "--out", "{tmp}/o", "--preset", "huge"], "unknown preset 'huge'"),
    (["pretrain", "{tmp}/tiles", "--out", "{tmp}/o", "--device", "cuda:3"], "not available"),
    (["pretrain", "{tmp}/tiles", "--out", "{tmp}/exists"], "never replaced"),
    (["pretrain", "{tmp}/tiles", "--out", "{tmp}/exists", "--overwrite"], "never replaced"),
    (["pretrain", "{tmp}/tiles", "--out", "{tmp}/exists", "--resume"], "never replaced"),
    (["pretrain", "{tmp}/tiles", "--out", "{tmp}/o", "--autoencoder-steps", "0"],
     "--autoencoder-steps must be at least 1"),
    (["sample", "{tmp}/tiles", "--out", "{tmp}/s"], "not a napari-histodiff bundle"),
    (["info", "{tmp}/nope"], "not a bundle folder"),
    (["pretrain", "{tmp}/big.png", "--out", "{tmp}/o", "--preset", "small"], "is larger than"),
    (["pretrain", "{tmp}/tiles", "{tmp}/big.png", "--out", "{tmp}/o", "--scale", "1", "0.5", "2"],
     "3 scales for 2 paths"),
])
def test_bad_input_exits_2_with_one_clear_line(tmp_path, capsys, argv, message):
    import imageio.v3 as iio

    write_tiles(tmp_path / "tiles", n=2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("precious")
    iio.imwrite(tmp_path / "big.png", np.full((40, 40, 3), 128, np.uint8))
    code, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("histodiff: error:") and message in lines[0], err
    assert (tmp_path / "exists" / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, err = run(capsys, "demo", "--quick", "--out", out_dir, "--device", "cpu")
    assert code == 0, err
    report = (out_dir / "report.md").read_text()
    assert "held-out reconstruction PSNR" in report
    assert (out_dir / "samples" / "contact_DAB-rich.png").is_file() and (out_dir / "real_DAB-rich.png").is_file()
    assert (out_dir / "augmentation-set" / "manifest.csv").is_file()
    from napari_histodiff import load_bundle

    assert load_bundle(out_dir / "finetuned", device="cpu").class_names == ["DAB-rich", "hematoxylin-rich"]


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        code, out, err = run(capsys, "demo", "--quick", "--out", tmp_path, "--device", "cpu", *extra)
        assert code == 2 and "never replaced" in err
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample"])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("histodiff: error:") and "--help" in lines[0]


def test_resume_below_checkpoint_step_is_refused(tmp_path, capsys):
    data = write_tiles(tmp_path / "tiles", n=8)
    b = tmp_path / "b"
    assert run(capsys, "pretrain-autoencoder", data, "--out", b, "--steps", 4, "--device", "cpu")[0] == 0
    code, out, err = run(capsys, "pretrain-autoencoder", data, "--out", b, "--steps", 2, "--resume", "--device", "cpu")
    assert code == 2 and "checkpoint is at step 4" in err and "--steps 4 or more" in err
    # a finished autoencoder under a trained UNet is not silently retrained
    assert run(capsys, "pretrain", data, "--out", b, "--resume", "--autoencoder-steps", 4, "--steps", 2,
               "--device", "cpu", "--microns-per-pixel", 0.5)[0] == 0
    import json

    meta = json.loads((b / "histodiff.json").read_text())
    assert meta["microns_per_pixel"] == 0.5
    scale = meta["latent_scale_factor"]
    code, out, err = run(capsys, "pretrain-autoencoder", data, "--out", b, "--steps", 6, "--resume", "--device", "cpu")
    assert code == 2 and "would invalidate it" in err
    assert json.loads((b / "vae" / "config.json").read_text())["scaling_factor"] == scale


def test_suggested_commands_quote_paths_with_spaces(tmp_path, capsys, monkeypatch):
    """The next command a message suggests runs as shown, also for a folder name with spaces and quotes."""
    import shlex
    from types import SimpleNamespace

    from napari_histodiff.core.generate.selection import missing_selection

    monkeypatch.chdir(tmp_path)
    data = write_tiles(tmp_path / "my tiles", n=8)
    b = tmp_path / "Tom's bundle"
    code, out, err = run(capsys, "pretrain", data, "--out", b, "--preset", "tiny", "--autoencoder-steps", 2,
                         "--steps", 2, "--device", "cpu")
    assert code == 0, err
    suggested = out.strip().rsplit("try: ", 1)[1]
    words = shlex.split(suggested)
    assert words == ["histodiff", "sample", str(b), "-n", "16", "--out", "samples"]
    code, out, err = run(capsys, *words[1:], "--steps", 2, "--device", "cpu")
    assert code == 0 and "16 tiles written to samples" in out, err
    half = SimpleNamespace(latent_classifier=object(), path=tmp_path / "a b")  # fine-tuning cut short
    text = missing_selection(half)
    words = shlex.split(text.split("`")[1])
    assert words[words.index("--out") + 1] == str(tmp_path / "a b") and words[-1] == "--resume"


def test_sample_and_select_refuse_weights_damaged_behind_an_intact_header(trained_bundle, tmp_path, capsys,
                                                                          monkeypatch):
    """Loading checks sizes and headers only; a job that uses the weights checks their sha256 first, as
    `histodiff info` does, and writes nothing (also when an earlier run verified the file: any write changes
    what the cache of verified files keys on)."""
    import os
    import shutil
    import struct

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    b = tmp_path / "b"
    shutil.copytree(trained_bundle, b)
    code, out, err = run(capsys, "sample", b, "-n", 1, "--steps", 2, "--out", tmp_path / "ok", "--device", "cpu")
    assert code == 0, err
    f = b / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    data[8 + n + (len(data) - 8 - n) // 2] ^= 0xFF  # inside the tensor data: header and size intact
    st = f.stat()
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # as bit rot: the same size and modification time
    code, out, err = run(capsys, "info", b)
    assert code == 2 and f"{f.relative_to(b)} is corrupt" in err
    damaged = f"the bundle {b} is damaged: {f} is corrupt: its checksum differs from the one recorded at save"
    code, out, err = run(capsys, "sample", b, "-n", 1, "--steps", 2, "--out", tmp_path / "s", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and damaged in err, err
    assert not (tmp_path / "s").exists()
    before = (tmp_path / "ok" / "samples.csv").read_bytes()
    code, out, err = run(capsys, "select", tmp_path / "ok", "--bundle", b)
    assert code == 2 and damaged in err
    assert (tmp_path / "ok" / "samples.csv").read_bytes() == before

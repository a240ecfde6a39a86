"""Two training processes under `accelerate launch` write one ordinary bundle."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import write_tiles


@pytest.mark.subprocess
def test_two_process_accelerate_run_writes_the_bundle(tmp_path):
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    from napari_histodiff.core.models.presets import tiny

    preset = tiny()
    preset.autoencoder.disc_start = 2  # exercise the GAN terms across processes too
    (tmp_path / "preset.json").write_text(preset.to_json())
    data = write_tiles(tmp_path / "tiles", n=24)
    out = tmp_path / "bundle"
    # accelerate's --cpu launcher starts one process unless MPI is configured; its torchrun
    # launcher (--multi_gpu) starts two, which our code runs on the CPU over gloo.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "napari_histodiff", "pretrain",
           str(data), "--out", str(out), "--preset", str(tmp_path / "preset.json"),
           "--autoencoder-steps", "4", "--steps", "4", "--batch-size", "4", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / "histodiff.json").read_text())
    assert meta["provenance"]["autoencoder"]["processes"] == 2
    assert meta["provenance"]["diffusion"]["processes"] == 2
    from napari_histodiff import load_bundle

    b = load_bundle(out, device="cpu")
    assert b.unet is not None and b.scale_factor > 0

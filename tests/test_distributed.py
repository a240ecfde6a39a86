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


@pytest.mark.subprocess
def test_two_process_finetune_has_one_writer(tmp_path):
    """Fine-tuning under a launcher: the main process alone copies the pre-trained parts and writes
    histodiff.json, the other waits; the bundle lists its files as ours and loads with its classes."""
    from napari_histodiff.core.base.owner import foreign, read_owner

    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    data = write_tiles(tmp_path / "tiles", n=24)
    base = tmp_path / "base"
    r = subprocess.run([sys.executable, "-m", "napari_histodiff", "pretrain", str(data), "--out", str(base),
                        "--preset", "tiny", "--autoencoder-steps", "2", "--steps", "2", "--batch-size", "4",
                        "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    labeled = tmp_path / "labeled"
    write_tiles(labeled / "a", n=8, seed=1)
    write_tiles(labeled / "b", n=8, seed=2)
    out = tmp_path / "finetuned"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "napari_histodiff", "finetune", str(base),
           "--labeled", str(labeled), "--out", str(out), "--classifier-steps", "2", "--selection-steps", "2",
           "--unet-steps", "2", "--selection-folds", "2", "--min-tiles-per-class", "4", "--batch-size", "4",
           "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from napari_histodiff import load_bundle

    b = load_bundle(out, device="cpu")
    assert b.class_names == ["a", "b"] and b.latent_classifier is not None
    assert read_owner(out)["kind"] == "bundle" and foreign(out) == []


def write_shards(folder: Path, shards: int = 4, per_shard: int = 6, size: int = 32) -> Path:
    """Tar shards as `histodiff tiles --shard-size` writes them: KEY.png + KEY.json per tile."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(shards):
        with tarfile.open(folder / f"shard-{k:06d}.tar", "w") as tar:
            for i in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
                for name, data in ((f"s{k}_t{i}.png", buf.getvalue()), (f"s{k}_t{i}.json", b'{"class": ""}')):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def test_each_process_reads_its_own_shards(tmp_path):
    import numpy as np

    from napari_histodiff.core.data.opening import open_tiles
    from napari_histodiff.core.train.loop import BatchStream

    tiles = open_tiles([write_shards(tmp_path / "shards")], 32)
    groups = tiles.groups()
    seen = []
    for rank in (0, 1):
        stream = BatchStream(tiles, np.arange(len(tiles)), 4, seed=0, rank=rank, world=2)
        read = np.concatenate([stream.positions(step) for step in range(30)])
        assert set(groups[read]) == {rank, rank + 2}  # shards 0, 2 on process 0; 1, 3 on process 1
        seen.append(set(read.tolist()))
    assert seen[0] | seen[1] == set(range(len(tiles))) and not seen[0] & seen[1]
    labelled = BatchStream(tiles, np.arange(len(tiles)), 4, seed=0, rank=0, world=2, labels=np.zeros(len(tiles)))
    assert not labelled.own  # classifiers keep interleaved batches over every tile


@pytest.mark.subprocess
def test_two_processes_pretrain_on_shards(tmp_path):
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    data = write_shards(tmp_path / "shards")
    out = tmp_path / "bundle"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "napari_histodiff", "pretrain",
           str(data), "--out", str(out), "--preset", "tiny", "--autoencoder-steps", "3", "--steps", "3",
           "--batch-size", "4", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / "histodiff.json").read_text())
    assert meta["provenance"]["diffusion"]["processes"] == 2 and "4 tar shard(s)" in meta["provenance"]["diffusion"]["data"]

"""Fault injection: a job killed (SIGKILL) at a seeded random step, then resumed, gives the result of
an uninterrupted run, bit for bit (tiny preset, CPU, one thread, every run in its own process).

One point per stage by default; `pytest -m slow tests/test_faults.py` tries 5 points per stage.
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_histodiff.core.base.owner import MARKER

CHILD = Path(__file__).with_name("fault_child.py")
STEPS = {"autoencoder": 24, "diffusion": 24, "finetune_unet": 12, "finetune_decoder": 12,
         "latent_classifier": 24, "selection_classifier": 24}
COMMANDS = {  # folder -> command line, run from the work folder (relative paths: outputs compare whole)
    "ae": ["pretrain-autoencoder", "unlabeled", "--out", "ae", "--steps", "24", "--ae-checkpoint-every", "5"],
    "pre": ["pretrain", "unlabeled", "--autoencoder", "ae", "--out", "pre", "--steps", "24",
            "--checkpoint-every", "5"],
    "ft": ["finetune", "pre", "--labeled", "labeled", "--out", "ft", "--unet-steps", "12", "--decoder-steps", "12",
           "--classifier-steps", "24", "--selection-steps", "24", "--checkpoint-every", "5"],
    "samples": ["sample", "ft", "--per-class", "6", "--steps", "6", "--batch-size", "4", "--out", "samples"],
    "export": ["export", "samples", "--all", "--out", "export"],
}
STAGE_OF = {"autoencoder": "ae", "diffusion": "pre", "finetune_unet": "ft", "finetune_decoder": "ft",
            "latent_classifier": "ft", "selection_classifier": "ft", "sample": "samples", "export": "export"}
NEEDS = {"ae": [], "pre": ["ae"], "ft": ["pre"], "samples": ["ft"], "export": ["samples"]}
RESUME = {"ae": ["--resume"], "pre": ["--resume"], "ft": ["--resume"], "samples": [], "export": []}


def run(work: Path, args, kill=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(CHILD)] + (["--kill", f"{kill[0]}:{kill[1]}"] if kill else []) + ["--", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)


def digests(folder: Path) -> dict:
    """sha256 of every file a user keeps (weights, tiles, tables), by relative path; training/ and the
    JSON records (absolute paths, timings) are compared separately."""
    out = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if f.is_file() and rel.parts[0] != "training" and f.suffix != ".json":
            out[rel.as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def metrics(folder: Path) -> dict:
    meta = folder / "histodiff.json"
    return json.loads(meta.read_text()).get("metrics", {}) if meta.is_file() else {}


def hidden_leftovers(work: Path) -> list[str]:
    """Temporary files and folders (hidden names) anywhere in the work folder (the ownership record is no
    leftover: every output folder keeps one)."""
    return sorted(p.relative_to(work).as_posix() for p in work.rglob(".*") if p.name != MARKER)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ihc_tiles, labeled_tiles):
    """Input folders and every stage's output from uninterrupted runs."""
    from PIL import Image

    work = tmp_path_factory.mktemp("faults") / "ref"
    (work / "unlabeled").mkdir(parents=True)
    for i in range(48):
        Image.fromarray(ihc_tiles[i * (len(ihc_tiles) // 48)]).save(work / "unlabeled" / f"t{i:03d}.png")
    for i in range(len(labeled_tiles)):
        name = labeled_tiles.class_names[labeled_tiles.label(i)]
        (work / "labeled" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(labeled_tiles[i]).save(work / "labeled" / name / f"{i:03d}.png")
    for folder, args in COMMANDS.items():
        done = run(work, args)
        assert done.returncode == 0, done.stderr[-3000:]
    return work


def killed_and_resumed(reference: Path, tmp_path: Path, stage: str, point: int) -> Path:
    """Copy the inputs of ``stage``'s job, kill the job at a seeded random step, resume it; the work folder."""
    folder = STAGE_OF[stage]
    work = tmp_path / "work"
    work.mkdir()
    for name in ("unlabeled", "labeled", *NEEDS[folder]):
        shutil.copytree(reference / name, work / name)
    total = STEPS.get(stage) or {"sample": 12, "export": len(list((reference / "export").rglob("*.tif")))}[stage]
    step = random.Random(f"{stage}-{point}").randint(1, total - 1)
    killed = run(work, COMMANDS[folder], kill=(stage, step))
    assert killed.returncode == -9, f"not killed at {stage} step {step}: {killed.stderr[-2000:]}"
    resumed = run(work, COMMANDS[folder] + RESUME[folder])
    assert resumed.returncode == 0, f"{stage} killed at step {step} did not resume: {resumed.stderr[-3000:]}"
    return work / folder


def check_same(reference: Path, out: Path, folder: str) -> None:
    want, got = digests(reference / folder), digests(out)
    assert want and got == want, f"differs: {sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))}"
    assert metrics(out) == metrics(reference / folder)
    assert hidden_leftovers(out.parent) == []  # no temporary folder of the killed run is left


@pytest.mark.parametrize("stage", list(STAGE_OF))
def test_killed_anywhere_resumes_to_the_same_result(reference, tmp_path, stage):
    out = killed_and_resumed(reference, tmp_path, stage, 0)
    check_same(reference, out, STAGE_OF[stage])


@pytest.mark.slow
@pytest.mark.parametrize("point", range(1, 5))
@pytest.mark.parametrize("stage", list(STAGE_OF))
def test_killed_at_more_points(reference, tmp_path, stage, point):
    out = killed_and_resumed(reference, tmp_path, stage, point)
    check_same(reference, out, STAGE_OF[stage])


# -- faults inside a save (in this process: the straight run and the faulty one share its threads) -----

def _ae(tiles, out, preset, steps, **kw):
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder

    return train_autoencoder(tiles, out, preset, AutoencoderOptions(steps=steps, device="cpu", checkpoint_every=4, **kw))


def _weights(bundle: Path) -> str:
    return hashlib.sha256((bundle / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()


def _drain(gen, stop_after=None) -> list:
    events = []
    for event in gen:
        events.append(event)
        if stop_after is not None and event.stage != "warning" and event.step >= stop_after:
            gen.close()
            break
    return events


@pytest.fixture(scope="module")
def straight(tmp_path_factory, ihc_tiles):
    from napari_histodiff.core.models.presets import tiny

    out = tmp_path_factory.mktemp("straight") / "b"
    _drain(_ae(ihc_tiles, out, tiny(), 12))
    return _weights(out)


def _failing_after(monkeypatch, module, name, calls: int, error, folder=False):
    """Make ``module.name`` raise ``error`` on call number ``calls``, after writing part of its file
    (or, ``folder``, one half-written file in its folder)."""
    real = getattr(module, name)
    count = {"n": 0}

    def faulty(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            target = next((Path(a) for a in args if isinstance(a, (str, Path))), None)
            if target is not None and not folder:
                target.write_bytes(b"partial")
            elif target is not None:
                target.mkdir(parents=True, exist_ok=True)
                (target / "diffusion_pytorch_model.safetensors").write_bytes(b"partial")
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, faulty)


@pytest.mark.parametrize("fault", ["disk full", "exception"])
def test_a_fault_during_a_checkpoint_write_keeps_the_previous_one(monkeypatch, tmp_path, ihc_tiles, straight, fault):
    import errno

    import safetensors.torch
    import torch

    from napari_histodiff.core.base.errors import HistodiffError
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.loop import checkpoints

    out = tmp_path / "b"
    if fault == "disk full":  # the second checkpoint's first weights file: the disk is full
        _failing_after(monkeypatch, safetensors.torch, "save_model", 3, OSError(errno.ENOSPC, "No space left on device"))
        expected = (HistodiffError, "no space left on the disk")
    else:  # the second checkpoint's optimiser state: an error in the middle of the save
        _failing_after(monkeypatch, torch, "save", 2, RuntimeError("injected"))
        expected = (RuntimeError, "injected")
    with pytest.raises(expected[0], match=expected[1]):
        _drain(_ae(ihc_tiles, out, tiny(), 12))
    monkeypatch.undo()
    ckpt = out / "training" / "autoencoder"
    assert [p.name for p in checkpoints(ckpt)] == ["step-00000004"]  # the good one, nothing half-written
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-00000004"]
    events = _drain(_ae(ihc_tiles, out, tiny(), 12))
    assert events[0].step == 5 and _weights(out) == straight


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, ihc_tiles, straight):
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.loop import checkpoints

    out = tmp_path / "b"
    _drain(_ae(ihc_tiles, out, tiny(), 12), stop_after=10)  # checkpoints at 4, 8, and 10 on the way out
    newest, previous = checkpoints(out / "training" / "autoencoder")
    assert (newest.name, previous.name) == ("step-00000010", "step-00000008")
    weights = newest / "vae.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    events = _drain(_ae(ihc_tiles, out, tiny(), 12))
    warnings = [e.message for e in events if e.stage == "warning"]
    assert len(warnings) == 1 and "step-00000010" in warnings[0] and "vae.safetensors" in warnings[0]
    assert "step 8" in warnings[0]
    assert [e.step for e in events if e.stage != "warning"][0] == 9 and _weights(out) == straight


def test_a_flipped_byte_is_caught_by_the_checksum(tmp_path, ihc_tiles, straight):
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.loop import checkpoints

    out = tmp_path / "b"
    _drain(_ae(ihc_tiles, out, tiny(), 12), stop_after=8)
    newest = checkpoints(out / "training" / "autoencoder")[0]
    data = bytearray((newest / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (newest / "state.pt").write_bytes(bytes(data))
    events = _drain(_ae(ihc_tiles, out, tiny(), 12))
    assert any("checksum" in e.message for e in events if e.stage == "warning")
    assert _weights(out) == straight
    assert np.isfinite([e.loss for e in events if e.loss is not None]).all()


def test_disk_full_during_the_final_bundle_write(monkeypatch, tmp_path, ihc_tiles, capsys):
    import errno

    from diffusers import ModelMixin
    from PIL import Image

    from napari_histodiff.cli import main

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for i in range(24):
        Image.fromarray(ihc_tiles[i]).save(tiles / f"{i:03d}.png")
    args = ["pretrain-autoencoder", str(tiles), "--steps", "8", "--ae-checkpoint-every", "4", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "straight")]) == 0
    full = OSError(errno.ENOSPC, "No space left on device", "vae/diffusion_pytorch_model.safetensors")
    _failing_after(monkeypatch, ModelMixin, "save_pretrained", 1, full, folder=True)
    out = tmp_path / "b"
    capsys.readouterr()
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith("histodiff: error: no space left on the disk mounted at ")
    assert f"while writing {out / 'vae'} " in line and " needed, " in line and " free)" in line
    assert line.endswith("run the same command again with --resume (finished checkpoints are kept)")
    assert not (out / "vae").exists()
    monkeypatch.undo()
    assert main(args + ["--out", str(out), "--resume"]) == 0
    assert _weights(out) == _weights(tmp_path / "straight")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["histodiff.json", "training", "vae"]
    assert not [p.name for p in out.iterdir() if any(t in p.name for t in (".tmp", ".partial", ".old"))]

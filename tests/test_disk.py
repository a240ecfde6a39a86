"""Bounded by the disk: a job whose output cannot fit is refused before it writes, naming the space needed
and free; a disk that fills during a job (ENOSPC at any write, or what torch, safetensors and shutil make
of it) ends in one line (exit 2) naming the disk, the space needed and free, with a fix that suggests only
an intent the command accepts, and nothing half-written blocks the rerun."""

import errno
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_histodiff.cli import main
from napari_histodiff.core.base import disk
from napari_histodiff.core.base.disk import DiskFull, check_free_space, is_disk_full
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.formats.records import read_records, write_records

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _leftovers(folder: Path) -> list[str]:
    """Hidden temporaries (``.NAME.partial-PID``, ``.NAME.tmp``) anywhere under ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*")
                  if any(t in p.name for t in (".partial", ".tmp", ".old")))


def _failing(monkeypatch, owner, name, after: int, error, when=lambda *a, **k: True):
    """``owner.name`` raises ``error`` on its call number ``after`` among the calls where ``when`` holds."""
    real = getattr(owner, name)
    count = {"n": 0}

    def faulty(*args, **kwargs):
        if when(*args, **kwargs):
            count["n"] += 1
            if count["n"] == after:
                raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, faulty)
    return count


# -- the estimate, before anything is written ------------------------------------------------------

def test_check_free_space_refuses_naming_the_disk_needed_and_free(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    target = tmp_path / "not" / "yet" / "there"
    check_free_space(target, free // 2, "half the disk")  # fits: nothing said
    with pytest.raises(HistodiffError) as info:
        check_free_space(target, free + 2**40, "a lot of tiles")
    text = str(info.value)
    assert text.startswith(f"not enough space for a lot of tiles in {target}: it needs about ")
    assert disk.size_text(free + 2**40) in text and f"mounted at {disk.mount_point(tmp_path)} has " in text
    assert "free; free some space or write to another disk (out)" in text and not target.parent.parent.exists()


def test_tile_bytes():
    assert disk.tile_bytes(256, "tif") == 256 * 256 * 3 + disk.TILE_OVERHEAD
    assert disk.tile_bytes(256, "png") < disk.tile_bytes(256, "tif")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A tiny untrained bundle folder (sampling it makes noise tiles, quickly)."""
    from napari_histodiff.core.formats.bundle import Bundle, new_meta, save_bundle
    from napari_histodiff.core.models.presets import tiny

    p = tiny()
    out = tmp_path_factory.mktemp("untrained") / "bundle"
    meta = {**new_meta(p), "latent_scale_factor": 1.0}
    save_bundle(Bundle(vae=p.build_vae(), unet=p.build_unet(), scheduler=p.build_scheduler(), meta=meta), out)
    return out


def test_sample_of_a_billion_tiles_is_refused_before_it_writes(untrained, tmp_path, capsys):
    import tracemalloc

    out = tmp_path / "many"
    tracemalloc.start()
    code = main(["sample", str(untrained), "-n", "1000000000", "--out", str(out), "--device", "cpu"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    line = _one_line(capsys)
    assert code == 2
    need = disk.size_text(10**9 * disk.tile_bytes(32))
    assert line.startswith(f"histodiff: error: not enough space for 1000000000 tiles of 32 px in {out}: it needs "
                           f"about {need} and the disk mounted at ")
    assert " free; free some space, write to another disk (--out) or ask for fewer tiles (-n)" in line
    assert not out.exists() and _leftovers(tmp_path) == []
    assert peak < 200e6, f"{peak / 1e6:.0f} MB traced"  # no list of 10^9 anything (that is 8 GB)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from slide_data import write_slide

    path = tmp_path_factory.mktemp("slide") / "case.tif"
    return write_slide(path, 1024, 1024, [(0, 0, 1024, 1024, (200, 120, 170))], mpp=0.5, levels=1)


def test_tiles_refused_when_the_disk_cannot_hold_them(slide, tmp_path, capsys, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: usage._replace(free=100_000))
    out = tmp_path / "tiles"
    assert main(["tiles", str(slide), "--tile-size", "64", "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"histodiff: error: not enough space for 256 tiles of 64 px in {out}: it needs about ")
    assert "97.7 KiB free" in line and not out.exists()


# -- a disk that fills during a job ------------------------------------------------------------------

def test_what_libraries_make_of_a_full_disk_is_recognised():
    torch_text = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"  # torch.save, ENOSPC
    safetensors_text = "Error while serializing: I/O error: No space left on device (os error 28)"
    copy = shutil.Error([("/a/x", "/b/x", "[Errno 28] No space left on device: '/a/x' -> '/b/x'")])
    assert is_disk_full(RuntimeError(torch_text)) and is_disk_full(Exception(safetensors_text))
    assert is_disk_full(copy) and disk.written_path(copy) == "/b/x"
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")) and is_disk_full(ENOSPC)
    assert not is_disk_full(RuntimeError("shapes do not match")) and not is_disk_full(OSError(errno.EACCES, "no"))
    assert not is_disk_full(HistodiffError("no space left on device, says the user"))


def test_the_fix_suggests_only_an_intent_the_command_accepts(tmp_path):
    from napari_histodiff.core.generate.sampling import SampleOptions
    from napari_histodiff.core.train.finetune import FinetuneOptions

    full = DiskFull.build(tmp_path / "x.tif", 3 * 2**20)
    for opts, resume in ((SampleOptions(), False), (FinetuneOptions(), True)):
        text = full.for_job("sample", disk.job_intents(opts)).raw
        assert text.startswith(f"no space left on the disk mounted at {disk.mount_point(tmp_path)} while writing "
                               f"{tmp_path / 'x.tif'} during sample (about 3.0 MiB needed, ")
        assert ("resume" in text) is resume
    again = pickle.loads(pickle.dumps(full.for_job("sample", ("new", "overwrite"))))  # napari's job process
    assert str(again) == str(full.for_job("sample", ("new", "overwrite"))) and again.needed == 3 * 2**20


def test_disk_full_while_sampling_keeps_the_earlier_folder_and_the_rerun_works(untrained, tmp_path, capsys,
                                                                               monkeypatch):
    from napari_histodiff.core.generate import sample_set

    out = tmp_path / "s"
    args = ["sample", str(untrained), "-n", "6", "--steps", "2", "--batch-size", "2", "--out", str(out),
            "--device", "cpu"]
    assert main(args) == 0
    before = (out / "samples.csv").read_bytes()
    _failing(monkeypatch, sample_set, "write_tile", 3, OSError(errno.ENOSPC, "No space left on device", "x.tif"))
    capsys.readouterr()
    assert main(args + ["--overwrite", "--seed", "1"]) == 2
    line = _one_line(capsys)
    assert line.startswith("histodiff: error: no space left on the disk mounted at ") and "during sample" in line
    assert f"(about {disk.size_text(6 * disk.tile_bytes(32))} needed, " in line  # the job's estimate
    assert line.endswith("free some space, then run the same command again (earlier outputs were left as they were)")
    assert "resume" not in line
    assert (out / "samples.csv").read_bytes() == before and _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert main(args + ["--overwrite", "--seed", "1"]) == 0
    assert (out / "samples.csv").read_bytes() != before


def test_disk_full_while_tiling_leaves_nothing_and_the_rerun_works(slide, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tiles"
    args = ["tiles", str(slide), "--tile-size", "64", "--out", str(out)]
    _failing(monkeypatch, Path, "write_bytes", 5, ENOSPC)
    assert main(args) == 2
    line = _one_line(capsys)
    assert line.startswith("histodiff: error: no space left on the disk mounted at ")  # found from the estimate
    assert f"(about {disk.size_text(256 * disk.tile_bytes(64, 'png'))} needed, " in line and "resume" not in line
    assert not out.exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert main(args) == 0 and len(list(out.glob("*.png"))) == 256


def test_disk_full_while_exporting_suggests_no_intent_the_command_rejects(untrained, tmp_path, capsys, monkeypatch):
    from napari_histodiff.core.generate import export

    samples = tmp_path / "s"
    assert main(["sample", str(untrained), "-n", "4", "--steps", "2", "--out", str(samples), "--device", "cpu"]) == 0
    records = read_records(samples)
    for r in records:
        r.kept, r.predicted_class = True, "A"  # as a review would
    write_records(samples / "samples.csv", records)
    out = tmp_path / "e"
    _failing(monkeypatch, export, "_write", 2, OSError(errno.ENOSPC, "No space left on device", "x.png"))
    capsys.readouterr()
    assert main(["export", str(samples), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert line.startswith("histodiff: error: no space left on the disk") and "during export" in line
    assert "resume" not in line and line.endswith("(earlier outputs were left as they were)")
    assert not out.exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert main(["export", str(samples), "--out", str(out)]) == 0


# -- fine-tuning: the copy, the checkpoints, the bundle parts, the latent cache ----------------------

TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def _safetensors_full():
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.fixture(scope="module")
def labeled_folder(tmp_path_factory, labeled_tiles):
    from PIL import Image

    root = tmp_path_factory.mktemp("labeled") / "labeled"
    for i in range(len(labeled_tiles)):
        name = labeled_tiles.class_names[labeled_tiles.label(i)]
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(labeled_tiles[i]).save(root / name / f"{i:03d}.png")
    return root


def _copy_full(monkeypatch):
    real = shutil.copytree

    def faulty(src, dst, *args, **kwargs):
        if Path(src).name == "unet":  # a part copied half, then the disk is full
            Path(dst).mkdir(parents=True, exist_ok=True)
            (Path(dst) / "config.json").write_text("{")
            raise shutil.Error([(str(src), str(dst), f"[Errno 28] No space left on device: '{src}' -> '{dst}'")])
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", faulty)


def _checkpoint_full(monkeypatch):
    import torch

    _failing(monkeypatch, torch, "save", 2, TORCH_FULL)


def _part_full(monkeypatch):
    import safetensors.torch

    _failing(monkeypatch, safetensors.torch, "save_file", 1, _safetensors_full(),
             when=lambda tensors, filename, *a, **k: ".latent_classifier.tmp" in str(filename))


FINETUNE_FAULTS = {"copy": _copy_full, "checkpoint": _checkpoint_full, "bundle part": _part_full}
WRITING = {"copy": "while writing {out}/unet ", "checkpoint": "while writing the checkpoint {out}/training/",
           "bundle part": "while writing {out}/latent_classifier during latent_classifier "}


@pytest.mark.parametrize("fault", list(FINETUNE_FAULTS))
def test_disk_full_while_fine_tuning_is_one_line_and_resume_finishes(trained_bundle, labeled_folder, tmp_path, capsys,
                                                                    monkeypatch, fault):
    out = tmp_path / "ft"
    args = ["finetune", str(trained_bundle), "--labeled", str(labeled_folder), "--out", str(out),
            "--finetune-unet-steps", "2", "--classifier-steps", "3", "--selection-steps", "3",
            "--checkpoint-every", "1", "--device", "cpu"]
    FINETUNE_FAULTS[fault](monkeypatch)
    assert main(args) == 2
    line = _one_line(capsys)
    assert line.startswith("histodiff: error: no space left on the disk mounted at ")
    assert WRITING[fault].format(out=out) in line, line
    assert " needed, " in line or fault == "copy"  # a copy does not say how much it needed
    assert line.endswith("free); free some space, then run the same command again with --resume (finished "
                         "checkpoints are kept)")
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert main(args + ["--resume"]) == 0, capsys.readouterr().err[-2000:]
    assert (out / "latent_classifier").is_dir() and (out / "selection_classifier").is_dir()


def test_a_latent_cache_that_cannot_be_reserved_is_named_and_removed(tmp_path, monkeypatch):
    from napari_histodiff.core.train.latents import LatentCache

    folder = tmp_path / "training" / "latents-rank0"
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, n: (_ for _ in ()).throw(ENOSPC), raising=False)
    with pytest.raises(DiskFull) as info:
        LatentCache(np.arange(10), (3, 8, 8), folder)
    assert f"while writing the latent cache {folder} " in str(info.value)
    assert f"about {disk.size_text(10 * 8 * 2 * 192 * 4)} needed" in str(info.value)
    assert not folder.exists()


SMALL_DISK = """
import sys
import numpy as np
from napari_histodiff.core.base import disk
from napari_histodiff.core.train.latents import LatentCache
if sys.argv[2] == "no-check":  # as if the free space had been taken after the check
    disk.free_bytes = lambda path: 1 << 40
try:
    cache = LatentCache(np.arange(2048), (3, 16, 16), sys.argv[1])  # 100 MiB on a 1 MiB disk
    cache.write(0, *(np.ones((2048, 8, 3, 16, 16), np.float32),) * 2)
    print("written")
except disk.DiskFull as e:
    print(e)
"""


@pytest.mark.parametrize("check", ["check", "no-check"])
def test_a_latent_cache_on_a_small_real_disk_is_named_not_a_crash(tmp_path, check):
    """On a 1 MiB tmpfs (a user namespace, where the platform allows): a memory map written on a full disk
    kills the process with SIGBUS; the cache reserves its space first and names the disk."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces to mount a small tmpfs in")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = tmp_path / "small_disk.py"
    script.write_text(SMALL_DISK)
    shell = (f"mount -t tmpfs -o size=1m none {mnt} && {sys.executable} {script} {mnt / 'cache'} {check}; "
             f"code=$?; ls -A {mnt}; exit $code")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"no space left on the disk mounted at {mnt} while writing the latent cache ")
    assert "(about 96.0 MiB needed, " in lines[0] and len(lines) == 1  # and the mount is empty again


SMALL_DISK_FINETUNE = """
mount -t tmpfs -o size={size} none {mnt} || exit 90
{python} -m napari_histodiff {args} > /dev/null 2> {mnt}.err1; echo "first $?"
mount -o remount,size=200m {mnt} || exit 91
{python} -m napari_histodiff {args} --resume > /dev/null 2> {mnt}.err2; echo "resume $?"
ls -A {mnt}/ft
"""


@pytest.mark.slow  # about a minute each; the injected faults above run in every suite
@pytest.mark.parametrize("size", ["3m", "20m"])  # the copy of the model / a checkpoint fills it
def test_fine_tuning_on_a_small_real_disk_ends_in_one_line_and_resumes(trained_bundle, labeled_folder, tmp_path,
                                                                       size):
    """What torch, safetensors and shutil raise on a real full disk (a tmpfs in a user namespace)."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces to mount a small tmpfs in")
    mnt = tmp_path / "small"
    mnt.mkdir()
    args = (f"finetune {trained_bundle} --labeled {labeled_folder} --out {mnt / 'ft'} --finetune-unet-steps 4 "
            "--classifier-steps 6 --selection-steps 6 --checkpoint-every 2 --device cpu")
    shell = SMALL_DISK_FINETUNE.format(size=size, mnt=mnt, python=sys.executable, args=args)
    done = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = done.stdout.split()
    err = Path(f"{mnt}.err1").read_text(errors="replace")
    assert lines[:4] == ["first", "2", "resume", "0"], (done.stdout, done.stderr, err[-2000:],
                                                       Path(f"{mnt}.err2").read_text(errors="replace")[-2000:])
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"histodiff: error: no space left on the disk mounted at {mnt} while writing ")
    assert f" {mnt / 'ft'}/" in line  # the part or checkpoint being written
    assert line.endswith("free); free some space, then run the same command again with --resume (finished "
                         "checkpoints are kept)")
    assert {"vae", "unet", "latent_classifier", "selection_classifier", "histodiff.json"} <= set(lines[4:])

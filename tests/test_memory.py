"""Out of memory becomes one plain error naming the stage, the size and the fix (CLI and napari)."""

import subprocess
import sys

import numpy as np
import pytest

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import Progress, run_to_end, warning
from napari_histodiff.core.base.memory import OutOfMemory, guard_memory, requested_size


def numpy_oom_job(opts=None, **inputs):
    yield Progress("finetune_unet", 1, 10)
    yield warning("a note")  # not a stage
    np.empty((1 << 44,), dtype=np.uint8)  # numpy refuses 16 TiB without allocating it
    yield Progress("finetune_unet", 2, 10)


def test_numpy_out_of_memory_names_stage_size_and_fix():
    events = []
    with pytest.raises(OutOfMemory) as info:
        run_to_end(guard_memory(numpy_oom_job()), events.append)
    text = str(info.value)
    assert isinstance(info.value, HistodiffError) and "\n" not in text
    assert "during finetune_unet" in text and "16.0 TiB" in text and "host memory" in text
    assert "batch_size" in text and "device" in text
    assert [e.stage for e in events] == ["finetune_unet", "warning"]
    # the error is raised outside the handler: the failed frames (and their arrays) are not kept
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_cuda_out_of_memory_is_named_and_frees_the_cache(monkeypatch):
    torch = pytest.importorskip("torch")
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def job():
        yield Progress("sample", 3, 50)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total "
                                     "capacity; 77.0 GiB already allocated)")

    with pytest.raises(OutOfMemory) as info:
        run_to_end(guard_memory(job(), ["device"]))
    text = str(info.value)
    assert "during sample" in text and "2.00 GiB of GPU memory" in text and "device" in text
    assert "batch_size" not in text  # a job without that option is not told to change it
    assert emptied == [True]


def test_torch_host_allocation_failure_is_named():
    torch = pytest.importorskip("torch")

    def job():
        yield Progress("pretrain", 1, 2)
        torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: refused at once

    with pytest.raises(OutOfMemory, match=r"during pretrain \(it tried to allocate 1\.0 PiB of host memory\)"):
        run_to_end(guard_memory(job()))


def test_other_errors_results_and_closing_pass_through():
    def failing():
        yield Progress("x", 1, 1)
        raise RuntimeError("shapes do not match")

    with pytest.raises(RuntimeError, match="shapes do not match"):
        run_to_end(guard_memory(failing()))

    closed = []

    def job():
        try:
            yield Progress("x", 1, 2)
            yield Progress("x", 2, 2)
        finally:
            closed.append(True)
        return {"message": "done"}

    assert run_to_end(guard_memory(job())) == {"message": "done"}
    gen = guard_memory(job())
    next(gen)
    closed.clear()
    gen.close()  # a stopped job runs its clean-up
    assert closed == [True]


@pytest.mark.parametrize("text, size", [
    ("Unable to allocate 26.8 GiB for an array with shape (1, 2) and data type float32", "26.8 GiB"),
    ("CUDA out of memory. Tried to allocate 512.00 MiB (GPU 0)", "512.00 MiB"),
    ("DefaultCPUAllocator: not enough memory: you tried to allocate 3221225472 bytes.", "3.0 GiB"),
    ("CUDA out of memory.", None),
])
def test_requested_size_is_read_from_the_message(text, size):
    assert requested_size(text) == size


def test_memory_module_does_not_import_torch():
    code = "import sys, napari_histodiff.core.base.memory; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_prints_one_line_and_exits_2_on_out_of_memory(tmp_path, capsys, monkeypatch):
    from napari_histodiff.cli import main
    from napari_histodiff.core.jobs import sample

    monkeypatch.setattr(sample, "sample", numpy_oom_job)
    code = main(["sample", str(tmp_path / "bundle"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2
    assert lines[-1].startswith("histodiff: error: out of memory during finetune_unet")
    assert "16.0 TiB" in lines[-1] and "--batch-size" in lines[-1] and "--device" in lines[-1]
    assert "Traceback" not in err


def test_napari_worker_turns_out_of_memory_into_one_plain_message():
    pytest.importorskip("qtpy")
    from napari_histodiff.core.generate.sampling import SampleOptions
    from napari_histodiff.widgets._common import _stoppable, plain_message

    gen = _stoppable({"stop": False}, numpy_oom_job, SampleOptions())
    assert [next(gen).stage, next(gen).stage] == ["finetune_unet", "warning"]
    with pytest.raises(OutOfMemory) as info:
        next(gen)
    text = plain_message(info.value, {"batch_size": "tiles denoised at once"})
    assert "\n" not in text
    assert '"tiles denoised at once"' in text and "16.0 TiB" in text and "finetune_unet" in text


# -- memory bounded by the batch, whatever -n ------------------------------------------------------

def _untrained_bundle():
    from napari_histodiff.core.formats.bundle import Bundle, new_meta
    from napari_histodiff.core.models.presets import tiny

    p = tiny()
    return Bundle(vae=p.build_vae(), unet=p.build_unet(), scheduler=p.build_scheduler(), meta=new_meta(p))


def _first_event_peak(bundle, n, sources=None, **kw):
    """Bytes traced (peak) from starting a sampling run of ``n`` tiles to its first progress event."""
    import tracemalloc

    from napari_histodiff.core.generate.sampling import SampleOptions, sample_tiles

    opts = SampleOptions(n=n, steps=2, batch_size=2, guidance=0.0, device="cpu", **kw)
    tracemalloc.start()
    try:
        gen = sample_tiles(bundle, opts, sources)
        event = next(gen)
        peak = tracemalloc.get_traced_memory()[1]
        gen.close()
    finally:
        tracemalloc.stop()
    assert event.stage == "sample" and event.step == 1
    return peak


class _Sources:
    """A labelled tile set of 6 tiles in 2 classes (what ``plan_variations`` reads)."""

    class_names = ["A", "B"]
    description = "six tiles"

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return np.full((32, 32, 3), 40 * i, np.uint8)

    def label(self, i):
        return i % 2

    def origin(self, i):
        return f"tile{i}"


@pytest.mark.parametrize("kw", [{}, {"classes": ["x", "y", "z"]}, {"sources": True}], ids=["unguided", "classes", "variations"])
def test_a_billion_tiles_take_the_memory_of_a_thousand_before_the_first_tile(kw):
    bundle = _untrained_bundle()
    bundle.meta["class_names"] = ["x", "y", "z"]
    sources = _Sources() if kw.get("sources") else None
    extra = {"strength": 0.5} if sources is not None else {k: v for k, v in kw.items()}
    small = _first_event_peak(bundle, 1000, sources, **extra)
    huge = _first_event_peak(bundle, 10**9, sources, **extra)
    # the list plan took 8 GB for 10^9 tiles (a pointer each); the lazy plan does not grow with n
    assert huge < small + 1_000_000, f"{huge / 1e6:.1f} MB traced for 10^9 tiles, {small / 1e6:.1f} MB for 10^3"


def test_the_lazy_plan_says_what_the_list_said():
    from napari_histodiff.core.generate.sampling import SampleOptions, plan_variations

    plan = SampleOptions(n=3, classes=["A", "B"]).plan()
    assert list(plan) == ["A", "A", "A", "B", "B", "B"] and plan[-1] == "B" and len(plan) == 6
    assert list(SampleOptions(n=2).plan()) == ["", ""] and not SampleOptions(n=2).plan().guided
    plan, picks = plan_variations(SampleOptions(n=4), _Sources())
    assert list(plan) == ["A"] * 4 + ["B"] * 4 and list(picks) == [0, 2, 4, 0, 1, 3, 5, 1]
    with pytest.raises(IndexError):
        plan[8]
    huge = SampleOptions(n=10**9, classes=["A", "B"]).plan()
    assert len(huge) == 2 * 10**9 and huge[10**9 - 1] == "A" and huge[10**9] == "B"

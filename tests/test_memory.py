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

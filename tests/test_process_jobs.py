"""Jobs in a spawned process (core.base.process.ChildJob, widgets._common.Job(process=True)): events and
results over a pipe, pause / resume / cancel in any order, a clean-up (checkpoint) on cancel and when the
parent goes away, a crash reported once with its log, no GUI modules and fitting threads in the child."""

import time
from pathlib import Path

import pytest

from job_children import crashing, failing, gated, threads_seen
from napari_histodiff.core.jobs.load import open_handle

FINAL = ("done", "stopped", "failed")


def run_to_end(job):
    reports = list(job.reports())
    return [v for k, v in reports if k == "event"], reports[-1]


def test_a_child_job_reports_its_events_and_result(tmp_path):
    import os

    from napari_histodiff.core.base.process import ChildJob

    for i in range(3):
        (tmp_path / f"go-{i}").touch()
    job = ChildJob(gated, (str(tmp_path), 2))
    job.start()
    events, (kind, result) = run_to_end(job)
    assert [(e.step, e.total) for e in events] == [(1, 2), (2, 2)]
    assert kind == "done" and result["result"] == 2 and result["pid"] != os.getpid()
    assert job.process.exitcode == 0 and (tmp_path / "cleaned").read_text() in ("1", "2")  # where it was
    assert "started" in job.log.read_text() and "ended: done" in job.log.read_text()


def test_the_child_cleans_up_and_ends_when_the_parent_goes_away(tmp_path):
    from napari_histodiff.core.base.process import ChildJob

    (tmp_path / "go-0").touch()
    job = ChildJob(gated, (str(tmp_path), 100))
    job.start()
    kind, event = next(job.reports())
    assert kind == "event" and event.step == 1
    job._conn.close()  # what the parent's death does to the pipe
    (tmp_path / "go-1").touch()  # the step under way ends; the child stops before the next one
    job.process.join(60)
    assert job.process.exitcode == 0 and (tmp_path / "cleaned").read_text() in ("1", "2")  # where it was


def test_the_child_imports_no_gui_and_uses_the_threads_given(tmp_path):
    from napari_histodiff.core.base.process import ChildJob, child_threads

    job = ChildJob(threads_seen, (), threads=1)
    job.start()
    _, (kind, result) = run_to_end(job)
    assert kind == "done" and result == {"threads": 1, "gui": []}
    assert child_threads() >= 1


def test_the_child_does_not_import_the_parents_main_module(tmp_path):
    """napari's entry script imports napari (and Qt) at the top; spawn would import it again in the child."""
    import subprocess
    import sys

    pytest.importorskip("napari")
    script = tmp_path / "main_like_napari.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nimport napari\n"
                      "from job_children import threads_seen\n"
                      "from napari_histodiff.core.base.process import ChildJob\n"
                      "if __name__ == '__main__':\n"
                      "    job = ChildJob(threads_seen, ())\n    job.start()\n    print(list(job.reports())[-1])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert "'gui': []" in out.stdout, out.stdout + out.stderr


def test_an_error_that_does_not_pickle_arrives_as_text_and_its_traceback_is_logged():
    from napari_histodiff.core.base.errors import HistodiffError
    from napari_histodiff.core.base.process import ChildJob

    job = ChildJob(failing, ("unpicklable",))
    job.start()
    _, (kind, exc) = run_to_end(job)
    assert kind == "failed" and isinstance(exc, HistodiffError) and "Local: a local error class" in str(exc)
    assert "Traceback" in job.log.read_text()


def test_logs_beyond_the_limit_are_removed_oldest_first(tmp_path, monkeypatch):
    from napari_histodiff.core.base import process as P

    monkeypatch.setenv("HISTODIFF_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(P, "KEEP_LOGS", 3)
    mine = tmp_path / "notes.log"
    mine.write_text("not ours")
    made = []
    for i in range(5):
        log = P.new_log("x")
        log.write_text(str(i))
        made.append(log)
        time.sleep(0.01)
    left = sorted(p.read_text() for p in tmp_path.glob("histodiff-*.log"))
    assert left == ["2", "3", "4"] and mine.read_text() == "not ours"


# -- the widgets' controller with jobs in processes -----------------------------------------------

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_widgets import dock, errors_shown, fresh_model  # noqa: E402,F401 - fixture


class Gates:
    """The test's side of :func:`job_children.gated`: ``step()`` lets one more step end."""

    def __init__(self, folder: Path, steps=1000):
        self.folder, self.steps, self.opened = folder, steps, 0
        folder.mkdir(parents=True, exist_ok=True)

    def step(self, n=1):
        for _ in range(n):
            (self.folder / f"go-{self.opened}").touch()
            self.opened += 1

    @property
    def ran(self) -> int:
        return len(list(self.folder.glob("ran-*")))

    @property
    def cleaned(self) -> bool:
        return (self.folder / "cleaned").exists()

    def start(self, job, **callbacks):
        return job.start(gated, str(self.folder), self.steps, **callbacks)


def test_pause_resume_cancel_in_any_order_with_the_job_in_a_process(qtbot, tmp_path):
    from napari_histodiff.widgets._common import Job, State

    job, gates, events, done = Job(process=True), Gates(tmp_path / "a"), [], []
    gates.start(job, on_yield=events.append, on_done=done.append)
    gates.step()
    qtbot.waitUntil(lambda: len(events) == 1, timeout=30_000)
    job.pause()  # the child is inside a step: it pauses only after it
    assert job.state == State.PAUSING
    qtbot.wait(300)
    assert job.state == State.PAUSING
    gates.step()
    qtbot.waitUntil(lambda: job.state == State.PAUSED, timeout=10_000)
    gates.step(3)  # a paused child runs no step
    qtbot.wait(300)
    assert gates.ran == 2 and len(events) == 2
    job.resume()
    qtbot.waitUntil(lambda: job.state == State.RUNNING and len(events) == 5, timeout=10_000)
    job.pause(), job.resume(), job.toggle_pause()  # the last request wins
    gates.step()
    qtbot.waitUntil(lambda: job.state == State.PAUSED, timeout=10_000)
    job.resume()
    job.cancel()  # before the child has resumed (or just after: then it stops after that step)
    assert job.state == State.CANCELLING and not job.can_pause
    gates.step()
    qtbot.waitUntil(lambda: job.state == State.STOPPED and job.worker is None, timeout=30_000)
    assert gates.cleaned and done == []

    # pause then cancel at once, before the pause has taken effect (this used to hang)
    gates, events = Gates(tmp_path / "b"), []
    gates.start(job, on_yield=events.append, on_done=done.append)
    gates.step()
    qtbot.waitUntil(lambda: len(events) == 1, timeout=30_000)
    job.pause()
    job.cancel()
    gates.step()
    qtbot.waitUntil(lambda: job.state == State.STOPPED, timeout=30_000)
    assert gates.cleaned and done == [] and len(events) == 1

    gates = Gates(tmp_path / "c", steps=2)
    gates.step(3)
    gates.start(job, on_done=done.append)
    qtbot.waitUntil(lambda: job.state == State.DONE, timeout=30_000)
    assert done[0]["result"] == 2


def test_a_crashed_job_is_one_notification_naming_its_log(qtbot, tmp_path, monkeypatch):
    from napari_histodiff.widgets._common import Job, State

    shown = errors_shown(monkeypatch)
    job, events = Job(process=True), []
    job.start(crashing, str(tmp_path), on_yield=events.append)
    qtbot.waitUntil(lambda: len(events) == 1, timeout=30_000)
    (tmp_path / "go-1").touch()
    qtbot.waitUntil(lambda: job.state == State.FAILED, timeout=30_000)
    qtbot.wait(300)
    assert len(shown) == 1 and "killed by signal 9" in shown[0]
    log = Path(shown[0].rsplit("log: ", 1)[1])
    text = log.read_text()
    assert "python says hello" in text and "native says hello" in text

    job.start(failing, "the tiles folder is empty: choose another")
    qtbot.waitUntil(lambda: job.state == State.FAILED and len(shown) == 2, timeout=30_000)
    qtbot.wait(300)
    assert shown[1] == "the tiles folder is empty: choose another"


def no_weights_here(monkeypatch):
    """Opening any network's weights in this (the GUI's) process fails the test: jobs open them in theirs."""
    from diffusers import ModelMixin

    def refused(*args, **kwargs):
        raise AssertionError("the GUI process opened a model's weights")

    monkeypatch.setattr(ModelMixin, "from_pretrained", classmethod(refused))


def test_the_load_panel_checks_a_model_in_a_process_and_keeps_only_its_description(
        make_napari_viewer, qtbot, finetuned_bundle, fresh_model, monkeypatch):
    """Issue 27, item 8: the GUI holds no copy of a model; the card comes from the job's description."""
    from napari_histodiff.core.formats.handle import ModelHandle

    monkeypatch.setenv("HISTODIFF_JOBS", "process")
    no_weights_here(monkeypatch)
    viewer = make_napari_viewer()
    w = dock(viewer, "Load model")
    assert w.job.process
    w.path.value = str(finetuned_bundle[0])
    w.device.setCurrentText("cpu")
    w.load()
    qtbot.waitUntil(lambda: fresh_model.model is not None, timeout=120_000)
    m = fresh_model.model
    assert isinstance(m, ModelHandle) and m.path == Path(finetuned_bundle[0]) and m.device == "cpu"
    assert m.class_names == ["DAB-rich", "hematoxylin-rich"] and m.has("selection_classifier")
    assert set(m.parameters) >= {"AutoencoderKL", "UNet2DModel"} and all(n > 0 for n in m.parameters.values())
    assert "AutoencoderKL" in w.card.text() and "DAB-rich" in w.card.text()


def test_finetune_in_a_process_cancels_to_a_checkpoint_then_resumes_and_loads(
        make_napari_viewer, qtbot, trained_bundle, labeled_tiles, fresh_model, tmp_path, monkeypatch):
    """The Fine-tune panel as napari users get it: training in a spawned process, the result loaded."""
    from test_job_control import checkpoint_step

    from napari_histodiff import load_bundle
    from napari_histodiff.widgets import finetune as F
    from napari_histodiff.widgets._common import State

    monkeypatch.setenv("HISTODIFF_JOBS", "process")
    fresh_model.set(open_handle(trained_bundle, "cpu"))
    no_weights_here(monkeypatch)  # from here on: the job opens the model and the result, the GUI never
    event = F.FinetuneWidget._event
    monkeypatch.setattr(F.FinetuneWidget, "_event", lambda self, e: (self.events.append(e.stage), event(self, e)))
    viewer = make_napari_viewer()
    w = dock(viewer, "Fine-tune")
    assert w.job.process
    out = tmp_path / "ft"
    w.events, w.tiles, w.out.value = [], labeled_tiles, str(out)
    for name, n in (("unet_steps", 2), ("classifier_steps", 400), ("selection_steps", 2)):
        w.form[name].value = n
    w.form["checkpoint_every"].value = 100_000  # the only checkpoint: the one saved when stopped
    w.start()
    qtbot.waitUntil(lambda: w.events.count("latent_classifier") >= 3, timeout=120_000)
    w.toggle_pause()
    w.cancel()
    qtbot.waitUntil(lambda: w.state == State.STOPPED, timeout=120_000)
    assert checkpoint_step(out) > 0 and w.intent.value == "resume" and not fresh_model.training
    assert fresh_model.model.path == Path(trained_bundle)

    w.form["classifier_steps"].value = checkpoint_step(out) + 3
    w.start()
    qtbot.waitUntil(lambda: w.state in (State.DONE, State.FAILED), timeout=180_000)
    assert w.state == State.DONE, w.status.text()
    assert Path(fresh_model.model.path) == out and fresh_model.model.has("latent_classifier")
    assert "fine-tuned bundle written" in w.summary


def test_guided_sampling_in_a_process_fills_the_layer_and_its_table(make_napari_viewer, qtbot, finetuned_bundle,
                                                                    fresh_model, tmp_path, monkeypatch):
    import numpy as np
    from test_widgets import sample_with

    from napari_histodiff import load_bundle
    from napari_histodiff.core.formats.records import read_records

    monkeypatch.setenv("HISTODIFF_JOBS", "process")
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((200, 200, 3), np.uint8), name="tissue", rgb=True)
    fresh_model.set(open_handle(finetuned_bundle[0], "cpu"))
    no_weights_here(monkeypatch)
    s = dock(viewer, "Sample")
    assert s.job.process and s.device.currentText() == "cpu"
    sample_with(s, qtbot, "DAB-rich", 3, 4, 2, tmp_path / "samples")
    layer = viewer.layers["synthetic: DAB-rich"]
    folder = Path(layer.metadata["histodiff"]["folder"])
    records = read_records(folder)
    assert layer.data.shape == (3, 32, 32, 3) and len(records) == 3
    assert [r.target_class for r in records] == ["DAB-rich"] * 3
    assert list(layer.metadata["features"]["target_class"]) == ["DAB-rich"] * 3

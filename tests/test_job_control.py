"""Job control never wedges: pause, resume and cancel in any order and at any moment; closing a panel
cancels its job; a failed job shows one message (widgets._common.Job, the Fine-tune widget)."""

import json
import threading

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_widgets import dock, errors_shown, fresh_model  # noqa: E402,F401 - fixture
from napari_histodiff.core.jobs.load import open_handle

FINAL = ("done", "stopped", "failed")


# -- the controller on a scripted generator (no model) -------------------------------------------

class Script:
    """A core generator whose steps wait for the test: ``step()`` lets one more step run."""

    def __init__(self, steps=1000):
        self.steps, self.go, self.ran, self.cleaned = steps, threading.Semaphore(0), 0, threading.Event()

    def step(self, n=1):
        for _ in range(n):
            self.go.release()

    def __call__(self):
        from napari_histodiff.core.base.events import Progress

        try:
            for i in range(self.steps):
                self.go.acquire(timeout=30)
                self.ran = i + 1
                yield Progress("x", i + 1, self.steps)
            self.go.acquire(timeout=30)  # the last step (no progress event)
            return "result"
        finally:
            self.cleaned.set()  # what a core job's close() does: save a checkpoint


def test_states_follow_the_worker_in_any_order(qtbot):
    from napari_histodiff.widgets._common import Job, State

    job, script, events, done = Job(), Script(), [], []
    job.start(script, on_yield=events.append, on_done=done.append)
    script.step()
    qtbot.waitUntil(lambda: len(events) == 1, timeout=10_000)
    job.pause()  # the worker is inside a step: it pauses only after it
    assert job.state == State.PAUSING and job.pause_requested
    qtbot.wait(200)
    assert job.state == State.PAUSING
    script.step()
    qtbot.waitUntil(lambda: job.state == State.PAUSED, timeout=10_000)
    script.step(3)  # a paused worker runs no step
    qtbot.wait(300)
    assert script.ran == 2 and len(events) == 2
    job.resume()
    assert job.state == State.RESUMING
    qtbot.waitUntil(lambda: job.state == State.RUNNING and len(events) == 5, timeout=10_000)
    # pause, resume, pause in one go: the last request wins
    job.pause(), job.resume(), job.toggle_pause()
    assert job.pause_requested
    script.step()
    qtbot.waitUntil(lambda: job.state == State.PAUSED, timeout=10_000)
    # resume then cancel before the worker has resumed; then cancel while paused; then pause before cancel
    job.resume()
    job.cancel()
    assert job.state == State.CANCELLING and not job.can_pause and not job.can_cancel
    job.toggle_pause(), job.resume()  # ignored while cancelling
    assert job.state == State.CANCELLING
    qtbot.waitUntil(lambda: job.state == State.STOPPED and job.worker is None, timeout=10_000)
    assert script.cleaned.is_set() and done == [] and script.ran < script.steps

    for scenario in ("cancel while paused", "pause then cancel at once"):
        script, events = Script(), []
        job.start(script, on_yield=events.append, on_done=done.append)
        script.step()
        qtbot.waitUntil(lambda: len(events) == 1, timeout=10_000)
        job.pause()  # the worker is inside its second step
        if scenario == "cancel while paused":
            script.step()
            qtbot.waitUntil(lambda: job.state == State.PAUSED, timeout=10_000)
        job.cancel()
        assert job.state == State.CANCELLING
        if scenario != "cancel while paused":
            script.step()  # the step ends; a paused worker stops at once
        qtbot.waitUntil(lambda: job.state == State.STOPPED, timeout=10_000)
        assert script.cleaned.is_set() and done == [], scenario
        assert len(events) == (2 if scenario == "cancel while paused" else 1)  # none after the cancel

    script = Script(steps=2)
    job.start(script, on_done=done.append)
    script.step(3)
    qtbot.waitUntil(lambda: job.state == State.DONE, timeout=10_000)
    assert done == ["result"]


def test_a_job_whose_widget_is_gone_uses_no_result(qtbot):
    from qtpy.QtWidgets import QWidget

    from napari_histodiff.widgets._common import Job, State, cancel_on_close

    widget = QWidget()
    job, script, calls, released = Job(), Script(steps=1), [], []
    cancel_on_close(widget, job)
    job.start(script, on_yield=calls.append, on_done=calls.append, on_finish=lambda: calls.append("finish"),
              on_change=lambda: calls.append("change"), on_release=lambda: released.append(job.state))
    script.step()
    qtbot.waitUntil(lambda: len(calls) >= 2, timeout=10_000)  # a change, an event
    n = len(calls)
    widget.deleteLater()  # the viewer closing deletes its docks and their widgets
    qtbot.waitUntil(lambda: job.state == State.CANCELLING, timeout=10_000)
    script.step()  # the last step: the job ends with its result although it was asked to stop
    qtbot.waitUntil(lambda: bool(released), timeout=10_000)
    assert released == [State.DONE] and len(calls) == n  # the result is not used


def test_a_failing_job_shows_one_message(make_napari_viewer, qtbot, trained_bundle, labeled_tiles, fresh_model,
                                         tmp_path, monkeypatch):
    """A RuntimeError (most torch errors): superqt ends such a worker without a signal."""
    from napari_histodiff import load_bundle
    from napari_histodiff.core.base.events import Progress
    from napari_histodiff.core.jobs import finetune as F
    from napari_histodiff.widgets._common import State

    def broken(opts, model, tiles):
        yield Progress("latent_classifier", 1, 10)
        raise RuntimeError("boom in a training step")

    shown = errors_shown(monkeypatch)
    monkeypatch.setattr(F, "finetune", broken)
    viewer = make_napari_viewer()
    fresh_model.set(open_handle(trained_bundle, "cpu"))
    w = dock(viewer, "Fine-tune")
    w.tiles, w.out.value = labeled_tiles, str(tmp_path / "ft")
    w.start()
    qtbot.waitUntil(lambda: w.state == State.FAILED, timeout=30_000)
    qtbot.wait(300)  # a second message would have arrived by now
    assert len(shown) == 1 and "boom in a training step" in shown[0]
    assert w.worker is None and w.start_button.isEnabled() and not fresh_model.training


# -- the Fine-tune widget on a tiny model --------------------------------------------------------

def finetune_widget(viewer, trained_bundle, labeled_tiles, fresh_model, out, monkeypatch):
    """A Fine-tune panel with tiles, counting its progress events (``w.events``); training never ends."""
    from napari_histodiff import load_bundle
    from napari_histodiff.widgets import finetune as F

    event = F.FinetuneWidget._event

    def counting(self, e):
        self.events.append(e.stage)
        event(self, e)

    monkeypatch.setattr(F.FinetuneWidget, "_event", counting)
    fresh_model.set(open_handle(trained_bundle, "cpu"))
    w = dock(viewer, "Fine-tune")
    w.events, w.tiles, w.out.value = [], labeled_tiles, str(out)
    w.form["classifier_steps"].value = 100_000
    w.form["checkpoint_every"].value = 100_000  # the only checkpoint: the one saved when stopped
    return w


def start_training(w, qtbot, steps=3):
    w.events.clear()
    w.start()
    qtbot.waitUntil(lambda: w.events.count("latent_classifier") >= steps, timeout=60_000)


def checkpoint_step(out):
    from napari_histodiff.core.train.loop import checkpoints

    found = checkpoints(out / "training" / "latent_classifier")
    return json.loads((found[0] / "checkpoint.json").read_text())["step"] if found else None


def assert_stopped(w, qtbot, out, fresh_model, after=0):
    from napari_histodiff.widgets._common import State

    qtbot.waitUntil(lambda: w.state == State.STOPPED, timeout=60_000)
    assert w.start_button.isEnabled() and not w.pause_button.isEnabled() and not w.cancel_button.isEnabled()
    assert not fresh_model.training and w.worker is None
    step = checkpoint_step(out)
    assert step is not None and step > after and w.intent.value == "resume"
    return step


def test_pause_resume_cancel_races_end_stopped_with_a_checkpoint(make_napari_viewer, qtbot, trained_bundle,
                                                                 labeled_tiles, fresh_model, tmp_path, monkeypatch):
    from napari_histodiff.widgets._common import State

    viewer = make_napari_viewer()
    out = tmp_path / "ft"
    w = finetune_widget(viewer, trained_bundle, labeled_tiles, fresh_model, out, monkeypatch)

    # pause, then cancel before the pause has taken effect (the widget used to hang at "cancelling")
    start_training(w, qtbot)
    w.toggle_pause()
    assert w.state == State.PAUSING and w.pause_button.text() == "Resume" and w.status.text() == "pausing"
    w.cancel()
    assert w.state == State.CANCELLING and not w.pause_button.isEnabled() and not w.cancel_button.isEnabled()
    step = assert_stopped(w, qtbot, out, fresh_model)

    # cancel while paused (resumes from the checkpoint: intent is now resume)
    start_training(w, qtbot)
    w.pause_button.click()
    qtbot.waitUntil(lambda: w.state == State.PAUSED, timeout=30_000)
    n = len(w.events)
    qtbot.wait(300)
    assert len(w.events) == n and w.status.text() == "paused"  # it really is paused
    w.cancel_button.click()
    step = assert_stopped(w, qtbot, out, fresh_model, after=step)

    # pause / resume / pause quickly, then resume for real, then pause and cancel
    start_training(w, qtbot)
    w.toggle_pause(), w.toggle_pause(), w.toggle_pause()
    qtbot.waitUntil(lambda: w.state == State.PAUSED, timeout=30_000)
    w.toggle_pause()
    n = len(w.events)
    qtbot.waitUntil(lambda: w.state == State.RUNNING and len(w.events) > n + 2, timeout=30_000)
    w.toggle_pause()
    w.cancel()
    assert_stopped(w, qtbot, out, fresh_model, after=step)


def test_closing_the_panel_cancels_its_training(make_napari_viewer, qtbot, trained_bundle, labeled_tiles,
                                                fresh_model, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QDockWidget

    from napari_histodiff.widgets._common import State

    viewer = make_napari_viewer()
    out = tmp_path / "ft"
    w = finetune_widget(viewer, trained_bundle, labeled_tiles, fresh_model, out, monkeypatch)
    model = fresh_model.model
    start_training(w, qtbot)
    panel, = [d for d in viewer.window._qt_window.findChildren(QDockWidget) if d.widget() is w]
    panel.destroyOnClose()  # the panel's close button
    n = len(w.events)
    assert w.state == State.CANCELLING
    qtbot.waitUntil(lambda: w.state in FINAL and not fresh_model.training, timeout=60_000)
    qtbot.wait(200)
    assert w.state == State.STOPPED and len(w.events) == n  # no progress after the close
    assert checkpoint_step(out) is not None  # resumable
    assert fresh_model.model is model  # the loaded model is left alone

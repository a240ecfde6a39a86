"""Shared widget helpers: plain messages, background jobs (:class:`Job`, :func:`cancel_on_close`),
controls and scrolling pages. The option forms are in :mod:`._forms`."""

from __future__ import annotations

import threading
from enum import Enum

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import (QComboBox, QFormLayout, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget)


class State(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSING = "pausing"  # asked; the worker pauses after its current step
    PAUSED = "paused"
    RESUMING = "resuming"
    CANCELLING = "cancelling"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


# -- messages ----------------------------------------------------------------------------------

def _shower(labels):
    """``name -> text`` from a mapping, a callable or None (then: the field name with spaces)."""
    if callable(labels):
        return labels
    labels = dict(labels or {})
    return lambda name: labels.get(name, name.replace("_", " "))


def render(text: str, labels=None) -> str:
    """A core message with its option references ``{opt:field}`` / ``{opt:field=value}`` shown as the
    form's labels: ``"classifier steps"``, ``"intent: resume"``, ``"kept tiles only" off``."""
    from ..core.base.errors import refs

    label = _shower(labels)

    def show_field(name):
        return f'"{label(name)}"'

    def show_value(name, value):
        if value.lower() in ("true", "false"):
            return f'"{label(name)}" {"on" if value.lower() == "true" else "off"}'
        return f'"{label(name)}: {value}"'

    return refs(text, show_field, show_value)


def plain_message(exc: BaseException, labels=None) -> str:
    """A message a pathologist can act on; option references name the widget's labels."""
    from ..core.base.errors import HistodiffError
    from ..core.base.memory import memory_kind
    from ..core.base.options import OptionError

    if isinstance(exc, OptionError):
        return render(exc.render(lambda name: render("{opt:" + name + "}", labels)), labels)
    if isinstance(exc, HistodiffError):
        return render(exc.raw, labels)
    if memory_kind(exc):  # workers get this from guard_memory already; this is for the GUI thread
        return "out of memory: lower the batch size (or the number of tiles per batch) and try again"
    return f"{type(exc).__name__}: {exc}"


def notify_error(exc: BaseException, labels=None) -> None:
    from napari.utils.notifications import show_error

    show_error(plain_message(exc, labels))


def notify_warning(text: str, labels=None) -> None:
    from napari.utils.notifications import show_warning

    show_warning(render(text, labels))


# -- workers -----------------------------------------------------------------------------------
#
# A job runs a core generator (progress events, then a result) on a napari GeneratorWorker.
# Pause, resume and cancel are requests to the worker thread, which acts on them between two
# progress events (a training step can take seconds); the job's state follows what the worker
# reports (its ``paused``/``resumed``/``finished`` signals), so it says "pausing" until the worker
# has paused, and it can always be cancelled: a paused worker wakes up to stop.

STOPPED = object()  # what a worker returns when it was asked to stop
ACTIVE = (State.RUNNING, State.PAUSING, State.PAUSED, State.RESUMING, State.CANCELLING)


class _Control:
    """One run's requests from the GUI thread (stop, pause, detached) and its outcome from the worker
    thread. Each attribute is written by one thread only; the outcome is read after ``finished``."""

    def __init__(self):
        self.stop = False  # GUI: cancel
        self.pause = False  # GUI: pause wanted
        self.detached = False  # GUI: the widget is gone; no more widget callbacks
        self.wake = threading.Event()  # GUI: a request changed
        self.worker = None  # set before the worker starts
        self.child = None  # a ChildJob when the job runs in a spawned process
        self.outcome = None  # worker: ("done", value) | ("stopped", None) | ("failed", exc)
        self.callback_error = None  # GUI: a widget callback raised (shown, the run is cancelled)

    def tell(self, message: str) -> None:
        """Pass a request ("pause", "resume", "stop") on to a job in a child process."""
        if self.child is not None:
            self.child.send(message)

    def stopping(self) -> bool:
        """A cancel, or napari quitting the worker (the viewer closing)."""
        return self.stop or (self.worker is not None and self.worker.abort_requested)

    def _emit(self, name: str) -> None:
        if self.worker is not None:
            getattr(self.worker, name).emit()

    def hold(self) -> bool:
        """In the worker thread, between two progress events: wait while a pause is asked (emitting the
        worker's ``paused``, then ``resumed``). True when the job must stop instead."""
        if self.pause and not self.stopping():
            self._emit("paused")
            while self.pause and not self.stopping():
                self.wake.wait(0.05)  # also polls napari's quit request
                self.wake.clear()
            if not self.stopping():
                self._emit("resumed")
        return self.stopping()


def _stoppable(ctl, gen_func, *args):
    """Drive a core generator, pausing between its progress events while asked; on a stop request
    (a cancel, or napari quitting the worker) close it in the worker thread so that its clean-up
    (a resumable checkpoint, removing partial output) runs before the worker ends.
    Out of memory becomes a plain error whose fix names fields of the first argument (the job's options).
    ``ctl``: a :class:`_Control` (or ``{"stop": bool}``, read once)."""
    import dataclasses

    from ..core.base.guard import guarded

    if isinstance(ctl, dict):
        ctl, ctl.stop = _Control(), bool(ctl.get("stop"))
    opts = args[0] if args and dataclasses.is_dataclass(args[0]) else None
    gen = guarded(gen_func(*args), opts, f"napari ({getattr(gen_func, '__name__', 'job')})")
    try:
        while True:
            if ctl.hold():
                return STOPPED
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if ctl.stopping():
                return STOPPED  # no progress event after a cancel
            yield event
    finally:
        gen.close()


def _remote(ctl, child):
    """Drive a job in a child process (:class:`~napari_histodiff.core.base.process.ChildJob`): its events
    and pause reports come back here; the Job sends the requests. Closed (napari quitting the worker), it
    stops the child and waits for its clean-up."""
    child.start()
    finished = False
    try:
        for kind, value in child.reports(wait=0.1):
            if kind == "event":
                if not ctl.stopping():
                    yield value  # no progress event after a cancel
            elif kind in ("paused", "resumed"):
                ctl._emit(kind)
            elif kind == "idle":
                if ctl.stopping():  # napari asked the worker to quit
                    child.send("stop")
            else:
                finished = True
                if kind == "failed":
                    raise value
                return value if kind == "done" else STOPPED
    finally:
        if not finished:
            child.stop_and_wait()


def _run(ctl, source, then=None):
    """The worker's generator over ``source`` (:func:`_stoppable` or :func:`_remote`); ``then(result)`` runs
    in the worker thread after a run that was not cancelled. It never raises: superqt ends a worker whose
    generator raises a RuntimeError (most torch errors) without any signal, which would leave its widget
    busy for good. What happened is in ``ctl.outcome`` when the worker's ``finished`` arrives."""
    try:
        value = yield from source
        if value is not STOPPED and then is not None:
            value = then(value)
        ctl.outcome = ("stopped", None) if value is STOPPED else ("done", value)
    except Exception as e:  # noqa: BLE001 - reported by the Job, once
        ctl.outcome = ("failed", e)
    finally:
        if ctl.outcome is None:  # closed: napari quit the worker
            ctl.outcome = ("stopped", None)


def jobs_in_process() -> bool:
    """Whether the long jobs (fine-tuning, sampling) run in a spawned process: yes, unless
    ``HISTODIFF_JOBS=thread`` (tests, debugging)."""
    import os

    return os.environ.get("HISTODIFF_JOBS", "process").lower() != "thread"


def _drive(gen):
    return (yield from gen)


class Job:
    """A widget's background job: a core generator on a worker thread, one run at a time.

    ``start``, ``pause``, ``resume``, ``toggle_pause`` and ``cancel`` may be called in any order and at
    any moment; ``state`` follows what the worker actually did: RUNNING, PAUSING (asked, not yet paused),
    PAUSED, RESUMING, CANCELLING, then DONE, STOPPED or FAILED when the worker has finished (IDLE before
    the first run). A cancelled run closes the core generator in the worker thread (its clean-up: a
    resumable checkpoint, removing partial output). ``close()`` (see :func:`cancel_on_close`) cancels the
    run and detaches it from the widget: none of its callbacks but ``on_release`` is called after that.

    Errors are shown once: a failed run's exception goes to ``on_error`` (default: :func:`notify_error`
    with ``labels``); an exception raised by a callback is shown by :func:`notify_error` and cancels
    the run (state FAILED). No exception leaves a signal handler (outside ``napari.run()`` that would abort
    the process)."""

    def __init__(self, labels=None, process: bool = False, title: str = "a job"):
        self.labels = labels
        self.process = process  # run in a spawned process (the generator function must be importable)
        self.title = title  # what the close question calls it ("the fine-tuning")
        self._ended = []  # one-off callables for the end of the current run (:meth:`when_ended`)
        self.state = State.IDLE
        self._ctl = None
        self._cb = {}
        self._paused = False  # the worker's last report

    # -- what the widget shows --
    @property
    def worker(self):
        """The running worker, or None."""
        return self._ctl.worker if self._ctl is not None else None

    @property
    def busy(self) -> bool:
        return self.state in ACTIVE

    @property
    def pause_requested(self) -> bool:
        """A pause is asked (the pause button then reads "Resume")."""
        return self._ctl is not None and self._ctl.pause and not self._ctl.stop

    @property
    def can_pause(self) -> bool:
        """Pause / Resume (and Cancel) are possible: running and not cancelling."""
        return self.busy and self.state != State.CANCELLING

    can_cancel = can_pause

    # -- requests --
    def start(self, gen_func, *args, on_yield=None, on_done=None, on_error=None, on_finish=None,
              on_release=None, on_change=None, then=None):
        """Run ``gen_func(*args)`` (a core generator) on a worker, or in a spawned process when the Job was
        made with ``process=True`` (then ``gen_func`` and ``args`` must pickle); returns the worker.

        on_yield(event): each progress event. on_done(result): the result of a run that was not cancelled.
        on_error(exc): a failed run's error, to show (default: notify_error with ``labels``).
        on_finish(): after every run, once its state is final. on_change(): after each state change.
        on_release(): after every run, even once the widget is gone: free what the run held (no widgets).
        then(result): in the worker thread, after a run that was not cancelled; its value goes to on_done.
        """
        import gc

        from napari.qt.threading import create_worker
        from qtpy.QtCore import Qt

        if self.busy:
            raise RuntimeError("a job is already running")
        # A full garbage collection over napari's many objects holds the GIL for a few hundred ms,
        # and model loading in the worker triggers one; frozen objects are not scanned again.
        gc.freeze()
        ctl = _Control()
        if self.process:
            from ..core.base.process import ChildJob

            ctl.child = ChildJob(gen_func, args)
            gen = _run(ctl, _remote(ctl, ctl.child), then)
        else:
            gen = _run(ctl, _stoppable(ctl, gen_func, *args), then)
        # no error connection: _run never raises (create_worker would re-raise in the event loop)
        worker = create_worker(_drive, gen, _start_thread=False, _ignore_errors=True)
        ctl.worker, worker.job, worker.request_stop = worker, self, self.cancel
        self._ctl, self._paused = ctl, False
        self._cb = {"on_yield": on_yield, "on_done": on_done, "on_error": on_error, "on_finish": on_finish,
                    "on_release": on_release, "on_change": on_change}
        # napari quits workers (the viewer closing, its activity panel): the worker then leaves its
        # loop without resuming the generator, so close it here, in the worker thread, for its clean-up
        worker.aborted.connect(lambda: gen.close(), Qt.ConnectionType.DirectConnection)
        worker.yielded.connect(lambda event: self._yielded(ctl, event))
        worker.paused.connect(lambda: self._reported(ctl, True))
        worker.resumed.connect(lambda: self._reported(ctl, False))
        worker.errored.connect(lambda exc: self._errored(ctl, exc))
        worker.finished.connect(lambda: self._finished(ctl))
        self._set(State.RUNNING)
        worker.start()
        return worker

    def pause(self) -> None:
        if self.can_pause and not self._ctl.pause:
            self._ctl.pause = True
            self._ctl.tell("pause")
            self._set(self._derived())

    def resume(self) -> None:
        if self.can_pause and self._ctl.pause:
            self._ctl.pause = False
            self._ctl.tell("resume")
            self._ctl.wake.set()
            self._set(self._derived())

    def toggle_pause(self) -> None:
        self.resume() if self.pause_requested else self.pause()

    def cancel(self) -> None:
        """Stop at the next progress event (at once when paused); the state is CANCELLING until the
        worker has finished its clean-up, then STOPPED (or DONE when the run ended meanwhile)."""
        if self.busy and not self._ctl.stop:
            self._ctl.stop = True
            self._ctl.tell("stop")
            self._ctl.wake.set()
            self._set(State.CANCELLING)

    def when_ended(self, fn) -> None:
        """Call ``fn()`` once when the current run has ended (at once when none runs)."""
        if self.busy:
            self._ended.append(fn)
        else:
            fn()

    def close(self) -> None:
        """The widget is going away: cancel the run; no widget callback is called any more."""
        if self._ctl is not None:
            self._ctl.detached = True
            self.cancel()

    # -- the worker's reports (GUI thread) --
    def _derived(self) -> State:
        ctl = self._ctl
        if ctl.stop:
            return State.CANCELLING
        if ctl.pause:
            return State.PAUSED if self._paused else State.PAUSING
        return State.RESUMING if self._paused else State.RUNNING

    def _set(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self._callback("on_change")

    def _callback(self, name, *args) -> bool:
        """Call a widget callback (not once the run is detached); an exception is shown once and
        cancels the run. False when it raised."""
        fn = self._cb.get(name)
        ctl = self._ctl
        if fn is None or (ctl is not None and ctl.detached and name != "on_release"):
            return True
        try:
            fn(*args)
            return True
        except Exception as e:  # noqa: BLE001 - shown once
            if ctl is not None and ctl.callback_error is None:
                ctl.callback_error = e
                notify_error(e, None if ctl.detached else self.labels)
                self.cancel()
            elif ctl is None:
                notify_error(e, self.labels)
            return False

    def _yielded(self, ctl, event) -> None:
        if ctl is self._ctl and ctl.callback_error is None:
            self._callback("on_yield", event)

    def _reported(self, ctl, paused: bool) -> None:
        if ctl is self._ctl:
            self._paused = paused
            self._set(self._derived())

    def _errored(self, ctl, exc) -> None:
        if ctl.outcome is None:  # the worker itself failed (not the job, which _run catches)
            ctl.outcome = ("failed", exc)

    def _finished(self, ctl) -> None:
        if ctl is not self._ctl:
            return
        kind, value = ctl.outcome or (("stopped", None) if ctl.worker.abort_requested else
                                      ("failed", RuntimeError("the job ended without a result")))
        failed = ctl.callback_error is not None  # already shown
        state = State.FAILED if failed or kind == "failed" else State.DONE if kind == "done" else State.STOPPED
        self.state = state  # final: on_done / on_error see it; no on_change before on_finish
        if kind == "done" and not failed:
            if not self._callback("on_done", value):
                self.state = State.FAILED
        elif kind == "failed" and not failed:
            if ctl.detached or self._cb.get("on_error") is None:
                notify_error(value, None if ctl.detached else self.labels)
            else:
                self._callback("on_error", value)
        ctl.outcome = None  # the exception and result (and their tensors) are not kept
        self._ctl = None
        cb, self._cb = self._cb, {"on_release": self._cb.get("on_release")}
        self._callback("on_release")
        if not ctl.detached:
            self._cb = cb
            self._callback("on_finish")
            self._callback("on_change")
        self._cb = {}
        ended, self._ended = self._ended, []
        for fn in ended:
            fn()


def start_worker(gen_func, *args, on_yield=None, on_done=None, on_error=None, on_finish=None):
    """Run a core generator in a napari generator worker, as a one-off :class:`Job` (``worker.job``).
    ``worker.request_stop()`` stops it at the next progress event; ``on_done`` is then not called.
    ``on_error`` shows the error (default: notify_error)."""
    return Job().start(gen_func, *args, on_yield=on_yield, on_done=on_done, on_error=on_error,
                       on_finish=on_finish)


def ask_keep(widget: QWidget, titles: list[str]) -> bool:
    """Ask whether the running jobs of a closed panel keep running (True) or stop. ``HISTODIFF_ON_CLOSE``
    = ``keep`` or ``stop`` answers without asking (tests, scripts)."""
    import os

    answer = os.environ.get("HISTODIFF_ON_CLOSE", "ask").lower()
    if answer in ("keep", "stop"):
        return answer == "keep"
    from qtpy.QtWidgets import QMessageBox

    what = " and ".join(titles)
    box = QMessageBox(QMessageBox.Icon.Question, "HistoDiffusion",
                      f"{what[0].upper() + what[1:]} {'are' if len(titles) > 1 else 'is'} still running.")
    box.setInformativeText("Keep it running: its progress (and its Cancel button) stays in napari's activity "
                           "dock, and opening the panel again shows it. Stop it: a resumable checkpoint is kept "
                           "where the job makes one.")
    keep = box.addButton("Keep running", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Stop it", QMessageBox.ButtonRole.DestructiveRole)
    box.setDefaultButton(keep)
    box.exec()
    return box.clickedButton() is keep


_KEPT: dict[int, QWidget] = {}  # panels closed while their jobs run on: alive until the jobs end or reopened


def _viewer_of(widget):
    viewer = getattr(widget, "viewer", None)
    return getattr(viewer, "__wrapped__", viewer)  # napari passes a PublicOnlyProxy


class Reopens(type(QWidget)):
    """Metaclass of a panel whose jobs may keep running after its dock is closed: making the panel again
    for the same viewer (napari's Plugins menu) gives back the closed one while its jobs run, with their
    progress and the panel's settings."""

    def __call__(cls, napari_viewer=None, *args, **kwargs):
        viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        for key, widget in list(_KEPT.items()):
            if type(widget) is cls and viewer is not None and _viewer_of(widget) is viewer:
                del _KEPT[key]
                return widget
        return super().__call__(napari_viewer, *args, **kwargs)


def _keep(widget: QWidget, jobs: list) -> None:
    """Hold ``widget`` (no longer in a dock) until ``jobs`` end, then delete it unless it was reopened."""
    key = id(widget)
    _KEPT[key] = widget
    left = set(map(id, jobs))

    def ended(job):
        left.discard(id(job))
        if not left and _KEPT.get(key) is widget:
            del _KEPT[key]
            widget.deleteLater()

    for job in jobs:
        job.when_ended(lambda job=job: ended(job))


class _CloseWatch(QObject):
    """Watches a panel's jobs (weakly). The panel leaving its dock (napari's close button,
    ``remove_dock_widget``) asks whether running jobs keep running (``keep``) or stop; the dock or the
    panel being deleted (the viewer closing) stops them. Stopping a job runs its clean-up (a resumable
    checkpoint) and no widget callback but ``on_release`` is called after that."""

    def __init__(self, widget: QWidget, jobs=(), keep: bool = False):
        import weakref

        super().__init__(widget)
        # the connections must not keep the widget (its jobs) alive
        self._widget, self._jobs = weakref.ref(widget), [weakref.ref(job) for job in jobs]
        self.keep, self._docked = keep, widget.parent() is not None
        widget.installEventFilter(self)
        jobs_of = self.jobs
        widget.destroyed.connect(lambda *_: [job.close() for job in jobs_of()])  # not a method: deleted first
        self._watch_dock(widget)

    def jobs(self) -> list:
        return [job for job in (ref() for ref in self._jobs) if job is not None]

    def stop(self) -> None:
        for job in self.jobs():
            job.close()

    def _watch_dock(self, widget: QWidget) -> None:
        from qtpy.QtWidgets import QDockWidget

        parent = widget.parent()
        while parent is not None and not isinstance(parent, QDockWidget):
            parent = parent.parent()
        if parent is not None:
            parent.destroyed.connect(self._dock_gone)

    def _dock_gone(self, *_):
        if self._docked:  # deleted with the panel in it (not after the panel left it)
            self.stop()

    def removed(self) -> None:
        """The panel left its dock: ask about running jobs (when they may keep running), else stop them."""
        running = [job for job in self.jobs() if job.busy]
        widget = self._widget()
        if running and self.keep and widget is not None and ask_keep(widget, [j.title for j in running]):
            _keep(widget, running)
            return
        self.stop()

    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._docked = True
                self._watch_dock(obj)
            elif self._docked:
                self._docked = False
                self.removed()
        return False


class JobPanel:
    """``state`` and ``worker`` of a panel whose running work is ``self.job`` (a :class:`Job`)."""

    @property
    def state(self) -> State:
        return self.job.state

    @property
    def worker(self):
        """The running worker, or None."""
        return self.job.worker


def cancel_on_close(widget: QWidget, *jobs: Job, keep: bool = False) -> None:
    """Closing ``widget``'s panel (its dock's close button, napari removing it, the viewer closing)
    cancels ``jobs``: their core generators run their clean-up (a resumable checkpoint), and their
    results are not used (no widget callbacks but ``on_release``). ``keep``: the close button asks first
    whether running jobs keep running instead (:func:`ask_keep`; the panel's class then uses :class:`Reopens`)."""
    widget._close_watch = _CloseWatch(widget, jobs, keep)


#: seconds between two updates of a run's progress shown: each repaints the window, and napari's activity bar
#: processes all pending events at each of its updates
SHOW_EVERY = 0.5


def activity(desc: str, total: int, on_cancel):
    """A progress object in napari's activity dock (created in the GUI thread); its Cancel button
    calls ``on_cancel``."""
    from napari.utils.progress import cancelable_progress

    class JobProgress(cancelable_progress):
        def cancel(self):
            super().cancel()
            on_cancel()

    return JobProgress(desc=desc, total=max(total, 1), leave=False)


class RunNotes:
    """The warnings of one run: shown in the panel (``label``) and the log as they come, and counted in the
    run's single notification (:meth:`notify`) instead of one notification each."""

    def __init__(self, label: QLabel, labels=None):
        self.label, self.labels, self.lines = label, labels, []
        label.setWordWrap(True)
        label.hide()

    def clear(self) -> None:
        self.lines = []
        self.label.clear()
        self.label.hide()

    def add(self, text: str) -> None:
        import logging
        from html import escape

        line = render(text, self.labels)
        self.lines.append(line)
        logging.getLogger("napari_histodiff").warning(line)
        self.label.setText("<b>notes</b><ul>" + "".join(f"<li>{escape(x)}</li>" for x in self.lines) + "</ul>")
        self.label.show()

    def notify(self, text: str, warn: bool = False) -> None:
        """The run's one notification: ``text`` and how many notes the panel shows."""
        from napari.utils.notifications import show_info, show_warning

        if self.lines:
            n = len(self.lines)
            text += f" ({n} note{'s' * (n > 1)} in the panel)"
        (show_warning if warn or self.lines else show_info)(text)


# -- controls --------------------------------------------------------------------------------

def compact(combo: QComboBox) -> QComboBox:
    """A combo box whose longest item does not set the dock's width (it elides instead)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(6)
    combo.setMinimumWidth(80)
    return combo


DEVICE_TIP = ("where this job runs: the loaded model's device unless you choose another; auto picks a GPU "
              "(cuda, then Apple mps) when there is one. The job runs in a process of its own, so the memory "
              "it used (a GPU's too) is freed when it ends.")


class DeviceCombo(QComboBox):
    """The device a job runs on: auto and this machine's devices; follows the loaded model's device."""

    def __init__(self):
        from ..core.base.devices import available_devices

        super().__init__()
        compact(self)
        self.addItems(["auto", *available_devices()])
        self.setToolTip(DEVICE_TIP)

    def follow(self, bundle) -> None:
        """Show the device of a newly loaded model."""
        name = str(getattr(bundle, "device", "") or "")
        if name:
            if self.findText(name) < 0:
                self.addItem(name)
            self.setCurrentText(name)


def path_edit(mode: str = "d", value=None, filter: str | None = None, tip: str = ""):
    """A magicgui FileEdit with a short button (the dock is narrow)."""
    from magicgui.widgets import FileEdit

    edit = FileEdit(mode=mode, filter=filter) if value is None else FileEdit(mode=mode, filter=filter, value=value)
    edit.choose_btn.text = "Browse…"
    edit.native.setToolTip(tip)
    edit.line_edit.native.setToolTip(tip)
    edit.choose_btn.native.setToolTip("choose the " + ("folder" if mode == "d" else "file") + " in a file dialog")
    return edit


def form_row(layout: QFormLayout, label: str, widget, tip: str = "") -> None:
    """A labelled row whose label carries the widget's tooltip."""
    native = getattr(widget, "native", widget)
    label_widget = QLabel(label)
    label_widget.setToolTip(tip or native.toolTip())
    if tip and not native.toolTip():
        native.setToolTip(tip)
    layout.addRow(label_widget, native)


def scroll_page(widget: QWidget) -> QVBoxLayout:
    """The layout of a vertically scrolling page filling ``widget`` (napari dock widgets do not scroll,
    and a tall widget would otherwise set the whole window's minimum height). The page is
    ``widget.page`` (e.g. to take a screenshot of all of it)."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    widget.page = QWidget()
    area.setWidget(widget.page)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return QVBoxLayout(widget.page)


def pinned_below(widget: QWidget) -> QVBoxLayout:
    """A layout under the scrolling page of :func:`scroll_page` that never scrolls away: the panel's primary
    buttons and its progress stay in view whatever the screen's height."""
    footer = QVBoxLayout()
    margins = widget.page.layout().contentsMargins()
    footer.setContentsMargins(margins.left(), 4, margins.right(), margins.bottom())
    widget.layout().addLayout(footer)
    return footer

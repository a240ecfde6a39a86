"""Fine-tune: annotated layers -> labeled tiles -> fine-tuned bundle, on a background worker.

The options form is generated from ``FinetuneOptions`` (the CLI's ``finetune`` options, same
defaults; the "interactive" profile declared there shortens the runs); Start runs the same job as
``histodiff finetune`` (``core.jobs.finetune``) on the loaded model and the extracted tiles."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QProgressBar,
                            QPushButton, QSpinBox, QToolButton, QVBoxLayout, QWidget)

from ..core.train.finetune import FinetuneOptions
from ._common import (SHOW_EVERY, DeviceCombo, Job, JobPanel, Reopens, RunNotes, State, activity, cancel_on_close,
                      form_row, jobs_in_process, notify_error, notify_warning, path_edit, pinned_below,
                      render, scroll_page)
from ._forms import OptionsForm, field_edit, output_folder
from ._layers import LayerCombo, extraction
from ._plot import LossPlot
from ._state import MODEL, follow_model
from .settings import Remembered

PROFILE = "interactive"  # the form's initial profile (FinetuneOptions.PROFILES)
ADVANCED = ("unet_learning_rate", "decoder_learning_rate", "clean_latents", "holdout", "batch_size",
            "checkpoint_every", "precision", "num_workers")
LABELS = {"out": "output bundle", "model": "model (Load model widget)", "labeled": "annotations"}


def pixmap(rgb: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    return QPixmap.fromImage(QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy())


def warm_imports() -> None:
    """Import the training modules now: an import in the worker thread holds the GIL and would
    freeze the viewer for a moment when training starts."""
    import diffusers.optimization  # noqa: F401
    import diffusers.training_utils  # noqa: F401

    from ..core.jobs import finetune  # noqa: F401
    from ..core.train import autoencoder, classifiers, diffusion, losses  # noqa: F401


def with_model(out, device, result):
    """The job's result and the description of the fine-tuned model it wrote (no weight is read here)."""
    from ..core.base.devices import pick_device
    from ..core.formats.handle import describe_folder

    return result, describe_folder(out, pick_device(device))


def duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    s = max(0, round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class OverallProgress:
    """How far a run is over all its stages: ``stages`` (name, steps) in run order; ``done``: the stages
    already finished before the run (a resume). A stage counts as done once a later one reports; the
    time left is estimated from the rate of the steps done in this run, paused time left out
    (:meth:`pause`, :meth:`resume`)."""

    def __init__(self, stages, done=(), clock=time.monotonic):
        self.totals = dict(stages)
        self.order = list(self.totals)
        self.steps = {s: (n if s in done else 0) for s, n in self.totals.items()}
        self.total = sum(self.totals.values())
        self.clock = clock
        self.started = clock()
        self._base = None  # (steps done, active time) at this run's first step
        self.paused_for = 0.0  # seconds paused so far
        self._paused_at = None  # when the current pause began

    def pause(self) -> None:
        """The job has paused: the clock of the rate stops (until :meth:`resume`)."""
        if self._paused_at is None:
            self._paused_at = self.clock()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.paused_for += self.clock() - self._paused_at
            self._paused_at = None

    def active(self) -> float:
        """Seconds the run has been working (not paused)."""
        now = self._paused_at if self._paused_at is not None else self.clock()
        return now - self.started - self.paused_for

    @property
    def done(self) -> int:
        return sum(self.steps.values())

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def remaining(self) -> float | None:
        """Seconds left at the rate so far (None until there is a rate)."""
        if self._base is None:
            return None
        steps, t = self.done - self._base[0], self.active() - self._base[1]
        if steps <= 0 or t <= 0:
            return None
        return (self.total - self.done) * t / steps

    def update(self, stage: str, step: int) -> bool:
        """``stage`` is at ``step``; False for a stage that is not one of the run's (nothing changes)."""
        if stage not in self.totals:
            return False
        for earlier in self.order[: self.order.index(stage)]:
            self.steps[earlier] = self.totals[earlier]
        self.steps[stage] = max(self.steps[stage], min(int(step), self.totals[stage]))
        if self._base is None:  # the rate counts from the first event (after loading, a resumed checkpoint)
            self._base = (self.done, self.active())
        return True

    def finish(self) -> None:
        self.steps = dict(self.totals)

    def text(self, stage: str | None = None, step: int | None = None, left: bool = True) -> str:
        """The progress bar's text: the stage, overall percent, elapsed time and time left."""
        head = f"{stage} {step}/{self.totals[stage]} · " if stage in self.totals and step is not None else ""
        remaining = self.remaining if left else None
        tail = "" if remaining is None or self.done >= self.total else f", ~{duration(remaining)} left"
        return f"{head}{100 * self.fraction:.0f}% · {duration(self.elapsed)} elapsed{tail}"


_activity = activity  # (the activity dock's entry: widgets._common.activity)


def classifier_summary(result: dict, n_classes: int) -> tuple[str, bool]:
    """A summary of the classifiers' held-out accuracies from the job's result (or a bundle's
    ``metrics``), and whether the guidance (latent) classifier is near chance."""
    latent, selection = result.get("latent_classifier"), result.get("selection_classifier")
    acc = {}
    if isinstance(latent, dict) and latent.get("history"):
        acc = latent["history"][-1][1]
    elif isinstance(latent, dict):
        acc = {k: v for k, v in latent.items() if k.startswith("acc_t")}
    best = None
    if isinstance(selection, dict):
        best = selection.get("best_heldout_acc", selection.get("heldout_acc"))
        if best is None and selection.get("history"):
            best = max(m.get("heldout_acc", -1.0) for _, m in selection["history"])
            best = best if best >= 0 else None
    parts = []
    if acc:
        noisy = sorted((int(k[5:]), v) for k, v in acc.items() if k.startswith("acc_t") and k[5:].isdigit())
        parts.append("guidance classifier " + ", ".join(f"{v:.0%} at t={t}" for t, v in noisy))
    else:
        parts.append("guidance classifier: no accuracy recorded")
    how = "out of fold" if isinstance(selection, dict) and (selection.get("folds") or 1) > 1 else "best"
    parts.append(f"selection classifier {best:.0%} ({how})" if best is not None
                 else "selection classifier: no accuracy recorded")
    chance = 1.0 / max(n_classes, 1)
    clean = acc.get("acc_t0")
    near_chance = clean is not None and n_classes > 1 and clean <= chance + 0.1
    text = "held-out accuracy: " + "; ".join(parts) + f" (chance: {chance:.0%})"
    return text, near_chance


NEAR_CHANCE = ("The guidance classifier is barely better than chance, so guided sampling will barely steer "
               "toward the chosen class. Train it longer (raise {opt:classifier_steps} and fine-tune again "
               "with {opt:intent=overwrite}), label more tiles of each class, or check that the annotations "
               "really separate the classes.")


class FinetuneWidget(JobPanel, QWidget, metaclass=Reopens):
    def __init__(self, napari_viewer=None):
        import napari.layers as L

        super().__init__()
        self.viewer = napari_viewer
        self.image = LayerCombo(napari_viewer, (L.Image,), lambda layer: getattr(layer, "rgb", False))
        self.annotations = LayerCombo(napari_viewer, (L.Labels, L.Shapes, L.Points))
        self.stride = QSpinBox(minimum=0, maximum=4096, value=0, specialValueText="tile size")
        self.min_fraction = QDoubleSpinBox(minimum=0.05, maximum=1.0, value=0.5, singleStep=0.05)
        for spin in (self.stride, self.min_fraction):
            spin.setMinimumWidth(80)  # not the width of their largest value: the dock is narrow
        self.form = OptionsForm(FinetuneOptions, advanced=ADVANCED, profile=PROFILE)
        self.out = path_edit("d", output_folder("finetuned", self.image.layer()),
                             tip=FinetuneOptions.__dataclass_fields__["out"].metadata["help"])
        self.intent = field_edit(FinetuneOptions, "intent")
        self.unlabeled = path_edit("d", tip="optional: a folder of unlabelled tiles of the same tissue; the selection "
                                   "classifier labels those it is confident on and the noisy latent classifier "
                                   "trains on them too (empty: off)")
        self.unlabeled.line_edit.native.setText("")  # FileEdit shows "." for no path
        self.device = DeviceCombo()
        self.device.follow(MODEL.model)
        self.extract_button = QPushButton("Extract tiles")
        self.counts = QLabel("Extract tiles to see how many each class gets.")
        self.counts.setWordWrap(True)
        self.preview = QLabel()
        self.start_button, self.pause_button, self.cancel_button = (
            QPushButton("Start"), QPushButton("Pause"), QPushButton("Cancel"))
        self.extract_button.setToolTip("cut the annotated regions of the image into tiles of the model's tile size, "
                                       "one class per annotation; counts and a preview appear below (needed before "
                                       "Start)")
        self.pause_button.setToolTip("pause the training after the current step; Resume continues it")
        self.cancel_button.setToolTip("stop the fine-tuning; a resumable checkpoint stays in the output bundle "
                                      "(intent: resume continues it)")
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.notes = RunNotes(QLabel(), self.label_of)  # a run's warnings: here, and counted in one notification
        self.plot = LossPlot()
        self.verdict = QLabel()  # after a run: good enough to sample, or what to annotate next
        self.verdict.setWordWrap(True)
        self.figures_button = QToolButton(text="figures", checkable=True)
        self.figures_button.setToolTip("show the figures behind the verdict (held-out accuracy per class)")
        self.figures_button.setArrowType(Qt.ArrowType.RightArrow)
        self.figures = QLabel()
        self.figures.setWordWrap(True)
        self.figures_button.toggled.connect(self._show_figures)
        self.verdict.hide()
        self.figures_button.hide()
        self.figures.hide()

        tiles = QGroupBox("labeled tiles")
        form = QFormLayout(tiles)
        form_row(form, "image", self.image, "an RGB Image layer")
        form_row(form, "annotations", self.annotations, "a Labels, Shapes or Points layer with a `class` feature")
        form_row(form, "stride (px)", self.stride, "step between tiles of a region (default: the tile size)")
        form_row(form, "min coverage", self.min_fraction,
                 "fraction of a tile that must lie inside the annotated region (Labels and Shapes layers)")
        form.addRow(self.extract_button)
        form.addRow(self.counts)
        form.addRow(self.preview)
        options = QGroupBox("fine-tuning")
        self.form.add_row(LABELS["out"], self.out, wide=True)
        self.form.add_row(self.intent.label, self.intent)
        self.form.add_row("unlabelled tiles", self.unlabeled, wide=True)
        self.form.add_row("device", self.device)
        QVBoxLayout(options).addWidget(self.form)
        layout = scroll_page(self)
        layout.addWidget(tiles)
        layout.addWidget(options)
        layout.addWidget(self.notes.label)
        layout.addWidget(self.verdict)
        layout.addWidget(self.figures_button)
        layout.addWidget(self.figures)
        layout.addWidget(self.plot)
        layout.addStretch()
        # the primary buttons and the progress stay in view below the scrolling form
        footer = pinned_below(self)
        row = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.cancel_button):
            row.addWidget(b)
        footer.addLayout(row)
        footer.addWidget(self.progress)
        footer.addWidget(self.status)

        self.tiles = None
        # the training and the tile extraction; closing the panel asks whether they keep running (in the
        # activity dock; opening the panel again shows them) or stop (a resumable checkpoint is kept)
        self.job = Job(self.label_of, process=jobs_in_process(), title="the fine-tuning")  # a spawned process
        self.extracting = Job(self.label_of, title="the tile extraction")
        cancel_on_close(self, self.job, self.extracting, keep=True)
        self.overall = None
        self.settings = Remembered("finetune", {
            **{f"form.{name}": edit for name, edit in self.form.edits.items()},
            "out": self.out, "intent": self.intent, "unlabeled": self.unlabeled, "device": self.device,
            "stride": self.stride, "min_fraction": self.min_fraction})
        self.settings.restore()
        warm_imports()
        self.extract_button.clicked.connect(self.extract)
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.cancel_button.clicked.connect(self.cancel)
        for combo in (self.image, self.annotations):
            combo.currentTextChanged.connect(self._inputs_changed)
        follow_model(self, self._model_changed)
        self._update()

    def label_of(self, name: str) -> str:
        """How this widget names an option (for messages)."""
        if name == "intent":
            return self.intent.label
        return LABELS.get(name) or self.form.label_of(name)

    # -- inputs ---------------------------------------------------------------------------
    def _model_changed(self, model):
        self.device.follow(model)
        if not self.job.busy:
            self.tiles = None  # the tile size may have changed
        self._update()

    def _inputs_changed(self, *_):
        self.tiles = None
        self._update()

    def extract(self):
        """Extract the labelled tiles of the chosen layers on a worker thread (progress in the bar);
        the layers are read here, the pixels in the worker."""
        from ..core.data.annotations import class_counts
        from ..core.formats.images import contact_sheet

        if self.extracting.busy or self.job.busy:
            return  # one extraction at a time, none while training
        try:
            model = MODEL.require()
            job = extraction(self.image.layer(), self.annotations.layer(), model.tile_size,
                             self.stride.value() or model.tile_size, self.min_fraction.value(),
                             mpp=model.meta.get("microns_per_pixel"))
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.tiles = None
            notify_error(e, self.label_of)
            self._update()
            return
        inputs = (self.image.currentText(), self.annotations.currentText())

        def run():
            tiles, skipped = yield from job
            idx = np.linspace(0, len(tiles) - 1, min(len(tiles), 18)).round().astype(int)
            return tiles, skipped, contact_sheet(np.stack([tiles[i] for i in idx]), ncols=6)

        def done(result):
            tiles, skipped, sheet = result
            if inputs != (self.image.currentText(), self.annotations.currentText()):
                return  # other layers were chosen meanwhile
            self.tiles = MODEL.labeled = tiles
            counts = class_counts(tiles)
            minimum = self.form["min_tiles_per_class"].value
            text = ", ".join(f"{c}: {n}" for c, n in counts.items())
            few = [c for c, n in counts.items() if n < minimum]
            if skipped:
                text += f" ({skipped} points too close to the border skipped)"
            if few:
                text += (f". Too few tiles (< {minimum}) for {', '.join(few)}: annotate more or lower "
                         f"\"{self.label_of('min_tiles_per_class')}\".")
            self.counts.setText("Tiles per class: " + text)
            scale = max(1, 200 // sheet.shape[1])
            self.preview.setPixmap(pixmap(np.kron(sheet, np.ones((scale, scale, 1), np.uint8))))

        def failed(exc):
            self.counts.setText("Extract tiles to see how many each class gets.")
            notify_error(exc, self.label_of)

        def finished():
            if self.extracting.state != State.DONE and self.tiles is None:
                self.counts.setText("Extract tiles to see how many each class gets.")
            self._update()

        self.tiles = None
        self.counts.setText("Extracting tiles...")
        self.preview.clear()
        self._update()
        self.extracting.start(run, on_yield=self._extract_event, on_done=done, on_error=failed, on_finish=finished,
                              on_change=self._update)

    def _problem(self) -> str | None:
        if MODEL.model is None:
            return "load a model first (Load model widget)"
        if MODEL.training and not self.job.busy:
            return "another training is running"
        if self.tiles is None:
            return "choose an image and an annotation layer, then Extract tiles"
        return None

    def _update(self):
        if self.overall is not None:  # the time left leaves paused time out
            self.overall.pause() if self.job.state == State.PAUSED else self.overall.resume()
        running = self.job.busy
        problem = self._problem()
        self.start_button.setEnabled(problem is None and not running and not self.extracting.busy)
        self.start_button.setToolTip(problem or "fine-tune the loaded model on the extracted tiles into the output "
                                     "bundle; the result is loaded when done")
        self.extract_button.setEnabled(not running and not self.extracting.busy)
        self.pause_button.setEnabled(self.job.can_pause)
        self.pause_button.setText("Resume" if self.job.pause_requested else "Pause")
        self.cancel_button.setEnabled(self.job.can_cancel)
        if self.state == State.DONE and self.tiles is None:
            problem = "the fine-tuned bundle is loaded (Sample widget); extract tiles again to train more"
        self.status.setText(self.state.value if problem is None or running else f"{self.state.value}: {problem}")

    # -- training ---------------------------------------------------------------------------
    def options(self) -> FinetuneOptions:
        """The job's options: the form, the output folder and intent, the device."""
        MODEL.require()
        unlabeled = self.unlabeled.line_edit.native.text().strip()
        return self.form.read(out=Path(str(self.out.value)), intent=self.intent.value,
                              device=self.device.currentText(), unlabeled=[Path(unlabeled)] if unlabeled else [])

    def start(self):
        from ..core.base.errors import HistodiffError

        if self.job.busy or self.extracting.busy:
            return
        try:
            problem = self._problem()
            if problem:
                raise HistodiffError(problem)
            opts = self.options()
        except Exception as e:  # noqa: BLE001
            notify_error(e, self.label_of)
            return
        from ..core.train.finetune import planned
        from ..core.train.loop import stage_written

        MODEL.training, self.out_dir = True, opts.out
        self.class_names = list(self.tiles.class_names)  # (loading the result clears self.tiles)
        self.n_classes = len(self.class_names)
        self.plot.reset()
        self.notes.clear()
        self._last, self._shown, self._stage_shown = None, 0.0, None
        stages = planned(opts)
        done = [s for s, n in stages if opts.intent == "resume" and stage_written(opts.out, s, n)]
        self.overall = OverallProgress(stages, done)
        self.progress.setRange(0, max(self.overall.total, 1))
        self.progress.setValue(self.overall.done)
        self.progress.setFormat(self.overall.text())
        self.activity = activity = _activity("histodiff fine-tune", self.overall.total, self.job.cancel)
        self.settings.save()  # what this run used, also when the panel is closed before a change
        activity.update(self.overall.done)

        overall = self.overall

        def release():
            self._release()
            if overall.done > activity.n:  # what the last throttled update left out
                activity.update(overall.done - activity.n)
            activity.close()  # also when the panel was closed meanwhile (no on_finish then)

        from functools import partial

        from ..core.jobs.finetune import finetune

        # the job checks the model (VQ, no UNet), the tiles and the output folder before it writes; in a
        # process it opens the loaded model from its folder
        opts.model = MODEL.model.path  # the job opens the model (the GUI holds no weights)
        self.job.start(finetune, opts, None, self.tiles, then=partial(with_model, opts.out, opts.device),
                       on_yield=self._event, on_done=self._done, on_finish=self._finished, on_release=release,
                       on_change=self._update)

    def toggle_pause(self):
        """Pause (after the current step: "pausing" until then) or resume; any time, in any order."""
        self.job.toggle_pause()

    def cancel(self):
        """Stop at the next step, also when paused or pausing; the checkpoint is kept."""
        self.job.cancel()

    def _extract_event(self, event):
        if event.stage == "warning":
            notify_warning(event.message, self.label_of)
            return
        if event.total:
            self.progress.setMaximum(event.total)
            self.progress.setValue(event.step)
            self.progress.setFormat(f"{event.stage}: %v / %m")

    def _event(self, event):
        """A training event: the overall progress (panel and activity dock) and the loss plot."""
        if event.stage == "warning":
            self.notes.add(event.message)  # in the panel and the log; counted in the run's one notification
            self.activity.set_description(f"histodiff fine-tune: {render(event.message, self.label_of)[:80]}")
            return
        overall = self.overall
        if overall.update(event.stage, event.step):
            self._last = (event.stage, event.step)
            if event.stage != self._stage_shown or time.monotonic() - self._shown >= SHOW_EVERY:
                self._show_progress()
        if event.loss is not None:
            self.plot.add(event.loss, event.stage, event.step, overall.totals.get(event.stage))

    def _show_progress(self):
        """The last step reported, in the panel and the activity dock (at most every SHOW_EVERY seconds)."""
        (stage, step), overall = self._last, self.overall
        self._shown = time.monotonic()
        self.progress.setValue(overall.done)
        self.progress.setFormat(overall.text(stage, step))
        if overall.done > self.activity.n:
            self.activity.update(overall.done - self.activity.n)
        if stage != self._stage_shown:
            self._stage_shown = stage
            self.activity.set_description(f"histodiff fine-tune: {stage}")

    def _done(self, result_and_model):
        self.result, model = result_and_model
        MODEL.set(model)
        self.overall.finish()
        self.progress.setValue(self.progress.maximum())
        self.progress.setFormat(f"done · 100% · {duration(self.overall.elapsed)}")
        counts = ", ".join(f"{c} {n}" for c, n in self.result.get("class_counts", {}).items())
        # the verdict: from this run, or (nothing to do) from what the bundle recorded
        from ..core.evaluate.verdict import from_meta, from_result

        verdict = self.result.get("verdict")
        if verdict is None:
            verdict = from_result(self.result, self.class_names) if "latent_classifier" in self.result \
                else from_meta(getattr(model, "meta", None) or {})
        self.show_verdict(verdict)
        if self.result.get("nothing_to_do"):
            text = render(self.result["message"], self.label_of) + f" (the bundle is loaded). {verdict.headline}"
        else:
            from ..core.train.pseudo import pseudo_summary

            counts += pseudo_summary(self.result)
            text = (f"fine-tuned bundle written to {self.out_dir} and loaded (tiles per class: {counts}). "
                    f"{verdict.headline}")
        self.summary = text
        self.notes.notify(render(text, self.label_of), warn=not verdict.ready)  # the run's one notification

    def show_verdict(self, verdict) -> None:
        """The verdict in the panel: headline and actions; the figures behind it one click away."""
        from html import escape

        actions = "".join(f"<li>{escape(a)}</li>" for a in verdict.actions)
        self.verdict.setText(f"<b>{escape(verdict.headline)}</b>" + (f"<ul>{actions}</ul>" if actions else ""))
        self.figures.setText("<br>".join(escape(d) for d in verdict.details))
        self.verdict.show()
        self.figures_button.setVisible(bool(verdict.details))
        self.figures.setVisible(self.figures_button.isChecked() and bool(verdict.details))

    def _show_figures(self, on: bool) -> None:
        self.figures_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.figures.setVisible(on)

    @staticmethod
    def _release():
        """The run has ended, also after the panel was closed."""
        MODEL.training = False

    def _finished(self):
        from ..core.base.outdir import is_marked

        self.activity.close()
        if self.state != State.DONE:
            self.progress.setValue(self.overall.done)
            self.progress.setFormat(f"{self.state.value} · {self.overall.text(left=False)}")
        if self.state == State.STOPPED:
            if is_marked(self.out_dir, "bundle"):
                self.intent.value = "resume"
                self.notes.notify(f"fine-tuning stopped; the checkpoint in {self.out_dir} is kept: press Start to "
                                  f"resume (\"{self.intent.label}\" is now resume)")
            else:
                self.notes.notify("fine-tuning stopped before anything was saved")

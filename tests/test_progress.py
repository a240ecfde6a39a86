"""Fine-tune progress as napari users expect: overall progress over the stages (panel and activity dock),
a finish summary of the classifiers, and a loss plot that keeps every stage."""

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_widgets import dock, fresh_model, run_finetune  # noqa: E402,F401 - fixtures and helpers


def test_overall_progress_counts_every_stage_and_estimates_the_time_left():
    from napari_histodiff.widgets.finetune import OverallProgress

    now = [0.0]
    p = OverallProgress([("finetune_unet", 10), ("latent_classifier", 20), ("selection_classifier", 10)],
                        clock=lambda: now[0])
    assert p.total == 40 and p.done == 0 and p.remaining is None
    seen = []
    for stage, n in (("finetune_unet", 10), ("latent_classifier", 20), ("selection_classifier", 10)):
        for step in range(1, n + 1):
            now[0] += 1.0
            assert p.update(stage, step)
            seen.append(p.fraction)
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert not p.update("finetune", 0)  # not a training stage: nothing changes

    # a resume: the UNet stage is already done; a later stage reporting completes the earlier ones
    p = OverallProgress([("finetune_unet", 10), ("finetune_decoder", 10), ("latent_classifier", 20)],
                        done=["finetune_unet"], clock=lambda: now[0])
    assert p.done == 10
    t0 = now[0]
    p.update("latent_classifier", 5)
    assert p.done == 25  # the decoder stage finished earlier
    now[0] = t0 + 10
    p.update("latent_classifier", 10)
    assert p.remaining == pytest.approx(10 * 10 / 5)  # 5 steps in 10 s, 10 steps left
    assert "75%" in p.text("latent_classifier", 10) and "left" in p.text("latent_classifier", 10)


def test_time_left_leaves_paused_time_out():
    """Issue 30, item 5: a pause of an hour does not make the rest of the run look an hour slower."""
    from napari_histodiff.widgets.finetune import OverallProgress

    now = [0.0]
    p = OverallProgress([("latent_classifier", 20)], clock=lambda: now[0])
    p.update("latent_classifier", 0)
    for step in range(1, 6):  # 5 steps, 2 s each
        now[0] += 2.0
        p.update("latent_classifier", step)
    assert p.remaining == pytest.approx(15 * 2.0)
    p.pause()
    now[0] += 3600.0
    assert p.remaining == pytest.approx(15 * 2.0)  # paused: the estimate stands still
    p.resume()
    now[0] += 2.0
    p.update("latent_classifier", 6)
    assert p.remaining == pytest.approx(14 * 2.0) and p.paused_for == 3600.0
    assert p.active() == pytest.approx(12.0) and p.elapsed == pytest.approx(3612.0)
    p.resume()  # resuming twice changes nothing
    assert p.paused_for == 3600.0


def test_a_run_shows_one_notification_with_its_notes(qtbot, monkeypatch):
    """Issue 30, item 5: a run's warnings go to the panel and the log, and its one notification counts them."""
    from qtpy.QtWidgets import QLabel

    from napari_histodiff.widgets._common import RunNotes

    shown = notifications(monkeypatch)
    label = QLabel()
    qtbot.addWidget(label)
    notes = RunNotes(label, {"n": "tiles"})
    for cls in ("tumour", "stroma", "fat", "mucosa"):
        notes.add(f"no tile kept for {cls}: raise {{opt:n}}")
    notes.notify("8 tiles written to out")
    assert shown == [("warning", "8 tiles written to out (4 notes in the panel)")]
    assert not label.isHidden() and label.text().count("<li>") == 4 and "raise &quot;tiles&quot;" in label.text()
    notes.clear()
    notes.notify("4 tiles written")
    assert shown[-1] == ("info", "4 tiles written") and label.isHidden()


def test_loss_plot_keeps_one_line_per_stage(qtbot):
    from napari_histodiff.widgets._plot import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    for step in range(1, 6):
        plot.add(1.0 / step, "finetune_unet", step, 5)
    for step in range(1, 4):
        plot.add(0.7, "latent_classifier", step, 3)
    assert plot.stages == ["finetune_unet", "latent_classifier"]
    assert [x for x, _ in plot.series["latent_classifier"]] == [6, 7, 8]  # after the first stage
    assert len(plot.values) == 8
    plot.resize(300, 160)
    plot.grab()  # paints axes, lines and legend without error
    plot.reset()
    assert plot.stages == [] and plot.values == []


def notifications(monkeypatch):
    """The info and warning notifications shown from now on, as (kind, text)."""
    import napari.utils.notifications as N

    shown = []
    monkeypatch.setattr(N, "show_info", lambda text: shown.append(("info", text)))
    monkeypatch.setattr(N, "show_warning", lambda text: shown.append(("warning", text)))
    return shown


STAGES = ["finetune_unet", "latent_classifier", "selection_classifier"]


def test_finetune_shows_overall_progress_activity_summary_and_every_stage(make_napari_viewer, qtbot,
                                                                          trained_bundle, fresh_model, tmp_path,
                                                                          monkeypatch):
    from napari.utils.progress import progress

    from napari_histodiff.widgets._common import State

    shown = notifications(monkeypatch)
    viewer = make_napari_viewer()
    w = run_finetune(qtbot, viewer, trained_bundle, fresh_model, tmp_path / "ft", unet_steps=4, classifier_steps=6,
                     selection_steps=4)
    activity = w.activity
    assert activity in progress._all_instances  # in napari's activity dock while it runs
    assert activity.total == w.progress.maximum() == 4 + 6 + 4 * 5  # the selection classifier: 5 folds
    seen = []
    w.progress.valueChanged.connect(
        lambda v: seen.append((v, activity.n, activity in progress._all_instances, w.progress.format())))
    qtbot.waitUntil(lambda: w.state in (State.DONE, State.FAILED), timeout=120_000)
    assert w.state == State.DONE
    values = [v for v, *_ in seen]
    assert values == sorted(values) and values[-1] == w.progress.maximum()
    assert [n for _, n, *_ in seen][-2] == 30 or activity.n == 30  # the dock reached the end too
    assert all(open_ for _, _, open_, _ in seen[:-1])
    assert any("%" in text and "elapsed" in text for *_, text in seen)
    assert activity not in progress._all_instances  # closed at the end
    assert w.progress.format().startswith("done") and "100%" in w.progress.format()
    # one notification for the run (issue 30, item 5): where the bundle is and the verdict
    assert len(shown) == 1 and "fine-tuned bundle written" in shown[0][1], shown
    assert w.verdict.text() and w.verdict.isVisibleTo(w)
    # the loss plot kept every stage
    assert w.plot.stages == STAGES
    assert len(w.plot.series["latent_classifier"]) == 6


def test_cancel_closes_the_activity_and_a_resume_counts_finished_stages(make_napari_viewer, qtbot,
                                                                        trained_bundle, fresh_model, tmp_path):
    from napari.utils.progress import progress

    from napari_histodiff.widgets._common import State

    viewer = make_napari_viewer()
    w = run_finetune(qtbot, viewer, trained_bundle, fresh_model, tmp_path / "ft", unet_steps=3,
                     classifier_steps=100000, selection_steps=4)
    qtbot.waitUntil(lambda: w.progress.format().startswith("latent_classifier"), timeout=60_000)
    activity = w.activity
    assert activity in progress._all_instances
    activity.cancel()  # the activity dock's Cancel button cancels the job
    qtbot.waitUntil(lambda: w.state == State.STOPPED, timeout=60_000)
    assert activity not in progress._all_instances
    assert w.progress.format().startswith("stopped")

    assert w.intent.value == "resume"
    w.start()  # the UNet stage is already done: it counts from the start
    assert w.overall.done == 3 and w.progress.value() == 3 and w.activity.n == 3
    w.cancel()
    qtbot.waitUntil(lambda: w.state == State.STOPPED, timeout=60_000)
    assert w.activity not in progress._all_instances


def test_near_chance_guidance_classifier_warns(make_napari_viewer, fresh_model, trained_bundle, monkeypatch):
    from napari_histodiff import load_bundle
    from napari_histodiff.widgets.finetune import OverallProgress, classifier_summary

    history = [[10, {"acc_t0": 0.55, "acc_t250": 0.5, "acc_t500": 0.5, "acc_t750": 0.45}]]
    result = {"class_counts": {"a": 10, "b": 10}, "latent_classifier": {"steps": 10, "history": history},
              "selection_classifier": {"steps": 10, "history": [], "best_heldout_acc": 0.9}}
    text, near = classifier_summary(result, 2)
    assert near and "55% at t=0" in text and "45% at t=750" in text and "90%" in text
    good = {**result, "latent_classifier": {"history": [[10, {"acc_t0": 0.95, "acc_t750": 0.6}]]}}
    assert not classifier_summary(good, 2)[1]
    assert classifier_summary(result, 4)[1] is False  # 55% is well above chance (25%) for 4 classes
    assert "90% (best)" in text
    ensemble = {**result, "selection_classifier": {"history": [], "best_heldout_acc": 0.9, "folds": 5}}
    assert "90% (out of fold)" in classifier_summary(ensemble, 2)[0]

    shown = notifications(monkeypatch)
    viewer = make_napari_viewer()
    w = dock(viewer, "Fine-tune")
    w.out_dir, w.n_classes, w.overall = trained_bundle, 2, OverallProgress([("latent_classifier", 10)])
    w.class_names = ["a", "b"]
    w._done((result, load_bundle(trained_bundle, device="cpu")))
    assert [kind for kind, _ in shown] == ["warning"]
    text = shown[0][1]  # the run's one notification: not good enough, and why (widgets' labels, no {opt:...})
    assert "fine-tuned bundle written" in text and "Not good enough" in text and "{opt:" not in text

"""The HistoDiffusion dock (issue 15, item 1, "Fits a 1280 x 800 screen"): the panels as tabs in one
dock, each scrolling in its tab, so that napari fits a 1280 x 800 screen (pytest-qt, xvfb)."""

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_widgets import PLUGIN, fresh_model  # noqa: F401 (fresh_model: an autouse fixture)

SCREEN = (1280, 800)
CHROME = 150  # menu bar, dock title bar, status bar and window frame
CANVAS_MIN = 450  # what the canvas and napari's left-hand docks need at least
TITLES = ("Load model", "Annotate", "Fine-tune", "Sample", "Review & export")


def settle(qtbot, ms=50):
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    qtbot.wait(ms)


def shown_at_1280x800(make_napari_viewer, qtbot):
    """A shown viewer with the annotated demo image and the HistoDiffusion dock, its window 1280 x 800."""
    from napari_histodiff._sample_data import demo_tissue_annotated

    viewer = make_napari_viewer(show=True)
    for data, kwargs, kind in demo_tissue_annotated():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "HistoDiffusion")
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(*SCREEN)
    settle(qtbot, 200)
    return viewer, dock, widget, window


def test_the_dock_holds_the_panels_as_tabs_in_workflow_order(make_napari_viewer):
    from napari_histodiff.widgets.classes import ClassesWidget
    from napari_histodiff.widgets.dock import HistoDiffusionWidget
    from napari_histodiff.widgets.finetune import FinetuneWidget
    from napari_histodiff.widgets.load import LoadWidget
    from napari_histodiff.widgets.review import ReviewWidget
    from napari_histodiff.widgets.sample import SampleWidget

    _, w = make_napari_viewer().window.add_plugin_dock_widget(PLUGIN, "HistoDiffusion")
    assert isinstance(w, HistoDiffusionWidget)
    tabs = w.tabs
    shown = [tabs.tabText(i).replace("&&", "&") for i in range(tabs.count())]  # "&&": a plain "&"
    assert shown == list(TITLES)
    kinds = [type(tabs.widget(i)) for i in range(tabs.count())]
    assert kinds == [LoadWidget, ClassesWidget, FinetuneWidget, SampleWidget, ReviewWidget]
    assert [w.load, w.classes, w.finetune, w.sample, w.review] == [tabs.widget(i) for i in range(5)]
    assert all(tabs.tabToolTip(i) for i in range(tabs.count()))
    assert w.show_panel("sample") is w.sample and tabs.currentWidget() is w.sample
    # advanced options stay collapsed, as in the separate panels
    folded = [panel.form for panel in w.panels if getattr(getattr(panel, "form", None), "more_button", None)]
    assert len(folded) >= 2  # Fine-tune and Sample
    for form in folded:
        assert not form.more_button.isChecked()
        assert all(not field.isVisibleTo(form) for _, field in form._more_rows)


def test_the_dock_fits_a_1280x800_screen(make_napari_viewer, qtbot):
    _, dock, w, window = shown_at_1280x800(make_napari_viewer, qtbot)
    room = (SCREEN[0] - CANVAS_MIN, SCREEN[1] - CHROME)
    for name, hint in (("sizeHint", w.sizeHint()), ("minimumSizeHint", w.minimumSizeHint()),
                       ("dock sizeHint", dock.sizeHint()), ("dock minimumSizeHint", dock.minimumSizeHint())):
        assert hint.height() <= room[1], (name, hint)
        assert hint.width() <= room[0], (name, hint)
    # the whole window can be 1280 x 800 with the dock open, and is
    min_window = window.minimumSizeHint()
    assert min_window.width() <= SCREEN[0] and min_window.height() <= SCREEN[1], min_window
    assert (window.width(), window.height()) == SCREEN
    assert window.rect().contains(dock.geometry()), dock.geometry()
    # the tab bar is not cut: every title shows in full
    bar = w.tabs.tabBar()
    assert bar.sizeHint().width() <= w.tabs.width(), (bar.sizeHint(), w.tabs.width())


#: the buttons and progress that stay in view below a panel's scrolling form (issue 30, item 5)
PINNED = {"finetune": ["start_button", "pause_button", "cancel_button", "progress", "status"],
          "sample": ["start_button", "cancel_button", "progress", "status"]}


def test_every_tab_scrolls_and_its_buttons_are_reachable(make_napari_viewer, qtbot):
    from qtpy.QtCore import QPoint, QRect
    from qtpy.QtWidgets import QPushButton, QScrollArea

    _, _, w, window = shown_at_1280x800(make_napari_viewer, qtbot)
    wanted = {"load": ["load_button"],
              "classes": ["add_button", "rename_button", "color_button", "remove_button", "assign_button"],
              "finetune": ["extract_button"], "sample": [], "review": ["open_button", "export_button"]}
    for attr, names in wanted.items():
        panel = w.show_panel(attr)
        settle(qtbot)
        areas = [a for a in panel.findChildren(QScrollArea) if a.widget() is panel.page]
        assert len(areas) == 1, attr  # the panel's page scrolls inside its tab
        area = areas[0]
        assert area.height() <= SCREEN[1] - CHROME + 60 and area.isVisible(), (attr, area.size())
        buttons = [getattr(panel, n) for n in names]
        buttons += [b for b in panel.page.findChildren(QPushButton) if b not in buttons and b.isVisibleTo(panel)]
        viewport = area.viewport()
        for b in buttons:
            assert area.isAncestorOf(b), (attr, b.text())
            area.ensureWidgetVisible(b, 0, 0)
            settle(qtbot, 0)
            top_left = b.mapTo(viewport, QPoint(0, 0))
            assert viewport.rect().contains(QRect(top_left, b.size())), (attr, b.text(), top_left)
            on_window = b.mapTo(window, QPoint(0, 0))
            assert window.rect().contains(QRect(on_window, b.size())), (attr, b.text(), on_window)
        # the primary buttons and the progress are in view without scrolling, wherever the form is scrolled
        for position in (0, area.verticalScrollBar().maximum()):
            area.verticalScrollBar().setValue(position)
            settle(qtbot, 0)
            for name in PINNED.get(attr, []):
                control = getattr(panel, name)
                assert not area.isAncestorOf(control) and control.isVisible(), (attr, name)
                on_window = control.mapTo(window, QPoint(0, 0))
                assert window.rect().contains(QRect(on_window, control.size())), (attr, name, on_window)
                assert control.height() >= 10, (attr, name, control.size())


def test_closing_the_dock_cancels_the_panels_jobs(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, "HistoDiffusion")
    closed = []
    w.finetune.job.close = lambda: closed.append("training")
    w.finetune.extracting.close = lambda: closed.append("extraction")
    viewer.window.remove_dock_widget(dock)
    settle(qtbot)
    assert sorted(set(closed)) == ["extraction", "training"]


def test_a_screenshot_at_1280x800(make_napari_viewer, qtbot, tmp_path):
    """The window at 1280 x 800 with the Fine-tune tab (the tallest panel) in front."""
    _, _, w, window = shown_at_1280x800(make_napari_viewer, qtbot)
    w.show_panel("finetune")
    settle(qtbot, 200)
    path = tmp_path / "dock_1280x800.png"
    assert window.grab().save(str(path))
    from qtpy.QtGui import QImage

    image = QImage(str(path))
    ratio = window.devicePixelRatioF()
    assert (image.width(), image.height()) == (round(SCREEN[0] * ratio), round(SCREEN[1] * ratio))


def answer_close_question(qtbot, button: str, answered: list) -> None:
    """Click ``button`` in the close question once it shows (the real QMessageBox, modal)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    def click():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(50, click)
            return
        answered.append(box.text())
        next(b for b in box.buttons() if b.text() == button).click()

    QTimer.singleShot(50, click)


def test_closing_asks_and_a_kept_job_runs_on_and_comes_back(make_napari_viewer, qtbot, monkeypatch):
    """Issue 30, item 5: the close button asks; "Keep running" keeps the job (its callbacks too) and opening
    the panel again gives it back; "Stop it" cancels; a kept panel is freed when its job ends."""
    from qtpy.QtWidgets import QDockWidget

    from test_job_control import Script

    from napari_histodiff.widgets import _common as C
    from napari_histodiff.widgets._common import State

    monkeypatch.setenv("HISTODIFF_ON_CLOSE", "ask")
    viewer = make_napari_viewer()

    def close(widget, button):
        answered = []
        answer_close_question(qtbot, button, answered)
        panel, = [d for d in viewer.window._qt_window.findChildren(QDockWidget) if d.widget() is widget]
        panel.destroyOnClose()  # the panel's close button
        assert answered == ["The fine-tuning is still running."]

    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    script, done = Script(steps=3), []
    w.job.start(script, on_done=done.append)
    close(w, "Keep running")
    assert w.job.state == State.RUNNING and w.parent() is None and w in C._KEPT.values()
    script.step()
    qtbot.waitUntil(lambda: script.ran == 1, timeout=10_000)
    _, again = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert again is w and w.parent() is not None and not C._KEPT  # the running panel, docked again
    script.step(3)
    qtbot.waitUntil(lambda: w.job.state == State.DONE, timeout=10_000)
    assert done == ["result"]  # its result was used

    script = Script(steps=3)
    w.job.start(script)
    close(w, "Stop it")
    assert w.job.state == State.CANCELLING
    script.step()  # the step running when asked ends; the job stops there
    qtbot.waitUntil(lambda: w.job.state == State.STOPPED, timeout=10_000)
    assert script.cleaned.is_set() and not C._KEPT  # cancelled: its clean-up ran
    _, fresh = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert fresh is not w

    script = Script(steps=1)
    fresh.job.start(script)
    close(fresh, "Keep running")
    assert list(C._KEPT.values()) == [fresh]
    script.step(2)
    qtbot.waitUntil(lambda: not C._KEPT, timeout=10_000)  # ended: the kept panel is let go
    assert fresh.job.state == State.DONE

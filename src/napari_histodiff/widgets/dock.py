"""HistoDiffusion: the panels in one dock, as tabs in workflow order (Load model, Annotate, Fine-tune,
Sample, Review & export).

Four docks stacked in napari's side area need 1,700-2,070 px of height; as tabs, one panel shows at a
time and each scrolls in its tab, so the window fits a 1280 x 800 screen. The panels are the same
widgets as the separate dock widgets (which stay available)."""

from __future__ import annotations

from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from ._common import Reopens, cancel_on_close
from .classes import ClassesWidget
from .finetune import FinetuneWidget
from .load import LoadWidget
from .review import ReviewWidget
from .sample import SampleWidget

#: (attribute, tab title, panel class, what the tab's tooltip says), in workflow order; the titles are the
#: separate widgets' names (messages name them), "&&" is a plain "&" in a tab title
TABS = (
    ("load", "Load model", LoadWidget, "Load model: a bundle, a diffusers pipeline or a CompVis checkpoint"),
    ("classes", "Annotate", ClassesWidget, "Annotate: name the classes of an annotation layer and give them colours"),
    ("finetune", "Fine-tune", FinetuneWidget, "Fine-tune the model on tiles cut from annotated regions"),
    ("sample", "Sample", SampleWidget, "Draw synthetic tiles of a class (or variations of tiles)"),
    ("review", "Review && export", ReviewWidget, "Accept or reject the drawn tiles and export a training set"),
)


class HistoDiffusionWidget(QWidget, metaclass=Reopens):
    """One dock with the panels as tabs; each panel scrolls within its tab (``panel.page`` is its
    scrolling page). ``self.tabs`` is the QTabWidget; the panels are ``self.load``, ``self.classes``,
    ``self.finetune``, ``self.sample`` and ``self.review``."""

    def __init__(self, napari_viewer=None):
        super().__init__()
        self.viewer = napari_viewer
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)  # no frame around the page: the dock is narrow
        self.tabs.setUsesScrollButtons(True)  # a narrow dock scrolls the tab bar instead of widening
        self.panels = []
        for attr, title, cls, tip in TABS:
            panel = cls(napari_viewer)
            setattr(self, attr, panel)
            self.panels.append(panel)
            index = self.tabs.addTab(panel, title)
            self.tabs.setTabToolTip(index, tip)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        # A panel watches its own dock; here the panels stay in the tab widget, so this dock leaving napari
        # (its close button, remove_dock_widget) asks whether their running jobs keep running (the whole dock
        # is then given back when it is opened again) or stop; the viewer closing stops them.
        watches = [panel._close_watch for panel in self.panels if hasattr(panel, "_close_watch")]
        cancel_on_close(self, *[job for watch in watches for job in watch.jobs()], keep=True)

    def sizeHint(self):
        """Wide enough for all the tab titles (a narrower dock scrolls the tab bar)."""
        hint = super().sizeHint()
        hint.setWidth(max(hint.width(), self.tabs.tabBar().sizeHint().width() + 4))
        return hint

    def show_panel(self, attr: str) -> QWidget:
        """Bring a panel's tab to the front ("load", "classes", "finetune", "sample" or "review"); returns the panel."""
        panel = getattr(self, attr)
        self.tabs.setCurrentWidget(panel)
        return panel

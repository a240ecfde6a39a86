"""The audit's quality report (``report.html``, core.evaluate.report) shown in a napari dock."""

from __future__ import annotations

import base64
import weakref
from pathlib import Path

from qtpy.QtCore import QUrl
from qtpy.QtGui import QTextDocument
from qtpy.QtWidgets import QTextBrowser

TITLE = "Quality report"
WIDTH = 900  # px
_VIEWS = weakref.WeakKeyDictionary()  # viewer -> its report view


class ReportView(QTextBrowser):
    """A read-only HTML view that also shows the report's embedded ``data:image/png;base64`` plots."""

    def __init__(self):
        super().__init__()
        self.setOpenExternalLinks(True)
        # the report's tables need this width to stay readable: a narrow panel scrolls sideways
        self.setLineWrapMode(QTextBrowser.LineWrapMode.FixedPixelWidth)
        self.setLineWrapColumnOrWidth(WIDTH)
        self.path = None

    def loadResource(self, kind, url: QUrl):
        text = url.toString()
        if kind == QTextDocument.ResourceType.ImageResource and text.startswith("data:image/"):
            from qtpy.QtGui import QImage

            image = QImage()
            image.loadFromData(base64.b64decode(text.split(",", 1)[1]))
            return image
        return super().loadResource(kind, url)

    def show_file(self, path) -> None:
        self.path = Path(path)
        self.setHtml(self.path.read_text(encoding="utf-8"))


def show_report(viewer, path) -> ReportView:
    """Show ``path`` in the viewer's report panel (made on first use, then reused and raised)."""
    from qtpy.QtWidgets import QDockWidget

    view = _VIEWS.get(viewer)
    try:
        removed = view is None or view.parent() is None  # napari unparents the widget of a closed panel
    except RuntimeError:  # deleted with its panel
        removed = True
    if removed:
        view = ReportView()
        viewer.window.add_dock_widget(view, name=TITLE, area="right", tabify=True)
        _VIEWS[viewer] = view
    view.show_file(path)
    dock = view.parent()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parent()
    if dock is not None:
        dock.show()
        dock.raise_()
    return view

"""A small live loss plot (QPainter polyline; no plotting library needed)."""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget


class LossPlot(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.values: list[float] = []
        self.title = "loss"
        self.setMinimumHeight(110)

    def reset(self, title: str = "loss") -> None:
        self.values, self.title = [], title
        self.update()

    def add(self, value: float) -> None:
        self.values.append(float(value))
        if len(self.values) % 5 == 0 or len(self.values) < 5:
            self.update()

    def paintEvent(self, event):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h, m = self.width(), self.height(), 6
        p.setPen(QPen(Qt.GlobalColor.gray))
        p.drawRect(0, 0, w - 1, h - 1)
        vals = self.values[-2000:]
        label = self.title if not vals else f"{self.title}: {vals[-1]:.4f} ({len(self.values)} steps)"
        p.drawText(m, 14, label)
        if len(vals) > 1:
            lo, hi = min(vals), max(vals)
            span = (hi - lo) or 1.0
            pts = [QPointF(m + i * (w - 2 * m) / (len(vals) - 1), h - m - (v - lo) / span * (h - 24 - m))
                   for i, v in enumerate(vals)]
            p.setPen(QPen(Qt.GlobalColor.cyan, 1.5))
            p.drawPolyline(QPolygonF(pts))
        p.end()

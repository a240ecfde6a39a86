"""A small live loss plot (QPainter polylines; no plotting library needed).

Every stage of a run keeps its own line (one colour each, named in the legend); the x axis is the
step counted over the whole run (stage after stage), the y axis the loss."""

from __future__ import annotations

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

COLORS = ("#00bcd4", "#ff9800", "#8bc34a", "#e91e63", "#9c27b0", "#ffeb3b")
MAX_POINTS = 1500  # drawn per line (longer lines are thinned)


def _number(v: float) -> str:
    return f"{v:.3g}"


class LossPlot(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.series: dict[str, list[tuple[int, float]]] = {}  # stage -> [(run step, loss)]
        self._offsets: dict[str, int] = {}  # stage -> run step of its step 0
        self._end = 0  # run step where the next new stage starts
        self.title = "loss"
        self.setMinimumHeight(150)

    # -- data --
    def reset(self, title: str = "loss") -> None:
        """Forget every line (a new run)."""
        self.series, self._offsets, self._end, self.title = {}, {}, 0, title
        self.update()

    @property
    def values(self) -> list[float]:
        """Every loss of the run, stage after stage."""
        return [v for points in self.series.values() for _, v in points]

    @property
    def stages(self) -> list[str]:
        """The lines, in the order their stages ran."""
        return list(self.series)

    def add(self, value: float, stage: str | None = None, step: int | None = None, total: int | None = None) -> None:
        """One loss of ``stage`` (default: the current line) at its ``step`` (default: the next one);
        ``total`` (the stage's step count) places the next stage after this one's end."""
        stage = stage or self.title
        if stage not in self.series:
            self.series[stage] = []
            self._offsets[stage] = self._end
        points = self.series[stage]
        if step is None:
            step = (points[-1][0] - self._offsets[stage] + 1) if points else 1
        x = self._offsets[stage] + int(step)
        points.append((x, float(value)))
        self._end = max(self._end, x, self._offsets[stage] + int(total or 0))
        self.title = stage
        n = len(points)
        if n % 5 == 0 or n < 5:
            self.update()

    # -- drawing --
    def paintEvent(self, event):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        fm = p.fontMetrics()
        th = fm.height()
        left, right, top, bottom = fm.horizontalAdvance("0.000e-0") + 8, 8, th + 6, th + 8
        plot = QRectF(left, top, max(10, w - left - right), max(10, h - top - bottom))
        grey = QPen(QColor("#9e9e9e"))
        p.setPen(grey)
        p.drawRect(plot)
        p.drawText(QRectF(0, h - th - 2, w, th), Qt.AlignmentFlag.AlignHCenter, "step")
        p.drawText(QRectF(2, 2, left, th), Qt.AlignmentFlag.AlignLeft, "loss")
        points = [pt for pts in self.series.values() for pt in pts]
        if not points:
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter, "no training yet")
            p.end()
            return
        x_hi = max(self._end, max(x for x, _ in points), 1)
        lo, hi = min(v for _, v in points), max(v for _, v in points)
        span = (hi - lo) or 1.0
        # axis labels: loss range at the left, step range at the bottom
        p.drawText(QRectF(0, plot.top(), left - 4, th), Qt.AlignmentFlag.AlignRight, _number(hi))
        p.drawText(QRectF(0, plot.bottom() - th, left - 4, th), Qt.AlignmentFlag.AlignRight, _number(lo))
        p.drawText(QRectF(plot.left(), plot.bottom() + 1, 60, th), Qt.AlignmentFlag.AlignLeft, "0")
        p.drawText(QRectF(plot.right() - 60, plot.bottom() + 1, 60, th), Qt.AlignmentFlag.AlignRight, str(x_hi))

        def at(x, v):
            return QPointF(plot.left() + x / x_hi * plot.width(), plot.bottom() - (v - lo) / span * plot.height())

        legend_y = plot.top() + 2
        for i, (stage, pts) in enumerate(self.series.items()):
            color = QColor(COLORS[i % len(COLORS)])
            stride = max(1, len(pts) // MAX_POINTS)
            shown = pts[::stride] + ([pts[-1]] if (len(pts) - 1) % stride else [])
            p.setPen(QPen(color, 1.5))
            if len(shown) > 1:
                p.drawPolyline(QPolygonF([at(x, v) for x, v in shown]))
            else:
                p.drawEllipse(at(*shown[0]), 1.5, 1.5)
            # legend, top right: the stage and its last loss
            text = f"{stage}: {pts[-1][1]:.4f}"
            tw = fm.horizontalAdvance(text)
            x0 = plot.right() - tw - 18
            p.fillRect(QRectF(x0, legend_y + th / 2 - 2, 10, 4), color)
            p.drawText(QRectF(x0 + 14, legend_y, tw + 2, th), Qt.AlignmentFlag.AlignLeft, text)
            legend_y += th
        p.end()

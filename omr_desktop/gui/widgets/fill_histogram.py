"""A histogram of one sheet's bubble fills with the profile's thresholds drawn in."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

from omr_desktop.engine.profile import DecisionSettings

# 50 bins of 0.02 over the 0-1 fill scale: fine enough to separate light
# marks (about 0.25-0.40) from erasure residue (0.10-0.20).
BIN_EDGES = np.linspace(0.0, 1.0, 51)

# Threshold to (colour, label, label height as a share of the plot): the
# heights differ so that labels of nearby lines do not overlap.
_THRESHOLD_STYLE = {
    "min_fill": ("#1b7f3b", "min fill", 0.56),
    "solid_fill": ("#2f5d8a", "solid", 0.74),
    "erased_low": ("#7d5ba6", "erased", 0.92),
    "erased_high": ("#7d5ba6", "erased", 0.74),
}


class FillHistogram(pg.PlotWidget):  # type: ignore[misc]  # pyqtgraph has no type hints
    """How many bubbles of the sheet have each fill, and where the thresholds are.

    An editor sees why a light mark was missed: its bar sits left of the
    ``min fill`` line.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, background="w")
        self.setMinimumHeight(150)
        self.setLabel("bottom", "fill (0 paper, 1 solid ink)")
        self.setLabel("left", "bubbles")
        self.setLogMode(y=False)
        self.setXRange(0.0, 1.0, padding=0.02)
        self.showGrid(x=True, y=True, alpha=0.2)
        self.setAccessibleName("Fill distribution")

    def show_fills(
        self, fills: Sequence[float], decision: DecisionSettings, profile_name: str
    ) -> None:
        self.clear()
        counts, _edges = np.histogram(np.clip(fills, 0.0, 1.0), bins=BIN_EDGES)
        centres = (BIN_EDGES[:-1] + BIN_EDGES[1:]) / 2
        bars = pg.BarGraphItem(
            x=centres, height=counts, width=0.018, brush="#8a9bb0", pen=None
        )
        self.addItem(bars)
        for name, (colour, label, height) in _THRESHOLD_STYLE.items():
            value = float(getattr(decision, name))
            line = pg.InfiniteLine(
                pos=value,
                angle=90,
                pen=pg.mkPen(colour, width=2),
                label=label,
                labelOpts={"position": height, "color": colour},
            )
            self.addItem(line)
        self.setTitle(
            f"Bubble fills, thresholds of {profile_name or 'the profile'}", size="9pt"
        )

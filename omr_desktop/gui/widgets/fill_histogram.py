"""A histogram of one sheet's bubble fills with the profile's thresholds drawn in."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

from omr_desktop.engine.profile import DecisionSettings

# 50 bins of 0.02 over the 0-1 fill scale: fine enough to separate light
# marks (about 0.25-0.40) from erasure residue (0.10-0.20).
BIN_EDGES = np.linspace(0.0, 1.0, 51)

# Fills from here on count as some mark, for the scale of the count axis.
MARKED_FROM = 0.1

# Threshold to (colour, label, label height as a share of the plot): the
# heights differ so that labels of nearby lines do not overlap.
_THRESHOLD_STYLE = {
    "min_fill": ("#1b7f3b", "min fill", 0.56),
    "solid_fill": ("#2f5d8a", "solid", 0.80),
}
# The band of erasure residue, from erased_low to erased_high, is shaded.
_ERASED_COLOUR = (125, 91, 166)


class FillHistogram(pg.PlotWidget):  # type: ignore[misc]  # pyqtgraph has no type hints
    """How many bubbles of the sheet have each fill, and where the thresholds are.

    An editor sees why a light mark was missed: its bar sits left of the
    ``min fill`` line.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, background="w")
        self.setMinimumHeight(150)
        self.setLabel("bottom", "fill: 0 paper, 1 ink")
        self.setLabel("left", "bubbles")
        self.setLogMode(y=False)
        self.setXRange(0.0, 1.0, padding=0.02)
        self.showGrid(x=True, y=True, alpha=0.2)
        self.setAccessibleName("Fill distribution")

    def show_empty(self) -> None:
        """Show no fills and no thresholds, as when no sheet is open."""
        self.clear()
        self.setTitle("")

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
        self._fit_marked_bubbles(centres, counts)
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
        self._shade_erased_band(decision)
        self.setTitle(f"Thresholds: {profile_name or 'the profile'}", size="9pt")

    def _shade_erased_band(self, decision: DecisionSettings) -> None:
        low, high = float(decision.erased_low), float(decision.erased_high)
        band = pg.LinearRegionItem(
            values=(low, high),
            movable=False,
            brush=pg.mkBrush(*_ERASED_COLOUR, 45),
            pen=pg.mkPen(*_ERASED_COLOUR, 120),
        )
        self.addItem(band)
        # Below the top, where the count of the blank bubbles is written.
        label = pg.TextItem("erased", color=_ERASED_COLOUR, anchor=(0.5, 0.5))
        label.setPos((low + high) / 2, self.viewRange()[1][1] * 0.6)
        self.addItem(label)

    def _fit_marked_bubbles(
        self, centres: npt.NDArray[np.float64], counts: npt.NDArray[np.int64]
    ) -> None:
        """Scale the count axis to the bubbles with some fill.

        The blank bubbles of a sheet outnumber its marks a hundred to one,
        so on a scale that fits them a light mark's bar is a pixel high.
        Their bars run off the top, labelled with their counts.
        """
        marked = counts[centres >= MARKED_FROM]
        top = max(int(marked.max()) if marked.size else 0, 1) * 1.3 + 1
        self.setYRange(0, top, padding=0)
        for centre, count in zip(centres, counts, strict=True):
            if count > top:
                label = pg.TextItem(f"{int(count)}", color="#44546a", anchor=(0, 0))
                label.setPos(float(centre) + 0.012, top)
                self.addItem(label)

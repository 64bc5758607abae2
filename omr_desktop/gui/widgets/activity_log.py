"""A view of a task's activity log that follows new rows."""

from __future__ import annotations

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from omr_desktop.gui.models.activity_log_model import (
    ELAPSED_COLUMN,
    MESSAGE_COLUMN,
    PERCENTAGE_COLUMN,
    TIME_COLUMN,
    ActivityLogModel,
)

# The widest text each fixed column shows, measured once to size it, so
# appending a row never re-measures the whole column.
_WIDEST_TEXT = {
    TIME_COLUMN: "12:59:59 PM",
    ELAPSED_COLUMN: "23h 59m 59s",
    PERCENTAGE_COLUMN: "Of stage",
}
_CELL_PADDING_PX = 16


class ActivityLogView(QTableView):
    """Show an ActivityLogModel, one text line per row.

    While the view is scrolled to the last row, new rows scroll into view.
    Once the editor scrolls up, the view stays where the editor left it
    until the editor scrolls back to the bottom.
    """

    def __init__(self, model: ActivityLogModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._following = True
        self.setModel(model)
        self._init_appearance()
        scroll_bar = self.verticalScrollBar()
        scroll_bar.valueChanged.connect(self._on_scroll_bar_value_changed)
        scroll_bar.rangeChanged.connect(self._on_scroll_bar_range_changed)

    def _init_appearance(self) -> None:
        self.setAccessibleName("Activity log")
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.setAlternatingRowColors(True)
        rows = self.verticalHeader()
        rows.hide()
        # Fixed row heights: the view never measures rows as the log grows.
        rows.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        rows.setDefaultSectionSize(self.fontMetrics().height() + 6)
        columns = self.horizontalHeader()
        columns.setHighlightSections(False)
        for column, text in _WIDEST_TEXT.items():
            columns.setSectionResizeMode(column, QHeaderView.ResizeMode.Fixed)
            width = self.fontMetrics().horizontalAdvance(text) + _CELL_PADDING_PX
            columns.resizeSection(column, width)
        columns.setSectionResizeMode(MESSAGE_COLUMN, QHeaderView.ResizeMode.Stretch)

    def is_following(self) -> bool:
        """Return True while new rows scroll into view."""
        return self._following

    @Slot(int)
    def _on_scroll_bar_value_changed(self, value: int) -> None:
        self._following = value >= self.verticalScrollBar().maximum()

    @Slot(int, int)
    def _on_scroll_bar_range_changed(self, minimum: int, maximum: int) -> None:
        if self._following:
            self.verticalScrollBar().setValue(maximum)

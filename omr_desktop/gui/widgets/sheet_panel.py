"""Panel C's body: the sheet image beside its answers and fill histogram."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QItemSelection, Qt, Signal, Slot
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from omr_desktop.db.queries import SheetDetail
from omr_desktop.engine.profile import DecisionSettings
from omr_desktop.gui.models.answers_model import AnswersTableModel
from omr_desktop.gui.widgets.fill_histogram import FillHistogram
from omr_desktop.gui.widgets.sheet_view import BubbleOverlay, SheetView


class SheetPanel(QWidget):
    """Show one sheet side by side: image with overlay, answers, fill histogram.

    Signals:
        correction_requested(str, str): the editor typed a corrected answer
            (question, answer).
    """

    correction_requested = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.sheet_view = SheetView(self)
        self.answers_model = AnswersTableModel(self)
        self.answers_view = QTableView(self)
        self.histogram = FillHistogram(self)
        self._init_answers_view()
        self._init_layout()
        self.answers_model.correction_requested.connect(self.correction_requested)
        self.detail: SheetDetail | None = None

    def _init_answers_view(self) -> None:
        view = self.answers_view
        view.setModel(self.answers_model)
        view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        view.verticalHeader().hide()
        view.verticalHeader().setDefaultSectionSize(view.fontMetrics().height() + 6)
        # Each column as wide as its header and values, the reason taking
        # the rest: equal widths clipped "Confidence" in a narrow panel.
        header = view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        view.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
        )
        view.setAccessibleName("Answers")
        view.selectionModel().selectionChanged.connect(
            self._on_answers_view_selection_changed
        )

    def _init_layout(self) -> None:
        right = QSplitter(Qt.Orientation.Vertical, self)
        right.addWidget(self.answers_view)
        right.addWidget(self.histogram)
        right.setStretchFactor(0, 3)
        right.setStretchFactor(1, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.addWidget(self.sheet_view)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)

    def show_detail(
        self,
        detail: SheetDetail,
        image: QImage | None,
        overlays: Sequence[BubbleOverlay],
        decision: DecisionSettings,
    ) -> None:
        """Show a loaded sheet; ``image`` is None when the file cannot be read."""
        self.detail = detail
        self.answers_model.set_answers(detail.answers)
        if image is None or image.isNull():
            self.sheet_view.show_message(f"Cannot read the image\n{detail.image_path}")
        else:
            self.sheet_view.show_sheet(image, overlays)
        self.histogram.show_fills(detail.fills or (), decision, detail.profile_name)

    def show_message(self, text: str) -> None:
        self.detail = None
        self.answers_model.set_answers(())
        self.sheet_view.show_message(text)
        self.histogram.show_empty()

    @Slot(QItemSelection, QItemSelection)
    def _on_answers_view_selection_changed(
        self, selected: QItemSelection, deselected: QItemSelection
    ) -> None:
        rows = self.answers_view.selectionModel().selectedRows()
        if rows:
            question = self.answers_model.answer(rows[0].row()).question
            self.sheet_view.center_on_question(question)

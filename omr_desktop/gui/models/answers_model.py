"""Panel C's answers table: one row per question; the corrected answer is editable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QBrush, QColor

from omr_desktop.db.queries import AnswerDetail

AnyIndex = QModelIndex | QPersistentModelIndex

HEADERS = ("Question", "Raw", "Corrected", "Confidence", "Reason")
CORRECTED_COLUMN = 2
LOW_CONFIDENCE_BRUSH = QBrush(QColor(255, 226, 170))
MANUAL_BRUSH = QBrush(QColor(205, 228, 255))


class AnswersTableModel(QAbstractTableModel):
    """The stored answers of one sheet.

    Editing the Corrected cell does not write anything: it emits
    ``correction_requested``, and the window stores the correction and
    reloads the sheet.

    Signals:
        correction_requested(str, str): question and the editor's answer.
    """

    correction_requested = Signal(str, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._answers: list[AnswerDetail] = []

    def set_answers(self, answers: Sequence[AnswerDetail]) -> None:
        self.beginResetModel()
        self._answers = list(answers)
        self.endResetModel()

    def answer(self, row: int) -> AnswerDetail:
        return self._answers[row]

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._answers)

    def columnCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(HEADERS)

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._answers):
            return None
        answer = self._answers[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return _cell(answer, index.column())
        if role == Qt.ItemDataRole.BackgroundRole:
            if answer.corrected_by:
                return MANUAL_BRUSH
            return LOW_CONFIDENCE_BRUSH if answer.needs_review else None
        if role == Qt.ItemDataRole.ToolTipRole and answer.corrected_by:
            return f"Corrected by hand by {answer.corrected_by}"
        return None

    def flags(self, index: AnyIndex) -> Qt.ItemFlag:
        base = super().flags(index)
        if index.isValid() and index.column() == CORRECTED_COLUMN:
            return base | Qt.ItemFlag.ItemIsEditable
        return base

    def setData(
        self,
        index: AnyIndex,
        value: Any,  # noqa: N802
        role: int = Qt.ItemDataRole.EditRole,
    ) -> bool:
        if (
            role != Qt.ItemDataRole.EditRole
            or not index.isValid()
            or index.column() != CORRECTED_COLUMN
        ):
            return False
        text = str(value).strip().upper()
        answer = self._answers[index.row()]
        if text == answer.answer_corrected:
            return False
        self.correction_requested.emit(answer.question, text)
        return False

    def headerData(
        self,
        section: int,
        orientation: Qt.Orientation,  # noqa: N802
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if (
            role == Qt.ItemDataRole.DisplayRole
            and orientation == Qt.Orientation.Horizontal
            and 0 <= section < len(HEADERS)
        ):
            return HEADERS[section]
        return None


def _cell(answer: AnswerDetail, column: int) -> str:
    if column == 0:
        return answer.question
    if column == 1:
        return answer.answer_raw
    if column == 2:
        return answer.answer_corrected
    if column == 3:
        return f"{answer.confidence_score:.2f}"
    return answer.reason.replace("_", " ")

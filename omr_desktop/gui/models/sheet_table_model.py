"""The student list (Panel B): sheets in scan order, with select-mode check boxes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QIcon, QPainter, QPixmap

from omr_desktop.db.queries import SheetSummary
from omr_desktop.gui.icons import flag_icon
from omr_desktop.gui.models.list_models import SHEET_COLUMNS
from omr_desktop.gui.models.record_table_model import RecordTableModel

AnyIndex = QModelIndex | QPersistentModelIndex

FLAGS_COLUMN = 4
# Flag icons are drawn side by side in the Flags column, 16 px each.
FLAG_ICON_PX = 16


class SheetTableModel(RecordTableModel[SheetSummary]):
    """Sheets of one batch; in select mode column 0 carries a check box.

    Checked sheets are kept by id, so a refresh of the list keeps them. The
    boxes are not user-checkable items: the view's click handler toggles
    them, so one click never toggles twice.

    Signals:
        selection_changed(int): the number of checked sheets.
    """

    selection_changed = Signal(int)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(SHEET_COLUMNS, parent)
        self._select_mode = False
        self._checked: set[int] = set()
        self._flag_icons: dict[tuple[str, ...], QIcon] = {}

    # -- Select mode -------------------------------------------------------

    @property
    def select_mode(self) -> bool:
        return self._select_mode

    def set_select_mode(self, on: bool) -> None:
        """Show or hide the check boxes; leaving select mode clears the selection."""
        if on == self._select_mode:
            return
        self._select_mode = on
        if not on:
            self._checked.clear()
        self._column_zero_changed()
        self.selection_changed.emit(len(self._checked))

    def checked_ids(self) -> list[int]:
        """Return the checked sheet ids in scan order."""
        return [r.id for r in self.records() if r.id in self._checked]

    def set_checked(self, sheet_ids: Iterable[int], checked: bool) -> None:
        if not self._select_mode:
            return
        ids = set(sheet_ids)
        if checked:
            self._checked |= ids
        else:
            self._checked -= ids
        self._column_zero_changed()
        self.selection_changed.emit(len(self._checked))

    def toggle(self, sheet_id: int) -> None:
        self.set_checked([sheet_id], sheet_id not in self._checked)

    def is_checked(self, sheet_id: int) -> bool:
        return sheet_id in self._checked

    def _column_zero_changed(self) -> None:
        if self.rowCount():
            self.dataChanged.emit(
                self.index(0, 0),
                self.index(self.rowCount() - 1, 0),
                [Qt.ItemDataRole.CheckStateRole],
            )

    def set_records(self, records: Sequence[SheetSummary]) -> None:
        known = {r.id for r in records}
        self._checked &= known
        super().set_records(records)
        self.selection_changed.emit(len(self._checked))

    # -- Qt model interface ----------------------------------------------

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        if role == Qt.ItemDataRole.CheckStateRole:
            if index.column() != 0 or not self._select_mode:
                return None
            checked = self.record(index.row()).id in self._checked
            return Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked
        if index.column() == FLAGS_COLUMN:
            return self._flags_data(index, role)
        return super().data(index, role)

    def _flags_data(self, index: AnyIndex, role: int) -> Any:
        flags = self.record(index.row()).flags
        if role == Qt.ItemDataRole.DecorationRole:
            return self._icon_for(flags) if flags else None
        if role == Qt.ItemDataRole.ToolTipRole:
            return "\n".join(flags) or None
        if role == Qt.ItemDataRole.DisplayRole:
            return ""
        return super().data(index, role)

    def _icon_for(self, flags: tuple[str, ...]) -> QIcon:
        icon = self._flag_icons.get(flags)
        if icon is None:
            pixmap = QPixmap(
                FLAG_ICON_PX * len(flags) + 2 * (len(flags) - 1), FLAG_ICON_PX
            )
            pixmap.fill(Qt.GlobalColor.transparent)
            painter = QPainter(pixmap)
            for i, flag in enumerate(flags):
                flag_icon(flag).paint(
                    painter, i * (FLAG_ICON_PX + 2), 0, FLAG_ICON_PX, FLAG_ICON_PX
                )
            painter.end()
            icon = QIcon(pixmap)
            self._flag_icons[flags] = icon
        return icon


class FlagFilterProxy(QSortFilterProxyModel):
    """Show only sheets carrying one flag (or all sheets when the flag is empty)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._flag = ""

    def set_flag(self, flag: str) -> None:
        # begin/endFilterChange replace invalidateFilter, deprecated in
        # Qt 6.10; the pinned PySide6 is 6.11.
        self.beginFilterChange()
        self._flag = flag
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, row: int, parent: AnyIndex) -> bool:  # noqa: N802
        if not self._flag:
            return True
        model = self.sourceModel()
        assert isinstance(model, SheetTableModel)
        return self._flag in model.record(row).flags

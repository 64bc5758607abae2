"""The student list (Panel B): sheets in scan order, with select-mode check boxes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QIcon, QPainter, QPixmap

from omr_desktop.db.queries import SheetSummary
from omr_desktop.gui.icons import flag_icon
from omr_desktop.gui.models.list_models import SHEET_COLUMNS
from omr_desktop.gui.models.record_table_model import (
    RECORD_ROLE,
    SORT_ROLE,
    RecordTableModel,
)

AnyIndex = QModelIndex | QPersistentModelIndex

FLAGS_COLUMN = 4
# Flag icons are drawn side by side in the Flags column, 16 px each.
FLAG_ICON_PX = 16

_CHECK_STATE = Qt.ItemDataRole.CheckStateRole
_DISPLAY = Qt.ItemDataRole.DisplayRole
_DECORATION = Qt.ItemDataRole.DecorationRole
_TOOL_TIP = Qt.ItemDataRole.ToolTipRole
# Every role this model answers. The view asks for about ten roles per
# visible cell, each a call into Python, so the others return at once.
_SERVED_ROLES = frozenset(
    int(role)
    for role in (
        _DISPLAY,
        _DECORATION,
        _TOOL_TIP,
        _CHECK_STATE,
        Qt.ItemDataRole.TextAlignmentRole,
        SORT_ROLE,
        RECORD_ROLE,
    )
)


class SheetTableModel(RecordTableModel[SheetSummary]):
    """Sheets of one batch; in select mode column 0 carries a check box.

    The model filters by flag itself, with no proxy model between it and
    the view: with 10,000 sheets a QSortFilterProxyModel made each paint
    about 40 % slower, and mapping every row back for Ctrl+A took 50 ms.
    Rows are the sheets the filter shows.

    Checked sheets are kept by id, so a refresh of the list or a change of
    filter keeps them. The boxes are not user-checkable items: the view's
    click handler toggles them, so one click never toggles twice.

    Signals:
        selection_changed(int): the number of checked sheets.
    """

    selection_changed = Signal(int)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(SHEET_COLUMNS, parent)
        self._all: list[SheetSummary] = []
        self._flag = ""
        self._select_mode = False
        self._checked: set[int] = set()
        self._flag_icons: dict[tuple[str, ...], QIcon] = {}

    # -- Records and the flag filter --------------------------------------

    def set_records(self, records: Sequence[SheetSummary]) -> None:
        self._all = list(records)
        self._checked &= {r.id for r in self._all}
        super().set_records(self._filtered())
        self.selection_changed.emit(len(self._checked))

    def set_flag_filter(self, flag: str) -> None:
        """Show only sheets carrying ``flag``, or every sheet when it is empty."""
        self._flag = flag
        super().set_records(self._filtered())

    def visible_ids(self, start: int = 0, stop: int | None = None) -> list[int]:
        """Return the ids of the shown rows ``start`` to ``stop``, in order."""
        return [r.id for r in self._records[start:stop]]

    def _filtered(self) -> list[SheetSummary]:
        if not self._flag:
            return self._all
        return [r for r in self._all if self._flag in r.flags]

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
        """Return the checked sheet ids in scan order, shown by the filter or not."""
        return [r.id for r in self._all if r.id in self._checked]

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

    # -- Qt model interface ----------------------------------------------

    def data(self, index: AnyIndex, role: int = _DISPLAY) -> Any:
        if role not in _SERVED_ROLES or not index.isValid():
            return None
        if role == _CHECK_STATE:
            if index.column() != 0 or not self._select_mode:
                return None
            checked = self.record(index.row()).id in self._checked
            return Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked
        if index.column() == FLAGS_COLUMN:
            return self._flags_data(index, role)
        return super().data(index, role)

    def _flags_data(self, index: AnyIndex, role: int) -> Any:
        flags = self.record(index.row()).flags
        if role == _DECORATION:
            return self._icon_for(flags) if flags else None
        if role == _TOOL_TIP:
            return "\n".join(flags) or None
        if role == _DISPLAY:
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

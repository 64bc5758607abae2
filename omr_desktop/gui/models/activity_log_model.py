"""A table model of a task's activity log: one row per progress event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
)
from PySide6.QtGui import QColor

from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.events import ProgressEvent

AnyIndex = QModelIndex | QPersistentModelIndex

TIME_COLUMN = 0
ELAPSED_COLUMN = 1
MESSAGE_COLUMN = 2
PERCENTAGE_COLUMN = 3

_HEADERS = ("Time", "Elapsed", "Activity", "Of stage")

# The whole ProgressEvent of a row.
EVENT_ROLE = Qt.ItemDataRole.UserRole + 1

_FAILED_COLOR = QColor("#b3261e")
_COMPLETED_COLOR = QColor("#1e7b34")


def format_time_of_day(moment: datetime) -> str:
    """Format a time of day on the 12-hour clock, as ``3:55:26 PM``."""
    hour = moment.hour % 12 or 12
    suffix = "AM" if moment.hour < 12 else "PM"
    return f"{hour}:{moment.minute:02d}:{moment.second:02d} {suffix}"


def format_elapsed(seconds: float) -> str:
    """Format whole elapsed seconds as ``43s``, ``2m 18s`` or ``1h 2m 5s``."""
    # Rounding to milliseconds first makes 42.9999 from a float subtraction
    # show as 43s. Truncating then keeps 43.9 s at "43s".
    total = max(0, int(round(seconds, 3)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def format_percentage(event: ProgressEvent) -> str:
    """Format the stage's own percentage, or "" where none applies.

    A stage's opening event sits at 0 % and shows none, as does the
    failure event, which carries no progress. Percentages round to whole
    numbers (4.6 shows as 5%), except that 99.5 up to 100 shows as 99%, so
    "100%" means the stage is done.
    """
    percentage = event.progress_percentage
    if event.stage == ev.FAILED or percentage <= 0:
        return ""
    rounded = round(percentage)
    if rounded >= 100 and percentage < 100:
        rounded = 99
    return f"{rounded}%"


def _parse_timestamp(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # astimezone() takes a naive timestamp as local time.
    return moment.astimezone()


@dataclass(frozen=True)
class LogRow:
    """One row of the log, formatted once when its event arrives.

    Attributes:
        time_of_day: local time of the event, such as "3:55:26 PM".
        elapsed: time since the task started, such as "2m 18s".
        activity: "[Stage] message".
        percentage: the stage's percentage, such as "100%", or "".
        event: the event the row shows.
    """

    time_of_day: str
    elapsed: str
    activity: str
    percentage: str
    event: ProgressEvent

    def text(self) -> str:
        """Return the row as one line of plain text, columns joined by tabs."""
        cells = (self.time_of_day, self.elapsed, self.activity, self.percentage)
        return "\t".join(cells).rstrip("\t")


class ActivityLogModel(QAbstractTableModel):
    """Append a task's progress events as rows: time, elapsed, activity, %.

    The elapsed column is measured from the task's start, which the first
    event places at its timestamp minus its ``elapsed_s``. Later rows use
    their own timestamps, because the failure event carries an
    ``elapsed_s`` of 0. Events without a readable timestamp fall back to
    their ``elapsed_s``.

    Call ``append_event`` on the GUI thread only. Rows are appended one at a
    time with ``beginInsertRows``, so views keep their scroll position and a
    log of thousands of rows stays cheap.
    """

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._rows: list[LogRow] = []
        # POSIX time of the task's start, set by the first timed event.
        self._started_at_s: float | None = None

    def append_event(self, event: ProgressEvent) -> None:
        """Add ``event`` as the last row."""
        row = self._format(event)
        position = len(self._rows)
        self.beginInsertRows(QModelIndex(), position, position)
        self._rows.append(row)
        self.endInsertRows()

    def clear(self) -> None:
        """Remove every row and forget the start time."""
        self.beginResetModel()
        self._rows.clear()
        self._started_at_s = None
        self.endResetModel()

    def log_row(self, row: int) -> LogRow:
        """Return the formatted row ``row``. Raises IndexError outside the rows."""
        return self._rows[row]

    def _format(self, event: ProgressEvent) -> LogRow:
        moment = _parse_timestamp(event.timestamp)
        elapsed_s = event.elapsed_s
        if moment is not None:
            if self._started_at_s is None:
                self._started_at_s = moment.timestamp() - event.elapsed_s
            elapsed_s = moment.timestamp() - self._started_at_s
        return LogRow(
            time_of_day="" if moment is None else format_time_of_day(moment),
            elapsed=format_elapsed(elapsed_s),
            activity=f"[{event.stage}] {event.message}",
            percentage=format_percentage(event),
            event=event,
        )

    # -- QAbstractTableModel ---------------------------------------------

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(_HEADERS)

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        row = self._rows[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return (row.time_of_day, row.elapsed, row.activity, row.percentage)[column]
        if role == Qt.ItemDataRole.ToolTipRole and column == MESSAGE_COLUMN:
            return row.activity
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(_alignment(column) | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole:
            return _stage_color(row.event.stage)
        if role == EVENT_ROLE:
            return row.event
        return None

    def headerData(  # noqa: N802
        self,
        section: int,
        orientation: Qt.Orientation,
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if (
            role == Qt.ItemDataRole.DisplayRole
            and orientation == Qt.Orientation.Horizontal
            and 0 <= section < len(_HEADERS)
        ):
            return _HEADERS[section]
        return None


def _alignment(column: int) -> Qt.AlignmentFlag:
    if column in (ELAPSED_COLUMN, PERCENTAGE_COLUMN):
        return Qt.AlignmentFlag.AlignRight
    return Qt.AlignmentFlag.AlignLeft


def _stage_color(stage: str) -> QColor | None:
    if stage == ev.FAILED:
        return _FAILED_COLOR
    if stage == ev.COMPLETED:
        return _COMPLETED_COLOR
    return None

"""The non-modal Tasks panel: running and recent reprocess tasks with their logs.

Every task of the application's queue appears here, including tasks started
over HTTP; recent tasks of earlier sessions are read from the database, with
their stored event logs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelection,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
    Slot,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QHeaderView,
    QSplitter,
    QTableView,
    QWidget,
)

from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.db.profiles import list_profiles
from omr_desktop.gui.models.activity_log_model import ActivityLogModel
from omr_desktop.gui.widgets.activity_log import ActivityLogView
from omr_desktop.gui.workers.db_task import DbTaskRunner
from omr_desktop.pipeline.events import ProgressEvent
from omr_desktop.plural import counted

AnyIndex = QModelIndex | QPersistentModelIndex

# Profile id to name.
ProfileNames = dict[int, str]

# How many finished tasks of earlier sessions the panel lists.
RECENT_TASKS = 30


@dataclass(frozen=True)
class TaskSummary:
    """One row of the tasks table."""

    task_id: str
    status: str
    profile_id: int
    sheets: int
    created: str
    message: str


class TasksModel(QAbstractTableModel):
    """Tasks, newest first; live events update their status and message."""

    HEADERS = ("Task", "Status", "Profile", "Sheets", "Created", "Last message")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[TaskSummary] = []
        # For the Profile column.
        self.profile_names: ProfileNames = {}

    def set_tasks(self, tasks: list[TaskSummary]) -> None:
        self.beginResetModel()
        known = {t.task_id for t in tasks}
        live = [t for t in self._rows if t.task_id not in known]
        self._rows = live + tasks
        self.endResetModel()

    def apply_event(self, event: ProgressEvent) -> bool:
        """Update the event's task, or add it; return True when it was added.

        An event does not carry the task's profile: an added row has none
        until `set_profile`.
        """
        for row, task in enumerate(self._rows):
            if task.task_id == event.task_id:
                self._rows[row] = replace(
                    task, status=event.status, message=event.message
                )
                self.dataChanged.emit(
                    self.index(row, 0), self.index(row, len(self.HEADERS) - 1)
                )
                return False
        self.beginInsertRows(QModelIndex(), 0, 0)
        self._rows.insert(
            0,
            TaskSummary(
                event.task_id,
                event.status,
                0,
                event.total,
                event.timestamp[:19],
                event.message,
            ),
        )
        self.endInsertRows()
        return True

    def set_profile(self, task_id: str, profile_id: int) -> None:
        for row, task in enumerate(self._rows):
            if task.task_id == task_id:
                self._rows[row] = replace(task, profile_id=profile_id)
                index = self.index(row, self.HEADERS.index("Profile"))
                self.dataChanged.emit(index, index)
                return

    def task_id(self, row: int) -> str:
        return self._rows[row].task_id

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self.HEADERS)

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or role != Qt.ItemDataRole.DisplayRole:
            return None
        task = self._rows[index.row()]
        values = (
            task.task_id[:8],
            task.status,
            self.profile_names.get(task.profile_id, str(task.profile_id))
            if task.profile_id
            else "",
            f"{task.sheets:,}",
            task.created.replace("T", " "),
            task.message,
        )
        return values[index.column()]

    def headerData(
        self,
        section: int,
        orientation: Qt.Orientation,  # noqa: N802
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if (
            role == Qt.ItemDataRole.DisplayRole
            and orientation == Qt.Orientation.Horizontal
        ):
            return self.HEADERS[section]
        return None


class TasksPanel(QDockWidget):
    """A dock listing tasks above the activity log of the selected one.

    Signals:
        tasks_loaded(int): the recent tasks were read from the database.
        log_shown(str): the log of this task id is shown.
    """

    tasks_loaded = Signal(int)
    log_shown = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Tasks", parent)
        self.setObjectName("tasksPanel")
        self.model = TasksModel(self)
        self.table = QTableView(self)
        self.log_model = ActivityLogModel(self)
        self.log_view = ActivityLogView(self.log_model, self)
        self._database: Database | None = None
        self._shown_task: str | None = None
        self._events: dict[str, list[ProgressEvent]] = {}
        self._db_tasks = DbTaskRunner()
        self._init_table()
        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(self.table)
        splitter.addWidget(self.log_view)
        self.setWidget(splitter)

    def _init_table(self) -> None:
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setAccessibleName("Tasks")
        self.table.selectionModel().selectionChanged.connect(
            self._on_table_selection_changed
        )

    def set_database(self, database: Database) -> None:
        """Read the recent tasks (off the GUI thread)."""
        self._database = database

        def load() -> tuple[list[TaskSummary], ProfileNames]:
            with database.connect() as conn:
                rows = task_store.recent_tasks(conn, RECENT_TASKS)
                names = {p.id: p.name for p in list_profiles(conn)}
            tasks = [
                TaskSummary(
                    r.task_id,
                    r.status,
                    r.profile_id,
                    len(r.sheet_ids),
                    r.created_at.isoformat(timespec="seconds")[:19],
                    r.error or _result_message(r.result),
                )
                for r in rows
            ]
            return tasks, names

        self._db_tasks.run(load, self._on_tasks_loaded)

    @Slot(object)
    def _on_tasks_loaded(self, loaded: tuple[list[TaskSummary], ProfileNames]) -> None:
        tasks, names = loaded
        self.model.profile_names = names
        self.model.set_tasks(tasks)
        self.tasks_loaded.emit(len(tasks))

    @Slot(object)
    def add_event(self, event: ProgressEvent) -> None:
        """Show a live event of any task (delivered on the GUI thread)."""
        self._events.setdefault(event.task_id, []).append(event)
        if self.model.apply_event(event):
            self._read_profile(event.task_id)
        if event.task_id == self._shown_task:
            self.log_model.append_event(event)

    def _read_profile(self, task_id: str) -> None:
        """Fill in a live task's profile from its stored row (off the GUI thread)."""
        database = self._database
        if database is None:
            return

        def load() -> tuple[int, str] | None:
            with database.connect() as conn:
                task = task_store.get_task(conn, task_id)
                if task is None:
                    return None
                names = {p.id: p.name for p in list_profiles(conn)}
            return task.profile_id, names.get(task.profile_id, "")

        self._db_tasks.run(load, lambda found: self._on_profile_read(task_id, found))

    def _on_profile_read(self, task_id: str, found: tuple[int, str] | None) -> None:
        if found is None:
            return
        profile_id, name = found
        if name:
            self.model.profile_names[profile_id] = name
        self.model.set_profile(task_id, profile_id)

    @Slot(QItemSelection, QItemSelection)
    def _on_table_selection_changed(
        self, selected: QItemSelection, deselected: QItemSelection
    ) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.show_log(self.model.task_id(rows[0].row()))

    def show_log(self, task_id: str) -> None:
        """Show the task's log: the live events, or the stored ones."""
        self._shown_task = task_id
        self.log_model.clear()
        live = self._events.get(task_id)
        if live:
            for event in live:
                self.log_model.append_event(event)
            self.log_shown.emit(task_id)
            return
        database = self._database
        if database is None:
            return

        def load() -> list[ProgressEvent]:
            with database.connect() as conn:
                stored = task_store.events_after(conn, task_id)
            return [ProgressEvent(**s.data) for s in stored]

        self._db_tasks.run(load, lambda events: self._on_stored_log(task_id, events))

    def _on_stored_log(self, task_id: str, events: list[ProgressEvent]) -> None:
        if task_id != self._shown_task:
            return
        for event in events:
            self.log_model.append_event(event)
        self.log_shown.emit(task_id)


def _result_message(result: dict[str, Any]) -> str:
    if not result:
        return ""
    return (
        f"{counted(int(result.get('sheets_processed', 0)), 'sheet')}, "
        f"{counted(int(result.get('answers_changed', 0)), 'answer')} changed"
    )

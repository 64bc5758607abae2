"""The editor's reprocess workflow: profile dialog, task, progress dialog, refresh.

Database work (listing profiles, submitting, previews) runs on the thread
pool; task events come from the task's runner thread through a
TaskEventBridge, so every widget is touched on the GUI thread only.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QMessageBox, QWidget

from omr_desktop.db.database import Database
from omr_desktop.db.profiles import ProfileInfo, list_profiles
from omr_desktop.gui.dialogs.profile_dialog import PreviewResult, ProfileDialog
from omr_desktop.gui.dialogs.progress_dialog import ProgressDialog, TaskEventBridge
from omr_desktop.gui.workers.db_task import DbTaskRunner
from omr_desktop.pipeline.events import ProgressEvent
from omr_desktop.pipeline.preview import preview_sheet
from omr_desktop.pipeline.reprocess import ReprocessRequest
from omr_desktop.pipeline.task_manager import TaskManager
from omr_desktop.plural import counted

logger = logging.getLogger(__name__)


class ReprocessFlow(QObject):
    """Run the Re-Process workflow for a main window.

    Signals:
        profile_dialog_opened(object): the ProfileDialog, once shown.
        task_started(str): a task was queued; carries its id.
        progress_dialog_opened(object): the ProgressDialog of that task.
        task_ended(str): the task's last event arrived.
        event_received(object): every task event, on the GUI thread.
    """

    profile_dialog_opened = Signal(object)
    task_started = Signal(str)
    progress_dialog_opened = Signal(object)
    task_ended = Signal(str)
    event_received = Signal(object)

    def __init__(
        self,
        database: Database,
        manager: TaskManager,
        window: QWidget,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._database = database
        self._manager = manager
        self._window = window
        self._db_tasks = DbTaskRunner(on_failed=self._on_task_failed)
        self._events: dict[str, list[ProgressEvent]] = defaultdict(list)
        self._dialogs: dict[str, ProgressDialog] = {}
        self.bridge = TaskEventBridge(self)
        self.bridge.event_received.connect(self._on_bridge_event_received)
        self._remove_listener = manager.add_listener(self.bridge.emit_event)

    def close(self) -> None:
        """Stop listening to the task manager (before the window goes away)."""
        self._remove_listener()

    def events_of(self, task_id: str) -> list[ProgressEvent]:
        return list(self._events.get(task_id, ()))

    # -- Step 1: the profile dialog -----------------------------------------

    def start(
        self,
        sheet_ids: list[int],
        open_sheet_id: int | None,
        current_profile_id: int | None,
    ) -> None:
        """Ask for a profile for ``sheet_ids``, then run and follow the task."""
        database = self._database

        def load() -> list[ProfileInfo]:
            with database.connect() as conn:
                return list_profiles(conn)

        self._db_tasks.run(
            load,
            lambda profiles: self._choose_profile(
                profiles, sheet_ids, open_sheet_id, current_profile_id
            ),
        )

    def _choose_profile(
        self,
        profiles: list[ProfileInfo],
        sheet_ids: list[int],
        open_sheet_id: int | None,
        current_profile_id: int | None,
    ) -> None:
        preview = None
        if open_sheet_id is not None:
            preview = self._preview_function(open_sheet_id)
        dialog = ProfileDialog(
            profiles,
            current_profile_id,
            len(sheet_ids),
            preview=preview,
            parent=self._window,
        )
        names = {p.id: p.name for p in profiles}
        dialog.finished.connect(
            lambda _code: self._on_profile_chosen(dialog, sheet_ids, names)
        )
        dialog.open()
        self.profile_dialog_opened.emit(dialog)

    def _preview_function(self, sheet_id: int) -> Any:
        database = self._database

        def preview(profile_id: int) -> PreviewResult:
            result = preview_sheet(database, sheet_id, profile_id)
            return PreviewResult(result.label, list(result.changes))

        return preview

    def _on_profile_chosen(
        self, dialog: ProfileDialog, sheet_ids: list[int], names: dict[int, str]
    ) -> None:
        profile_id = dialog.chosen_profile_id()
        dialog.deleteLater()
        if profile_id is None:
            return
        manager = self._manager
        request = ReprocessRequest(tuple(sheet_ids), profile_id)
        title = (
            f"Re-processing {counted(len(sheet_ids), 'sheet')} with "
            f"{names.get(profile_id, f'profile {profile_id}')}"
        )
        self._db_tasks.run(
            lambda: manager.submit(request),
            lambda task_id: self._follow(task_id, title),
        )

    # -- Step 2: the progress dialog -------------------------------------------

    def _follow(self, task_id: str, title: str) -> None:
        dialog = ProgressDialog(task_id, title, parent=self._window)
        self._dialogs[task_id] = dialog
        dialog.cancel_requested.connect(self._manager.cancel)
        dialog.closed_after_end.connect(self._on_dialog_closed_after_end)
        dialog.finished.connect(lambda _code: self._forget_dialog(task_id))
        for event in self._events.get(task_id, ()):
            dialog.add_event(event)
        dialog.open()
        self.task_started.emit(task_id)
        self.progress_dialog_opened.emit(dialog)

    def _forget_dialog(self, task_id: str) -> None:
        dialog = self._dialogs.pop(task_id, None)
        if dialog is not None:
            dialog.deleteLater()

    @Slot()
    def _on_dialog_closed_after_end(self) -> None:
        # Reload what the task changed: the student list and the open sheet.
        refresh = getattr(self._window, "refresh_sheets", None)
        if callable(refresh):
            refresh()

    @Slot(object)
    def _on_bridge_event_received(self, event: ProgressEvent) -> None:
        self._events[event.task_id].append(event)
        dialog = self._dialogs.get(event.task_id)
        if dialog is not None:
            dialog.add_event(event)
        self.event_received.emit(event)
        if event.event != "progress":
            self.task_ended.emit(event.task_id)
        # A task that the HTTP server started has no dialog whose closing
        # refreshes the student list, so its completion does.
        if event.event == "complete" and dialog is None:
            self._on_dialog_closed_after_end()

    # -- Helpers ---------------------------------------------------------

    @Slot(str)
    def _on_task_failed(self, message: str) -> None:
        logger.warning("Reprocess workflow step failed: %s", message)
        QMessageBox.warning(self._window, "Re-Process", message)

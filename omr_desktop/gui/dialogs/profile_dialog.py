"""Ask which detection profile to reprocess the selected sheets with."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import (
    QItemSelection,
    QModelIndex,
    QObject,
    QRunnable,
    QThreadPool,
    Signal,
    Slot,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QGroupBox,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from omr_desktop.db.profiles import ProfileInfo
from omr_desktop.gui.forms import load_form
from omr_desktop.gui.models.profile_list_model import (
    DESCRIPTION_COLUMN,
    ProfileListModel,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviewResult:
    """The answers of one sheet that a profile would change.

    Attributes:
        sheet_label: the name the dialog shows for the sheet, such as
            "Sheet 42 (S-0042)".
        changes: one ``(question, old answer, new answer)`` per changed
            answer; a blank answer is the empty string.
    """

    sheet_label: str
    # A list cannot be hashed, so the changes take no part in the hash.
    changes: list[tuple[str, str, str]] = field(default_factory=list, hash=False)


PreviewFunction = Callable[[int], PreviewResult]


class PreviewSignals(QObject):
    """Signals of a preview task, each with the number of the request it ran for.

    Signals:
        finished(int, object): the request number and its PreviewResult.
        failed(int, str): the request number and the error message.
    """

    finished = Signal(int, object)
    failed = Signal(int, str)


class _PreviewTask(QRunnable):
    """Run ``preview(profile_id)`` on a pool thread without touching any widget."""

    def __init__(self, preview: PreviewFunction, profile_id: int, request: int) -> None:
        super().__init__()
        self._preview = preview
        self._profile_id = profile_id
        self._request = request
        self.signals = PreviewSignals()

    def run(self) -> None:
        try:
            result = self._preview(self._profile_id)
        except Exception as exc:  # noqa: BLE001 - shown in the dialog
            logger.warning(
                "Preview with profile %d failed", self._profile_id, exc_info=True
            )
            self.signals.failed.emit(self._request, str(exc) or type(exc).__name__)
            return
        self.signals.finished.emit(self._request, result)


def format_change(question: str, old: str, new: str) -> str:
    """Format one changed answer as ``q12: '' → 'B'``."""
    return f"{question}: '{old}' → '{new}'"


def _sheets_text(count: int) -> str:
    return f"{count:,} sheet" if count == 1 else f"{count:,} sheets"


class ProfileDialog(QDialog):
    """A modal dialog listing the profiles, with a preview on the open sheet.

    Open it with ``open()`` or ``exec()``; afterwards ``chosen_profile_id()``
    returns the choice. The static layout comes from ui/profile_dialog.ui.

    Args:
        profiles: the profiles to list, in display order.
        current_profile_id: the profile preselected, normally the one the
            selected sheets were read with; None or an unknown id
            preselects nothing.
        sheet_count: how many sheets are selected; at least 1.
        preview: computes what a profile would change on the sheet open in
            Panel C. It runs on a pool thread, so it must open its own
            database connection. None when no sheet is open.
        pool: where previews run; the global pool by default.

    Signals:
        preview_shown(object): a PreviewResult of the chosen profile is shown.
        preview_failed(str): the preview of the chosen profile raised; the
            message is shown.

    Raises:
        ValueError: ``sheet_count`` is below 1.
    """

    preview_shown = Signal(object)
    preview_failed = Signal(str)

    def __init__(
        self,
        profiles: Sequence[ProfileInfo],
        current_profile_id: int | None,
        sheet_count: int,
        preview: PreviewFunction | None = None,
        parent: QWidget | None = None,
        pool: QThreadPool | None = None,
    ) -> None:
        if sheet_count < 1:
            raise ValueError(f"sheet_count must be at least 1, got {sheet_count}")
        super().__init__(parent)
        self._preview = preview
        self._pool = pool or QThreadPool.globalInstance()
        self._preview_tasks: set[_PreviewTask] = set()
        # Bumped on every selection change, so a late preview of a profile
        # the editor has left is dropped rather than shown.
        self._preview_request = 0
        self.setWindowTitle("Re-Process Sheets")
        self.setModal(True)
        self._init_form()
        self._init_profiles(profiles)
        self._init_buttons(sheet_count)
        self._select_profile(current_profile_id)
        # Connected after the preselection, which _update_for_selection
        # handles once, so the first preview does not start twice.
        self._view.selectionModel().selectionChanged.connect(
            self._on_profiles_view_selection_changed
        )
        self._view.doubleClicked.connect(self._on_profiles_view_double_clicked)
        self._update_for_selection()
        self.resize(860, 560)

    # -- Building --------------------------------------------------------

    def _init_form(self) -> None:
        form = load_form("profile_dialog.ui", self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(form)
        self._view: QTableView = self._child(QTableView, "profilesView")
        self._preview_group: QGroupBox = self._child(QGroupBox, "previewGroup")
        self._preview_status: QLabel = self._child(QLabel, "previewStatus")
        self._preview_changes: QPlainTextEdit = self._child(
            QPlainTextEdit, "previewChanges"
        )
        self._buttons: QDialogButtonBox = self._child(QDialogButtonBox, "buttonBox")

    def _child(self, kind: type[Any], name: str) -> Any:
        widget = self.findChild(kind, name)
        if widget is None:
            raise RuntimeError(
                f"ui/profile_dialog.ui lacks the {kind.__name__} {name!r}"
            )
        return widget

    def _init_profiles(self, profiles: Sequence[ProfileInfo]) -> None:
        self._model = ProfileListModel(self)
        self._model.set_profiles(profiles)
        self._view.setModel(self._model)
        self._view.verticalHeader().hide()
        header = self._view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(DESCRIPTION_COLUMN, QHeaderView.ResizeMode.Stretch)
        # Descriptions wrap, so row heights follow the description column.
        header.sectionResized.connect(self._on_header_section_resized)
        self._view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)

    def _init_buttons(self, sheet_count: int) -> None:
        self._reprocess_button: QPushButton = self._buttons.addButton(
            f"Re-Process {_sheets_text(sheet_count)}",
            QDialogButtonBox.ButtonRole.AcceptRole,
        )
        self._reprocess_button.setObjectName("reprocessButton")
        self._reprocess_button.setDefault(True)
        self._buttons.accepted.connect(self.accept)
        self._buttons.rejected.connect(self.reject)

    def _select_profile(self, profile_id: int | None) -> None:
        row = self._model.row_of(profile_id)
        if row is not None:
            self._view.selectRow(row)
            self._view.scrollTo(self._model.index(row, 0))

    # -- The choice ----------------------------------------------------------

    def select_profile(self, profile_id: int) -> None:
        """Select a profile as the editor's click would (scripts and tests)."""
        self._select_profile(profile_id)

    def chosen_profile_id(self) -> int | None:
        """Return the chosen profile's id, or None unless Re-Process was pressed."""
        if self.result() != QDialog.DialogCode.Accepted:
            return None
        profile = self._selected_profile()
        return None if profile is None else profile.id

    def _selected_profile(self) -> ProfileInfo | None:
        rows = self._view.selectionModel().selectedRows()
        return self._model.profile(rows[0].row()) if rows else None

    def accept(self) -> None:
        """Close with the Accepted result, if a profile is chosen."""
        if self._selected_profile() is None:
            return
        super().accept()

    @Slot(QItemSelection, QItemSelection)
    def _on_profiles_view_selection_changed(
        self, selected: QItemSelection, deselected: QItemSelection
    ) -> None:
        self._update_for_selection()

    @Slot(QModelIndex)
    def _on_profiles_view_double_clicked(self, index: QModelIndex) -> None:
        self.accept()

    @Slot(int, int, int)
    def _on_header_section_resized(self, section: int, old: int, new: int) -> None:
        if section == DESCRIPTION_COLUMN:
            self._view.resizeRowsToContents()

    def _update_for_selection(self) -> None:
        profile = self._selected_profile()
        self._reprocess_button.setEnabled(profile is not None)
        self._start_preview(profile)

    # -- Preview ---------------------------------------------------------

    def _start_preview(self, profile: ProfileInfo | None) -> None:
        self._preview_request += 1
        self._preview_changes.clear()
        self._preview_changes.hide()
        if self._preview is None:
            self._preview_status.setText(
                "Open a sheet in the sheet panel to preview what a profile changes."
            )
            return
        if profile is None:
            self._preview_status.setText(
                "Choose a profile to preview what it changes on the open sheet."
            )
            return
        self._preview_status.setText(f"Computing the preview with {profile.name}…")
        task = _PreviewTask(self._preview, profile.id, self._preview_request)
        task.setAutoDelete(False)
        task.signals.finished.connect(self._on_preview_task_finished)
        task.signals.failed.connect(self._on_preview_task_failed)
        self._preview_tasks.add(task)
        self._pool.start(task)

    def _forget_task(self, signals: QObject) -> None:
        self._preview_tasks = {
            t for t in self._preview_tasks if t.signals is not signals
        }

    @Slot(int, object)
    def _on_preview_task_finished(self, request: int, result: PreviewResult) -> None:
        self._forget_task(self.sender())
        if request != self._preview_request:
            return
        count = len(result.changes)
        if count == 0:
            self._preview_status.setText(
                f"{result.sheet_label}: this profile changes no answers."
            )
        else:
            noun = "answer" if count == 1 else "answers"
            self._preview_status.setText(
                f"{result.sheet_label}: this profile changes {count:,} {noun}."
            )
            lines = (format_change(q, old, new) for q, old, new in result.changes)
            self._preview_changes.setPlainText("\n".join(lines))
            self._preview_changes.show()
        self.preview_shown.emit(result)

    @Slot(int, str)
    def _on_preview_task_failed(self, request: int, message: str) -> None:
        self._forget_task(self.sender())
        if request != self._preview_request:
            return
        self._preview_status.setText(f"The preview failed: {message}")
        self.preview_failed.emit(message)

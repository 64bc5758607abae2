"""Show a reprocess task live: progress, stage, state and the activity log."""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QGroupBox,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from omr_desktop.gui.forms import load_form
from omr_desktop.gui.models.activity_log_model import ActivityLogModel
from omr_desktop.gui.widgets.activity_log import ActivityLogView
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.events import ProgressEvent

logger = logging.getLogger(__name__)

COMPLETE_STATE = "✓ Complete"
FAILED_STATE = "✗ Failed"
# Shown after the state when the editor cancelled too late.
FINISHED_BEFORE_CANCEL = (
    "it finished before it could be cancelled; its changes are saved"
)

_COMPLETE_STYLE = "font-weight: bold; color: #1e7b34;"
_FAILED_STYLE = "font-weight: bold; color: #b3261e;"

# Lines of the failed-sheet list shown before it scrolls.
_FAILED_SHEETS_SHOWN = 5
# The plain-text box's frames and document margins, top and bottom
# together: Qt's default document margin is 4 px a side, frames 1-2 px.
_TEXT_PADDING_PX = 16

# The progress bar counts tenths of a percent, so 0.1 % steps still move it.
_BAR_STEPS_PER_PERCENT = 10


class TaskEventBridge(QObject):
    """Carry progress events from a task's runner thread to the GUI thread.

    Create it on the GUI thread, connect ``event_received`` to
    ``ProgressDialog.add_event`` and pass ``emit_event`` to
    ``TaskManager.add_listener``. The connection is queued because the
    signal is emitted on another thread, so the dialog receives each event
    on the GUI thread. Remove the listener before the bridge is deleted.

    Signals:
        event_received(object): a ProgressEvent of any task.
    """

    event_received = Signal(object)

    def emit_event(self, event: ProgressEvent) -> None:
        """Emit ``event_received`` with ``event``. Any thread may call this."""
        self.event_received.emit(event)


def _sheets_text(count: int) -> str:
    return f"{count:,} sheet" if count == 1 else f"{count:,} sheets"


def summarize_result(result: dict[str, Any]) -> str:
    """Describe a completed task's result in a few plain sentences."""
    processed = int(result.get("sheets_processed", 0))
    failed = int(result.get("sheets_failed", len(result.get("failed_sheets", []))))
    changed = int(result.get("answers_changed", 0))
    scores = int(result.get("sheets_score_changed", 0))
    sentences = [
        f"{_sheets_text(processed)} processed, {failed:,} failed.",
        f"{changed:,} {'answer' if changed == 1 else 'answers'} changed.",
        f"{_sheets_text(scores)} changed score.",
    ]
    duration_s = result.get("duration_s")
    if isinstance(duration_s, int | float):
        sentences.append(f"Took {duration_s:.1f} s.")
    return " ".join(sentences)


def format_failed_sheets(failed_sheets: list[dict[str, Any]]) -> str:
    """List failed sheets one per line, as ``Sheet 12345: <error>``."""
    return "\n".join(
        f"Sheet {item.get('sheet_id', '?')}: {item.get('error', 'unknown error')}"
        for item in failed_sheets
    )


class ProgressDialog(QDialog):
    """A modal dialog following one reprocess task until it ends.

    Feed it the task's events with ``add_event`` (on the GUI thread; use a
    TaskEventBridge from the runner thread). Events of other tasks, repeats
    of an event id already shown, and events after the task's last event are
    ignored.

    While the task runs, Cancel emits ``cancel_requested``, and closing the
    window first asks the editor to confirm. Once the task has ended, the
    button reads Close and the dialog shows what the task did.

    Args:
        task_id: the task to follow.
        title: a heading, such as "Re-processing 12 sheets with Sensitive".

    Signals:
        cancel_requested(str): the editor asked to cancel; carries the task id.
        closed_after_end(): the dialog closed after the task's last event;
            the caller refreshes what the task changed.
    """

    cancel_requested = Signal(str)
    closed_after_end = Signal()

    def __init__(
        self, task_id: str, title: str = "", parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._task_id = task_id
        self._last_event_id = 0
        self._terminal_event: ProgressEvent | None = None
        self._cancel_sent = False
        # Set when the editor confirmed closing while the task ran. The
        # dialog then closes itself once the task has stopped.
        self._close_when_ended = False
        self._closed_signal_sent = False
        self.setWindowTitle("Re-Processing Sheets")
        self.setModal(True)
        self._init_form(title)
        self._init_log()
        self._init_buttons()
        self.resize(900, 600)

    # -- Building --------------------------------------------------------

    def _init_form(self, title: str) -> None:
        form = load_form("progress_dialog.ui", self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(form)
        self._title: QLabel = self._child(QLabel, "titleLabel")
        self._bar: QProgressBar = self._child(QProgressBar, "progressBar")
        self._stage: QLabel = self._child(QLabel, "stageLabel")
        self._state: QLabel = self._child(QLabel, "stateLabel")
        self._result_group: QGroupBox = self._child(QGroupBox, "resultGroup")
        self._result_summary: QLabel = self._child(QLabel, "resultSummary")
        self._failed_sheets: QPlainTextEdit = self._child(
            QPlainTextEdit, "failedSheets"
        )
        self._buttons: QDialogButtonBox = self._child(QDialogButtonBox, "buttonBox")
        self._title.setText(f"<b>{title}</b>" if title else "")
        self._title.setVisible(bool(title))
        self._bar.setMaximum(100 * _BAR_STEPS_PER_PERCENT)
        # The log's last column is each stage's own percentage, and the bar
        # covers the whole task, so its text names the task.
        self._bar.setFormat("%p% of the task")

    def _child(self, kind: type[Any], name: str) -> Any:
        widget = self.findChild(kind, name)
        if widget is None:
            raise RuntimeError(
                f"ui/progress_dialog.ui lacks the {kind.__name__} {name!r}"
            )
        return widget

    def _init_log(self) -> None:
        self._log_model = ActivityLogModel(self)
        self._log_view = ActivityLogView(self._log_model)
        self._log_view.setObjectName("activityLog")
        container = self._child(QWidget, "activityLogContainer")
        container.layout().addWidget(self._log_view)

    def _init_buttons(self) -> None:
        self._cancel_button: QPushButton = self._buttons.button(
            QDialogButtonBox.StandardButton.Cancel
        )
        self._cancel_button.setToolTip(
            "Stop the reprocess. A cancelled reprocess saves nothing."
        )
        self._cancel_button.clicked.connect(self._on_cancel_button_clicked)

    # -- State -----------------------------------------------------------

    def task_id(self) -> str:
        """Return the id of the task the dialog follows."""
        return self._task_id

    def is_ended(self) -> bool:
        """Return True once the task's complete or error event has arrived."""
        return self._terminal_event is not None

    def terminal_event(self) -> ProgressEvent | None:
        """Return the task's complete or error event, or None while it runs."""
        return self._terminal_event

    # -- Events ----------------------------------------------------------

    @Slot(object)
    def add_event(self, event: ProgressEvent) -> None:
        """Show ``event`` if it belongs to this dialog's task. GUI thread only."""
        if event.task_id != self._task_id or self.is_ended():
            return
        if event.event_id:
            if event.event_id <= self._last_event_id:
                return
            self._last_event_id = event.event_id
        self._log_model.append_event(event)
        if event.event == ev.COMPLETE:
            self._show_completed(event)
        elif event.event == ev.ERROR:
            self._show_failed(event)
        else:
            self._show_progress(event)

    def _show_progress(self, event: ProgressEvent) -> None:
        self._set_bar(event.overall_percentage)
        self._stage.setText(_stage_text(event))
        if not self._cancel_sent:
            self._state.setText("Running")

    def _show_completed(self, event: ProgressEvent) -> None:
        self._set_bar(100.0)
        self._stage.setText(event.stage)
        if self._cancel_sent:
            self._state.setText(f"{COMPLETE_STATE}: {FINISHED_BEFORE_CANCEL}")
        else:
            self._state.setText(COMPLETE_STATE)
        self._state.setStyleSheet(_COMPLETE_STYLE)
        self._show_result(event.result or {}, failed=False)
        self._end(event)

    def _show_failed(self, event: ProgressEvent) -> None:
        # The bar and the stage stay where the task stopped.
        result = event.result or {}
        reason = str(result.get("reason") or event.message)
        self._state.setText(f"{FAILED_STATE}: {reason}")
        self._state.setStyleSheet(_FAILED_STYLE)
        self._show_result(result, failed=True)
        self._end(event)

    def _set_bar(self, percentage: float) -> None:
        clamped = min(100.0, max(0.0, percentage))
        self._bar.setValue(round(clamped * _BAR_STEPS_PER_PERCENT))

    def _show_result(self, result: dict[str, Any], failed: bool) -> None:
        if failed:
            summary = "No answers or scores were changed."
        else:
            summary = summarize_result(result)
        self._result_summary.setText(summary)
        failed_sheets = list(result.get("failed_sheets") or [])
        self._failed_sheets.setPlainText(format_failed_sheets(failed_sheets))
        self._failed_sheets.setVisible(bool(failed_sheets))
        # As tall as its lines, up to a few; longer lists scroll.
        lines = min(len(failed_sheets), _FAILED_SHEETS_SHOWN)
        line_px = self._failed_sheets.fontMetrics().lineSpacing()
        self._failed_sheets.setFixedHeight(lines * line_px + _TEXT_PADDING_PX)
        self._result_group.show()

    def _end(self, event: ProgressEvent) -> None:
        self._terminal_event = event
        # Hidden, not deleted: the task can end while a question that
        # cancels it is open, and that code still uses the button.
        self._cancel_button.hide()
        close = self._buttons.addButton(QDialogButtonBox.StandardButton.Close)
        close.clicked.connect(self._on_close_button_clicked)
        close.setDefault(True)
        close.setFocus()
        logger.debug("Task %s ended with %s", self._task_id, event.event)
        # A task that completed although the editor cancelled it stays on
        # screen, so that the editor can read that its changes were saved.
        if self._close_when_ended and event.event != ev.COMPLETE:
            self.accept()

    # -- Cancelling and closing --------------------------------------------

    def _request_cancel(self) -> None:
        if self._cancel_sent:
            return
        self._cancel_sent = True
        self._cancel_button.setEnabled(False)
        self._state.setText("Cancelling…")
        self.cancel_requested.emit(self._task_id)

    @Slot()
    def _on_cancel_button_clicked(self) -> None:
        self._request_cancel()

    @Slot()
    def _on_close_button_clicked(self) -> None:
        self.accept()

    def reject(self) -> None:
        """Close the dialog, or offer to cancel the task while it runs.

        The window's close button and Escape both call this.
        """
        if self.is_ended():
            super().reject()
            return
        if not self._cancel_sent:
            answer = QMessageBox.question(
                self,
                "Cancel the reprocess?",
                "The reprocess is still running. Cancel it? "
                "Nothing is saved when it is cancelled.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No,
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
            if self.is_ended():
                # The task ended while the question was open.
                self._note_ended_before_cancel()
                return
            self._request_cancel()
        self._close_when_ended = True
        self._state.setText("Cancelling… the window closes when the task has stopped.")

    def _note_ended_before_cancel(self) -> None:
        event = self._terminal_event
        if event is not None and event.event == ev.COMPLETE:
            self._state.setText(f"{COMPLETE_STATE}: {FINISHED_BEFORE_CANCEL}")
        else:
            super().reject()

    def done(self, result: int) -> None:
        """Close with ``result``; emit ``closed_after_end`` if the task has ended."""
        super().done(result)
        if self.is_ended() and not self._closed_signal_sent:
            self._closed_signal_sent = True
            self.closed_after_end.emit()


def _stage_text(event: ProgressEvent) -> str:
    if event.stage == ev.PROCESSING_SHEETS and event.total:
        return f"{event.stage}: {event.processed:,} of {_sheets_text(event.total)}"
    return event.stage

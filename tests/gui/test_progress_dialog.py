"""The progress dialog: live progress, the end states, cancelling, the bridge."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialogButtonBox,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
)
from pytestqt.qtbot import QtBot

from omr_desktop.gui.dialogs.progress_dialog import ProgressDialog, TaskEventBridge
from omr_desktop.gui.widgets.activity_log import ActivityLogView
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.events import ProgressEvent

pytestmark = pytest.mark.gui

TASK_ID = "c8f2b3c4-0000-4000-8000-000000000001"
START = datetime(2026, 12, 3, 15, 55, 26).astimezone()

COMPLETE_RESULT: dict[str, Any] = {
    "sheets_total": 12,
    "sheets_processed": 10,
    "sheets_failed": 2,
    "failed_sheets": [
        {"sheet_id": 12345, "error": "image file not found"},
        {"sheet_id": 12346, "error": "alignment markers not found"},
    ],
    "answers_written": 1500,
    "answers_changed": 34,
    "sheets_score_changed": 5,
    "duration_s": 3.21,
    "profile_id": 2,
}


def make_event(
    event_id: int,
    elapsed_s: float = 0.0,
    stage: str = ev.PROCESSING_SHEETS,
    message: str = "Processing: 324/7109 sheets completed",
    percentage: float = 4.6,
    kind: str = ev.PROGRESS,
    task_id: str = TASK_ID,
    result: dict[str, Any] | None = None,
) -> ProgressEvent:
    return ProgressEvent(
        task_id=task_id,
        event=kind,
        stage=stage,
        message=message,
        progress_percentage=percentage,
        overall_percentage=ev.overall_percentage(stage, percentage),
        processed=324,
        total=7109,
        failed=0,
        timestamp=(START + timedelta(seconds=elapsed_s)).isoformat(),
        elapsed_s=elapsed_s,
        status="STARTED",
        result=result,
        event_id=event_id,
    )


def completed_event(event_id: int) -> ProgressEvent:
    return make_event(
        event_id,
        elapsed_s=138,
        stage=ev.COMPLETED,
        message="Reprocess completed: 10 sheets",
        percentage=100,
        kind=ev.COMPLETE,
        result=COMPLETE_RESULT,
    )


def failed_event(event_id: int, reason: str) -> ProgressEvent:
    return make_event(
        event_id,
        elapsed_s=0.0,
        stage=ev.FAILED,
        message=f"Reprocess failed: {reason}",
        percentage=0,
        kind=ev.ERROR,
        result={"reason": reason},
    )


@pytest.fixture
def dialog(qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> ProgressDialog:
    # qtbot closes the dialog after each test, and a real question box
    # would then block a test whose task never ended. Tests that need
    # another reply patch it again.
    monkeypatch.setattr(
        QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No
    )
    progress = ProgressDialog(TASK_ID, "Re-processing 12 sheets with Sensitive")
    qtbot.addWidget(progress)
    progress.open()
    return progress


def label_text(dialog: ProgressDialog, name: str) -> str:
    label = dialog.findChild(QLabel, name)
    assert label is not None, name
    return label.text()


def log_view(dialog: ProgressDialog) -> ActivityLogView:
    view = dialog.findChild(ActivityLogView, "activityLog")
    assert view is not None
    return view


def button_texts(dialog: ProgressDialog) -> list[str]:
    box = dialog.findChild(QDialogButtonBox, "buttonBox")
    assert box is not None
    return [button.text() for button in box.buttons() if not button.isHidden()]


def click(dialog: ProgressDialog, kind: QDialogButtonBox.StandardButton) -> None:
    box = dialog.findChild(QDialogButtonBox, "buttonBox")
    assert box is not None
    button = box.button(kind)
    assert button is not None, kind
    button.click()


def test_progress_event_updates_bar_stage_and_log(dialog: ProgressDialog) -> None:
    dialog.add_event(make_event(1, percentage=0, message="Dispatching 7109 tasks"))
    dialog.add_event(make_event(2, elapsed_s=43))

    bar = dialog.findChild(QProgressBar, "progressBar")
    assert bar is not None
    # 2 % for Loading Sheets plus 4.6 % of the 78 % of Processing Sheets.
    assert bar.value() == round(ev.overall_percentage(ev.PROCESSING_SHEETS, 4.6) * 10)
    assert bar.text() == "5% of the task"
    assert label_text(dialog, "stageLabel") == "Processing Sheets: 324 of 7,109 sheets"
    assert label_text(dialog, "stateLabel") == "Running"
    model = log_view(dialog).model()
    assert model.rowCount() == 2
    assert [model.index(1, c).data() for c in range(4)] == [
        "3:56:09 PM",
        "43s",
        "[Processing Sheets] Processing: 324/7109 sheets completed",
        "5%",
    ]
    assert button_texts(dialog) == ["Cancel"]
    assert not dialog.is_ended()


def test_complete_state_and_result(dialog: ProgressDialog, qtbot: QtBot) -> None:
    dialog.add_event(make_event(1))
    dialog.add_event(completed_event(2))

    assert label_text(dialog, "stateLabel") == "✓ Complete"
    assert label_text(dialog, "stageLabel") == "Completed"
    bar = dialog.findChild(QProgressBar, "progressBar")
    assert bar is not None
    assert bar.text() == "100% of the task"
    assert label_text(dialog, "resultSummary") == (
        "10 sheets processed, 2 failed. 34 answers changed. "
        "5 sheets changed score. Took 3.2 s."
    )
    failed = dialog.findChild(QPlainTextEdit, "failedSheets")
    assert failed is not None
    assert failed.toPlainText() == (
        "Sheet 12345: image file not found\nSheet 12346: alignment markers not found"
    )
    assert failed.isVisible()
    assert button_texts(dialog) == ["Close"]
    assert dialog.is_ended()
    assert dialog.terminal_event() is not None
    assert log_view(dialog).model().index(1, 1).data() == "2m 18s"

    with qtbot.waitSignal(dialog.closed_after_end, timeout=1000):
        click(dialog, QDialogButtonBox.StandardButton.Close)
    assert not dialog.isVisible()


def test_failed_state_shows_reason(dialog: ProgressDialog) -> None:
    dialog.add_event(make_event(1, elapsed_s=10))
    dialog.add_event(failed_event(2, "Database error: deadlock detected"))

    assert (
        label_text(dialog, "stateLabel")
        == "✗ Failed: Database error: deadlock detected"
    )
    assert label_text(dialog, "resultSummary") == "No answers or scores were changed."
    failed = dialog.findChild(QPlainTextEdit, "failedSheets")
    assert failed is not None
    assert failed.isHidden()
    assert button_texts(dialog) == ["Close"]
    # The stage stays where the task stopped.
    assert label_text(dialog, "stageLabel").startswith("Processing Sheets")
    row = log_view(dialog).model().index(1, 2).data()
    assert row == "[Failed] Reprocess failed: Database error: deadlock detected"


def test_failed_without_reason_uses_message(dialog: ProgressDialog) -> None:
    event = make_event(
        1, stage=ev.FAILED, message="Reprocess failed: interrupted", kind=ev.ERROR
    )
    dialog.add_event(event)

    assert label_text(dialog, "stateLabel") == "✗ Failed: Reprocess failed: interrupted"


def test_cancel_button_requests_cancel(dialog: ProgressDialog, qtbot: QtBot) -> None:
    dialog.add_event(make_event(1))

    with qtbot.waitSignal(dialog.cancel_requested, timeout=1000) as cancel:
        click(dialog, QDialogButtonBox.StandardButton.Cancel)

    assert cancel.args == [TASK_ID]
    assert label_text(dialog, "stateLabel") == "Cancelling…"
    assert dialog.isVisible()

    dialog.add_event(failed_event(2, "cancelled"))
    assert label_text(dialog, "stateLabel") == "✗ Failed: cancelled"
    assert button_texts(dialog) == ["Close"]


def test_closing_while_running_asks_and_cancels(
    dialog: ProgressDialog, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions: list[str] = []

    def answer_yes(*args: Any, **kwargs: Any) -> QMessageBox.StandardButton:
        questions.append(args[1])
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", answer_yes)
    dialog.add_event(make_event(1))

    with qtbot.waitSignal(dialog.cancel_requested, timeout=1000) as cancel:
        dialog.close()

    assert questions == ["Cancel the reprocess?"]
    assert cancel.args == [TASK_ID]
    # The window stays until the task has stopped, then closes itself.
    assert dialog.isVisible()
    with qtbot.waitSignal(dialog.closed_after_end, timeout=1000):
        dialog.add_event(failed_event(2, "cancelled"))
    assert not dialog.isVisible()


def test_closing_while_running_kept_on_no(
    dialog: ProgressDialog, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No
    )
    dialog.add_event(make_event(1))

    with qtbot.assertNotEmitted(dialog.cancel_requested):
        dialog.reject()

    assert dialog.isVisible()
    assert label_text(dialog, "stateLabel") == "Running"


def test_closing_after_end_asks_nothing(
    dialog: ProgressDialog, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_question(*args: Any, **kwargs: Any) -> None:
        pytest.fail("asked a question after the end")

    monkeypatch.setattr(QMessageBox, "question", fail_question)
    dialog.add_event(completed_event(1))

    with qtbot.waitSignal(dialog.closed_after_end, timeout=1000):
        dialog.close()
    assert not dialog.isVisible()


def test_closed_after_end_emitted_once(dialog: ProgressDialog) -> None:
    closed: list[bool] = []
    dialog.closed_after_end.connect(lambda: closed.append(True))
    dialog.add_event(completed_event(1))

    dialog.accept()
    dialog.reject()

    assert closed == [True]


def test_events_of_other_tasks_ignored(dialog: ProgressDialog) -> None:
    dialog.add_event(make_event(1, task_id="another-task"))
    dialog.add_event(
        make_event(2, task_id="another-task", stage=ev.COMPLETED, kind=ev.COMPLETE)
    )

    assert log_view(dialog).model().rowCount() == 0
    assert not dialog.is_ended()
    assert label_text(dialog, "stateLabel") == "Queued"


def test_repeated_and_late_events_ignored(dialog: ProgressDialog) -> None:
    dialog.add_event(make_event(1))
    dialog.add_event(make_event(2))
    dialog.add_event(make_event(2))
    dialog.add_event(make_event(1))
    dialog.add_event(completed_event(3))
    dialog.add_event(make_event(4))

    assert log_view(dialog).model().rowCount() == 3
    assert label_text(dialog, "stateLabel") == "✓ Complete"


def test_bridge_delivers_events_from_thread(
    dialog: ProgressDialog, qtbot: QtBot
) -> None:
    bridge = TaskEventBridge()
    bridge.event_received.connect(dialog.add_event)
    threads_seen: list[bool] = []
    bridge.event_received.connect(
        lambda _e: threads_seen.append(
            threading.current_thread() is threading.main_thread()
        )
    )

    def run_task() -> None:
        for event_id in range(1, 11):
            bridge.emit_event(make_event(event_id, elapsed_s=event_id))
        bridge.emit_event(make_event(11, task_id="another-task"))
        bridge.emit_event(completed_event(12))

    worker = threading.Thread(target=run_task)
    worker.start()
    worker.join(5)

    qtbot.waitUntil(dialog.is_ended, timeout=5000)
    assert log_view(dialog).model().rowCount() == 11
    assert label_text(dialog, "stateLabel") == "✓ Complete"
    assert threads_seen == [True] * 12


def test_log_follows_until_scrolled_up(dialog: ProgressDialog, qtbot: QtBot) -> None:
    for event_id in range(1, 101):
        dialog.add_event(make_event(event_id, elapsed_s=event_id))
    bar = log_view(dialog).verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0)
    assert bar.value() == bar.maximum()

    bar.setValue(0)
    old_maximum = bar.maximum()
    for event_id in range(101, 121):
        dialog.add_event(make_event(event_id, elapsed_s=event_id))
    qtbot.waitUntil(lambda: bar.maximum() > old_maximum)

    assert bar.value() == 0


@pytest.mark.parametrize("closing", ["close button", "Escape"])
def test_task_ending_during_question_keeps_result(
    dialog: ProgressDialog,
    qtbot: QtBot,
    monkeypatch: pytest.MonkeyPatch,
    closing: str,
) -> None:
    def task_completes_then_yes(
        *args: Any, **kwargs: Any
    ) -> QMessageBox.StandardButton:
        # The task commits while the editor reads the question.
        dialog.add_event(completed_event(2))
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", task_completes_then_yes)
    dialog.add_event(make_event(1))

    with qtbot.assertNotEmitted(dialog.cancel_requested):
        if closing == "Escape":
            qtbot.keyClick(dialog, Qt.Key.Key_Escape)
        else:
            dialog.reject()

    assert dialog.isVisible()
    assert label_text(dialog, "stateLabel") == (
        "✓ Complete: it finished before it could be cancelled; its changes are saved"
    )
    assert button_texts(dialog) == ["Close"]


def test_completed_after_cancel_stays_open(
    dialog: ProgressDialog, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes
    )
    dialog.add_event(make_event(1))
    dialog.reject()

    # Cancel comes between sheets; a task already writing completes.
    dialog.add_event(completed_event(2))

    assert dialog.isVisible()
    assert "its changes are saved" in label_text(dialog, "stateLabel")

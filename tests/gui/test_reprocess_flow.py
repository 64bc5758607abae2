"""The whole reprocess, from selection to refreshed list, on a real database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from omr_desktop.app import AppSession
from omr_desktop.config import DatabaseChoice
from omr_desktop.db.database import Database
from omr_desktop.gui.windows.main_window import MainWindow
from omr_desktop.pipeline.demo import seed_demo
from omr_desktop.pipeline.reprocess import ReprocessRequest

pytestmark = [pytest.mark.gui, pytest.mark.db]

SENSITIVE = 2
TIMEOUT_MS = 60_000


@pytest.fixture
def database(db_conninfo: str, tmp_path: Path) -> Iterator[Database]:
    with psycopg.connect(db_conninfo) as conn:
        seed_demo(conn, tmp_path, sheets=4, workers=2)
    opened = Database(DatabaseChoice(db_conninfo, "environment"))
    opened.open()
    yield opened
    opened.close()


@pytest.fixture
def session(qtbot: QtBot, database: Database) -> Iterator[AppSession]:
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    app_session = AppSession(window, database, threads=2)
    with qtbot.waitSignal(window.sheets_loaded, timeout=TIMEOUT_MS):
        with qtbot.waitSignal(window.batches_loaded, timeout=TIMEOUT_MS):
            window.set_database(database)
        window.batches_view.selectRow(0)
    yield app_session
    app_session.close()


def light_marks_read(database: Database) -> int:
    with database.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM omr_answers WHERE reason = 'light_mark'"
            " AND answer_raw <> ''"
        ).fetchone()
    assert row is not None
    return int(row[0])


def choose_profile(profile_id: int) -> Any:
    def choose(dialog: Any) -> None:
        dialog.select_profile(profile_id)
        dialog.accept()

    return choose


def test_full_run_changes_database_and_refreshes_list(
    session: AppSession, qtbot: QtBot, database: Database
) -> None:
    window = session.window
    before = light_marks_read(database)
    window.select_mode_button.setChecked(True)
    window.select_all_visible()
    session.flow.profile_dialog_opened.connect(choose_profile(SENSITIVE))
    dialogs: list[Any] = []
    session.flow.progress_dialog_opened.connect(dialogs.append)

    with qtbot.waitSignal(session.flow.task_ended, timeout=TIMEOUT_MS):
        window.reprocess_button.click()

    assert light_marks_read(database) > before
    qtbot.waitUntil(lambda: bool(dialogs), timeout=TIMEOUT_MS)
    dialog = dialogs[0]
    assert dialog.is_ended()
    assert dialog.terminal_event().event == "complete"
    with qtbot.waitSignal(window.sheets_loaded, timeout=TIMEOUT_MS):
        dialog.accept()
    profiles = {
        window.sheet_model.record(r).profile_name
        for r in range(window.sheet_model.rowCount())
    }
    assert profiles == {"Sensitive"}


def test_cancelled_profile_dialog_starts_nothing(
    session: AppSession, qtbot: QtBot, database: Database
) -> None:
    window = session.window
    window.select_mode_button.setChecked(True)
    window.select_all_visible()
    opened: list[Any] = []
    session.flow.profile_dialog_opened.connect(opened.append)

    window.reprocess_button.click()
    qtbot.waitUntil(lambda: bool(opened), timeout=TIMEOUT_MS)
    opened[0].reject()

    assert session.manager.active_task_ids() == []
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM reprocess_tasks").fetchone() == (0,)


def test_closing_window_mid_run_cancels_cleanly(
    session: AppSession, qtbot: QtBot, database: Database
) -> None:
    window = session.window
    window.select_mode_button.setChecked(True)
    window.select_all_visible()
    session.flow.profile_dialog_opened.connect(choose_profile(SENSITIVE))
    started: list[str] = []
    session.flow.task_started.connect(started.append)

    window.reprocess_button.click()
    qtbot.waitUntil(lambda: bool(started), timeout=TIMEOUT_MS)
    window.close()
    session.close()

    with database.connect() as conn:
        status = conn.execute("SELECT status FROM reprocess_tasks").fetchone()
    assert status is not None
    assert status[0] in ("SUCCESS", "FAILURE")
    assert session.manager.active_task_ids() == []


def test_tasks_panel_shows_task_and_its_log(session: AppSession, qtbot: QtBot) -> None:
    window = session.window
    window.select_mode_button.setChecked(True)
    window.select_all_visible()
    session.flow.profile_dialog_opened.connect(choose_profile(SENSITIVE))
    with qtbot.waitSignal(session.flow.task_ended, timeout=TIMEOUT_MS) as ended:
        window.reprocess_button.click()
    task_id = ended.args[0]
    panel = session.tasks_panel

    assert panel.model.task_id(0) == task_id
    assert panel.model.data(panel.model.index(0, 1)) == "SUCCESS"
    # A live task's profile comes from its stored row.
    qtbot.waitUntil(
        lambda: panel.model.data(panel.model.index(0, 2)) == "Sensitive",
        timeout=TIMEOUT_MS,
    )
    with qtbot.waitSignal(panel.log_shown, timeout=TIMEOUT_MS):
        panel.table.selectRow(0)
    assert panel.log_model.rowCount() == len(session.flow.events_of(task_id))


def test_undo_last_reprocess_restores_answers(
    session: AppSession,
    qtbot: QtBot,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = session.window
    before = light_marks_read(database)
    window.select_mode_button.setChecked(True)
    window.select_all_visible()
    session.flow.profile_dialog_opened.connect(choose_profile(SENSITIVE))
    with qtbot.waitSignal(session.flow.task_ended, timeout=TIMEOUT_MS):
        window.reprocess_button.click()
    assert light_marks_read(database) > before

    questions: list[str] = []

    def answer_yes(*args: Any, **kwargs: Any) -> QMessageBox.StandardButton:
        questions.append(args[2])
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", answer_yes)
    with qtbot.waitSignal(window.sheets_loaded, timeout=TIMEOUT_MS):
        session.undo_last_reprocess()

    assert light_marks_read(database) == before
    assert len(questions) == 1
    assert questions[0].startswith(
        "Undo the reprocess of 4 sheets in Demo with Sensitive"
    )


def test_undo_declined_changes_nothing(
    session: AppSession,
    qtbot: QtBot,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = session.window
    window.select_mode_button.setChecked(True)
    window.select_all_visible()
    session.flow.profile_dialog_opened.connect(choose_profile(SENSITIVE))
    with qtbot.waitSignal(session.flow.task_ended, timeout=TIMEOUT_MS):
        window.reprocess_button.click()
    after_task = light_marks_read(database)
    questions: list[bool] = []

    def answer_no(*args: Any, **kwargs: Any) -> QMessageBox.StandardButton:
        questions.append(True)
        return QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", answer_no)
    session.undo_last_reprocess()
    qtbot.waitUntil(lambda: bool(questions), timeout=TIMEOUT_MS)
    qtbot.wait(200)

    assert light_marks_read(database) == after_task


def test_task_without_dialog_refreshes_list(
    session: AppSession, qtbot: QtBot, database: Database
) -> None:
    # As the embedded HTTP server starts one: no progress dialog follows it.
    window = session.window
    ids = [
        window.sheet_model.record(r).id for r in range(window.sheet_model.rowCount())
    ]

    with qtbot.waitSignal(window.sheets_loaded, timeout=TIMEOUT_MS):
        session.manager.submit(ReprocessRequest(tuple(ids), SENSITIVE))

    profiles = {
        window.sheet_model.record(r).profile_name
        for r in range(window.sheet_model.rowCount())
    }
    assert profiles == {"Sensitive"}


def test_manual_correction_survives_reprocess(
    session: AppSession, qtbot: QtBot, database: Database
) -> None:
    window = session.window
    with qtbot.waitSignal(window.sheet_opened, timeout=TIMEOUT_MS) as opened:
        window.sheets_view.setCurrentIndex(window.sheet_model.index(0, 1))
    sheet_id = int(opened.args[0])
    model = window.sheet_panel.answers_model
    row = next(r for r in range(model.rowCount()) if model.answer(r).answer_raw == "")
    question = model.answer(row).question
    with qtbot.waitSignal(window.sheets_loaded, timeout=TIMEOUT_MS):
        model.setData(model.index(row, 2), "e", Qt.ItemDataRole.EditRole)

    window.select_mode_button.setChecked(True)
    window.select_all_visible()
    session.flow.profile_dialog_opened.connect(choose_profile(SENSITIVE))
    with qtbot.waitSignal(session.flow.task_ended, timeout=TIMEOUT_MS):
        window.reprocess_button.click()

    with database.connect() as conn:
        stored = conn.execute(
            "SELECT a.answer_corrected, a.corrected_by, s.last_profile_id"
            " FROM omr_answers a JOIN sheets s ON s.id = a.sheet_id"
            " WHERE a.sheet_id = %s AND a.question = %s",
            (sheet_id, question),
        ).fetchone()
    assert stored == ("E", window.editor_name(), SENSITIVE)

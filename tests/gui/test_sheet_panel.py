"""Panel C on a real demo sheet: image, overlay, answers, corrections, swap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from omr_desktop.config import DatabaseChoice
from omr_desktop.db.database import Database
from omr_desktop.gui.widgets.sheet_view import MARKED, UNCERTAIN
from omr_desktop.gui.windows.main_window import MainWindow
from omr_desktop.pipeline.demo import seed_demo

pytestmark = [pytest.mark.gui, pytest.mark.db]


@pytest.fixture
def database(db_conninfo: str, tmp_path: Path) -> Iterator[Database]:
    with psycopg.connect(db_conninfo) as conn:
        seed_demo(conn, tmp_path, sheets=3, workers=2)
    opened = Database(DatabaseChoice(db_conninfo, "environment"))
    opened.open()
    yield opened
    opened.close()


@pytest.fixture
def window(qtbot: QtBot, database: Database) -> MainWindow:
    main = MainWindow()
    qtbot.addWidget(main)
    main.show()
    with qtbot.waitSignal(main.sheets_loaded, timeout=20_000):
        with qtbot.waitSignal(main.batches_loaded, timeout=20_000):
            main.set_database(database)
        main.batches_view.selectRow(0)
    return main


def open_row(window: MainWindow, qtbot: QtBot, row: int) -> int:
    with qtbot.waitSignal(window.sheet_opened, timeout=20_000) as opened:
        window.sheets_view.setCurrentIndex(window.sheet_model.index(row, 1))
    return int(opened.args[0])


def test_opening_sheet_shows_image_overlay_and_answers(
    window: MainWindow, qtbot: QtBot
) -> None:
    open_row(window, qtbot, 0)
    panel = window.sheet_panel

    assert panel.answers_model.rowCount() == 150
    assert "Sheet 1" in window.sheet_title.text()
    states = {
        item.toolTip().split(": ")[1]
        for item in panel.sheet_view.items()
        if item.toolTip()
    }
    assert MARKED in states
    assert UNCERTAIN in states
    assert panel.sheet_view.question_rect("q1") is not None


def test_answer_row_centres_image_on_question(window: MainWindow, qtbot: QtBot) -> None:
    open_row(window, qtbot, 0)
    view = window.sheet_panel.sheet_view
    view.zoom_by(4.0)

    window.sheet_panel.answers_view.selectRow(149)

    rect = view.question_rect("q150")
    assert rect is not None
    visible = view.mapToScene(view.viewport().rect()).boundingRect()
    assert visible.contains(rect.center())


def test_manual_correction_is_stored_and_rescored(
    window: MainWindow, qtbot: QtBot, database: Database
) -> None:
    sheet_id = open_row(window, qtbot, 0)
    model = window.sheet_panel.answers_model
    current = model.answer(0).answer_corrected
    new = "A" if current != "A" else "B"

    with qtbot.waitSignal(window.sheets_loaded, timeout=20_000):
        model.setData(model.index(0, 2), new.lower(), Qt.ItemDataRole.EditRole)

    with database.connect() as conn:
        row = conn.execute(
            "SELECT answer_corrected, corrected_by, corrected_at IS NOT NULL"
            " FROM omr_answers WHERE sheet_id = %s AND question = 'q1'",
            (sheet_id,),
        ).fetchone()
    assert row == (new, window.editor_name(), True)


def test_refused_correction_is_explained(
    window: MainWindow,
    qtbot: QtBot,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sheet_id = open_row(window, qtbot, 0)
    model = window.sheet_panel.answers_model
    warnings: list[str] = []
    monkeypatch.setattr(
        QMessageBox, "warning", lambda _parent, _title, text: warnings.append(text)
    )

    model.setData(model.index(0, 2), "Z", Qt.ItemDataRole.EditRole)
    qtbot.waitUntil(lambda: bool(warnings), timeout=20_000)

    assert "whose options are A, B, C, D, E" in warnings[0]
    with database.connect() as conn:
        row = conn.execute(
            "SELECT corrected_by FROM omr_answers WHERE sheet_id = %s"
            " AND question = 'q1'",
            (sheet_id,),
        ).fetchone()
    assert row == (None,)


def test_swap_exchanges_students_of_two_sheets(
    window: MainWindow, qtbot: QtBot, database: Database
) -> None:
    with database.connect() as conn:
        before = dict(conn.execute("SELECT id, student_id FROM sheets").fetchall())
    first, second = sorted(before)[:2]
    window.select_mode_button.setChecked(True)
    window.sheet_model.set_checked([first, second], True)

    with qtbot.waitSignal(window.swapped, timeout=20_000):
        qtbot.mouseClick(window.swap_button, Qt.MouseButton.LeftButton)

    with database.connect() as conn:
        after = dict(conn.execute("SELECT id, student_id FROM sheets").fetchall())
    assert after[first] == before[second]
    assert after[second] == before[first]


def test_other_batch_closes_open_sheet(
    window: MainWindow, qtbot: QtBot, database: Database, tmp_path: Path
) -> None:
    with database.connect() as conn:
        seed_demo(conn, tmp_path / "second", sheets=1, workers=1, batch_name="Other")
    with qtbot.waitSignal(window.batches_loaded, timeout=20_000):
        window.refresh_batches()
    open_row(window, qtbot, 0)
    other = next(
        r
        for r in range(window.batch_proxy.rowCount())
        if window.batch_proxy.index(r, 0).data() == "Other"
    )

    with qtbot.waitSignal(window.sheets_loaded, timeout=20_000):
        window.batches_view.selectRow(other)
    qtbot.wait(200)

    assert window.open_sheet_id is None
    assert window.sheet_panel.detail is None
    assert window.sheet_title.text() == "<b>No sheet open</b>"

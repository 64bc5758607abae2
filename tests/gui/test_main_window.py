"""The main window on a real database: panels, batch list, student list."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from PySide6.QtWidgets import QToolButton
from pytestqt.qtbot import QtBot

from omr_desktop.config import DatabaseChoice
from omr_desktop.db.database import Database
from omr_desktop.db.migrate import migrate
from omr_desktop.gui.models.list_models import sheet_table_model
from omr_desktop.gui.windows.main_window import MainWindow
from tests.db.builders import AnswerRow, add_batch, add_sheet, add_template

pytestmark = [pytest.mark.gui, pytest.mark.db]


@pytest.fixture
def database(db_conninfo: str) -> Iterator[Database]:
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        template_id = add_template(conn)
        for name, count in (("Morning exam", 3), ("Evening exam", 1)):
            batch_id = add_batch(conn, name, template_id, None)
            for n in range(1, count + 1):
                add_sheet(conn, batch_id, n, [AnswerRow("q1", "B")])
    opened = Database(DatabaseChoice(db_conninfo, "environment"))
    opened.open()
    yield opened
    opened.close()


@pytest.fixture
def window(qtbot: QtBot) -> MainWindow:
    main = MainWindow()
    qtbot.addWidget(main)
    main.show()
    return main


def test_window_panels_and_swap_button(window: MainWindow) -> None:
    assert window.splitter.count() == 3
    assert [window.splitter.widget(i).objectName() for i in range(3)] == [
        "panelA",
        "panelB",
        "panelC",
    ]
    swap = window.splitter.widget(2).findChild(QToolButton, "swapButton")
    assert swap is not None
    assert swap.accessibleName() == "Swap"
    assert not swap.isEnabled()


def test_batches_and_sheets_load_from_database(
    window: MainWindow, database: Database, qtbot: QtBot
) -> None:
    with qtbot.waitSignal(window.batches_loaded, timeout=10_000) as loaded:
        window.set_database(database)
    assert loaded.args == [2]

    names = {window.batch_model.record(r).name for r in range(2)}
    assert names == {"Morning exam", "Evening exam"}

    row = next(
        r for r in range(2) if window.batch_proxy.index(r, 0).data() == "Morning exam"
    )
    with qtbot.waitSignal(window.sheets_loaded, timeout=10_000) as sheets:
        window.batches_view.selectRow(row)
    assert sheets.args == [3]
    assert [window.sheet_model.record(r).sequence_no for r in range(3)] == [1, 2, 3]


def test_batch_search_filters_by_name(
    window: MainWindow, database: Database, qtbot: QtBot
) -> None:
    with qtbot.waitSignal(window.batches_loaded, timeout=10_000):
        window.set_database(database)

    window.batch_search.setText("even")

    assert window.batch_proxy.rowCount() == 1
    assert window.batch_proxy.index(0, 0).data() == "Evening exam"


def test_sheet_model_passes_model_tester(qtmodeltester: object) -> None:
    from decimal import Decimal

    from omr_desktop.db.queries import SheetSummary

    model = sheet_table_model()
    model.set_records(
        [
            SheetSummary(
                1,
                1,
                "R1",
                "Ada",
                Decimal("12.5"),
                ("MULTI_MARK",),
                "Default",
                "2026-01-01 09:30",
            ),
            SheetSummary(2, 2, "R2", "Ben", None, (), "", ""),
        ]
    )

    qtmodeltester.check(model)  # type: ignore[attr-defined]


def test_empty_database_says_how_to_start(
    window: MainWindow, empty_db_conninfo: str, qtbot: QtBot
) -> None:
    with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
        migrate(conn)
    empty = Database(DatabaseChoice(empty_db_conninfo, "environment"))
    empty.open()
    try:
        with qtbot.waitSignal(window.batches_loaded, timeout=10_000) as loaded:
            window.set_database(empty)
    finally:
        empty.close()

    assert loaded.args == [0]
    assert "omr-desktop demo" in window.sheet_panel.sheet_view.message_text()

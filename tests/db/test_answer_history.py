"""The answer history trigger of migration 0007 on a real PostgreSQL."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.db.builders import AnswerRow, add_batch, add_sheet, add_template

pytestmark = pytest.mark.db

HISTORY = (
    "SELECT sheet_id, question, answer_raw, answer_corrected, corrected_by,"
    " inserted FROM answer_history WHERE task_id = %s ORDER BY sheet_id, question"
)


@pytest.fixture
def sheets(db: psycopg.Connection) -> list[int]:
    batch = add_batch(db, "b", add_template(db), None)
    answers = [
        AnswerRow("q1", "A"),
        AnswerRow("q2", "B", corrected="C", corrected_by="editor"),
        AnswerRow("q3", ""),
    ]
    return [add_sheet(db, batch, n, answers) for n in (1, 2)]


def _new_task(conn: psycopg.Connection, sheet_ids: list[int]) -> str:
    task_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO reprocess_tasks (task_id, profile_id, sheet_ids)"
        " VALUES (%s, 1, %s)",
        (task_id, sheet_ids),
    )
    return task_id


def test_update_without_a_task_records_nothing(
    db: psycopg.Connection, sheets: list[int]
) -> None:
    # A manual correction, or an undo, is not a reprocess.
    db.execute("UPDATE omr_answers SET answer_corrected = 'D'")

    assert db.execute("SELECT count(*) FROM answer_history_sheets").fetchone() == (0,)


def test_update_records_the_replaced_rows_per_sheet(
    db: psycopg.Connection, sheets: list[int]
) -> None:
    task_id = _new_task(db, sheets)
    with db.transaction():
        db.execute(
            "SELECT set_config('omr_desktop.history_task', %s, true)", (task_id,)
        )
        db.execute(
            "UPDATE omr_answers SET answer_raw = 'E' WHERE question <> 'q3'"
            " AND sheet_id = ANY(%s)",
            (sheets,),
        )
        counts = db.execute(
            "SELECT current_setting('omr_desktop.history_counts')"
        ).fetchone()

    assert db.execute(HISTORY, (task_id,)).fetchall() == [
        (sheets[0], "q1", "A", "A", None, False),
        (sheets[0], "q2", "B", "C", "editor", False),
        (sheets[1], "q1", "A", "A", None, False),
        (sheets[1], "q2", "B", "C", "editor", False),
    ]
    # One history row per sheet; two replaced rows carried a correction.
    per_sheet = db.execute(
        "SELECT sheet_id, cardinality(answers) FROM answer_history_sheets"
        " WHERE task_id = %s ORDER BY 1",
        (task_id,),
    ).fetchall()
    assert per_sheet == [(sheets[0], 2), (sheets[1], 2)]
    assert counts == ("2",)


def test_task_setting_ends_with_its_transaction(
    db: psycopg.Connection, sheets: list[int]
) -> None:
    task_id = _new_task(db, sheets)
    with db.transaction():
        db.execute(
            "SELECT set_config('omr_desktop.history_task', %s, true)", (task_id,)
        )
        db.execute("UPDATE omr_answers SET answer_raw = 'E' WHERE question = 'q1'")

    db.execute("UPDATE omr_answers SET answer_raw = 'F' WHERE question = 'q1'")

    rows = db.execute(HISTORY, (task_id,)).fetchall()
    assert [row[2] for row in rows] == ["A", "A"]
    assert db.execute("SELECT count(*) FROM answer_history_sheets").fetchone() == (2,)

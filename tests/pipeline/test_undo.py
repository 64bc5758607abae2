"""Undo of a reprocess: exact restore, refusals, pruned history; CLI exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from omr_desktop.cli import main
from omr_desktop.config import DatabaseChoice
from omr_desktop.db.corrections import CorrectionError, correct_answer, swap_students
from omr_desktop.db.database import Database
from omr_desktop.db.history_store import UndoError, prune_history, undo_task
from omr_desktop.db.migrate import SchemaTooNewError
from omr_desktop.pipeline.demo import seed_demo
from omr_desktop.pipeline.reprocess import ReprocessRequest
from omr_desktop.pipeline.task_manager import TaskManager
from tests.db.builders import mark_migrated_by_newer_version

pytestmark = pytest.mark.db

# Every column a reprocess may change, sheet by sheet; scored_at is left
# out because rescoring stamps the time it ran.
SNAPSHOT = {
    "answers": "SELECT a::text FROM omr_answers a ORDER BY sheet_id, question",
    "sheets": "SELECT (id, status, error, last_profile_id, processed_at,"
    " measurement_hash, identifiers, score, fills)::text"
    " FROM sheets ORDER BY id",
    "flags": "SELECT f::text FROM sheet_flags f ORDER BY sheet_id, flag",
}


def snapshot(conn: psycopg.Connection) -> dict[str, list[str]]:
    return {
        name: [r[0] for r in conn.execute(query)] for name, query in SNAPSHOT.items()
    }


@pytest.fixture
def seeded(db_conninfo: str, tmp_path: Path) -> Iterator[tuple[Database, list[int]]]:
    with psycopg.connect(db_conninfo) as conn:
        seed_demo(conn, tmp_path, sheets=4, workers=2)
        ids = [r[0] for r in conn.execute("SELECT id FROM sheets ORDER BY id")]
    database = Database(DatabaseChoice(db_conninfo, "environment"))
    database.open()
    yield database, ids
    database.close()


def reprocess(database: Database, ids: list[int], profile_id: int) -> str:
    with ThreadPoolExecutor(2) as executor:
        manager = TaskManager(database, executor, 2)
        task_id = manager.submit(ReprocessRequest(tuple(ids), profile_id))
        assert manager.wait(task_id, 120)
        manager.shutdown()
    return task_id


def test_undo_restores_answers_scores_flags_exactly(
    seeded: tuple[Database, list[int]],
) -> None:
    database, ids = seeded
    with database.connect() as conn:
        before = snapshot(conn)
    task_id = reprocess(database, ids, 2)
    with database.connect() as conn:
        assert snapshot(conn) != before

        result = undo_task(conn, task_id)

        assert snapshot(conn) == before
    assert result.sheets_restored == 4


def test_undo_restores_fills_the_task_changed(
    seeded: tuple[Database, list[int]],
) -> None:
    database, ids = seeded
    with database.connect() as conn:
        # Fills a reprocess will measure differently; the others it keeps.
        conn.execute("UPDATE sheets SET fills = '{0.5}' WHERE id = %s", (ids[0],))
        conn.commit()
        before = snapshot(conn)
    task_id = reprocess(database, ids, 2)
    with database.connect() as conn:
        kept = conn.execute(
            "SELECT sheet_id, fills_kept, fills IS NULL FROM sheet_history"
            " WHERE task_id = %s ORDER BY sheet_id",
            (task_id,),
        ).fetchall()
        assert kept == [(ids[0], False, False)] + [(i, True, True) for i in ids[1:]]

        undo_task(conn, task_id)

        assert snapshot(conn) == before


def test_undo_twice_is_rejected(seeded: tuple[Database, list[int]]) -> None:
    database, ids = seeded
    task_id = reprocess(database, ids, 2)
    with database.connect() as conn:
        undo_task(conn, task_id)

        with pytest.raises(UndoError, match="undone already"):
            undo_task(conn, task_id)


def test_undo_rejected_after_later_task(seeded: tuple[Database, list[int]]) -> None:
    database, ids = seeded
    first = reprocess(database, ids, 2)
    later = reprocess(database, ids[:2], 3)
    with database.connect() as conn:
        with pytest.raises(UndoError, match=f"later task.*{later}"):
            undo_task(conn, first)

        undo_task(conn, later)
        undo_task(conn, first)


def test_undo_rejected_after_manual_correction(
    seeded: tuple[Database, list[int]],
) -> None:
    database, ids = seeded
    task_id = reprocess(database, ids, 2)
    with database.connect(autocommit=True) as conn:
        conn.execute(
            "UPDATE omr_answers SET answer_corrected = 'C', corrected_by = 'editor',"
            " corrected_at = now() WHERE sheet_id = %s AND question = 'q1'",
            (ids[0],),
        )

        with pytest.raises(UndoError, match="corrected by hand"):
            undo_task(conn, task_id)


def test_writes_rejected_after_newer_migration(
    seeded: tuple[Database, list[int]],
) -> None:
    database, ids = seeded
    task_id = reprocess(database, ids, 2)
    with database.connect(autocommit=True) as conn:
        newer = mark_migrated_by_newer_version(conn)
        before = snapshot(conn)
        students = "SELECT id, student_id FROM sheets ORDER BY id"
        students_before = conn.execute(students).fetchall()
        message = f"schema version {newer}, newer than this OMR Desktop"

        with pytest.raises(SchemaTooNewError, match=message):
            undo_task(conn, task_id)
        with pytest.raises(SchemaTooNewError, match=message):
            correct_answer(conn, ids[0], "q1", "C", "editor")
        with pytest.raises(SchemaTooNewError, match=message):
            swap_students(conn, ids[0], ids[1])

        assert snapshot(conn) == before
        assert conn.execute(students).fetchall() == students_before


def test_pruned_history_cannot_be_undone(seeded: tuple[Database, list[int]]) -> None:
    database, ids = seeded
    old = reprocess(database, ids, 2)
    newest = reprocess(database, ids, 1)
    with database.connect() as conn:
        tasks, rows = prune_history(conn, keep=1)

        assert tasks == 1
        assert rows > 0
        with pytest.raises(UndoError, match="pruned"):
            undo_task(conn, old)
        undo_task(conn, newest)


def test_cli_reprocess_and_undo_exit_codes(
    seeded: tuple[Database, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database, ids = seeded
    monkeypatch.setenv("OMR_DATABASE_URL", database.conninfo)
    monkeypatch.setenv("OMR_DATA_DIR", str(tmp_path / "data"))
    sheets = ",".join(str(i) for i in ids)

    # A repeated id counts once, in the header as in the task.
    repeated = f"{sheets},{ids[1]}"
    assert main(["reprocess", "--sheets", repeated, "--profile", "2"]) == 0
    out = capsys.readouterr()
    task_id = out.err.split("Task ", 1)[1].split(":", 1)[0]
    assert f"Task {task_id}: 4 sheets, profile 2" in out.err
    assert "Loading 4 sheets" in out.err
    assert "answers:" in out.out
    assert main(["reprocess", "--sheets", sheets, "--profile", "42"]) == 2
    assert (
        "Profile 42 does not exist. Choose one of: 1 Default, 2 Sensitive, 3 Strict."
        in capsys.readouterr().err
    )
    assert main(["reprocess", "--sheets", f"{sheets},999999", "--profile", "2"]) == 2
    assert "Unknown sheet ids: 999999" in capsys.readouterr().err
    assert main(["reprocess", "--batch", "Demo", "--profile", "3", "--strict"]) == 0
    out = capsys.readouterr()
    last_task = out.err.split("Task ", 1)[1].split(":", 1)[0]
    updated = out.out.split(" updated, of which ", 1)[0].rsplit(" ", 1)[1]
    assert main(["reprocess", "--undo", "not-a-uuid"]) == 2
    assert main(["reprocess", "--undo", task_id]) == 1
    assert "later task" in capsys.readouterr().err
    undone = main(["reprocess", "--undo", "00000000-0000-0000-0000-000000000000"])
    assert undone == 2
    assert "does not exist" in capsys.readouterr().err
    # Undo restores the rows the result counted as updated.
    assert updated != "0"
    assert main(["reprocess", "--undo", last_task]) == 0
    assert f"4 sheets and {updated} answers restored" in capsys.readouterr().out


def test_cli_undo_counts_inserted_answers(
    seeded: tuple[Database, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database, ids = seeded
    monkeypatch.setenv("OMR_DATABASE_URL", database.conninfo)
    monkeypatch.setenv("OMR_DATA_DIR", str(tmp_path / "data"))
    with database.connect() as conn:
        deleted = conn.execute(
            "DELETE FROM omr_answers WHERE sheet_id = %s", (ids[0],)
        ).rowcount
        conn.commit()
    assert main(["reprocess", "--sheets", str(ids[0]), "--profile", "1"]) == 0
    task_id = capsys.readouterr().err.split("Task ", 1)[1].split(":", 1)[0]

    assert main(["reprocess", "--undo", task_id]) == 0

    out = capsys.readouterr().out
    assert "1 sheet and 0 answers restored" in out
    assert f"{deleted} inserted answers deleted." in out
    with database.connect() as conn:
        left = conn.execute(
            "SELECT count(*) FROM omr_answers WHERE sheet_id = %s", (ids[0],)
        ).fetchone()
    assert left == (0,)


def test_cli_export_writes_sheet_and_answer_rows(
    seeded: tuple[Database, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database, _ids = seeded
    monkeypatch.setenv("OMR_DATABASE_URL", database.conninfo)
    monkeypatch.setenv("OMR_DATA_DIR", str(tmp_path / "data"))
    sheets_csv = tmp_path / "sheets.csv"
    answers_csv = tmp_path / "answers.csv"

    assert main(["export", "--batch", "Demo", "--out", str(sheets_csv)]) == 0
    assert (
        main(["export", "--batch", "Demo", "--out", str(answers_csv), "--answers"]) == 0
    )
    assert main(["export", "--batch", "Nope", "--out", str(sheets_csv)]) == 2
    assert "No batch named 'Nope'. The batches are: 'Demo'." in capsys.readouterr().err
    assert main(["reprocess", "--batch", "Nope", "--profile", "2"]) == 2
    assert "No batch named 'Nope'. The batches are: 'Demo'." in capsys.readouterr().err

    sheet_lines = sheets_csv.read_text().splitlines()
    assert sheet_lines[0].startswith("sequence_no,sheet_id,student_code,")
    assert sheet_lines[0].endswith(",q149,q150")
    assert len(sheet_lines) == 1 + 4
    assert len(answers_csv.read_text().splitlines()) == 1 + 4 * 150


@pytest.mark.parametrize("answer", ["Z", "ABZ", "1"])
def test_correction_outside_options_rejected(
    seeded: tuple[Database, list[int]], answer: str
) -> None:
    database, ids = seeded
    with database.connect(autocommit=True) as conn:
        before = snapshot(conn)

        with pytest.raises(CorrectionError, match="whose options are A, B, C, D, E"):
            correct_answer(conn, ids[0], "q1", answer, "editor")

        assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("answer", "stored_as"),
    [("c", "C"), ("AC", "AC"), ("CA", "AC"), ("EE", "E"), ("", ""), ("*", "*")],
)
def test_correction_within_options_stored(
    seeded: tuple[Database, list[int]], answer: str, stored_as: str
) -> None:
    database, ids = seeded
    with database.connect(autocommit=True) as conn:
        correct_answer(conn, ids[0], "q1", answer, "editor")

        stored = conn.execute(
            "SELECT answer_corrected FROM omr_answers WHERE sheet_id = %s"
            " AND question = 'q1'",
            (ids[0],),
        ).fetchone()
    assert stored == (stored_as,)

"""The profile dialog's preview agrees with the reprocess that follows it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from omr_desktop.config import DatabaseChoice
from omr_desktop.db.database import Database
from omr_desktop.pipeline.demo import seed_demo
from omr_desktop.pipeline.preview import preview_sheet
from omr_desktop.pipeline.reprocess import ReprocessRequest
from omr_desktop.pipeline.task_manager import TaskManager

pytestmark = pytest.mark.db


@pytest.fixture
def seeded(db_conninfo: str, tmp_path: Path) -> Iterator[tuple[Database, list[int]]]:
    with psycopg.connect(db_conninfo) as conn:
        seed_demo(conn, tmp_path, sheets=2, workers=2)
        ids = [r[0] for r in conn.execute("SELECT id FROM sheets ORDER BY id")]
    database = Database(DatabaseChoice(db_conninfo, "environment"))
    database.open()
    yield database, ids
    database.close()


def corrected(database: Database, sheet_id: int) -> dict[str, str]:
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT question, answer_corrected FROM omr_answers WHERE sheet_id = %s",
            (sheet_id,),
        ).fetchall()
    return dict(rows)


def test_preview_matches_following_reprocess(
    seeded: tuple[Database, list[int]],
) -> None:
    database, ids = seeded
    before = corrected(database, ids[0])

    preview = preview_sheet(database, ids[0], 2)
    with ThreadPoolExecutor(2) as executor:
        manager = TaskManager(database, executor, 2)
        task_id = manager.submit(ReprocessRequest(tuple(ids), 2))
        assert manager.wait(task_id, 120)
        manager.shutdown()
    after = corrected(database, ids[0])

    changed = {(q, before[q], after[q]) for q in after if after[q] != before[q]}
    assert changed
    assert set(preview.changes) == changed
    assert preview.from_stored_fills


def test_preview_skips_hand_corrections(seeded: tuple[Database, list[int]]) -> None:
    database, ids = seeded
    preview = preview_sheet(database, ids[0], 2)
    question = preview.changes[0][0]
    with database.connect(autocommit=True) as conn:
        conn.execute(
            "UPDATE omr_answers SET answer_corrected = 'E', corrected_by ="
            " 'editor', corrected_at = now() WHERE sheet_id = %s"
            " AND question = %s",
            (ids[0], question),
        )

    again = preview_sheet(database, ids[0], 2)

    assert question not in {q for q, _old, _new in again.changes}

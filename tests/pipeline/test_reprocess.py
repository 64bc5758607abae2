"""Reprocess tasks on real demo scans, a real PostgreSQL and a real TaskManager.

Every failure here is a real one on the server (a terminated backend, a
trigger, a replaced procedure, a deferred constraint), and every check of
"nothing was written" compares the text form of every row before and after.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from omr_desktop.db import reprocess_store, task_store
from omr_desktop.db.database import Database
from omr_desktop.db.migrate import Migration, latest_version, migrate
from omr_desktop.engine import SheetReading, read_sheet
from omr_desktop.engine.decide import Answer
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline import reprocess
from omr_desktop.pipeline import task_manager as task_manager_module
from omr_desktop.pipeline.copy_rows import (
    ANSWER_COLUMNS,
    SHEET_COLUMNS,
    binary_copy,
    encode_answers,
    encode_sheet,
)
from omr_desktop.pipeline.events import ProgressEvent
from omr_desktop.pipeline.reprocess import ReprocessRequest
from omr_desktop.pipeline.task_manager import (
    MAX_SHEETS_PER_TASK,
    EmptySelectionError,
    TaskConflictError,
    TaskManager,
    TaskRequestError,
    TooManySheetsError,
    UnknownProfileError,
    UnknownSheetsError,
)
from tests.conftest import RUN_ID, drop_database, with_dbname
from tests.corrupt_images import damaged_jpeg, png_claiming_size
from tests.db.builders import (
    add_batch,
    add_sheet,
    add_template,
    dead_pid,
    mark_migrated_by_newer_version,
    migrations_with_a_newer_one,
)
from tests.pipeline.conftest import WORKERS, EventLog, snapshot_tables

pytestmark = pytest.mark.db

SENSITIVE = 2

# Long enough for the demo sheets on a loaded CI machine, short enough that
# a hung task fails the test quickly.
TASK_TIMEOUT_S = 60

# How long a listener or a gated job waits for the test to release it.
GATE_TIMEOUT_S = 30

ANSWER_QUERY = (
    "SELECT sheet_id, question, answer_raw, answer_corrected, confidence_score,"
    " reason, needs_review, corrected_by, corrected_at::text"
)


def answers_by_key(
    conn: psycopg.Connection, table: str = "omr_answers", task_id: str | None = None
) -> dict[tuple[int, str], tuple[Any, ...]]:
    """Map (sheet id, question) to the answer's stored values."""
    query = f"{ANSWER_QUERY} FROM {table}"
    params: tuple[Any, ...] = ()
    if task_id is not None:
        query += " WHERE task_id = %s"
        params = (task_id,)
    rows = conn.execute(query, params).fetchall()
    return {(int(r[0]), str(r[1])): tuple(r[2:]) for r in rows}


@pytest.fixture(params=["by-ctid", "joined"])
def write_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Write the answers one way or the other, whatever the changed share.

    A demo reprocess stages a few hundred rows, far below the size at
    which ``apply_changes`` samples them to choose.
    """
    monkeypatch.setattr(reprocess_store, "_SAMPLE_FROM_ROWS", 0)
    share = 0.0 if request.param == "joined" else 2.0
    monkeypatch.setattr(reprocess_store, "_JOINED_FROM_SHARE", share)
    return str(request.param)


def run_task(manager: TaskManager, request: ReprocessRequest) -> str:
    task_id = manager.submit(request)
    assert manager.wait(task_id, TASK_TIMEOUT_S), f"task {task_id} did not end"
    return task_id


def task_row(database: Database, task_id: str) -> task_store.TaskRow:
    with database.connect() as conn:
        row = task_store.get_task(conn, task_id)
    assert row is not None
    return row


def stored_events(database: Database, task_id: str) -> list[task_store.StoredEvent]:
    with database.connect() as conn:
        return task_store.events_after(conn, task_id)


def image_paths(conn: psycopg.Connection, sheet_ids: list[int]) -> list[Path]:
    rows = conn.execute(
        "SELECT image_path FROM sheets WHERE id = ANY(%s) ORDER BY id", (sheet_ids,)
    ).fetchall()
    return [Path(r[0]) for r in rows]


def expected_scores(conn: psycopg.Connection) -> dict[int, Decimal]:
    """Score every sheet from its stored answers and its batch's key, in Python."""
    points = {
        int(r[0]): (r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT id, points_correct, points_wrong, points_blank FROM answer_keys"
        )
    }
    keys: dict[int, dict[str, list[str]]] = {}
    for key_id, question, accepted in conn.execute(
        "SELECT answer_key_id, question, accepted FROM answer_key_items"
    ):
        keys.setdefault(int(key_id), {})[str(question)] = list(accepted)
    scores: dict[int, Decimal] = {}
    for sheet_id, key_id in conn.execute(
        "SELECT s.id, b.answer_key_id FROM sheets s JOIN batches b ON b.id = s.batch_id"
    ):
        answers = dict(
            conn.execute(
                "SELECT question, CASE WHEN answer_corrected = '*' THEN answer_raw"
                " ELSE answer_corrected END FROM omr_answers WHERE sheet_id = %s",
                (sheet_id,),
            ).fetchall()
        )
        correct, wrong, blank = points[int(key_id)]
        total = Decimal(0)
        for question, accepted in keys[int(key_id)].items():
            effective = answers.get(question, "")
            if effective == "":
                total += blank
            elif effective in accepted:
                total += correct
            else:
                total += wrong
        scores[int(sheet_id)] = total
    return scores


class Gate:
    """A one-shot release that a blocked listener or job waits on."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.released = threading.Event()

    def block(self) -> None:
        self.reached.set()
        assert self.released.wait(GATE_TIMEOUT_S), "the test never released the gate"

    def wait_reached(self) -> None:
        assert self.reached.wait(GATE_TIMEOUT_S), "the task never reached the gate"


def block_on_first_processing_event(
    manager: TaskManager, task_id: Callable[[], str | None], gate: Gate
) -> None:
    """Hold the task on its runner thread at its first "Processing:" event.

    The sheets are locked by then, since Loading Sheets has finished.
    """

    def listener(event: ProgressEvent) -> None:
        if (
            event.task_id == task_id()
            and event.message.startswith("Processing:")
            and not gate.reached.is_set()
        ):
            gate.block()

    manager.add_listener(listener)


# -- A successful reprocess ---------------------------------------------------------


def test_sensitive_profile_reads_light_marks(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    light_before = db.execute(
        "SELECT sheet_id, question FROM omr_answers"
        " WHERE reason = 'light_mark' AND answer_raw = ''"
    ).fetchall()
    answers_before = answers_by_key(db)
    scores_before = dict(db.execute("SELECT id, score FROM sheets").fetchall())
    flags_before = db.execute("SELECT * FROM sheet_flags ORDER BY 1, 2").fetchall()

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    assert task_row(database, task_id).status == task_store.SUCCESS
    answers_after = answers_by_key(db)
    assert len(light_before) > 0
    now_read = [key for key in light_before if answers_after[key][0] != ""]
    assert len(now_read) >= 0.9 * len(light_before)
    scores_after = dict(db.execute("SELECT id, score FROM sheets").fetchall())
    assert scores_after != scores_before
    assert scores_after == expected_scores(db)
    flags_after = db.execute("SELECT * FROM sheet_flags ORDER BY 1, 2").fetchall()
    assert flags_after != flags_before
    blank_flags = dict(
        db.execute(
            "SELECT sheet_id, count FROM sheet_flags WHERE flag = 'BLANK_ANSWER'"
        ).fetchall()
    )
    blank_answers = dict(
        db.execute(
            "SELECT sheet_id, count(*) FROM omr_answers"
            " WHERE answer_corrected = '' GROUP BY 1"
        ).fetchall()
    )
    assert blank_flags == blank_answers
    profiles = db.execute("SELECT DISTINCT last_profile_id FROM sheets").fetchall()
    assert profiles == [(SENSITIVE,)]
    assert set(answers_after) == set(answers_before)


def test_history_holds_every_changed_answer(
    manager: TaskManager,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    write_way: str,
) -> None:
    answers_before = answers_by_key(db)
    sheets_before = {
        int(r[0]): tuple(r[1:])
        for r in db.execute(
            "SELECT id, status, error, last_profile_id, processed_at, measurement_hash,"
            " identifiers, score, fills FROM sheets"
        )
    }

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    answers_after = answers_by_key(db)
    changed = {k for k, v in answers_after.items() if answers_before[k] != v}
    history = answers_by_key(db, "answer_history", task_id)
    assert changed
    assert set(history) == changed
    for key, old in history.items():
        assert old == answers_before[key], key
    sheet_history = {
        int(r[0]): tuple(r[1:])
        for r in db.execute(
            # Fills the task kept are not copied: they are the sheet's own.
            "SELECT h.sheet_id, h.status, h.error, h.last_profile_id,"
            " h.processed_at, h.measurement_hash, h.identifiers, h.score,"
            " CASE WHEN h.fills_kept THEN s.fills ELSE h.fills END"
            " FROM sheet_history h JOIN sheets s ON s.id = h.sheet_id"
            " WHERE h.task_id = %s",
            (task_id,),
        )
    }
    assert sheet_history == sheets_before
    inserted = db.execute(
        "SELECT count(*) FROM answer_history WHERE inserted"
    ).fetchone()
    assert inserted == (0,)


def test_task_result_counts_the_changes(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    write_way: str,
) -> None:
    scores_before = dict(db.execute("SELECT id, score FROM sheets").fetchall())
    answers_before = answers_by_key(db)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    row = task_row(database, task_id)
    result = row.result
    answers_after = answers_by_key(db)
    updated = sum(1 for k, v in answers_after.items() if answers_before[k] != v)
    changed = sum(1 for k, v in answers_after.items() if answers_before[k][:2] != v[:2])
    scores_after = dict(db.execute("SELECT id, score FROM sheets").fetchall())
    score_changes = sum(1 for k in scores_after if scores_after[k] != scores_before[k])
    assert row.status == task_store.SUCCESS
    assert row.error is None
    assert row.finished_at is not None
    assert result["sheets_total"] == len(demo_sheet_ids)
    assert result["sheets_processed"] == len(demo_sheet_ids)
    assert result["sheets_failed"] == 0
    assert result["failed_sheets"] == []
    assert result["answers_written"] == 150 * len(demo_sheet_ids)
    assert result["answers_updated"] == updated
    assert result["answers_changed"] == changed
    assert result["answers_changed"] > 0
    assert result["sheets_score_changed"] == score_changes
    assert result["profile_id"] == SENSITIVE
    assert 0 < result["duration_s"] < TASK_TIMEOUT_S
    assert result["database_s"] <= result["duration_s"]


def test_events_follow_stages_and_are_stored(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    demo_sheet_ids: list[int],
) -> None:
    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    events = event_log.of(task_id)
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    stages = [e.stage for i, e in enumerate(events) if events[i - 1].stage != e.stage]
    assert stages == list(ev.STAGES)
    for stage in ev.STAGES[:-1]:
        percentages = [e.progress_percentage for e in events if e.stage == stage]
        assert len(percentages) >= 2, stage
        assert percentages[0] == 0, stage
        assert percentages[-1] == 100, stage
        assert percentages == sorted(percentages), stage
    overall = [e.overall_percentage for e in events]
    assert overall == sorted(overall)
    assert [e.event for e in events[:-1]] == [ev.PROGRESS] * (len(events) - 1)
    assert {e.status for e in events[:-1]} == {task_store.STARTED}
    last = events[-1]
    assert last.event == ev.COMPLETE
    assert last.stage == ev.COMPLETED
    assert last.status == task_store.SUCCESS
    assert last.progress_percentage == 100
    assert last.result is not None
    assert last.result["sheets_processed"] == len(demo_sheet_ids)
    assert last.processed == len(demo_sheet_ids)
    streamed = [(e.event_id, e.event, e.to_dict()) for e in events]
    stored = [(s.event_id, s.event, s.data) for s in stored_events(database, task_id)]
    assert stored == streamed


def test_one_sheet_messages_agree_in_number(
    manager: TaskManager, event_log: EventLog, demo_sheet_ids: list[int]
) -> None:
    task_id = run_task(manager, ReprocessRequest((demo_sheet_ids[0],), SENSITIVE))

    messages = [e.message for e in event_log.of(task_id)]
    assert "Processing: 1/1 sheet completed" in messages
    assert "1/1 sheet completed (0 failed)" in messages
    csv = "CSV generation complete: 1 sheet, 150 answers"
    assert any(m.startswith(csv) for m in messages)
    load = "Database load complete: 1 sheet, 150 answers"
    assert any(m.startswith(load) for m in messages)
    assert not [m for m in messages if re.search(r"\b1 (sheets|answers|rows)\b", m)]


def test_complete_event_comes_after_commit(
    manager: TaskManager, database: Database, demo_sheet_ids: list[int]
) -> None:
    seen: list[tuple[str, int]] = []

    def look_from_outside(event: ProgressEvent) -> None:
        if event.event != ev.COMPLETE:
            return
        with database.connect() as conn:
            row = task_store.get_task(conn, event.task_id)
            history = conn.execute(
                "SELECT count(*) FROM answer_history WHERE task_id = %s",
                (event.task_id,),
            ).fetchone()
        assert row is not None
        assert history is not None
        seen.append((row.status, int(history[0])))

    manager.add_listener(look_from_outside)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    changed = task_row(database, task_id).result["answers_updated"]
    assert seen == [(task_store.SUCCESS, changed)]


def test_failing_listener_does_not_fail_task(
    manager: TaskManager, database: Database, demo_sheet_ids: list[int]
) -> None:
    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("listener bug")

    manager.add_listener(broken)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    assert task_row(database, task_id).status == task_store.SUCCESS


@pytest.mark.parametrize("profile_id", [1, SENSITIVE])
def test_same_reading_again_writes_nothing(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    profile_id: int,
    write_way: str,
) -> None:
    # The demo is read with profile 1 when it is seeded, so with profile 1
    # even the first reprocess reads what is stored.
    request = ReprocessRequest(tuple(demo_sheet_ids), profile_id)
    run_task(manager, request)
    answers_before = answers_by_key(db)

    task_id = run_task(manager, request)

    result = task_row(database, task_id).result
    assert result["answers_updated"] == 0
    assert result["answers_changed"] == 0
    assert result["sheets_score_changed"] == 0
    assert answers_by_key(db) == answers_before
    assert answers_by_key(db, "answer_history", task_id) == {}


def test_missing_answer_row_is_inserted_again(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    write_way: str,
) -> None:
    from omr_desktop.db.history_store import undo_task

    sheet_id = demo_sheet_ids[0]
    # One row deleted by hand; the sheet keeps its other 149 answers.
    db.execute(
        "DELETE FROM omr_answers WHERE sheet_id = %s AND question = 'q7'", (sheet_id,)
    )
    count = "SELECT count(*) FROM omr_answers WHERE sheet_id = %s"

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    row = task_row(database, task_id)
    assert row.status == task_store.SUCCESS
    assert row.result["answers_inserted"] == 1
    assert db.execute(count, (sheet_id,)).fetchone() == (150,)
    inserted = db.execute(
        "SELECT sheet_id, question FROM answer_history WHERE task_id = %s AND inserted",
        (task_id,),
    ).fetchall()
    assert inserted == [(sheet_id, "q7")]
    with database.connect() as conn:
        undo_task(conn, task_id)
    assert db.execute(count, (sheet_id,)).fetchone() == (149,)


def test_sheet_without_answers_gets_them_inserted(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    write_way: str,
) -> None:
    sheet_id = demo_sheet_ids[0]
    db.execute("DELETE FROM omr_answers WHERE sheet_id = %s", (sheet_id,))
    db.execute("DELETE FROM sheet_flags WHERE sheet_id = %s", (sheet_id,))

    task_id = run_task(manager, ReprocessRequest((sheet_id,), SENSITIVE))

    row = task_row(database, task_id)
    assert row.status == task_store.SUCCESS
    assert row.result["answers_inserted"] == 150
    count = db.execute(
        "SELECT count(*) FROM omr_answers WHERE sheet_id = %s", (sheet_id,)
    ).fetchone()
    assert count == (150,)
    inserted = db.execute(
        "SELECT count(*) FROM answer_history WHERE task_id = %s AND inserted",
        (task_id,),
    ).fetchone()
    assert inserted == (150,)
    assert db.execute(
        "SELECT count(*) FROM sheet_flags WHERE sheet_id = %s", (sheet_id,)
    ).fetchone() != (0,)
    assert dict(db.execute("SELECT id, score FROM sheets").fetchall()) == (
        expected_scores(db)
    )


# -- Staging ------------------------------------------------------------------------


class StagingSpy:
    """Record the staging tables that ``create_staging`` makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[reprocess_store.Staging] = []
        create = reprocess_store.create_staging

        def spy(conn: psycopg.Connection) -> reprocess_store.Staging:
            staging = create(conn)
            self.made.append(staging)
            return staging

        monkeypatch.setattr(reprocess_store, "create_staging", spy)


def task_writes(
    database: Database, db: psycopg.Connection, task_id: str
) -> tuple[Any, ...]:
    """Return what a task left: answers, flags, staging tables, sheets, result.

    Without what tells two runs apart: processed_at, scored_at and timings.
    """
    tables = snapshot_tables(db)
    result = task_row(database, task_id).result
    sheets = db.execute(
        "SELECT id, status, score, fills, identifiers FROM sheets ORDER BY id"
    ).fetchall()
    timing = {"duration_s", "database_s", "stage_s"}
    return (
        tables["omr_answers"],
        tables["sheet_flags"],
        tables["staging tables"],
        sheets,
        {k: v for k, v in result.items() if k not in timing},
    )


def test_both_staging_kinds_write_the_same_rows(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omr_desktop.db.history_store import undo_task

    spy = StagingSpy(monkeypatch)
    request = ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE)

    # Without parallel workers the answers are staged in a temporary table.
    db.execute(
        sql.SQL("ALTER DATABASE {} SET max_parallel_workers_per_gather = 0").format(
            sql.Identifier(db.info.dbname)
        )
    )
    first = run_task(manager, request)
    by_temporary = task_writes(database, db, first)
    with database.connect() as conn:
        undo_task(conn, first)
    db.execute(
        sql.SQL("ALTER DATABASE {} RESET max_parallel_workers_per_gather").format(
            sql.Identifier(db.info.dbname)
        )
    )
    second = run_task(manager, request)
    by_unlogged = task_writes(database, db, second)

    assert [s.shared for s in spy.made] == [False, True]
    assert by_unlogged[4]["answers_changed"] > 0
    assert by_unlogged[2] == []
    assert by_temporary == by_unlogged


def test_rejected_create_stages_in_temporary_table(db: psycopg.Connection) -> None:
    # A role that may not create tables in its schema, as on a server
    # shared with other applications.
    role = f"omr_limited_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    with db.transaction(force_rollback=True):
        db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(role)))
        db.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {0} TO {0}").format(sql.Identifier(role))
        )
        db.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(role)))

        staging = reprocess_store.create_staging(db)

        assert not staging.shared
        # The rejected CREATE was rolled back to its savepoint: the
        # transaction goes on.
        db.execute(
            sql.SQL(
                "INSERT INTO {} SELECT 1, 'q1', 1, 'A', 'A', 0.9, 'clear', false"
            ).format(staging.answers)
        )


def test_temporary_search_path_stages_in_temporary_table(
    db: psycopg.Connection,
) -> None:
    # With pg_temp first in the search path, the current schema takes only
    # temporary tables.
    with db.transaction(force_rollback=True):
        db.execute("SET LOCAL search_path = pg_temp, public")

        staging = reprocess_store.create_staging(db)

        assert not staging.shared


def test_large_join_planned_for_workers(
    db: psycopg.Connection,
) -> None:
    # Larger than min_parallel_table_scan_size (8 MB, about 130,000 rows).
    rows = 200_000
    with db.transaction(force_rollback=True):
        staging = reprocess_store.create_staging(db)
        assert staging.shared
        db.execute(
            sql.SQL(
                "INSERT INTO {} SELECT n / 150, 'q' || n %% 150, n %% 150, 'A', 'A',"
                " 0.9, 'clear', false"
                " FROM generate_series(1, %s) n"
            ).format(staging.answers),
            (rows,),
        )
        statement = reprocess_store._changes_statement(staging, True)

        def plan(staged: int) -> str:
            settings = reprocess_store._join_settings(staging, staged)
            with reprocess_store._local_settings(db, settings):
                lines = db.execute(sql.SQL("EXPLAIN {}").format(statement))
                return "\n".join(str(r[0]) for r in lines)

        # Under the default costs the planner keeps the join on one
        # process for a staging table it has never analysed.
        assert "Gather" not in plan(0)
        assert "Gather" in plan(rows)
        # The settings last only as long as the statement.
        assert "Gather" not in plan(0)
        found = reprocess_store._find_changes(db, staging, True, rows)

    assert found.missing == rows


def test_both_write_ways_write_the_same_rows(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omr_desktop.db.history_store import undo_task

    request = ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE)
    # A corrected answer with a stale confidence, so that the reprocess
    # rewrites it, and a row the reprocess has to insert again.
    db.execute(
        "UPDATE omr_answers SET answer_corrected = 'E', corrected_by = 'editor',"
        " corrected_at = now(), confidence_score = 0.01"
        " WHERE sheet_id = %s AND question = 'q3'",
        (demo_sheet_ids[0],),
    )
    db.execute(
        "DELETE FROM omr_answers WHERE sheet_id = %s AND question = 'q7'",
        (demo_sheet_ids[1],),
    )

    def written(task_id: str) -> tuple[Any, ...]:
        history = db.execute(
            "SELECT sheet_id, question, answer_raw, answer_corrected,"
            " confidence_score, reason, needs_review, corrected_by,"
            " corrected_at, inserted FROM answer_history WHERE task_id = %s"
            " ORDER BY 1, 2",
            (task_id,),
        ).fetchall()
        return (*task_writes(database, db, task_id), history)

    monkeypatch.setattr(reprocess_store, "_SAMPLE_FROM_ROWS", 0)
    monkeypatch.setattr(reprocess_store, "_JOINED_FROM_SHARE", 0.0)
    first = run_task(manager, request)
    joined = written(first)
    with database.connect() as conn:
        undo_task(conn, first)
    monkeypatch.setattr(reprocess_store, "_JOINED_FROM_SHARE", 2.0)
    second = run_task(manager, request)
    by_ctid = written(second)

    assert joined[4]["answers_changed"] > 0
    assert joined[4]["answers_inserted"] == 1
    assert joined[4]["manual_corrections_kept"] == 1
    assert joined[2] == []
    assert joined == by_ctid


@pytest.mark.parametrize("changed_every", [1, 4, 10])
def test_sample_measures_changed_share(
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
    changed_every: int,
) -> None:
    # A sample as large as the staging table reads all of it.
    monkeypatch.setattr(reprocess_store, "_SAMPLE_FROM_ROWS", 0)
    monkeypatch.setattr(reprocess_store, "_SAMPLE_ROWS", 10**9)
    with db.transaction(force_rollback=True):
        staging = reprocess_store.create_staging(db)
        staged = db.execute(
            sql.SQL(
                "INSERT INTO {} SELECT sheet_id, question, position,"
                " CASE WHEN position %% %s = 0 THEN 'Z' ELSE answer_raw END,"
                " answer_corrected, confidence_score, reason, needs_review"
                " FROM omr_answers"
            ).format(staging.answers),
            (changed_every,),
        ).rowcount
        expected = db.execute(
            "SELECT count(*) FILTER (WHERE position %% %s = 0 AND answer_raw <> 'Z')"
            " FROM omr_answers",
            (changed_every,),
        ).fetchone()
        assert expected is not None

        share = reprocess_store._changed_share(db, staging, True, staged)

    assert share == pytest.approx(expected[0] / staged)


@pytest.mark.parametrize(
    ("overwrite", "way"),
    [(False, "_find_changes"), (True, "_update_joined")],
    ids=["few-change", "all-change"],
)
def test_changed_share_chooses_the_write(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
    overwrite: bool,
    way: str,
) -> None:
    called: list[str] = []

    def spy(name: str) -> Callable[..., Any]:
        real = getattr(reprocess_store, name)

        def record(*args: Any) -> Any:
            called.append(name)
            return real(*args)

        return record

    for name in ("_find_changes", "_update_joined"):
        monkeypatch.setattr(reprocess_store, name, spy(name))
    # The demo is small: sample it whatever its size.
    monkeypatch.setattr(reprocess_store, "_SAMPLE_FROM_ROWS", 0)
    if overwrite:
        db.execute("UPDATE omr_answers SET answer_raw = 'Z', answer_corrected = 'Z'")

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    assert task_row(database, task_id).status == task_store.SUCCESS
    assert called == [way]


# -- Failures that must leave the database as it was ----------------------------------


def assert_failed_and_unchanged(
    database: Database,
    db: psycopg.Connection,
    events: list[ProgressEvent],
    task_id: str,
    before: dict[str, list[str]],
) -> str:
    """Check the FAILURE row and the error event, and that no row changed.

    Returns the task's FAILURE reason.
    """
    row = task_row(database, task_id)
    assert row.status == task_store.FAILURE
    assert row.error
    assert row.finished_at is not None
    assert events, "no events were published"
    last = events[-1]
    assert last.event == ev.ERROR
    assert last.stage == ev.FAILED
    assert last.status == task_store.FAILURE
    assert last.result == {"reason": row.error}
    assert last.message == f"Reprocess failed: {row.error}"
    assert [e.event for e in events].count(ev.COMPLETE) == 0
    stored = stored_events(database, task_id)
    assert [s.event for s in stored][-1] == ev.ERROR
    assert snapshot_tables(db) == before
    return row.error


class GatedExecutor(Executor):
    """Run jobs on a pool, holding one sheet's group until a gate is released."""

    def __init__(self, pool: Executor, held_sheet_id: int, gate: Gate) -> None:
        self._pool = pool
        self._held_sheet_id = held_sheet_id
        self._gate = gate

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        group = args[0]

        def run() -> Any:
            if any(job.sheet.id == self._held_sheet_id for job in group):
                self._gate.block()
            return fn(*args, **kwargs)

        return self._pool.submit(run)


def test_slow_sheet_holds_up_only_itself(
    make_manager: Callable[..., TaskManager],
    executor: ThreadPoolExecutor,
    database: Database,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An event for every sheet, so the listener gets each count.
    monkeypatch.setattr(reprocess, "PROCESSING_EVENTS_PER_S", 1e9)
    gate = Gate()
    manager = make_manager(GatedExecutor(executor, demo_sheet_ids[0], gate))
    others_done = threading.Event()
    others = len(demo_sheet_ids) - 1

    def listener(event: ProgressEvent) -> None:
        if event.stage == ev.PROCESSING_SHEETS and event.processed == others:
            others_done.set()

    manager.add_listener(listener)
    task_id = manager.submit(ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))
    try:
        gate.wait_reached()
        reached = others_done.wait(GATE_TIMEOUT_S)
    finally:
        gate.released.set()
    assert manager.wait(task_id, TASK_TIMEOUT_S)

    assert reached, "the other sheets waited for the held one"
    assert task_row(database, task_id).status == task_store.SUCCESS


def writer_pid_after_copy(db: psycopg.Connection) -> int:
    """Wait for the backend whose last statement was a COPY and return its pid."""
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query LIKE 'COPY %%'"
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.01)
    raise AssertionError("no backend ran a COPY")


def test_writer_killed_between_copies_changes_nothing(
    make_manager: Callable[..., TaskManager],
    executor: ThreadPoolExecutor,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two sheets per COPY chunk, so the writer streams the first chunk, then
    # waits for the held fourth sheet with its COPY rows already staged.
    monkeypatch.setattr(reprocess, "CHUNK_SHEETS", 2)
    gate = Gate()
    manager = make_manager(GatedExecutor(executor, demo_sheet_ids[3], gate))
    log = EventLog()
    manager.add_listener(log)
    before = snapshot_tables(db)

    task_id = manager.submit(ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))
    try:
        gate.wait_reached()
        pid = writer_pid_after_copy(db)
        terminated = db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        assert terminated == (True,)
    finally:
        gate.released.set()
    assert manager.wait(task_id, TASK_TIMEOUT_S)

    reason = assert_failed_and_unchanged(database, db, log.of(task_id), task_id, before)
    # libpq words a terminated backend by when it notices: "terminating
    # connection due to administrator command" or "server closed the
    # connection unexpectedly".
    assert reason.startswith("Database error: ")
    assert "connection" in reason
    copied = [e for e in log.of(task_id) if e.stage == ev.COLLECTING_RESULTS]
    assert copied == []


ANSWER_UPDATE_TRIGGER = """
CREATE FUNCTION reject_answer_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'answer update rejected for sheet %', NEW.sheet_id;
END $$;
CREATE TRIGGER reject_answer_update BEFORE UPDATE ON omr_answers
    FOR EACH ROW EXECUTE FUNCTION reject_answer_update();
"""

FAILING_PROCEDURE = """
CREATE OR REPLACE PROCEDURE reprocess_sheet_surgical(
    sheet_ids bigint[], INOUT rescored integer DEFAULT NULL
) LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rescore failed for % sheets', cardinality(sheet_ids);
END $$;
"""

FLAG_INSERT_TRIGGER = """
CREATE FUNCTION reject_flag() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'flag % rejected', NEW.flag;
END $$;
CREATE TRIGGER reject_flag BEFORE INSERT ON sheet_flags
    FOR EACH ROW EXECUTE FUNCTION reject_flag();
"""

DEFERRED_SHEET_CHECK = """
CREATE FUNCTION reject_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'deferred check failed on sheet %', NEW.id;
END $$;
CREATE CONSTRAINT TRIGGER reject_at_commit AFTER UPDATE ON sheets
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION reject_at_commit();
"""


@pytest.mark.parametrize(
    ("setup", "message", "last_stage", "last_percentage"),
    [
        pytest.param(
            ANSWER_UPDATE_TRIGGER,
            "answer update rejected for sheet ",
            ev.LOADING_TO_DATABASE,
            0,
            id="answer-update-trigger",
        ),
        pytest.param(
            FAILING_PROCEDURE,
            "rescore failed for 4 sheets",
            ev.RECALCULATING_SCORES,
            0,
            id="procedure",
        ),
        pytest.param(
            FLAG_INSERT_TRIGGER,
            "flag ",
            ev.RECALCULATING_SCORES,
            0,
            id="flag-insert-trigger",
        ),
        pytest.param(
            DEFERRED_SHEET_CHECK,
            "deferred check failed on sheet ",
            ev.RECALCULATING_SCORES,
            100,
            id="commit",
        ),
    ],
)
def test_server_error_changes_nothing(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    setup: str,
    message: str,
    last_stage: str,
    last_percentage: int,
    write_way: str,
) -> None:
    db.execute(setup)
    before = snapshot_tables(db)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    events = event_log.of(task_id)
    reason = assert_failed_and_unchanged(database, db, events, task_id, before)
    assert reason.startswith(f"Database error: {message}")
    assert events[-2].stage == last_stage
    assert events[-2].progress_percentage == last_percentage


def copy_of_sensitive(db: psycopg.Connection, name: str, settings: Any = None) -> int:
    """Insert a user profile with Sensitive's settings, or ``settings``."""
    if settings is None:
        row = db.execute(
            "INSERT INTO profiles (name, settings) SELECT %s, settings FROM profiles"
            " WHERE id = %s RETURNING id",
            (name, SENSITIVE),
        ).fetchone()
    else:
        row = db.execute(
            "INSERT INTO profiles (name, settings) VALUES (%s, %s) RETURNING id",
            (name, Jsonb(settings)),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_profile_deleted_after_submit_fails_task(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    db_conninfo: str,
    demo_sheet_ids: list[int],
) -> None:
    profile_id = copy_of_sensitive(db, "Sensitive copy")

    def delete_profile(event: ProgressEvent) -> None:
        if event.event_id != 1:
            return
        with psycopg.connect(db_conninfo, autocommit=True) as conn:
            # The task row references the profile, so this session turns the
            # foreign key checks off to delete it.
            conn.execute("SET session_replication_role = replica")
            conn.execute("DELETE FROM profiles WHERE id = %s", (profile_id,))

    manager.add_listener(delete_profile)
    before = snapshot_tables(db)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), profile_id))

    events = event_log.of(task_id)
    reason = assert_failed_and_unchanged(database, db, events, task_id, before)
    assert reason == f"Profile {profile_id} does not exist."
    assert [e.stage for e in events] == [ev.LOADING_SHEETS, ev.FAILED]


def test_sheet_deleted_after_submit_fails_task(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    db_conninfo: str,
    demo_sheet_ids: list[int],
) -> None:
    deleted = demo_sheet_ids[1]
    snapshots: list[dict[str, list[str]]] = []

    def delete_sheet(event: ProgressEvent) -> None:
        if event.event_id != 1:
            return
        with psycopg.connect(db_conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM sheets WHERE id = %s", (deleted,))
            snapshots.append(snapshot_tables(conn))

    manager.add_listener(delete_sheet)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    events = event_log.of(task_id)
    (after_delete,) = snapshots
    reason = assert_failed_and_unchanged(database, db, events, task_id, after_delete)
    assert reason == f"Unknown sheet ids: {deleted}."


def test_sheet_locked_by_editor_fails_task(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    db_conninfo: str,
    demo_sheet_ids: list[int],
) -> None:
    before = snapshot_tables(db)

    with psycopg.connect(db_conninfo) as editor:
        editor.execute(
            "SELECT id FROM sheets WHERE id = %s FOR UPDATE", (demo_sheet_ids[-1],)
        )
        task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))
        editor.rollback()

    events = event_log.of(task_id)
    reason = assert_failed_and_unchanged(database, db, events, task_id, before)
    assert reason == (
        "Some of the selected sheets are being changed by another task or "
        "editor. Wait for it to finish, then start this reprocess again."
    )


def test_error_event_keeps_progress_counts(
    manager: TaskManager,
    event_log: EventLog,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    db.execute(DEFERRED_SHEET_CHECK)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    *progress, error = event_log.of(task_id)
    assert error.event == ev.ERROR
    assert error.processed == len(demo_sheet_ids)
    assert error.elapsed_s >= progress[-1].elapsed_s > 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"decision": {"min_fill": "light"}}, "decision.min_fill"),
        ({"measurement": {"sharpen": 1}}, "measurement.sharpen"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_invalid_profile_settings_fail_task(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    settings: Any,
    message: str,
) -> None:
    profile_id = copy_of_sensitive(db, "Broken", settings)
    before = snapshot_tables(db)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), profile_id))

    events = event_log.of(task_id)
    reason = assert_failed_and_unchanged(database, db, events, task_id, before)
    assert reason.startswith(f"Profile {profile_id} (Broken): ")
    assert message in reason
    assert [e.stage for e in events] == [ev.LOADING_SHEETS, ev.FAILED]


def test_schema_migrated_by_newer_version_fails_task(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    newer = mark_migrated_by_newer_version(db)
    db.commit()
    before = snapshot_tables(db)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    events = event_log.of(task_id)
    reason = assert_failed_and_unchanged(database, db, events, task_id, before)
    assert reason.startswith(f"The database is at schema version {newer}, newer")
    assert "Install the newer version here too" in reason
    assert [e.stage for e in events] == [ev.LOADING_SHEETS, ev.FAILED]


def test_newer_version_migrates_only_after_running_task(
    manager: TaskManager,
    database: Database,
    db_conninfo: str,
    demo_sheet_ids: list[int],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = migrations_with_a_newer_one(tmp_path / "migrations")
    gate = Gate()
    task: list[str] = []
    block_on_first_processing_event(manager, lambda: task[0] if task else None, gate)
    applied: list[list[Migration]] = []

    def newer_version_starts() -> None:
        with psycopg.connect(db_conninfo, autocommit=True) as conn:
            applied.append(migrate(conn, folder))

    migrating = threading.Thread(target=newer_version_starts, daemon=True)
    task.append(manager.submit(ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE)))
    with caplog.at_level("WARNING", logger="omr_desktop.db.migrate"):
        try:
            gate.wait_reached()
            migrating.start()
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while "waits for a write in progress" not in caplog.text:
                assert time.monotonic() < deadline, "the migration did not wait"
                time.sleep(0.05)
        finally:
            gate.released.set()
        assert manager.wait(task[0], TASK_TIMEOUT_S)
        migrating.join(GATE_TIMEOUT_S)

    assert task_row(database, task[0]).status == task_store.SUCCESS
    assert [[m.version for m in run] for run in applied] == [[latest_version() + 1]]


# -- Failed sheets ----------------------------------------------------------------


def sheet_rows(db: psycopg.Connection, sheet_id: int) -> dict[str, list[str]]:
    """Return the text form of one sheet's rows in sheets, answers and flags."""
    return {
        table: [
            str(r[0])
            for r in db.execute(
                f"SELECT t::text FROM {table} t WHERE {column} = %s ORDER BY 1",
                (sheet_id,),
            )
        ]
        for table, column in (
            ("sheets", "id"),
            ("omr_answers", "sheet_id"),
            ("sheet_flags", "sheet_id"),
        )
    }


def break_image(path: Path, damage: str) -> None:
    if damage == "deleted":
        path.unlink()
    elif damage == "oversized":
        # A header claiming more pixels than a sheet image may have.
        path.write_bytes(png_claiming_size(40_000, 40_000))
    elif damage == "damaged scan data":
        # OpenCV would decode this one, and the sheet would get wrong answers.
        path.write_bytes(damaged_jpeg(path.read_bytes()))
    else:
        path.write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")


@pytest.mark.parametrize(
    "damage", ["deleted", "corrupt", "oversized", "damaged scan data"]
)
def test_one_unreadable_sheet_fails_alone(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    damage: str,
) -> None:
    bad = demo_sheet_ids[2]
    good = [i for i in demo_sheet_ids if i != bad]
    (path,) = image_paths(db, [bad])
    break_image(path, damage)
    bad_before = sheet_rows(db, bad)
    answers_before = answers_by_key(db)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    row = task_row(database, task_id)
    assert row.status == task_store.SUCCESS
    assert row.result["sheets_failed"] == 1
    assert row.result["sheets_processed"] == len(good)
    (failed,) = row.result["failed_sheets"]
    assert failed["sheet_id"] == bad
    assert path.name in failed["error"]
    assert sheet_rows(db, bad) == bad_before
    history_sheets = db.execute(
        "SELECT DISTINCT sheet_id FROM answer_history WHERE task_id = %s ORDER BY 1",
        (task_id,),
    ).fetchall()
    assert [r[0] for r in history_sheets] == good
    answers_after = answers_by_key(db)
    for sheet_id in good:
        changed = [
            k
            for k in answers_after
            if k[0] == sheet_id and answers_after[k] != answers_before[k]
        ]
        assert changed, sheet_id
    profiles = dict(db.execute("SELECT id, last_profile_id FROM sheets").fetchall())
    assert {profiles[i] for i in good} == {SENSITIVE}


def test_groups_read_like_single_sheets(
    db: psycopg.Connection, demo_sheet_ids: list[int], executor: ThreadPoolExecutor
) -> None:
    # One worker and four sheets make groups of two. The broken sheet leads
    # the second group.
    bad = demo_sheet_ids[2]
    (path,) = image_paths(db, [bad])
    break_image(path, "corrupt")
    settings = reprocess.load_profile_settings(db, SENSITIVE)
    request = ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE)
    jobs = reprocess.load_jobs(db, request, settings)
    detection = reprocess.LocalDetection(executor, 1)

    outcomes = list(detection.outcomes(jobs, settings, False, lambda: None))

    # Groups come back as they finish; the broken sheet's group may be first.
    assert sorted(job.sheet.id for job, _ in outcomes) == demo_sheet_ids
    for job, outcome in outcomes:
        if job.sheet.id == bad:
            assert isinstance(outcome, str)
            assert path.name in outcome
            continue
        reading = read_sheet(Path(job.sheet.image_path), job.template, settings)
        assert outcome == reprocess._encode(job.sheet, reading)


def test_encode_error_fails_one_sheet(
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    executor: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One worker and four sheets make groups of two, so the sheet that
    # cannot be encoded shares its group with a good one.
    bad = demo_sheet_ids[1]
    encode_sheet_rows = reprocess.encode_sheet

    def encode_or_fail(
        sheet_id: int, reading: SheetReading, stored_digest: bytes | None
    ) -> bytes:
        if sheet_id == bad:
            raise ValueError("cannot encode")
        return encode_sheet_rows(sheet_id, reading, stored_digest)

    monkeypatch.setattr(reprocess, "encode_sheet", encode_or_fail)
    settings = reprocess.load_profile_settings(db, SENSITIVE)
    request = ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE)
    jobs = reprocess.load_jobs(db, request, settings)
    detection = reprocess.LocalDetection(executor, 1)

    outcomes = list(detection.outcomes(jobs, settings, False, lambda: None))

    failed = [job.sheet.id for job, outcome in outcomes if isinstance(outcome, str)]
    assert failed == [bad]


def test_cancel_inside_group_stops_there(
    db: psycopg.Connection, demo_sheet_ids: list[int], executor: ThreadPoolExecutor
) -> None:
    settings = reprocess.load_profile_settings(db, SENSITIVE)
    request = ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE)
    jobs = reprocess.load_jobs(db, request, settings)
    checks = 0

    def cancel_after_first_sheet() -> None:
        nonlocal checks
        checks += 1
        # One check before the first group is submitted, one before each sheet.
        if checks > 2:
            raise reprocess.TaskCancelledError()

    detection = reprocess.LocalDetection(executor, 1)
    outcomes = detection.outcomes(jobs, settings, False, cancel_after_first_sheet)

    first_job, _ = next(outcomes)
    with pytest.raises(reprocess.TaskCancelledError):
        next(outcomes)
    # The first sheet of a group of two: whichever group finished first.
    assert first_job.sheet.id in demo_sheet_ids[::2]


def test_all_sheets_unreadable_fails_task(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    for path in image_paths(db, demo_sheet_ids):
        path.unlink()
    before = snapshot_tables(db)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    events = event_log.of(task_id)
    reason = assert_failed_and_unchanged(database, db, events, task_id, before)
    assert reason.startswith(
        f"No sheet could be read, so nothing was written. Sheet {demo_sheet_ids[0]}: "
    )
    assert "sheet-00001.jpg" in reason


# -- Manual corrections ---------------------------------------------------------------


def test_manual_correction_survives_unless_replaced(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    write_way: str,
) -> None:
    sheet_id, question = db.execute(
        "SELECT sheet_id, question FROM omr_answers"
        " WHERE reason = 'light_mark' AND answer_raw = '' ORDER BY 1, position LIMIT 1"
    ).fetchone()
    key = (sheet_id, question)
    # A stale confidence shows that the reprocess takes the new one.
    db.execute(
        "UPDATE omr_answers SET answer_corrected = 'E', corrected_by = 'editor',"
        " corrected_at = '2026-11-30 10:00:00+00', confidence_score = 0.01"
        " WHERE sheet_id = %s AND question = %s",
        (sheet_id, question),
    )
    before = answers_by_key(db)[key]
    request = ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE)

    kept_task = run_task(manager, request)

    kept = answers_by_key(db)[key]
    raw, corrected, confidence, _, _, corrected_by, corrected_at = kept
    assert task_row(database, kept_task).result["manual_corrections_kept"] == 1
    assert raw != ""
    assert corrected == "E"
    assert corrected_by == "editor"
    assert corrected_at == before[6]
    assert confidence != before[2]

    replaced_task = run_task(
        manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE, keep_manual=False)
    )

    replaced = answers_by_key(db)[key]
    assert replaced[0] == raw
    assert replaced[1] == raw
    assert replaced[2:5] == kept[2:5]
    assert replaced[5] is None
    assert replaced[6] is None
    result = task_row(database, replaced_task).result
    assert result["answers_updated"] == 1
    assert result["answers_changed"] == 1
    assert result["manual_corrections_kept"] == 0


# -- Submitting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sheets", "profile_id", "error", "message"),
    [
        ((), SENSITIVE, EmptySelectionError, "No sheets selected"),
        ((1, 2), 999, UnknownProfileError, "Profile 999 does not exist."),
        ((2, 98, 99), SENSITIVE, UnknownSheetsError, "Unknown sheet ids: 98, 99."),
        (
            tuple(range(1, MAX_SHEETS_PER_TASK + 2)),
            SENSITIVE,
            TooManySheetsError,
            "100,001 sheets are more than one task takes",
        ),
    ],
)
def test_invalid_request_queues_nothing(
    manager: TaskManager,
    db: psycopg.Connection,
    sheets: tuple[int, ...],
    profile_id: int,
    error: type[TaskRequestError],
    message: str,
) -> None:
    batch_id = add_batch(db, "Rejected", add_template(db), None)
    stored = [add_sheet(db, batch_id, n, []) for n in (1, 2)]
    assert stored == [1, 2]

    with pytest.raises(error) as rejected:
        manager.submit(ReprocessRequest(sheets, profile_id))

    assert str(rejected.value).startswith(message)
    assert db.execute("SELECT count(*) FROM reprocess_tasks").fetchone() == (0,)
    assert manager.active_task_ids() == []


def test_repeated_sheet_ids_run_once(
    manager: TaskManager,
    database: Database,
    demo_sheet_ids: list[int],
) -> None:
    first, second = demo_sheet_ids[:2]

    task_id = run_task(manager, ReprocessRequest((second, first, second), SENSITIVE))

    row = task_row(database, task_id)
    assert row.sheet_ids == [second, first]
    assert row.status == task_store.SUCCESS
    assert row.result["sheets_total"] == 2


def test_submit_after_shutdown_leaves_nothing(
    manager: TaskManager, db: psycopg.Connection, demo_sheet_ids: list[int]
) -> None:
    manager.shutdown()

    with pytest.raises(TaskRequestError, match="shut down"):
        manager.submit(ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    assert manager.active_task_ids() == []
    pending = db.execute(
        "SELECT count(*) FROM reprocess_tasks WHERE status = 'PENDING'"
    ).fetchone()
    assert pending == (0,)


# -- Concurrent tasks ---------------------------------------------------------------


def test_overlapping_submit_names_running_task(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    gate = Gate()
    first: list[str] = []
    block_on_first_processing_event(manager, lambda: first[0] if first else None, gate)
    first.append(manager.submit(ReprocessRequest(tuple(demo_sheet_ids[:3]), SENSITIVE)))
    try:
        gate.wait_reached()
        with pytest.raises(TaskConflictError) as conflict:
            manager.submit(ReprocessRequest(tuple(demo_sheet_ids[2:]), SENSITIVE))
    finally:
        gate.released.set()
    assert manager.wait(first[0], TASK_TIMEOUT_S)

    assert conflict.value.task_id == first[0]
    assert first[0] in str(conflict.value)
    assert conflict.value.sheet_ids == demo_sheet_ids[2:3]
    assert conflict.value.http_status == 409
    tasks = db.execute("SELECT task_id::text FROM reprocess_tasks").fetchall()
    assert tasks == [(first[0],)]
    assert task_row(database, first[0]).status == task_store.SUCCESS


def add_dead_host_task(db: psycopg.Connection, sheet_ids: list[int]) -> None:
    """Add a day-old task row that a process on another host left STARTED.

    It holds no lock: a process there died while running it.
    """
    db.execute(
        "INSERT INTO reprocess_tasks (task_id, status, profile_id, sheet_ids,"
        " runner_host, runner_pid, started_at, created_at)"
        " VALUES (%s, 'STARTED', 1, %s, 'another-host', 1, now(),"
        " now() - interval '1 day')",
        (str(uuid.uuid4()), sheet_ids),
    )
    db.commit()


def test_second_instance_rejects_overlap_at_submit(
    manager: TaskManager,
    make_manager: Callable[..., TaskManager],
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    other_instance = make_manager()
    # An older row with the same sheets, left by a dead process: the
    # conflict names the task that runs.
    add_dead_host_task(db, demo_sheet_ids)
    gate = Gate()
    first: list[str] = []
    block_on_first_processing_event(manager, lambda: first[0] if first else None, gate)

    first.append(manager.submit(ReprocessRequest(tuple(demo_sheet_ids[:3]), SENSITIVE)))
    try:
        gate.wait_reached()
        with pytest.raises(TaskConflictError) as conflict:
            other_instance.submit(
                ReprocessRequest(tuple(demo_sheet_ids[2:]), SENSITIVE)
            )
    finally:
        gate.released.set()
    assert manager.wait(first[0], TASK_TIMEOUT_S)

    assert conflict.value.task_id == first[0]
    assert conflict.value.sheet_ids == demo_sheet_ids[2:3]
    assert conflict.value.http_status == 409
    tasks = db.execute(
        "SELECT task_id::text FROM reprocess_tasks WHERE runner_host <> 'another-host'"
    ).fetchall()
    assert tasks == [(first[0],)]


def test_stale_started_row_does_not_block_submit(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    add_dead_host_task(db, demo_sheet_ids)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    assert task_row(database, task_id).status == task_store.SUCCESS


def test_second_instance_finds_sheets_busy(
    manager: TaskManager,
    make_manager: Callable[..., TaskManager],
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first task locks its sheets after the second one's submit looked.
    monkeypatch.setattr(task_manager_module, "running_overlap", lambda *a: None)
    other_instance = make_manager()
    gate = Gate()
    first: list[str] = []
    block_on_first_processing_event(manager, lambda: first[0] if first else None, gate)
    answers_before = answers_by_key(db)

    first.append(manager.submit(ReprocessRequest(tuple(demo_sheet_ids[:3]), SENSITIVE)))
    try:
        gate.wait_reached()
        second = run_task(
            other_instance, ReprocessRequest(tuple(demo_sheet_ids[2:]), SENSITIVE)
        )
        during = snapshot_tables(db)
    finally:
        gate.released.set()
    assert manager.wait(first[0], TASK_TIMEOUT_S)

    second_row = task_row(database, second)
    assert second_row.status == task_store.FAILURE
    assert second_row.error == (
        f"Some of the selected sheets are being reprocessed by task {first[0]}. "
        "Wait for it to finish, then try again."
    )
    assert during["answer_history"] == []
    first_row = task_row(database, first[0])
    assert first_row.status == task_store.SUCCESS
    answers_after = answers_by_key(db)
    changed = {k for k in answers_after if answers_after[k] != answers_before[k]}
    history = answers_by_key(db, "answer_history", first[0])
    assert set(history) == changed
    assert {k[0] for k in changed} == set(demo_sheet_ids[:3])
    assert first_row.result["answers_updated"] == len(changed)
    for table in ("answer_history", "sheet_history"):
        count = db.execute(
            f"SELECT count(*) FROM {table} WHERE task_id = %s", (second,)
        ).fetchone()
        assert count == (0,), table


# -- Cancel -----------------------------------------------------------------------


def test_cancel_between_sheets_changes_nothing(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    def cancel_on_progress(event: ProgressEvent) -> None:
        if event.message.startswith("Processing:"):
            manager.cancel(event.task_id)

    manager.add_listener(cancel_on_progress)
    before = snapshot_tables(db)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    events = event_log.of(task_id)
    reason = assert_failed_and_unchanged(database, db, events, task_id, before)
    assert reason == "cancelled"
    stages = {e.stage for e in events}
    assert ev.COLLECTING_RESULTS not in stages
    assert not manager.cancel(task_id)


def test_cancel_queued_task_never_starts(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    gate = Gate()
    first: list[str] = []
    block_on_first_processing_event(manager, lambda: first[0] if first else None, gate)
    later_rows = {i: sheet_rows(db, i) for i in demo_sheet_ids[2:]}

    first.append(manager.submit(ReprocessRequest(tuple(demo_sheet_ids[:2]), SENSITIVE)))
    try:
        gate.wait_reached()
        queued = manager.submit(ReprocessRequest(tuple(demo_sheet_ids[2:]), SENSITIVE))
        status_while_queued = task_row(database, queued).status
        assert manager.cancel(queued)
        # It ends at once, while the first task still runs.
        ended_first = manager.wait(queued, TASK_TIMEOUT_S)
    finally:
        gate.released.set()
    assert manager.wait(first[0], TASK_TIMEOUT_S)

    assert ended_first
    assert status_while_queued == task_store.PENDING
    row = task_row(database, queued)
    assert row.status == task_store.FAILURE
    assert row.error == "cancelled"
    assert row.started_at is None
    events = event_log.of(queued)
    assert [(e.event_id, e.event) for e in events] == [(1, ev.ERROR)]
    assert {i: sheet_rows(db, i) for i in demo_sheet_ids[2:]} == later_rows
    assert task_row(database, first[0]).status == task_store.SUCCESS


# -- COPY encoding ------------------------------------------------------------------

AWKWARD_TEXTS = (
    "q\\1",
    "tab\there",
    "line\nbreak",
    "carriage\rreturn",
    "\\N",
    "trailing\\",
    "Zoë ✓ 日本語 🙂",
    "100% %s %d %(name)s %%",
    "",
)


def test_copy_rows_keep_awkward_text(db: psycopg.Connection) -> None:
    answers = [
        Answer(
            question=text or "empty",
            answer_raw=text,
            answer_corrected=text[::-1],
            confidence_score=np.float32(0.123456789),
            reason=f"reason {text}",
            needs_review=i % 2 == 0,
            fills=(np.float32(0.5), np.float32(1.5e-7), np.float32(1.0)),
        )
        for i, text in enumerate(AWKWARD_TEXTS)
    ]
    db.execute(
        "CREATE TEMP TABLE copied_answers (sheet_id bigint, question text,"
        " position integer, answer_raw text, answer_corrected text,"
        " confidence_score real, reason text, needs_review boolean)"
    )
    columns = ", ".join(ANSWER_COLUMNS)

    with db.cursor().copy(
        f"COPY copied_answers ({columns}) FROM STDIN (FORMAT binary)"
    ) as copy:
        copy.write(binary_copy(encode_answers(7, answers)))

    rows = db.execute(
        f"SELECT {columns} FROM copied_answers ORDER BY position"
    ).fetchall()
    assert len(rows) == len(answers)
    for position, (values, answer) in enumerate(zip(rows, answers, strict=True), 1):
        row = dict(zip(ANSWER_COLUMNS, values, strict=True))
        assert row["sheet_id"] == 7
        assert row["question"] == answer.question
        assert row["position"] == position
        assert row["answer_raw"] == answer.answer_raw
        assert row["answer_corrected"] == answer.answer_corrected
        assert row["confidence_score"] == pytest.approx(0.123457, abs=1e-6)
        assert row["reason"] == answer.reason
        assert row["needs_review"] is answer.needs_review


def test_copy_sheet_row_keeps_identifiers(db: psycopg.Connection) -> None:
    identifiers = {"roll\\no": "12\t34", "name": 'Zoë\nO\'Brien "Q" ✓', "empty": ""}
    reading = SheetReading.with_answers(
        (),
        identifiers=identifiers,
        blank_sheet=False,
        fills=np.array([0.25, 0.0, 0.999999], dtype=np.float32),
        measurement_hash="hash\\with\ttab",
    )
    db.execute(
        "CREATE TEMP TABLE copied_sheets (sheet_id bigint, measurement_hash text,"
        " identifiers jsonb, fills real[], fills_digest bytea)"
    )
    columns = ", ".join(SHEET_COLUMNS)

    with db.cursor().copy(
        f"COPY copied_sheets ({columns}) FROM STDIN (FORMAT binary)"
    ) as copy:
        copy.write(binary_copy(encode_sheet(9, reading)))

    row = db.execute(f"SELECT {columns} FROM copied_sheets").fetchone()
    assert row is not None
    assert row[0] == 9
    assert row[1] == "hash\\with\ttab"
    assert row[2] == identifiers
    assert row[3] == pytest.approx([0.25, 0.0, 0.999999], rel=1e-6)
    # The server computes the same digest from the stored fills.
    digest = db.execute(
        "SELECT sha256(array_send(fills)) FROM copied_sheets"
    ).fetchone()
    assert digest == (row[4],)


def test_reprocessed_fills_are_not_compressed(
    manager: TaskManager, db: psycopg.Connection, demo_sheet_ids: list[int]
) -> None:
    # A profile that measures differently writes new fills to the sheets
    # and the old ones to the sheet history.
    profile_id = copy_of_sensitive(
        db, "Inset 0.6", {"measurement": {"sample_inset": 0.6}}
    )

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), profile_id))

    sheets = db.execute(
        "SELECT count(*) FILTER (WHERE pg_column_compression(fills) IS NULL),"
        " count(*) FROM sheets"
    ).fetchone()
    history = db.execute(
        "SELECT count(*) FILTER (WHERE pg_column_compression(fills) IS NULL),"
        " count(*) FROM sheet_history WHERE task_id = %s AND NOT fills_kept",
        (task_id,),
    ).fetchone()
    assert sheets == (len(demo_sheet_ids), len(demo_sheet_ids))
    assert history == (len(demo_sheet_ids), len(demo_sheet_ids))


def digests_match_fills(db: psycopg.Connection) -> bool:
    """Return whether every sheet's fills_digest is the digest of its fills."""
    row = db.execute(
        "SELECT bool_and(fills_digest = sha256(array_send(fills))) FROM sheets"
    ).fetchone()
    return row == (True,)


class StagedSheetBytes:
    """Wrap copy_chunk, adding up the sheet rows' COPY bytes the writer sends."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = 0
        copy_chunk = reprocess_store.copy_chunk

        def counting(conn: Any, staging: Any, answers: bytes, sheets: bytes) -> None:
            self.sent += len(sheets)
            copy_chunk(conn, staging, answers, sheets)

        monkeypatch.setattr(reprocess_store, "copy_chunk", counting)


def test_fills_measured_as_before_are_not_sent(
    manager: TaskManager,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staged = StagedSheetBytes(monkeypatch)
    # Sensitive measures as Default, which read the demo sheets.
    before = db.execute(
        "SELECT id, fills, fills_digest FROM sheets ORDER BY id"
    ).fetchall()

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    after = db.execute(
        "SELECT id, fills, fills_digest FROM sheets ORDER BY id"
    ).fetchall()
    kept_fills = db.execute(
        "SELECT count(*) FILTER (WHERE fills_kept AND fills IS NULL) FROM sheet_history"
        " WHERE task_id = %s",
        (task_id,),
    ).fetchone()
    assert after == before
    assert digests_match_fills(db)
    assert kept_fills == (len(demo_sheet_ids),)
    # 850 fills a sheet take 6.8 kB of COPY data when they are sent.
    assert 0 < staged.sent < 1000 * len(demo_sheet_ids)


def test_fills_measured_differently_are_sent(
    manager: TaskManager,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staged = StagedSheetBytes(monkeypatch)
    profile_id = copy_of_sensitive(
        db, "Inset 0.6", {"measurement": {"sample_inset": 0.6}}
    )
    db.commit()
    before = dict(db.execute("SELECT id, fills_digest FROM sheets").fetchall())

    run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), profile_id))

    after = dict(db.execute("SELECT id, fills_digest FROM sheets").fetchall())
    assert all(after[i] != before[i] for i in demo_sheet_ids)
    assert digests_match_fills(db)
    assert staged.sent > 6800 * len(demo_sheet_ids)


def test_replaced_image_gets_its_own_fills(
    manager: TaskManager, db: psycopg.Connection, demo_sheet_ids: list[int]
) -> None:
    # The same measurement, but another page in the first sheet's file: its
    # fills differ from the stored ones although the profile measures alike.
    first, second = image_paths(db, demo_sheet_ids[:2])
    first.write_bytes(second.read_bytes())

    run_task(manager, ReprocessRequest(tuple(demo_sheet_ids[:2]), SENSITIVE))

    rows = db.execute(
        "SELECT fills, fills_digest FROM sheets WHERE id = ANY(%s) ORDER BY id",
        (demo_sheet_ids[:2],),
    ).fetchall()
    assert rows[0] == rows[1]
    assert digests_match_fills(db)


def test_staged_sheet_fills_are_not_compressed(db: psycopg.Connection) -> None:
    # Compressing a page's fills was most of the server's work per staged
    # sheet, so the staging table stores them uncompressed. These fills
    # repeat as blank bubbles do, so PostgreSQL would compress them.
    fills = np.tile(np.array([0.02, 0.03, 0.9, 0.01, 0.02], np.float32), 170)
    reading = SheetReading.with_answers(
        (), identifiers={}, blank_sheet=False, fills=fills
    )
    with db.transaction(force_rollback=True):
        staging = reprocess_store.create_staging(db)
        reprocess_store.copy_chunk(
            db, staging, binary_copy(b""), binary_copy(encode_sheet(4, reading))
        )
        stored = db.execute(
            "SELECT fills, pg_column_compression(fills), pg_column_size(fills)"
            " FROM reprocess_sheets"
        ).fetchone()
    assert stored is not None
    assert stored[0] == pytest.approx(fills.tolist(), rel=1e-7)
    assert stored[1] is None
    assert stored[2] > 4 * 850


# -- Re-deciding stored fills ---------------------------------------------------------


def test_redecide_matches_full_image_reprocess(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
    tmp_path: Path,
) -> None:
    # The images are moved away while re-deciding, so a re-decide that read
    # them would fail its sheets.
    paths = image_paths(db, demo_sheet_ids)
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for path in paths:
        path.rename(hidden / path.name)

    redecided_task = run_task(
        manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE, redecide=True)
    )
    redecided = answers_by_key(db)
    redecided_fills = db.execute("SELECT id, fills FROM sheets ORDER BY id").fetchall()
    for path in paths:
        (hidden / path.name).rename(path)
    full_task = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))
    full = answers_by_key(db)
    full_fills = db.execute("SELECT id, fills FROM sheets ORDER BY id").fetchall()

    redecided_result = task_row(database, redecided_task).result
    assert redecided_result["sheets_failed"] == 0
    assert redecided_result["answers_changed"] > 0
    assert set(redecided) == set(full)
    for key, values in full.items():
        raw, corrected, confidence, reason, review, _, _ = redecided[key]
        assert (raw, corrected, reason, review) == (
            values[0],
            values[1],
            values[3],
            values[4],
        ), key
        assert confidence == pytest.approx(values[2], abs=1e-5), key
    assert redecided_fills == full_fills
    full_result = task_row(database, full_task).result
    assert full_result["answers_changed"] == 0
    assert full_result["sheets_score_changed"] == 0


def test_full_reprocess_after_redecide_writes_nothing(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    sheets = tuple(demo_sheet_ids)
    run_task(manager, ReprocessRequest(sheets, SENSITIVE, redecide=True))

    task_id = run_task(manager, ReprocessRequest(sheets, SENSITIVE))

    assert task_row(database, task_id).result["answers_updated"] == 0
    assert answers_by_key(db, "answer_history", task_id) == {}


def test_redecide_without_stored_fills_fails_clearly(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    missing = demo_sheet_ids[1]
    db.execute("UPDATE sheets SET fills = NULL WHERE id = %s", (missing,))
    before = snapshot_tables(db)

    task_id = run_task(
        manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE, redecide=True)
    )

    events = event_log.of(task_id)
    reason = assert_failed_and_unchanged(database, db, events, task_id, before)
    assert reason.startswith(f"Sheet {missing} has no stored fills ")
    assert "Reprocess without --redecide to read the images again" in reason


def test_redecide_other_measurement_fails_clearly(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    demo_sheet_ids: list[int],
) -> None:
    profile_id = copy_of_sensitive(
        db, "Inset 0.6", {"measurement": {"sample_inset": 0.6}}
    )
    before = snapshot_tables(db)

    task_id = run_task(
        manager, ReprocessRequest(tuple(demo_sheet_ids), profile_id, redecide=True)
    )

    events = event_log.of(task_id)
    reason = assert_failed_and_unchanged(database, db, events, task_id, before)
    all_ids = ", ".join(str(i) for i in demo_sheet_ids)
    assert reason.startswith(f"Sheets {all_ids} have no stored fills ")


# -- Restart ----------------------------------------------------------------------


def test_restart_fails_tasks_of_dead_process(
    make_manager: Callable[..., TaskManager],
    database: Database,
    db: psycopg.Connection,
) -> None:
    host = socket.gethostname()
    rows = {
        "dead started": (task_store.STARTED, host, dead_pid()),
        "dead pending": (task_store.PENDING, host, dead_pid()),
        "alive": (task_store.STARTED, host, os.getppid()),
        "other host": (task_store.STARTED, f"not-{host}", dead_pid()),
        "finished": (task_store.SUCCESS, host, dead_pid()),
    }
    ids = {name: str(uuid.uuid4()) for name in rows}
    for name, (status, runner_host, pid) in rows.items():
        db.execute(
            "INSERT INTO reprocess_tasks (task_id, status, profile_id, sheet_ids,"
            " runner_host, runner_pid, started_at)"
            " VALUES (%s, %s, 1, '{1}', %s, %s, now())",
            (ids[name], status, runner_host, pid),
        )

    make_manager()

    statuses = {name: task_row(database, ids[name]) for name in rows}
    for name in ("dead started", "dead pending"):
        assert statuses[name].status == task_store.FAILURE, name
        assert statuses[name].error == "interrupted", name
        assert statuses[name].finished_at is not None, name
    assert statuses["alive"].status == task_store.STARTED
    assert statuses["other host"].status == task_store.STARTED
    assert statuses["finished"].status == task_store.SUCCESS
    assert statuses["finished"].error is None


def test_restart_fails_task_that_was_running(
    database: Database,
    db: psycopg.Connection,
    executor: ThreadPoolExecutor,
    demo_sheet_ids: list[int],
) -> None:
    # A row of this pid created before this process started belongs to an
    # older process that had the same pid, so the restart fails it.
    task_id = str(uuid.uuid4())
    task_store.create_task(db, task_id, SENSITIVE, demo_sheet_ids, {})
    task_store.mark_started(db, task_id)
    db.execute(
        "UPDATE reprocess_tasks SET created_at = now() - interval '1 day'"
        " WHERE task_id = %s",
        (task_id,),
    )
    before = snapshot_tables(db)

    restarted = TaskManager(database, executor, WORKERS)
    try:
        row = task_row(database, task_id)
        again = run_task(restarted, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))
    finally:
        restarted.shutdown()

    assert row.status == task_store.FAILURE
    assert row.error == "interrupted"
    assert before["answer_history"] == []
    assert task_row(database, again).status == task_store.SUCCESS


def test_interrupted_task_log_ends_with_error(
    make_manager: Callable[..., TaskManager],
    database: Database,
    db: psycopg.Connection,
) -> None:
    task_id = str(uuid.uuid4())
    db.execute(
        "INSERT INTO reprocess_tasks (task_id, status, profile_id, sheet_ids,"
        " runner_host, runner_pid, started_at)"
        " VALUES (%s, 'STARTED', 1, '{1}', %s, %s, now())",
        (task_id, socket.gethostname(), dead_pid()),
    )
    task_store.append_event(
        db,
        task_id,
        1,
        ev.PROGRESS,
        {
            "stage": ev.PROCESSING_SHEETS,
            "processed": 7,
            "failed": 1,
            "elapsed_s": 2.5,
            "overall_percentage": 40.0,
        },
    )

    make_manager()

    assert task_row(database, task_id).status == task_store.FAILURE
    last = stored_events(database, task_id)[-1]
    assert last.event == ev.ERROR
    assert last.event_id == 2
    # The event reports how far the task got, as a failing task's own does.
    assert last.data["processed"] == 7
    assert last.data["failed"] == 1
    assert last.data["elapsed_s"] == 2.5
    assert last.data["overall_percentage"] == 40.0


@pytest.fixture
def latin1_conninfo(pg_admin_conninfo: str) -> Iterator[str]:
    """Return a connection string to a new LATIN1 database, dropped after."""
    name = f"omr_test_{RUN_ID}_latin1_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'"
                " TEMPLATE template0"
            ).format(sql.Identifier(name))
        )
    try:
        yield with_dbname(pg_admin_conninfo, name)
    finally:
        drop_database(pg_admin_conninfo, name)


def test_copy_rows_survive_latin1_database(latin1_conninfo: str) -> None:
    answer = Answer("Zoë", "A", "A", 0.5, "clear", False, (0.5,))
    with psycopg.connect(latin1_conninfo, autocommit=True) as conn:
        # As the reprocess writer does: its COPY texts are UTF-8.
        conn.execute("SET client_encoding TO 'UTF8'")
        conn.execute(
            "CREATE TEMP TABLE copied_answers (sheet_id bigint, question text,"
            " position integer, answer_raw text, answer_corrected text,"
            " confidence_score real, reason text, needs_review boolean)"
        )
        columns = ", ".join(ANSWER_COLUMNS)
        with conn.cursor().copy(
            f"COPY copied_answers ({columns}) FROM STDIN (FORMAT binary)"
        ) as copy:
            copy.write(binary_copy(encode_answers(1, [answer])))
        stored = conn.execute("SELECT question FROM copied_answers").fetchone()

    assert stored == ("Zoë",)


def assert_only_key_changed(
    db: psycopg.Connection,
    task_id: str,
    before: dict[Any, Any],
    after: dict[Any, Any],
    key: tuple[int, str],
) -> None:
    """Check that the task wrote nothing and only ``key`` differs from before."""
    assert {k: v for k, v in after.items() if k != key} == {
        k: v for k, v in before.items() if k != key
    }
    history = db.execute(
        "SELECT count(*) FROM answer_history WHERE task_id = %s", (task_id,)
    ).fetchone()
    assert history == (0,)


def test_unlocked_change_fails_task(
    manager: TaskManager,
    event_log: EventLog,
    database: Database,
    db: psycopg.Connection,
    db_conninfo: str,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omr_desktop.db import reprocess_store

    update_answers = reprocess_store._update_answers
    sheet_id = demo_sheet_ids[0]
    first_question = (
        "SELECT question FROM omr_answers WHERE sheet_id = %s ORDER BY question LIMIT 1"
    )

    def change_one_answer_then_update(*args: Any) -> Any:
        # A writer that does not lock the sheet row commits a change to an
        # answer the task has found changed, just before the task writes it.
        with psycopg.connect(db_conninfo, autocommit=True) as other:
            other.execute(
                "UPDATE omr_answers SET reason = 'erased' WHERE (sheet_id, question)"
                f" = (%s, ({first_question}))",
                (sheet_id, sheet_id),
            )
        return update_answers(*args)

    monkeypatch.setattr(
        reprocess_store, "_update_answers", change_one_answer_then_update
    )
    # Every answer of the sheet differs from what the task reads, so the one
    # the other writer changes is among the rows the task updates.
    db.execute(
        "UPDATE omr_answers SET answer_raw = 'Z' WHERE sheet_id = %s", (sheet_id,)
    )
    question = db.execute(first_question, (sheet_id,)).fetchone()
    assert question is not None
    before = answers_by_key(db)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))

    # The task wrote nothing: the other writer's value is the only change,
    # and it was not overwritten with the value the task computed from the
    # row it had read.
    assert event_log.of(task_id)[-1].status == "FAILURE"
    error = task_row(database, task_id).error
    assert error is not None
    assert "1 of the" in error
    assert "changed by another connection" in error
    after = answers_by_key(db)
    key = (sheet_id, question[0])
    assert (after[key][0], after[key][3]) == ("Z", "erased")
    assert_only_key_changed(db, task_id, before, after, key)


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE omr_answers SET reason = 'erased'",
        "DELETE FROM omr_answers",
    ],
    ids=["changed", "deleted"],
)
def test_unlocked_change_fails_joined_update(
    manager: TaskManager,
    database: Database,
    db: psycopg.Connection,
    db_conninfo: str,
    demo_sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    monkeypatch.setattr(reprocess_store, "_SAMPLE_FROM_ROWS", 0)
    monkeypatch.setattr(reprocess_store, "_JOINED_FROM_SHARE", 0.0)
    sheet_id = demo_sheet_ids[0]
    # Every answer of the sheet differs from what the task reads, so the
    # UPDATE reaches the row the other writer holds.
    db.execute(
        "UPDATE omr_answers SET answer_raw = 'Z' WHERE sheet_id = %s", (sheet_id,)
    )
    before = answers_by_key(db)
    update_joined = reprocess_store._update_joined
    other = psycopg.connect(db_conninfo)
    watch = psycopg.connect(db_conninfo, autocommit=True)
    committed = threading.Event()

    def commit_once_update_waits() -> None:
        # The other writer commits once the task's UPDATE waits for its row.
        deadline = time.monotonic() + TASK_TIMEOUT_S
        while time.monotonic() < deadline:
            waiting = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type ="
                " 'Lock' AND query LIKE 'UPDATE omr_answers a SET%%'"
            ).fetchone()
            if waiting and waiting[0]:
                break
            time.sleep(0.02)
        other.commit()
        committed.set()

    def change_row_then_update(*args: Any) -> Any:
        # A writer that does not lock the sheet row changes one answer
        # without committing, so the task's UPDATE has to wait for it.
        other.execute(change + " WHERE sheet_id = %s AND question = 'q1'", (sheet_id,))
        threading.Thread(target=commit_once_update_waits, daemon=True).start()
        return update_joined(*args)

    monkeypatch.setattr(reprocess_store, "_update_joined", change_row_then_update)

    task_id = run_task(manager, ReprocessRequest(tuple(demo_sheet_ids), SENSITIVE))
    other.close()
    watch.close()

    assert committed.is_set()
    row = task_row(database, task_id)
    assert row.status == task_store.FAILURE
    assert row.error is not None
    assert "1 of the" in row.error
    assert "changed by another connection" in row.error
    after = answers_by_key(db)
    key = (sheet_id, "q1")
    if change.startswith("DELETE"):
        assert key not in after
    else:
        assert after[key][3] == "erased"
    assert_only_key_changed(db, task_id, before, after, key)

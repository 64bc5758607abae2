"""Fixtures for reprocess tests: an open Database, demo sheets, a TaskManager."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from omr_desktop.config import DatabaseChoice
from omr_desktop.db.database import Database
from omr_desktop.pipeline.demo import seed_demo
from omr_desktop.pipeline.events import ProgressEvent
from omr_desktop.pipeline.task_manager import TaskManager

# Worker threads of the detection executor; the in-flight window is sized
# from the same number.
WORKERS = 2

# Demo sheets seeded per test: enough for a failed sheet among good ones
# and for two tasks on overlapping or disjoint selections, while seeding
# stays under a second.
DEMO_SHEETS = 4

# Tables whose rows a reprocess writes, with the order their text form is
# compared in.
WRITTEN_TABLES = {
    "sheets": "SELECT t::text FROM sheets t ORDER BY id",
    "omr_answers": "SELECT t::text FROM omr_answers t ORDER BY sheet_id, question",
    "sheet_flags": "SELECT t::text FROM sheet_flags t ORDER BY sheet_id, flag",
    "answer_history": "SELECT t::text FROM answer_history t"
    " ORDER BY task_id, sheet_id, question",
    "sheet_history": "SELECT t::text FROM sheet_history t ORDER BY task_id, sheet_id",
    # A task's unlogged staging table must not outlive its transaction.
    "staging tables": "SELECT relname::text FROM pg_class"
    " WHERE relname LIKE 'reprocess\\_answers\\_%' ORDER BY 1",
}


def snapshot_tables(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Return the text form of every row a reprocess could write."""
    return {
        table: [str(r[0]) for r in conn.execute(query).fetchall()]
        for table, query in WRITTEN_TABLES.items()
    }


class EventLog:
    """A TaskManager listener that records every event, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            self._events.append(event)

    def of(self, task_id: str) -> list[ProgressEvent]:
        with self._lock:
            return [e for e in self._events if e.task_id == task_id]


@pytest.fixture
def database(db_conninfo: str) -> Iterator[Database]:
    """Return an open Database on this test's own migrated database."""
    database = Database(DatabaseChoice(db_conninfo, "environment"))
    database.open()
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="test-detect")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def demo_sheet_ids(db: psycopg.Connection, tmp_path: Path) -> list[int]:
    """Seed DEMO_SHEETS demo sheets with images in ``tmp_path`` and return their ids."""
    seed_demo(db, tmp_path, sheets=DEMO_SHEETS, workers=WORKERS)
    return [int(r[0]) for r in db.execute("SELECT id FROM sheets ORDER BY id")]


@pytest.fixture
def make_manager(
    database: Database, executor: ThreadPoolExecutor
) -> Iterator[Callable[..., TaskManager]]:
    """Return a factory of TaskManagers on the test database, shut down after.

    The factory takes an optional executor in place of the shared pool.
    """
    managers: list[TaskManager] = []

    def make(detect_on: Executor | None = None) -> TaskManager:
        manager = TaskManager(database, detect_on or executor, WORKERS)
        managers.append(manager)
        return manager

    try:
        yield make
    finally:
        for manager in managers:
            manager.shutdown(cancel=True)


@pytest.fixture
def manager(make_manager: Callable[..., TaskManager]) -> TaskManager:
    return make_manager()


@pytest.fixture
def event_log(manager: TaskManager) -> EventLog:
    """Record every event of ``manager``."""
    log = EventLog()
    manager.add_listener(log)
    return log

"""`db status` while another session holds the migration lock or a table."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from omr_desktop.config import DatabaseChoice
from omr_desktop.db.database import Database
from omr_desktop.db.migrate import _MIGRATION_LOCK_KEY, migrate
from omr_desktop.db.status import (
    LOCK_TIMEOUT_MS,
    DatabaseStatus,
    collect_status,
    format_status,
)

pytestmark = pytest.mark.db

# Seconds a status or a waiting migration may take in these tests: far more
# than they need, so that only a wait for the lock itself fails them.
TIMEOUT_S = 30


@pytest.fixture
def database(db_conninfo: str) -> Iterator[Database]:
    database = Database(DatabaseChoice(db_conninfo, "environment"))
    database.open(apply_migrations=False)
    yield database
    database.close()


@pytest.fixture
def other(db_conninfo: str) -> Iterator[psycopg.Connection]:
    """A second session, standing in for a migrating process or an operator."""
    with psycopg.connect(db_conninfo) as conn:
        yield conn
        conn.rollback()


def status_within_timeout(database: Database) -> DatabaseStatus:
    """Collect the status, failing the test instead of waiting for a lock."""
    done: list[DatabaseStatus] = []
    thread = threading.Thread(
        target=lambda: done.append(collect_status(database)), daemon=True
    )
    thread.start()
    thread.join(TIMEOUT_S)
    assert done, "db status waited for the lock"
    return done[0]


def test_status_during_migration_skips_counts(
    database: Database, other: psycopg.Connection
) -> None:
    # The locks a migration takes while it rewrites omr_answers.
    other.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
    other.execute("LOCK TABLE omr_answers IN ACCESS EXCLUSIVE MODE")
    pid = other.info.backend_pid

    status = status_within_timeout(database)
    text = format_status(status)

    assert status.migration is not None
    assert status.migration.pid == pid
    assert status.row_counts == {}
    assert f"a migration is running in server process {pid}" in text
    assert "not counted while the migration runs" in text


def test_status_names_locked_table(
    database: Database, other: psycopg.Connection
) -> None:
    other.execute("LOCK TABLE answer_history IN ACCESS EXCLUSIVE MODE")

    status = status_within_timeout(database)
    text = format_status(status)

    assert status.row_counts["answer_history"] is None
    assert status.row_counts["profiles"] > 0
    assert re.search(r"answer_history +locked by another session, not counted", text)
    assert "up to date" in text


def start_migrate(conninfo: str) -> tuple[threading.Thread, list[object]]:
    """Start migrate on a connection of its own, returning its thread and result."""
    applied: list[object] = []

    def run() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            applied.append(migrate(conn))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, applied


def test_second_migrate_waits_and_warns(
    db_conninfo: str, other: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    other.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))

    with caplog.at_level("WARNING", logger="omr_desktop.db.migrate"):
        thread, applied = start_migrate(db_conninfo)
        thread.join(1.0)
        assert thread.is_alive(), "migrate did not wait for the lock"
        other.rollback()
        thread.join(TIMEOUT_S)

    assert applied == [[]]
    assert "Another process is migrating this database" in caplog.text
    assert f"server process {other.info.backend_pid}" in caplog.text


def test_status_waits_once_for_locked_tables(
    database: Database, other: psycopg.Connection
) -> None:
    for table in ("sheets", "students", "omr_answers", "answer_history"):
        other.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(table)
            )
        )
    started = time.monotonic()

    status = status_within_timeout(database)

    locked = [t for t, count in status.row_counts.items() if count is None]
    assert locked == ["sheets", "students", "omr_answers", "answer_history"]
    # One full wait, then the shorter one for each further table. Waiting
    # the full time for each table would take at least four of them.
    assert time.monotonic() - started < 4 * LOCK_TIMEOUT_MS / 1000


def test_status_names_locked_schema_table(
    database: Database, other: psycopg.Connection
) -> None:
    other.execute("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")

    status = status_within_timeout(database)
    text = format_status(status)

    assert status.schema_version is None
    assert "Schema version: unknown (this OMR Desktop:" in text
    assert "holds the schema_migrations table locked" in text
    assert status.row_counts["profiles"] is not None


def test_migrate_names_session_locking_table(
    db_conninfo: str, other: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    other.execute("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")

    with caplog.at_level("WARNING", logger="omr_desktop.db.migrate"):
        thread, applied = start_migrate(db_conninfo)
        deadline = time.monotonic() + TIMEOUT_S
        while "has locked the schema_migrations table" not in caplog.text:
            assert time.monotonic() < deadline, "migrate gave no warning"
            time.sleep(0.05)
        assert thread.is_alive(), "migrate did not wait for the table"
        other.rollback()
        thread.join(TIMEOUT_S)

    assert applied == [[]]
    assert f"server process {other.info.backend_pid}" in caplog.text

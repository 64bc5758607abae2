"""A newer version's migration and this version's writes take turns.

A write holds the write lock shared from its schema check to its commit, so
a migration waits for it before its first statement, and a write that
starts during a migration waits for it and then refuses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from omr_desktop.db.migrate import (
    _WRITE_LOCK_KEY,
    MigrationError,
    SchemaTooNewError,
    check_not_newer,
    latest_version,
    migrate,
    migration_holder,
    schema_version,
)
from tests.db.builders import (
    mark_migrated_by_newer_version,
    migrations_with_a_newer_one,
)

pytestmark = pytest.mark.db

# Seconds a thread may take in these tests: far more than it needs, so that
# only a wait for a lock that is never released fails them.
TIMEOUT_S = 30


@pytest.fixture
def writer(db_conninfo: str) -> Iterator[psycopg.Connection]:
    """A session standing in for a reprocess, undo or correction."""
    with psycopg.connect(db_conninfo) as conn:
        yield conn
        conn.rollback()


def in_thread(target: object) -> tuple[threading.Thread, list[object]]:
    """Run ``target`` in a thread; the list gets its result or its exception."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target())  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for(text: str, caplog: pytest.LogCaptureFixture) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"no log line with {text!r}"
        time.sleep(0.05)


def test_migration_waits_for_write_in_progress(
    db_conninfo: str,
    writer: psycopg.Connection,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = migrations_with_a_newer_one(tmp_path / "migrations")
    check_not_newer(writer)
    writer.execute("UPDATE omr_answers SET reason = reason")

    def run_migrate() -> object:
        with psycopg.connect(db_conninfo, autocommit=True) as conn:
            return migrate(conn, folder)

    with caplog.at_level("WARNING", logger="omr_desktop.db.migrate"):
        thread, outcome = in_thread(run_migrate)
        wait_for("waits for a write in progress", caplog)
        assert thread.is_alive(), "the migration did not wait for the write"
        # The write goes on: the migration took no table lock yet.
        writer.execute("SET LOCAL lock_timeout = '5s'")
        writer.execute("SELECT count(*) FROM omr_answers").fetchone()
        assert thread.is_alive()
        writer.commit()
        thread.join(TIMEOUT_S)

    assert [[m.version for m in run] for run in outcome] == [[latest_version() + 1]]  # type: ignore[attr-defined]
    assert f"server process {writer.info.backend_pid}" in caplog.text
    with pytest.raises(SchemaTooNewError, match="No sheet, answer or score"):
        check_not_newer(writer)


def test_write_started_during_migration_waits_then_refuses(
    db_conninfo: str, writer: psycopg.Connection
) -> None:
    with psycopg.connect(db_conninfo) as migrating:
        # The lock a newer version's migration keeps until it commits.
        migrating.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK_KEY,))
        newer = mark_migrated_by_newer_version(migrating)

        thread, outcome = in_thread(lambda: check_not_newer(writer))
        thread.join(1.0)
        assert thread.is_alive(), "the write did not wait for the migration"
        migrating.commit()
        thread.join(TIMEOUT_S)

    assert len(outcome) == 1
    assert isinstance(outcome[0], SchemaTooNewError)
    assert f"schema version {newer}" in str(outcome[0])


def test_concurrent_writes_share_the_lock(
    db_conninfo: str, writer: psycopg.Connection
) -> None:
    check_not_newer(writer)
    with psycopg.connect(db_conninfo) as second:
        second.execute("SET lock_timeout = '5s'")
        check_not_newer(second)

        assert migration_holder(second) is None
        second.rollback()


def test_migrate_with_nothing_pending_skips_wait(
    db_conninfo: str, writer: psycopg.Connection
) -> None:
    check_not_newer(writer)

    def run_migrate() -> object:
        with psycopg.connect(db_conninfo, autocommit=True) as conn:
            return migrate(conn)

    thread, outcome = in_thread(run_migrate)
    thread.join(TIMEOUT_S)

    assert outcome == [[]]


def test_holding_check_outside_transaction(db_conninfo: str) -> None:
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        with pytest.raises(MigrationError, match="outside a transaction"):
            check_not_newer(conn)
        check_not_newer(conn, hold=False)
        assert schema_version(conn) == latest_version()

"""DbTaskRunner: results on the GUI thread, one connection per pool thread."""

from __future__ import annotations

import time

import psycopg
import pytest
from PySide6.QtCore import QThreadPool
from pytestqt.qtbot import QtBot

from omr_desktop.config import DatabaseChoice
from omr_desktop.db.database import Database
from omr_desktop.gui.workers.db_task import DbTaskRunner

pytestmark = [pytest.mark.gui, pytest.mark.db]


def backend_pid(database: Database) -> int:
    with database.reused() as conn:
        return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def test_idle_pool_thread_keeps_its_connection(qtbot: QtBot, db_conninfo: str) -> None:
    database = Database(DatabaseChoice(db_conninfo, "environment"))
    database.open()
    pool = QThreadPool()
    pool.setMaxThreadCount(1)
    # Qt would end an idle thread after 50 ms; the runner must keep it, or
    # the next task opens a second connection while the first stays open.
    pool.setExpiryTimeout(50)
    runner = DbTaskRunner(pool)
    pids: list[int] = []
    try:
        for count in (1, 2):
            runner.run(lambda: backend_pid(database), pids.append)
            qtbot.waitUntil(lambda n=count: len(pids) == n, timeout=10_000)
            time.sleep(0.3)
        assert pids[0] == pids[1]
        with psycopg.connect(db_conninfo) as conn:
            opened = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        assert opened <= 2  # the runner's connection and the Database's keepalive
    finally:
        pool.waitForDone()
        database.close()

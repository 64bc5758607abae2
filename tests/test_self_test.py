"""``omr-desktop self-test`` from the source tree, on the run's PostgreSQL.

The bundle's own self-test, on the embedded database, is in test_packaging.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from omr_desktop.pipeline.demo import seed_demo

pytestmark = [pytest.mark.db, pytest.mark.gui]

REPO = Path(__file__).resolve().parents[1]


def run_self_test(
    conninfo: str, data_dir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env.update(OMR_DATABASE_URL=conninfo, OMR_DATA_DIR=str(data_dir))
    return subprocess.run(
        [sys.executable, "-m", "omr_desktop", "self-test", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )


def count_rows(conninfo: str, table: str) -> int:
    with psycopg.connect(conninfo) as conn:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def test_self_test_passes_and_removes_its_batch(
    db_conninfo: str, tmp_path: Path
) -> None:
    done = run_self_test(db_conninfo, tmp_path / "data", "--sheets", "2")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "self-test passed: 2 sheets reprocessed with Sensitive" in done.stdout
    assert "Qt platform plugin: offscreen" in done.stdout
    assert "reprocess complete: ✓ Complete" in done.stdout
    for table in ("batches", "sheets", "answer_keys", "reprocess_tasks"):
        assert count_rows(db_conninfo, table) == 0, table
    assert (tmp_path / "data" / "logs" / "omr-desktop.log").is_file()


def test_self_test_keeps_batch_with_keep(db_conninfo: str, tmp_path: Path) -> None:
    done = run_self_test(db_conninfo, tmp_path / "data", "--sheets", "1", "--keep")

    assert done.returncode == 0, done.stdout + done.stderr
    assert count_rows(db_conninfo, "batches") == 1
    assert count_rows(db_conninfo, "reprocess_tasks") == 1


def test_self_test_rejects_database_with_batches(
    db_conninfo: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_conninfo) as conn:
        seed_demo(conn, tmp_path / "editor", sheets=1, batch_name="Mock exam")

    done = run_self_test(db_conninfo, tmp_path / "data")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "self-test FAILED" in done.stderr
    assert "already has batches (1)" in done.stderr
    assert count_rows(db_conninfo, "batches") == 1
    assert count_rows(db_conninfo, "reprocess_tasks") == 0


def test_self_test_rejects_zero_sheets(db_conninfo: str, tmp_path: Path) -> None:
    done = run_self_test(db_conninfo, tmp_path / "data", "--sheets", "0")

    assert done.returncode == 2
    assert "must be at least 1" in done.stderr

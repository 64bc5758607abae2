"""A throwaway database for benchmarks, and the row-by-row UPDATE baseline.

Without a DSN, an embedded server is started in a temporary folder and
removed afterwards; with one (a role that may create databases), a database
``omr_bench_<pid>`` is created there and dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from omr_desktop.db.embedded import EmbeddedServer


@contextmanager
def scratch_database(dsn: str | None = None) -> Iterator[tuple[str, Path]]:
    """Yield (connection string of an empty database, a scratch folder)."""
    scratch = Path(tempfile.mkdtemp(prefix="omr-bench-"))
    # As root the embedded server runs as another user, who must be able to
    # enter the folder.
    scratch.chmod(0o755)
    server = None
    try:
        admin = dsn
        if admin is None:
            server = EmbeddedServer(scratch / "pg")
            server.start()
            admin = server.conninfo("postgres")
        name = f"omr_bench_{os.getpid()}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        params = psycopg.conninfo.conninfo_to_dict(admin)
        params["dbname"] = name
        try:
            yield psycopg.conninfo.make_conninfo("", **params), scratch
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(name)
                    )
                )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def executemany_baseline(conninfo: str) -> float:
    """Update every omr_answers row one statement per row; return seconds.

    The rows go to an identical copy of the table (same fillfactor and
    indexes), with psycopg's pipelined executemany, in one transaction.
    Every row gets new raw and corrected answers, so every row changes.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        options = conn.execute(
            "SELECT array_to_string(reloptions, ', ') FROM pg_class"
            " WHERE oid = 'omr_answers'::regclass"
        ).fetchone()
        storage = f" WITH ({options[0]})" if options and options[0] else ""
        conn.execute("DROP TABLE IF EXISTS answers_baseline")
        conn.execute(
            "CREATE TABLE answers_baseline (LIKE omr_answers INCLUDING ALL)" + storage
        )
        conn.execute("INSERT INTO answers_baseline SELECT * FROM omr_answers")
        conn.execute("VACUUM ANALYZE answers_baseline")
        rows = conn.execute(
            "SELECT 'X' || answer_raw, 'X' || answer_corrected, confidence_score,"
            " reason, needs_review, sheet_id, question FROM omr_answers"
        ).fetchall()
    checkpoint(conninfo)
    with psycopg.connect(conninfo) as conn:
        started = time.perf_counter()
        with conn.cursor() as cursor:
            cursor.executemany(
                "UPDATE answers_baseline SET answer_raw = %s, answer_corrected = %s,"
                " confidence_score = %s, reason = %s, needs_review = %s"
                " WHERE sheet_id = %s AND question = %s",
                rows,
            )
        conn.commit()
        return time.perf_counter() - started


def checkpoint(conninfo: str) -> None:
    """Run a checkpoint now, so that none falls into the timed run after it.

    The server starts a checkpoint checkpoint_timeout after the last one
    (15 minutes on the embedded server, 5 by PostgreSQL's default), or once
    enough WAL was written. One that overlaps a timed UPDATE slows it down
    with its writes, and by when it happens it decides which pages need a
    full page image. After an explicit checkpoint the next timed one is
    checkpoint_timeout away, so a run shorter than that starts from the
    same state: every page it changes writes a full page image, and no
    checkpoint writes compete with it.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            print("note: no CHECKPOINT (needs superuser or pg_checkpoint)")


def checkpoints_done(conninfo: str) -> int:
    """Return how many checkpoints the server has run since its statistics reset."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        version = conn.info.server_version
        query = (
            "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
            if version >= 170000
            else "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
        )
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0

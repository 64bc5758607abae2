"""Time the database side of a reprocess alone: COPY, history, UPDATE, rescore.

    python benchmarks/db_load.py [--sheets 7109] [--questions 150] [--dsn URL]

Builds a batch of N sheets x Q answers (no images), then runs what a
reprocess does after detection, from the first COPY byte to COMMIT, in one
transaction, twice: with one answer in ten changed and with every answer
changed, each right after a CHECKPOINT. The COPY data is the staged rows
of a real reprocess in the pipeline's binary format, produced by the
server (COPY ... TO STDOUT) so that Python only moves bytes. Then the
same rows are updated one statement per row with psycopg's pipelined
executemany, on an identical table, and the ratio is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rescore import fill  # noqa: E402
from scratch_db import (  # noqa: E402
    checkpoint,
    executemany_baseline,
    scratch_database,
)

from omr_desktop.db import reprocess_store, task_store  # noqa: E402
from omr_desktop.db.migrate import migrate  # noqa: E402

# The staged rows: every answer, its raw and corrected answer replaced by
# another letter where position % every == 0.
_STAGED = """
COPY (SELECT sheet_id, question, position, confidence_score,
             CASE WHEN position % {every} = 0 THEN 'Z' ELSE answer_raw END,
             CASE WHEN position % {every} = 0 THEN 'Z' ELSE answer_corrected END,
             reason, needs_review
      FROM omr_answers ORDER BY sheet_id, position) TO STDOUT (FORMAT binary)
"""
# The sheets' own rows: a reprocess under a profile that measures as the
# last one did finds every sheet's fills unchanged, so a detection thread
# sends their digest and no fills.
_STAGED_SHEETS = """
COPY (SELECT id, 'bench'::text, '{}'::jsonb, NULL::real[], fills_digest
      FROM sheets ORDER BY id)
TO STDOUT (FORMAT binary)
"""
# Every bubble's fill of a demo sheet: 150 questions x 5 and a 10-digit roll.
_SHEET_FILLS = 850


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets", type=int, default=7109)
    parser.add_argument("--questions", type=int, default=150)
    parser.add_argument("--dsn", help="a role that may create databases")
    args = parser.parse_args()
    with scratch_database(args.dsn) as (conninfo, _scratch):
        run(conninfo, args)
    return 0


def run(conninfo: str, args: argparse.Namespace) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        migrate(conn)
        version = conn.execute("SHOW server_version").fetchone()
        sheet_ids = fill(conn, args.sheets, args.questions)
        # One array of random fills for every sheet: random floats do not
        # compress, so each sheet stores them out of line as a real one does.
        conn.execute(
            "UPDATE sheets SET fills = (SELECT array_agg(random()::real)"
            " FROM generate_series(1, %s))",
            (_SHEET_FILLS,),
        )
        conn.execute("VACUUM ANALYZE")
    rows = args.sheets * args.questions
    print(
        f"PostgreSQL {version[0] if version else '?'}; {args.sheets:,} sheets x "
        f"{args.questions} = {rows:,} answers"
    )
    for label, every in (
        ("one answer in ten changes", 10),
        ("every answer changes", 1),
    ):
        times = reprocess_once(conninfo, sheet_ids, every)
        total = sum(times.values())
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
        print(f"  {label}: {total:.2f} s ({steps})")
        last_total = total
    baseline = executemany_baseline(conninfo)
    print(
        f"  executemany baseline, every answer: {baseline:.2f} s "
        f"({rows / baseline:,.0f} rows/s); ratio {baseline / last_total:.1f}x"
    )


def reprocess_once(conninfo: str, sheet_ids: list[int], every: int) -> dict[str, float]:
    with psycopg.connect(conninfo) as source:
        answers = copy_out(source, _STAGED.format(every=every))
        counted = source.execute("SELECT count(*) FROM omr_answers").fetchone()
        staged = int(counted[0]) if counted else 0
        sheets = copy_out(source, _STAGED_SHEETS)
    task_id = str(uuid.uuid4())
    with psycopg.connect(conninfo, autocommit=True) as conn:
        task_store.create_task(conn, task_id, 2, sheet_ids, {})
    checkpoint(conninfo)
    times: dict[str, float] = {}
    with psycopg.connect(conninfo) as conn:
        conn.execute("SET temp_buffers TO '512MB'")
        conn.execute("SET work_mem TO '256MB'")  # as the pipeline sets it
        conn.commit()
        started = time.perf_counter()
        reprocess_store.lock_sheets(conn, sheet_ids)
        staging = reprocess_store.create_staging(conn)
        # One COPY of every row; the pipeline sends the same bytes in chunks
        # of 64 sheets, a round trip each.
        reprocess_store.copy_chunk(conn, staging, answers, sheets)
        times["lock + COPY"] = time.perf_counter() - started
        step = time.perf_counter()
        reprocess_store.apply_changes(conn, staging, task_id, True, staged)
        times["history + UPDATE"] = time.perf_counter() - step
        step = time.perf_counter()
        conn.execute("CALL REPROCESS_SHEET_SURGICAL(%s::bigint[], NULL)", (sheet_ids,))
        times["rescore"] = time.perf_counter() - step
        step = time.perf_counter()
        conn.commit()
        times["commit"] = time.perf_counter() - step
    return times


def copy_out(conn: psycopg.Connection, query: str) -> bytes:
    parts = []
    with conn.cursor().copy(query) as copy:
        for data in copy:
            parts.append(bytes(data))
    return b"".join(parts)


if __name__ == "__main__":
    sys.exit(main())

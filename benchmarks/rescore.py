"""Time REPROCESS_SHEET_SURGICAL on a batch the size of a real exam.

Builds a scratch database with N sheets of Q questions (default 7,109 x 150,
1,066,350 answers) and an answer key, then calls the procedure for every
sheet and for a tenth of them, three times each, and prints the times.

    python benchmarks/rescore.py [--sheets N] [--questions Q] [--dsn URL]

Without --dsn it starts an embedded server in a temporary folder. With
--dsn (a role that may create databases) it creates and drops a database
named omr_bench_<pid> there. Nothing else is touched.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import psycopg
from scratch_db import scratch_database

from omr_desktop.db.migrate import migrate

OPTIONS = "ABCDE"


def main() -> int:
    args = parse_args()
    with scratch_database(args.dsn) as (conninfo, _scratch):
        run(conninfo, args.sheets, args.questions)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets", type=int, default=7109)
    parser.add_argument("--questions", type=int, default=150)
    parser.add_argument(
        "--dsn",
        help="PostgreSQL URL of a role that may create "
        "databases (default: a temporary embedded server)",
    )
    return parser.parse_args()


def run(conninfo: str, sheets: int, questions: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        migrate(conn)
        version = conn.execute("SHOW server_version").fetchone()
        started = time.perf_counter()
        sheet_ids = fill(conn, sheets, questions)
        fill_s = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE")
        print(
            f"PostgreSQL {version[0] if version else '?'}; {sheets:,} sheets x "
            f"{questions} questions = {sheets * questions:,} answers "
            f"(filled in {fill_s:.1f} s)"
        )
        for label, ids in (
            ("all sheets", sheet_ids),
            ("one sheet in ten", sheet_ids[::10]),
        ):
            times = [call(conn, ids) for _ in range(3)]
            print(
                f"  rescore {label:<17} ({len(ids):>5,} sheets): "
                + ", ".join(f"{t:.2f} s" for t in times)
            )


def call(conn: psycopg.Connection, ids: list[int]) -> float:
    started = time.perf_counter()
    with conn.transaction():
        conn.execute("CALL REPROCESS_SHEET_SURGICAL(%s::bigint[])", (ids,))
    return time.perf_counter() - started


def fill(conn: psycopg.Connection, sheets: int, questions: int) -> list[int]:
    rng = random.Random(7109)
    key = {f"q{n}": rng.choice(OPTIONS) for n in range(1, questions + 1)}
    template = conn.execute(
        "INSERT INTO templates (name, layout) VALUES ('bench', '{}') RETURNING id"
    ).fetchone()
    answer_key = conn.execute(
        "INSERT INTO answer_keys (name, points_correct, points_wrong)"
        " VALUES ('bench', 4, -1) RETURNING id"
    ).fetchone()
    assert template is not None
    assert answer_key is not None
    with conn.cursor().copy(
        "COPY answer_key_items (answer_key_id, question, accepted) FROM STDIN"
    ) as copy:
        for question, answer in key.items():
            copy.write_row((answer_key[0], question, [answer]))
    batch = conn.execute(
        "INSERT INTO batches (name, template_id, answer_key_id)"
        " VALUES ('bench', %s, %s) RETURNING id",
        (template[0], answer_key[0]),
    ).fetchone()
    assert batch
    conn.execute(
        "INSERT INTO sheets (batch_id, sequence_no, image_path)"
        " SELECT %s, n, 'sheet-' || n || '.jpg' FROM generate_series(1, %s) n",
        (batch[0], sheets),
    )
    ids = [r[0] for r in conn.execute("SELECT id FROM sheets ORDER BY id")]
    fill_answers(conn, ids, key, rng)
    return ids


def fill_answers(
    conn: psycopg.Connection, ids: list[int], key: dict[str, str], rng: random.Random
) -> None:
    with conn.cursor().copy(
        "COPY omr_answers (sheet_id, question, position, answer_raw,"
        " answer_corrected, confidence_score, reason, needs_review)"
        " FROM STDIN"
    ) as copy:
        for sheet_id in ids:
            for position, (question, right) in enumerate(key.items(), 1):
                roll = rng.random()
                answer = (
                    right if roll < 0.7 else ("" if roll < 0.8 else rng.choice(OPTIONS))
                )
                reason = "clear" if answer else "blank"
                copy.write_row(
                    (
                        sheet_id,
                        question,
                        position,
                        answer,
                        answer,
                        0.9,
                        reason,
                        roll > 0.99,
                    )
                )


if __name__ == "__main__":
    sys.exit(main())

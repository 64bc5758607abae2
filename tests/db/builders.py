"""Insert hand-made rows for database tests, with defaults for what they ignore."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from omr_desktop.db.migrate import available_migrations, latest_version


@dataclass(frozen=True)
class AnswerRow:
    """One row of omr_answers as a test writes it."""

    question: str
    raw: str
    corrected: str | None = None
    confidence: float = 0.95
    reason: str = "clear"
    needs_review: bool = False
    corrected_by: str | None = None

    @property
    def corrected_value(self) -> str:
        return self.raw if self.corrected is None else self.corrected


def add_template(conn: psycopg.Connection, name: str = "t") -> int:
    row = conn.execute(
        "INSERT INTO templates (name, layout) VALUES (%s, %s) RETURNING id",
        (name, Jsonb({"page_width": 100, "page_height": 100, "fields": []})),
    ).fetchone()
    assert row
    return int(row[0])


def add_key(
    conn: psycopg.Connection,
    name: str,
    items: Mapping[str, Sequence[str]],
    *,
    correct: float = 1,
    wrong: float = 0,
    blank: float = 0,
    overrides: Mapping[str, tuple[float, float, float]] | None = None,
) -> int:
    row = conn.execute(
        "INSERT INTO answer_keys (name, points_correct, points_wrong, points_blank)"
        " VALUES (%s, %s, %s, %s) RETURNING id",
        (name, correct, wrong, blank),
    ).fetchone()
    assert row
    key_id = int(row[0])
    for question, accepted in items.items():
        points = (overrides or {}).get(question, (None, None, None))
        conn.execute(
            "INSERT INTO answer_key_items (answer_key_id, question, accepted,"
            " points_correct, points_wrong, points_blank)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (key_id, question, list(accepted), *points),
        )
    return key_id


def add_batch(
    conn: psycopg.Connection, name: str, template_id: int, key_id: int | None
) -> int:
    row = conn.execute(
        "INSERT INTO batches (name, template_id, answer_key_id) VALUES (%s, %s, %s)"
        " RETURNING id",
        (name, template_id, key_id),
    ).fetchone()
    assert row
    return int(row[0])


def add_sheet(
    conn: psycopg.Connection,
    batch_id: int,
    sequence_no: int,
    answers: Sequence[AnswerRow],
) -> int:
    row = conn.execute(
        "INSERT INTO sheets (batch_id, sequence_no, image_path, status)"
        " VALUES (%s, %s, %s, 'processed') RETURNING id",
        (batch_id, sequence_no, f"/scans/{batch_id}/{sequence_no}.jpg"),
    ).fetchone()
    assert row
    sheet_id = int(row[0])
    for position, answer in enumerate(answers, start=1):
        conn.execute(
            "INSERT INTO omr_answers (sheet_id, question, position, answer_raw,"
            " answer_corrected, confidence_score, reason, needs_review,"
            " corrected_by, corrected_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " CASE WHEN %s::text IS NULL THEN NULL ELSE now() END)",
            (
                sheet_id,
                answer.question,
                position,
                answer.raw,
                answer.corrected_value,
                answer.confidence,
                answer.reason,
                answer.needs_review,
                answer.corrected_by,
                answer.corrected_by,
            ),
        )
    return sheet_id


def sheet_score(conn: psycopg.Connection, sheet_id: int) -> float | None:
    row = conn.execute("SELECT score FROM sheets WHERE id = %s", (sheet_id,)).fetchone()
    assert row
    return None if row[0] is None else float(row[0])


def sheet_flags(conn: psycopg.Connection, sheet_id: int) -> dict[str, int]:
    rows = conn.execute(
        "SELECT flag, count FROM sheet_flags WHERE sheet_id = %s", (sheet_id,)
    ).fetchall()
    return {str(flag): int(count) for flag, count in rows}


def snapshot_other_sheets(
    conn: psycopg.Connection, excluded: Sequence[int]
) -> dict[str, list[str]]:
    """Return the text form of every row about sheets not in ``excluded``."""
    queries = {
        "sheets": "SELECT s::text FROM sheets s WHERE NOT id = ANY(%s) ORDER BY id",
        "sheet_flags": "SELECT f::text FROM sheet_flags f"
        " WHERE NOT sheet_id = ANY(%s) ORDER BY sheet_id, flag",
        "omr_answers": "SELECT a::text FROM omr_answers a"
        " WHERE NOT sheet_id = ANY(%s) ORDER BY sheet_id, question",
    }
    return {
        table: [str(r[0]) for r in conn.execute(query, (list(excluded),)).fetchall()]
        for table, query in queries.items()
    }


def mark_migrated_by_newer_version(conn: psycopg.Connection) -> int:
    """Record a migration this code does not know, as a newer version would.

    Returns the recorded version.
    """
    newer = latest_version() + 1
    conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum)"
        " VALUES (%s, 'from_a_newer_version', 'x')",
        (newer,),
    )
    return newer


def migrations_with_a_newer_one(folder: Path) -> Path:
    """Fill ``folder`` with this version's migrations and one from a newer one.

    The newer one rewrites omr_answers, as a real schema change would, so it
    needs the table lock that a running write holds. Returns ``folder``.
    """
    folder.mkdir()
    for migration in available_migrations():
        shutil.copy(migration.path, folder / migration.path.name)
    newer = latest_version() + 1
    (folder / f"{newer:04d}_from_a_newer_version.sql").write_text(
        "ALTER TABLE omr_answers ADD COLUMN added_later text;"
    )
    return folder


def dead_pid() -> int:
    """Return the pid of a process that has just exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid

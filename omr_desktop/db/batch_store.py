"""Write new batches: template, answer key, students, sheets and their answers.

Bulk rows go in by COPY in chunks; the caller owns the transaction, so a
failure anywhere leaves the database as it was.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

# An unknown batch's error names this many batches, in name order.
SHOWN_BATCHES = 20


class BatchExistsError(ValueError):
    """A batch of that name exists already."""


@dataclass(frozen=True)
class AnswerRecord:
    """One omr_answers row of a new sheet."""

    question: str
    answer_raw: str
    answer_corrected: str
    confidence_score: float
    reason: str
    needs_review: bool


@dataclass(frozen=True)
class SheetRecord:
    """One new sheet with its answers.

    Attributes:
        student_code: the student's code (roll number or file name), or
            ``None`` when unknown.
        status: ``"processed"`` or ``"failed"`` (then ``error`` says why and
            ``answers`` is empty).
    """

    sequence_no: int
    image_path: str
    student_code: str | None
    student_name: str
    status: str
    error: str | None
    profile_id: int
    processed_at: datetime
    measurement_hash: str | None
    identifiers: Mapping[str, str]
    answers: Sequence[AnswerRecord] = field(default_factory=tuple)
    fills: Sequence[float] | None = None


def ensure_template(
    conn: psycopg.Connection, name: str, layout: Mapping[str, Any]
) -> int:
    """Return the id of the template with this layout, storing it if new.

    Templates are immutable once stored: a different layout under a known
    name is stored under that name plus a short hash of the layout.
    """
    text = json.dumps(layout, sort_keys=True)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    for candidate in (name, f"{name} ({digest})"):
        row = conn.execute(
            "SELECT id, layout = %s::jsonb FROM templates WHERE name = %s",
            (text, candidate),
        ).fetchone()
        if row is None:
            created = conn.execute(
                "INSERT INTO templates (name, layout) VALUES (%s, %s) RETURNING id",
                (candidate, Jsonb(layout)),
            ).fetchone()
            assert created is not None
            return int(created[0])
        if row[1]:
            return int(row[0])
    raise ValueError(f"Template names {name!r} and {name} ({digest}) are both taken.")


def create_answer_key(
    conn: psycopg.Connection,
    name: str,
    accepted: Mapping[str, Sequence[str]],
    points: tuple[Decimal, Decimal, Decimal],
) -> int:
    """Store an answer key: question to accepted answers, with one marking scheme.

    Raises:
        BatchExistsError: a key of this name exists, as when a batch of the
            same name was created at the same time.
    """
    try:
        row = conn.execute(
            "INSERT INTO answer_keys (name, points_correct, points_wrong, points_blank)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (name, *points),
        ).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        raise BatchExistsError(
            f"An answer key named {name!r} exists already, perhaps from a batch "
            "created at the same time. Choose another name with --batch."
        ) from exc
    assert row is not None
    key_id = int(row[0])
    with conn.cursor().copy(
        "COPY answer_key_items (answer_key_id, question, accepted) FROM STDIN"
    ) as copy:
        for question, answers in accepted.items():
            copy.write_row((key_id, question, list(answers)))
    return key_id


def create_batch(
    conn: psycopg.Connection, name: str, template_id: int, answer_key_id: int | None
) -> int:
    """Insert the batch row.

    Raises:
        BatchExistsError: the name is taken.
    """
    check_batch_name_free(conn, name)
    try:
        row = conn.execute(
            "INSERT INTO batches (name, template_id, answer_key_id, status)"
            " VALUES (%s, %s, %s, 'importing') RETURNING id",
            (name, template_id, answer_key_id),
        ).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        # Another process created the batch since the check; this INSERT
        # waited for that commit.
        raise _batch_exists(name) from exc
    assert row is not None
    return int(row[0])


def check_batch_name_free(conn: psycopg.Connection, name: str) -> None:
    """Raise BatchExistsError when a batch is called ``name``."""
    exists = conn.execute("SELECT 1 FROM batches WHERE name = %s", (name,)).fetchone()
    if exists:
        raise _batch_exists(name)


def _batch_exists(name: str) -> BatchExistsError:
    return BatchExistsError(
        f"A batch named {name!r} exists already. Choose another name with --batch."
    )


def finish_batch(conn: psycopg.Connection, batch_id: int) -> None:
    conn.execute("UPDATE batches SET status = 'ready' WHERE id = %s", (batch_id,))


def write_sheets(
    conn: psycopg.Connection, batch_id: int, sheets: Sequence[SheetRecord]
) -> list[int]:
    """Insert a chunk of sheets and their answers; return the new sheet ids."""
    if not sheets:
        return []
    ids = _reserve_sheet_ids(conn, len(sheets))
    students = _ensure_students(conn, sheets)
    with conn.cursor().copy(
        "COPY sheets (id, batch_id, student_id, sequence_no, image_path, status,"
        " error, last_profile_id, processed_at, measurement_hash, identifiers,"
        " fills)"
        " FROM STDIN"
    ) as copy:
        for sheet_id, sheet in zip(ids, sheets, strict=True):
            copy.write_row(
                (
                    sheet_id,
                    batch_id,
                    students.get(sheet.student_code or ""),
                    sheet.sequence_no,
                    sheet.image_path,
                    sheet.status,
                    sheet.error,
                    sheet.profile_id,
                    sheet.processed_at,
                    sheet.measurement_hash,
                    Jsonb(dict(sheet.identifiers)),
                    None if sheet.fills is None else _rounded(sheet.fills),
                )
            )
    with conn.cursor().copy(
        "COPY omr_answers (sheet_id, question, position, answer_raw,"
        " answer_corrected, confidence_score, reason, needs_review)"
        " FROM STDIN"
    ) as copy:
        for sheet_id, sheet in zip(ids, sheets, strict=True):
            for position, a in enumerate(sheet.answers, start=1):
                copy.write_row(
                    (
                        sheet_id,
                        a.question,
                        position,
                        a.answer_raw,
                        a.answer_corrected,
                        _rounded([a.confidence_score])[0],
                        a.reason,
                        bool(a.needs_review),
                    )
                )
    return ids


def _rounded(fills: Sequence[float]) -> list[float]:
    """Round values to float32, as the ``real`` columns store them.

    The same rounding on both paths means that a reprocess which measures
    the same values finds nothing to update.
    """
    rounded: list[float] = np.asarray(fills, dtype=np.float32).tolist()
    return rounded


def _reserve_sheet_ids(conn: psycopg.Connection, count: int) -> list[int]:
    rows = conn.execute(
        "SELECT nextval(pg_get_serial_sequence('sheets', 'id'))"
        " FROM generate_series(1, %s)",
        (count,),
    ).fetchall()
    return [int(r[0]) for r in rows]


def _ensure_students(
    conn: psycopg.Connection, sheets: Iterable[SheetRecord]
) -> dict[str, int]:
    """Return code to id for the chunk's students, inserting new ones.

    A known student keeps their name unless the new name is non-empty.
    """
    names: dict[str, str] = {}
    for sheet in sheets:
        if sheet.student_code:
            names[sheet.student_code] = sheet.student_name or names.get(
                sheet.student_code, ""
            )
    if not names:
        return {}
    rows = conn.execute(
        "INSERT INTO students (code, name)"
        " SELECT * FROM unnest(%s::text[], %s::text[])"
        " ON CONFLICT (code) DO UPDATE SET name = CASE"
        "   WHEN EXCLUDED.name <> '' THEN EXCLUDED.name ELSE students.name END"
        " RETURNING code, id",
        (list(names), list(names.values())),
    ).fetchall()
    return {str(code): int(sid) for code, sid in rows}


def rescore(conn: psycopg.Connection, sheet_ids: Sequence[int]) -> int:
    """Run the surgical procedure for ``sheet_ids``; return how many it rescored."""
    row = conn.execute(
        "CALL REPROCESS_SHEET_SURGICAL(%s::bigint[], NULL)", (list(sheet_ids),)
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def delete_batch(conn: psycopg.Connection, batch_id: int) -> int:
    """Delete a batch with its sheets, answers, flags and reprocess tasks.

    A task that read sheets of this batch goes too, with its events and
    undo history, so that undo never reaches for a deleted sheet. The
    batch's answer key goes unless another batch uses it. Students and
    templates stay, because other batches may use them. Returns the number
    of sheets deleted.
    """
    sheet_ids = [
        int(row[0])
        for row in conn.execute(
            "SELECT id FROM sheets WHERE batch_id = %s", (batch_id,)
        ).fetchall()
    ]
    task_ids = [
        row[0]
        for row in conn.execute(
            "SELECT task_id FROM reprocess_tasks WHERE sheet_ids && %s::bigint[]",
            (sheet_ids,),
        ).fetchall()
    ]
    # The answer history has no foreign keys, which keeps writing it fast,
    # so nothing cascades into it.
    conn.execute(
        "DELETE FROM answer_history_sheets WHERE task_id = ANY(%s)", (task_ids,)
    )
    conn.execute("DELETE FROM reprocess_tasks WHERE task_id = ANY(%s)", (task_ids,))
    key = conn.execute(
        "DELETE FROM batches WHERE id = %s RETURNING answer_key_id", (batch_id,)
    ).fetchone()
    if key is not None and key[0] is not None:
        conn.execute(
            "DELETE FROM answer_keys k WHERE k.id = %s AND NOT EXISTS"
            " (SELECT 1 FROM batches b WHERE b.answer_key_id = k.id)",
            (key[0],),
        )
    return len(sheet_ids)


def unknown_batch_message(conn: psycopg.Connection, name: str) -> str:
    """Return the error for a batch name that does not exist, naming the batches."""
    rows = conn.execute(
        "SELECT name FROM batches ORDER BY name LIMIT %s", (SHOWN_BATCHES + 1,)
    ).fetchall()
    names = [str(r[0]) for r in rows]
    if not names:
        return (
            f"No batch named {name!r}: the database has no batches. Import "
            "scans with 'omr-desktop import' first."
        )
    listed = ", ".join(repr(n) for n in names[:SHOWN_BATCHES])
    if len(names) > SHOWN_BATCHES:
        listed += " and more"
    return f"No batch named {name!r}. The batches are: {listed}."

"""Read-only queries behind the batch and student lists, as plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

import psycopg


@dataclass(frozen=True)
class BatchSummary:
    """One row of the batch list."""

    id: int
    name: str
    sheet_count: int
    created_at: datetime
    status: str


class SheetSummary(NamedTuple):
    """One row of the student list, in scan order.

    A named tuple rather than a dataclass: a batch of 10,000 sheets builds
    10,000 of them each time it opens, and a tuple is cheaper to create.

    Attributes:
        score: ``None`` when the batch has no answer key.
        flags: flag codes the sheet carries, sorted.
        processed_at: when the sheet was last read, as ``YYYY-MM-DD HH:MM``
            in the session's time zone, or ``""`` for a sheet never read.
    """

    id: int
    sequence_no: int
    student_code: str
    student_name: str
    score: Decimal | None
    flags: tuple[str, ...]
    profile_name: str
    processed_at: str


def list_batches(conn: psycopg.Connection) -> list[BatchSummary]:
    """Return every batch with its sheet count, newest first."""
    rows = conn.execute(
        """
        SELECT b.id, b.name, count(s.id), b.created_at, b.status
        FROM batches b
        LEFT JOIN sheets s ON s.batch_id = b.id
        GROUP BY b.id
        ORDER BY b.created_at DESC, b.id DESC
        """
    ).fetchall()
    return [BatchSummary(*row) for row in rows]


def list_sheets(conn: psycopg.Connection, batch_id: int) -> list[SheetSummary]:
    """Return the sheets of ``batch_id`` in scan order."""
    # The flags are aggregated before the join, so the outer query needs no
    # GROUP BY, and they and the time arrive as text: decoding 10,000
    # timestamptz values cost more than the query itself.
    rows = conn.execute(
        """
        SELECT s.id, s.sequence_no, coalesce(st.code, ''), coalesce(st.name, ''),
               s.score, coalesce(fl.flags, ''), coalesce(p.name, ''),
               coalesce(to_char(s.processed_at, 'YYYY-MM-DD HH24:MI'), '')
        FROM sheets s
        LEFT JOIN students st ON st.id = s.student_id
        LEFT JOIN profiles p ON p.id = s.last_profile_id
        LEFT JOIN (
            SELECT f.sheet_id, string_agg(f.flag, ',' ORDER BY f.flag) AS flags
            FROM sheet_flags f
            JOIN sheets fs ON fs.id = f.sheet_id
            WHERE fs.batch_id = %(batch_id)s
            GROUP BY f.sheet_id
        ) fl ON fl.sheet_id = s.id
        WHERE s.batch_id = %(batch_id)s
        ORDER BY s.sequence_no
        """,
        {"batch_id": batch_id},
    ).fetchall()
    no_flags: tuple[str, ...] = ()
    return [
        SheetSummary(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            tuple(r[5].split(",")) if r[5] else no_flags,
            r[6],
            r[7],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class AnswerDetail:
    """One stored answer, as Panel C's answers table shows it."""

    question: str
    position: int
    answer_raw: str
    answer_corrected: str
    confidence_score: float
    reason: str
    needs_review: bool
    corrected_by: str | None


@dataclass(frozen=True)
class SheetDetail:
    """Everything Panel C needs about one sheet.

    Attributes:
        layout: the template as stored (the engine's ``to_dict`` form).
        fills: every bubble's stored fill in template order, or ``None``
            for a sheet never read.
        profile_settings: settings of the profile that produced the answers.
    """

    id: int
    sequence_no: int
    student_code: str
    student_name: str
    score: Decimal | None
    image_path: str
    status: str
    error: str | None
    profile_id: int | None
    profile_name: str
    profile_settings: dict[str, object]
    layout: dict[str, object]
    fills: tuple[float, ...] | None
    answers: tuple[AnswerDetail, ...]


def load_sheet_detail(conn: psycopg.Connection, sheet_id: int) -> SheetDetail | None:
    """Return the sheet with its answers and template, or None if it is gone."""
    row = conn.execute(
        """
        SELECT s.id, s.sequence_no, coalesce(st.code, ''), coalesce(st.name, ''),
               s.score, s.image_path, s.status, s.error, s.last_profile_id,
               coalesce(p.name, ''), coalesce(p.settings, '{}'), t.layout, s.fills
        FROM sheets s
        JOIN batches b ON b.id = s.batch_id
        JOIN templates t ON t.id = b.template_id
        LEFT JOIN students st ON st.id = s.student_id
        LEFT JOIN profiles p ON p.id = s.last_profile_id
        WHERE s.id = %s
        """,
        (sheet_id,),
    ).fetchone()
    if row is None:
        return None
    answers = conn.execute(
        "SELECT question, position, answer_raw, answer_corrected, confidence_score,"
        " reason, needs_review, corrected_by FROM omr_answers"
        " WHERE sheet_id = %s ORDER BY position",
        (sheet_id,),
    ).fetchall()
    (
        detail_id,
        sequence_no,
        student_code,
        student_name,
        score,
        image_path,
        status,
        error,
        profile_id,
        profile_name,
        profile_settings,
        layout,
        fills,
    ) = row
    return SheetDetail(
        id=detail_id,
        sequence_no=sequence_no,
        student_code=student_code,
        student_name=student_name,
        score=score,
        image_path=image_path,
        status=status,
        error=error,
        profile_id=profile_id,
        profile_name=profile_name,
        profile_settings=profile_settings,
        layout=layout,
        fills=None if fills is None else tuple(fills),
        answers=tuple(
            AnswerDetail(a[0], a[1], a[2], a[3], float(a[4]), a[5], a[6], a[7])
            for a in answers
        ),
    )


def batch_answers(
    conn: psycopg.Connection, batch_id: int
) -> dict[tuple[int, str], tuple[str, str]]:
    """Return ``(answer_corrected, reason)`` of every answer of ``batch_id``.

    The keys are ``(sheet id, question)``. ``reason`` is the detection's
    reason code, such as ``"light_mark"``.
    """
    rows = conn.execute(
        "SELECT a.sheet_id, a.question, a.answer_corrected, a.reason"
        " FROM omr_answers a JOIN sheets s ON s.id = a.sheet_id"
        " WHERE s.batch_id = %s",
        (batch_id,),
    ).fetchall()
    return {
        (int(sheet_id), str(question)): (str(answer), str(reason))
        for sheet_id, question, answer, reason in rows
    }

"""Read-only queries behind the batch and student lists, as plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg


@dataclass(frozen=True)
class BatchSummary:
    """One row of the batch list."""

    id: int
    name: str
    sheet_count: int
    created_at: datetime
    status: str


@dataclass(frozen=True)
class SheetSummary:
    """One row of the student list, in scan order.

    Attributes:
        flags: flag codes the sheet carries, sorted.
        score: ``None`` when the batch has no answer key.
    """

    id: int
    sequence_no: int
    student_code: str
    student_name: str
    score: Decimal | None
    flags: tuple[str, ...]
    profile_name: str
    processed_at: datetime | None


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
    rows = conn.execute(
        """
        SELECT s.id, s.sequence_no, coalesce(st.code, ''), coalesce(st.name, ''),
               s.score,
               coalesce(array_agg(f.flag ORDER BY f.flag)
                        FILTER (WHERE f.flag IS NOT NULL), '{}'),
               coalesce(p.name, ''), s.processed_at
        FROM sheets s
        LEFT JOIN students st ON st.id = s.student_id
        LEFT JOIN profiles p ON p.id = s.last_profile_id
        LEFT JOIN sheet_flags f ON f.sheet_id = s.id
        WHERE s.batch_id = %s
        GROUP BY s.id, st.id, p.id
        ORDER BY s.sequence_no
        """,
        (batch_id,),
    ).fetchall()
    return [
        SheetSummary(r[0], r[1], r[2], r[3], r[4], tuple(r[5]), r[6], r[7])
        for r in rows
    ]

"""Export a batch to CSV: one row per sheet, or one row per answer."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg


class ExportError(ValueError):
    """The export's batch or sheets do not exist."""


def export_batch(
    conn: psycopg.Connection,
    batch_name: str,
    out: Path,
    *,
    sheet_ids: Sequence[int] | None = None,
    per_answer: bool = False,
) -> int:
    """Write the batch's sheets to ``out``; return the number of data rows.

    Per sheet: sequence, sheet id, student code and name, score, flags, then
    each question's corrected answer in sheet order. Per answer: sheet,
    student, question, raw, corrected, confidence, reason, needs review.
    """
    batch = conn.execute(
        "SELECT id FROM batches WHERE name = %s", (batch_name,)
    ).fetchone()
    if batch is None:
        raise ExportError(f"No batch named {batch_name!r}.")
    ids = _sheet_ids(conn, int(batch[0]), sheet_ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if per_answer:
            count = _write_answers(conn, writer, ids)
        else:
            count = _write_sheets(conn, writer, ids)
    partial.replace(out)
    return count


def _sheet_ids(
    conn: psycopg.Connection, batch_id: int, wanted: Sequence[int] | None
) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM sheets WHERE batch_id = %s ORDER BY sequence_no", (batch_id,)
    ).fetchall()
    ids = [int(r[0]) for r in rows]
    if wanted is None:
        return ids
    missing = sorted(set(wanted) - set(ids))
    if missing:
        shown = ", ".join(str(i) for i in missing[:20])
        raise ExportError(f"Sheets {shown} are not in this batch.")
    chosen = set(wanted)
    return [i for i in ids if i in chosen]


_SHEETS_QUERY = """
SELECT s.id, s.sequence_no, coalesce(st.code, ''), coalesce(st.name, ''), s.score,
       coalesce((SELECT string_agg(f.flag, ' ' ORDER BY f.flag)
                 FROM sheet_flags f WHERE f.sheet_id = s.id), ''),
       coalesce(array_agg(a.question ORDER BY a.position)
                FILTER (WHERE a.question IS NOT NULL), '{}'),
       coalesce(array_agg(a.answer_corrected ORDER BY a.position)
                FILTER (WHERE a.question IS NOT NULL), '{}')
FROM sheets s
LEFT JOIN students st ON st.id = s.student_id
LEFT JOIN omr_answers a ON a.sheet_id = s.id
WHERE s.id = ANY(%s)
GROUP BY s.id, st.id
ORDER BY s.sequence_no
"""


def _write_sheets(conn: psycopg.Connection, writer: Any, ids: list[int]) -> int:
    rows = conn.execute(_SHEETS_QUERY, (ids,)).fetchall()
    questions: list[str] = []
    for row in rows:
        if len(row[6]) > len(questions):
            questions = list(row[6])
    writer.writerow(
        [
            "sequence_no",
            "sheet_id",
            "student_code",
            "student_name",
            "score",
            "flags",
            *questions,
        ]
    )
    for sheet_id, seq, code, name, score, flags, qs, answers in rows:
        by_question = dict(zip(qs, answers, strict=True))
        writer.writerow(
            [
                seq,
                sheet_id,
                code,
                name,
                "" if score is None else score,
                flags,
                *(by_question.get(q, "") for q in questions),
            ]
        )
    return len(rows)


def _write_answers(conn: psycopg.Connection, writer: Any, ids: list[int]) -> int:
    writer.writerow(
        [
            "sequence_no",
            "sheet_id",
            "student_code",
            "question",
            "answer_raw",
            "answer_corrected",
            "confidence_score",
            "reason",
            "needs_review",
            "corrected_by",
        ]
    )
    count = 0
    with conn.cursor(name="export_answers") as cursor:
        cursor.execute(
            "SELECT s.sequence_no, s.id, coalesce(st.code, ''), a.question,"
            " a.answer_raw, a.answer_corrected, a.confidence_score, a.reason,"
            " a.needs_review, coalesce(a.corrected_by, '')"
            " FROM omr_answers a JOIN sheets s ON s.id = a.sheet_id"
            " LEFT JOIN students st ON st.id = s.student_id"
            " WHERE s.id = ANY(%s) ORDER BY s.sequence_no, a.position",
            (ids,),
        )
        for row in cursor:
            writer.writerow(row)
            count += 1
    return count

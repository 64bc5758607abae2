"""Export a batch to CSV: one row per sheet, or one row per answer."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import psycopg

from omr_desktop.db.batch_store import unknown_batch_message
from omr_desktop.plural import id_list, noun

logger = logging.getLogger(__name__)


class ExportError(ValueError):
    """The export's batch or sheets do not exist, or its output path is a folder."""


class ExportWriteError(RuntimeError):
    """Writing the output file failed; it is unchanged and no partial file is left."""


def export_batch(
    conn: psycopg.Connection,
    batch_name: str,
    out: Path | TextIO,
    *,
    sheet_ids: Sequence[int] | None = None,
    per_answer: bool = False,
) -> int:
    """Write the batch's sheets to ``out``; return the number of data rows.

    Per sheet: sequence, sheet id, student code and name, score, flags, then
    each question's corrected answer in sheet order. Per answer: sheet,
    student, question, raw, corrected, confidence, reason, needs review.

    The rows go to ``<out>.partial`` first, which replaces ``out`` only when
    complete and is deleted when anything fails. A link as ``out`` is
    followed. A device or pipe, and an open text stream such as
    ``sys.stdout``, is written into directly.

    Raises:
        ExportError: no such batch, sheets outside it, or ``out`` is a folder.
        ExportWriteError: the file system rejected the write.
    """
    batch = conn.execute(
        "SELECT id FROM batches WHERE name = %s", (batch_name,)
    ).fetchone()
    if batch is None:
        raise ExportError(unknown_batch_message(conn, batch_name))
    ids = _sheet_ids(conn, int(batch[0]), sheet_ids)
    if not isinstance(out, Path):
        return _write_rows(conn, out, ids, per_answer)
    if out.is_dir():
        raise ExportError(
            f"The output path {out} is a folder. Give the path of a CSV file "
            f"instead, such as {out / 'export.csv'}."
        )
    # A link is followed, so that it points to the new file afterwards.
    out = out.resolve() if out.is_symlink() else out
    if out.exists() and not out.is_file():
        # A device or a pipe (/dev/null, a FIFO) is written into: renaming
        # a file over it would replace it.
        try:
            with out.open("w", newline="", encoding="utf-8") as handle:
                return _write_rows(conn, handle, ids, per_answer)
        except OSError as exc:
            raise _write_error(out, exc) from exc
    if not out.parent.is_dir():
        # A mistyped folder name is not created, because the file would
        # land in a folder that the user does not expect.
        problem = "is not a folder" if out.parent.exists() else "does not exist"
        raise ExportError(
            f"{out.parent} {problem}. Choose a path in an existing folder, or "
            "create the folder first."
        )
    partial = out.with_name(out.name + ".partial")
    try:
        count = _write_file(conn, partial, ids, per_answer)
        partial.replace(out)
    except BaseException as exc:
        # A failed or interrupted export leaves no partial file. File
        # system errors become ExportWriteError; anything else, such as
        # KeyboardInterrupt or a database error, is raised unchanged.
        _discard(partial)
        if isinstance(exc, OSError):
            raise _write_error(out, exc) from exc
        raise
    return count


def _write_error(out: Path, exc: OSError) -> ExportWriteError:
    reason = exc.strerror or str(exc)
    return ExportWriteError(
        f"Cannot write {out}: {reason}. Check that the folder is writable "
        "and the disk has space, or choose another path."
    )


def _discard(partial: Path) -> None:
    try:
        partial.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("Deleting the partial export %s failed: %s", partial, exc)


def _write_file(
    conn: psycopg.Connection, path: Path, ids: list[int], per_answer: bool
) -> int:
    with path.open("w", newline="", encoding="utf-8") as handle:
        return _write_rows(conn, handle, ids, per_answer)


def _write_rows(
    conn: psycopg.Connection, handle: TextIO, ids: list[int], per_answer: bool
) -> int:
    writer = csv.writer(handle)
    if per_answer:
        return _write_answers(conn, writer, ids)
    return _write_sheets(conn, writer, ids)


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
        sheets = noun(len(missing), "Sheet")
        verb = "is" if len(missing) == 1 else "are"
        raise ExportError(f"{sheets} {id_list(missing)} {verb} not in this batch.")
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

"""An editor's changes to sheets: manual answer corrections and student swaps.

Each change is one transaction that locks the sheets involved (NOWAIT, so a
running reprocess of the same sheets makes it fail at once instead of
waiting) and rescores them with the surgical procedure.
"""

from __future__ import annotations

import re

import psycopg

from omr_desktop.db.migrate import check_not_newer
from omr_desktop.db.reprocess_store import lock_sheet_ids
from omr_desktop.engine.template import Template

# A corrected answer: option values joined (A, BC, 12), blank, or '*' for
# an unresolved multi-mark.
_ANSWER_PATTERN = re.compile(r"^[A-Z0-9]*$|^\*$")


_BUSY = (
    "These sheets are being reprocessed right now. Wait for the task to finish, "
    "then try again."
)


class CorrectionError(ValueError):
    """The change is invalid; nothing was written."""


def correct_answer(
    conn: psycopg.Connection, sheet_id: int, question: str, answer: str, editor: str
) -> None:
    """Set ``answer_corrected`` by hand, recording the editor and the time."""
    answer = answer.strip().upper()
    if not _ANSWER_PATTERN.match(answer):
        raise CorrectionError(
            f"{answer!r} is not an answer: use option letters or digits such as "
            "B or AC, nothing for blank, or * for an unresolved multi-mark."
        )
    with conn.transaction():
        check_not_newer(conn)
        lock_sheet_ids(conn, [sheet_id], _BUSY)
        answer = _in_option_order(conn, sheet_id, question, answer)
        updated = conn.execute(
            "UPDATE omr_answers SET answer_corrected = %s, corrected_by = %s,"
            " corrected_at = now() WHERE sheet_id = %s AND question = %s",
            (answer, editor, sheet_id, question),
        ).rowcount
        if updated != 1:
            raise CorrectionError(f"Sheet {sheet_id} has no question {question!r}.")
        conn.execute("CALL REPROCESS_SHEET_SURGICAL(%s::bigint[], NULL)", ([sheet_id],))


def _in_option_order(
    conn: psycopg.Connection, sheet_id: int, question: str, answer: str
) -> str:
    """Return ``answer`` with its marks once each, in the order of the options.

    That is the form the engine writes a multi-mark in, and the form an
    answer key lists it in: "CA" and "ACA" become "AC".

    Raises:
        CorrectionError: a mark is not an option of the question, whose
            options are the bubble values of its fields in the sheet's
            template. Values longer than one character are ambiguous in a
            joined answer, so such questions are neither checked nor
            reordered.
    """
    if answer in ("", "*"):
        return answer
    row = conn.execute(
        "SELECT t.layout FROM sheets s JOIN batches b ON b.id = s.batch_id"
        " JOIN templates t ON t.id = b.template_id WHERE s.id = %s",
        (sheet_id,),
    ).fetchone()
    if row is None:
        raise CorrectionError(f"Sheet {sheet_id} does not exist.")
    template = Template.from_dict(row[0])
    labels = template.column_fields(question)
    if not all(label in template.field_positions for label in labels):
        raise CorrectionError(f"Sheet {sheet_id} has no question {question!r}.")
    values = list(
        dict.fromkeys(
            b.value for label in labels for b in template.field_by_label(label).bubbles
        )
    )
    if any(len(v) != 1 for v in values):
        return answer
    if not set(answer) <= set(values):
        raise CorrectionError(
            f"{answer!r} is not an answer to {question}, whose options are "
            f"{', '.join(values)}. Use those, several for a multi-mark such as "
            "AC, nothing for blank, or * for an unresolved multi-mark."
        )
    return "".join(v for v in values if v in answer)


def swap_students(conn: psycopg.Connection, first: int, second: int) -> None:
    """Exchange the students of two sheets and rescore both."""
    if first == second:
        raise CorrectionError("Swap needs two different sheets.")
    with conn.transaction():
        check_not_newer(conn)
        rows = lock_sheet_ids(conn, [first, second], _BUSY)
        if len(rows) != 2:
            raise CorrectionError(f"Sheet {first} or {second} does not exist.")
        conn.execute(
            "UPDATE sheets s SET student_id = o.student_id FROM sheets o"
            " WHERE (s.id, o.id) IN ((%s, %s), (%s, %s))",
            (first, second, second, first),
        )
        conn.execute(
            "CALL REPROCESS_SHEET_SURGICAL(%s::bigint[], NULL)", ([first, second],)
        )

"""Undo a reprocess from its history, and prune old history."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg

from omr_desktop.db.migrate import check_not_newer
from omr_desktop.db.reprocess_store import lock_sheet_ids
from omr_desktop.plural import id_list, noun

logger = logging.getLogger(__name__)


class UndoError(RuntimeError):
    """The task cannot be undone; the message gives the reason and the fix."""


class UnknownTaskError(UndoError):
    """No reprocess task has the id given to undo."""


@dataclass(frozen=True)
class UndoResult:
    """Counts of what an undo restored."""

    task_id: str
    sheets_restored: int
    answers_restored: int
    answers_deleted: int


@dataclass(frozen=True)
class UndoCandidate:
    """The newest reprocess that can be undone, described for the editor."""

    task_id: str
    profile_name: str
    sheets: int
    batch_names: str
    finished_at: datetime


def last_undoable(conn: psycopg.Connection) -> UndoCandidate | None:
    """Return the newest succeeded task that is not undone or pruned, if any."""
    row = conn.execute(
        "SELECT t.task_id::text, coalesce(p.name, 'profile ' || t.profile_id),"
        " cardinality(t.sheet_ids),"
        " (SELECT string_agg(DISTINCT b.name, ', ') FROM sheets s"
        "  JOIN batches b ON b.id = s.batch_id WHERE s.id = ANY(t.sheet_ids)),"
        " t.finished_at"
        " FROM reprocess_tasks t LEFT JOIN profiles p ON p.id = t.profile_id"
        " WHERE t.status = 'SUCCESS' AND t.undone_at IS NULL"
        " AND NOT t.history_pruned ORDER BY t.finished_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return UndoCandidate(str(row[0]), str(row[1]), int(row[2]), row[3] or "", row[4])


def undo_task(conn: psycopg.Connection, task_id: str) -> UndoResult:
    """Restore every answer and sheet the task changed, then rescore those sheets.

    Runs in one transaction (the caller's connection must not be in one);
    on any error nothing changes.

    Raises:
        UnknownTaskError: no task has this id.
        UndoError: unfinished task, already undone, history pruned, a later
            task or a manual correction changed the same sheets since.
    """
    with conn.transaction():
        check_not_newer(conn)
        sheet_ids, finished_at = _undoable(conn, task_id)
        lock_sheet_ids(
            conn,
            sheet_ids,
            "Some of the task's sheets are being changed right now. Wait for "
            "that to finish, then undo again.",
        )
        _check_no_later_changes(conn, task_id, sheet_ids, finished_at)
        restored, deleted = _restore_answers(conn, task_id)
        sheets = _restore_sheets(conn, task_id)
        conn.execute("CALL REPROCESS_SHEET_SURGICAL(%s::bigint[], NULL)", (sheet_ids,))
        conn.execute(
            "UPDATE reprocess_tasks SET undone_at = now() WHERE task_id = %s",
            (task_id,),
        )
    logger.info(
        "Undid task %s: %d sheets, %d answers restored", task_id, sheets, restored
    )
    return UndoResult(task_id, sheets, restored, deleted)


def _undoable(conn: psycopg.Connection, task_id: str) -> tuple[list[int], object]:
    row = conn.execute(
        "SELECT status, sheet_ids, finished_at, undone_at, history_pruned"
        " FROM reprocess_tasks WHERE task_id = %s",
        (task_id,),
    ).fetchone()
    if row is None:
        raise UnknownTaskError(
            f"Task {task_id} does not exist. Give the task id that 'omr-desktop "
            "reprocess' printed, or that POST /sheets/reprocess returned."
        )
    status, sheet_ids, finished_at, undone_at, pruned = row
    if status != "SUCCESS":
        raise UndoError(
            f"Task {task_id} is {status}; only a task that succeeded "
            "changed anything to undo."
        )
    if undone_at is not None:
        raise UndoError(f"Task {task_id} was undone already, at {undone_at}.")
    if pruned:
        raise UndoError(
            f"The history of task {task_id} was pruned, so it cannot be undone."
        )
    return [int(s) for s in sheet_ids], finished_at


def _check_no_later_changes(
    conn: psycopg.Connection, task_id: str, sheet_ids: list[int], finished_at: object
) -> None:
    later = conn.execute(
        "SELECT task_id::text FROM reprocess_tasks"
        " WHERE status = 'SUCCESS' AND undone_at IS NULL AND task_id <> %s"
        " AND finished_at > %s AND sheet_ids && %s::bigint[] ORDER BY finished_at",
        (task_id, finished_at, sheet_ids),
    ).fetchall()
    if later:
        names = ", ".join(r[0] for r in later)
        if len(later) == 1:
            blocker, advice = f"later task {names}", "Undo it first."
        else:
            blocker, advice = f"later tasks {names}", "Undo those first, newest first."
        raise UndoError(
            f"Task {task_id} cannot be undone: {blocker} reprocessed some of the "
            f"same sheets. {advice}"
        )
    corrected = conn.execute(
        "SELECT DISTINCT sheet_id FROM omr_answers WHERE sheet_id = ANY(%s)"
        " AND corrected_at > %s ORDER BY 1",
        (sheet_ids, finished_at),
    ).fetchall()
    if corrected:
        sheets = noun(len(corrected), "sheet")
        names = id_list([r[0] for r in corrected])
        raise UndoError(
            f"Task {task_id} cannot be undone: answers of {sheets} {names} were "
            "corrected by hand after it, and undo would lose those corrections."
        )


def _restore_answers(conn: psycopg.Connection, task_id: str) -> tuple[int, int]:
    updated = conn.execute(
        "UPDATE omr_answers a SET answer_raw = h.answer_raw,"
        " answer_corrected = h.answer_corrected,"
        " confidence_score = h.confidence_score,"
        " reason = h.reason, needs_review = h.needs_review,"
        " corrected_by = h.corrected_by, corrected_at = h.corrected_at"
        " FROM answer_history h"
        " WHERE h.task_id = %s AND NOT h.inserted"
        "   AND a.sheet_id = h.sheet_id AND a.question = h.question",
        (task_id,),
    ).rowcount
    deleted = conn.execute(
        "DELETE FROM omr_answers a USING answer_history h"
        " WHERE h.task_id = %s AND h.inserted"
        "   AND a.sheet_id = h.sheet_id AND a.question = h.question",
        (task_id,),
    ).rowcount
    return updated, deleted


def _restore_sheets(conn: psycopg.Connection, task_id: str) -> int:
    return conn.execute(
        "UPDATE sheets s SET status = h.status, error = h.error,"
        " last_profile_id = h.last_profile_id, processed_at = h.processed_at,"
        " measurement_hash = h.measurement_hash, identifiers = h.identifiers,"
        " fills = CASE WHEN h.fills_kept THEN s.fills ELSE h.fills END"
        " FROM sheet_history h WHERE h.task_id = %s AND s.id = h.sheet_id",
        (task_id,),
    ).rowcount


def prune_history(conn: psycopg.Connection, keep: int) -> tuple[int, int]:
    """Delete the history of all but the ``keep`` newest finished tasks.

    Returns:
        (tasks pruned, answers and sheets whose history was deleted).
        Pruned tasks can no longer be undone; their rows and events stay.
    """
    if keep < 0:
        raise ValueError(f"--keep must be 0 or more, not {keep}.")
    with conn.transaction():
        check_not_newer(conn)
        rows = conn.execute(
            "SELECT task_id FROM reprocess_tasks"
            " WHERE status IN ('SUCCESS', 'FAILURE') AND NOT history_pruned"
            " ORDER BY finished_at DESC NULLS LAST, created_at DESC OFFSET %s",
            (keep,),
        ).fetchall()
        task_ids = [r[0] for r in rows]
        # The answer history has no foreign keys (they made writing it
        # slow), so rows of deleted sheets or tasks are removed here.
        orphans = _deleted_answers(
            conn,
            "DELETE FROM answer_history_sheets h WHERE NOT EXISTS"
            " (SELECT 1 FROM sheets s WHERE s.id = h.sheet_id) OR NOT EXISTS"
            " (SELECT 1 FROM reprocess_tasks t WHERE t.task_id = h.task_id)",
        )
        if not task_ids:
            return 0, orphans
        answers = orphans + _deleted_answers(
            conn,
            "DELETE FROM answer_history_sheets WHERE task_id = ANY(%s)",
            (task_ids,),
        )
        sheets = conn.execute(
            "DELETE FROM sheet_history WHERE task_id = ANY(%s)", (task_ids,)
        ).rowcount
        conn.execute(
            "UPDATE reprocess_tasks SET history_pruned = true WHERE task_id = ANY(%s)",
            (task_ids,),
        )
    return len(task_ids), answers + sheets


def _deleted_answers(
    conn: psycopg.Connection, delete: str, params: tuple[object, ...] = ()
) -> int:
    """Run a DELETE of answer_history_sheets; return the answers it held."""
    row = conn.execute(
        f"WITH gone AS ({delete} RETURNING cardinality(answers) AS n)"
        " SELECT coalesce(sum(n), 0) FROM gone",
        params,
    ).fetchone()
    return int(row[0]) if row else 0

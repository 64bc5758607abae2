"""The database side of a reprocess: lock, stage by COPY, apply, record history.

Every function here runs inside the caller's transaction on one connection,
so the staging tables (temporary, dropped at commit) and the row locks live
exactly as long as the task's transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

# Rows of omr_answers and sheets compared to decide whether a row changed.
_ANSWER_VALUES = (
    "answer_raw",
    "answer_corrected",
    "confidence_score",
    "fills",
    "reason",
    "needs_review",
    "corrected_by",
    "corrected_at",
)


# Changed rows are updated one ctid lookup each when they are at most
# 1/TID_UPDATE_SHARE of the staged rows (see _update_answers).
TID_UPDATE_SHARE = 4


class SheetsBusyError(RuntimeError):
    """Another transaction has locked some of the sheets."""


class ConcurrentChangeError(RuntimeError):
    """A writer changed the task's rows of omr_answers without locking their sheets."""


@dataclass(frozen=True)
class SheetRow:
    """A sheet selected for reprocessing, as Loading Sheets reads it."""

    id: int
    image_path: str
    template_id: int
    measurement_hash: str | None
    fills: list[float] | None


@dataclass(frozen=True)
class ChangeCounts:
    """Row counts of the Loading to Database stage.

    Attributes:
        answers_updated: rows of omr_answers whose stored values differ now.
        answers_changed: of those, rows whose raw or corrected answer differs.
        answers_inserted: rows of sheets that had no answers before.
        manual_kept: rows whose hand-made correction was kept.
    """

    answers_updated: int
    answers_changed: int
    answers_inserted: int
    manual_kept: int


def lock_sheets(
    conn: psycopg.Connection, sheet_ids: list[int], with_fills: bool = False
) -> list[SheetRow]:
    """Lock the sheets' rows for this transaction and return them in id order.

    NOWAIT: a sheet held by another task's transaction fails at once, instead
    of this task waiting for the other one's whole run. The stored fills are
    read only ``with_fills`` (a re-decide): for 7,109 sheets they are six
    million floats, seconds of parsing that a detection does not need.

    Raises:
        SheetsBusyError: some sheets are locked by another transaction.
    """
    try:
        return _select_sheets(conn, sheet_ids, with_fills, " FOR UPDATE OF s NOWAIT")
    except psycopg.errors.LockNotAvailable as exc:
        raise SheetsBusyError(
            "Some of the selected sheets are being changed by another task or "
            "editor. Wait for it to finish, then start this reprocess again."
        ) from exc


def read_sheets(
    conn: psycopg.Connection, sheet_ids: list[int], with_fills: bool = False
) -> list[SheetRow]:
    """Return the sheets' rows in id order without locking them.

    For detection outside the writing transaction (the cluster's chunk
    workers); the transaction that writes the results locks the rows.
    """
    return _select_sheets(conn, sheet_ids, with_fills, "")


def _select_sheets(
    conn: psycopg.Connection, sheet_ids: list[int], with_fills: bool, lock: str
) -> list[SheetRow]:
    fills = "s.fills" if with_fills else "NULL::real[]"
    rows = conn.execute(
        "SELECT s.id, s.image_path, b.template_id, s.measurement_hash, "
        + fills
        + " FROM sheets s JOIN batches b ON b.id = s.batch_id"
        " WHERE s.id = ANY(%s) ORDER BY s.id" + lock,
        (sheet_ids,),
    ).fetchall()
    return [SheetRow(int(r[0]), str(r[1]), int(r[2]), r[3], r[4]) for r in rows]


def lock_sheet_ids(
    conn: psycopg.Connection, sheet_ids: list[int], busy_message: str
) -> list[int]:
    """Lock the sheets' rows (NOWAIT) and return the ids that exist, sorted.

    Raises:
        SheetsBusyError: with ``busy_message``, when another transaction
            holds any of them.
    """
    try:
        rows = conn.execute(
            "SELECT id FROM sheets WHERE id = ANY(%s) ORDER BY id FOR UPDATE NOWAIT",
            (sheet_ids,),
        ).fetchall()
    except psycopg.errors.LockNotAvailable as exc:
        raise SheetsBusyError(busy_message) from exc
    return [int(r[0]) for r in rows]


def busy_tasks(conn: psycopg.Connection, sheet_ids: list[int]) -> list[str]:
    """Return the ids of running tasks that include any of ``sheet_ids``."""
    rows = conn.execute(
        "SELECT task_id FROM reprocess_tasks WHERE status = 'STARTED'"
        " AND sheet_ids && %s::bigint[] ORDER BY created_at",
        (sheet_ids,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def load_layouts(conn: psycopg.Connection, template_ids: set[int]) -> dict[int, Any]:
    """Return template id to its stored layout (the engine's to_dict form)."""
    rows = conn.execute(
        "SELECT id, layout FROM templates WHERE id = ANY(%s)", (list(template_ids),)
    ).fetchall()
    return {int(r[0]): r[1] for r in rows}


def create_staging(conn: psycopg.Connection) -> None:
    """Create this transaction's staging tables (dropped at commit or rollback)."""
    conn.execute(
        "CREATE TEMP TABLE reprocess_answers ("
        " sheet_id bigint NOT NULL, question text NOT NULL, position integer NOT NULL,"
        " answer_raw text NOT NULL, answer_corrected text NOT NULL,"
        " confidence_score real NOT NULL, fills real[] NOT NULL, reason text NOT NULL,"
        " needs_review boolean NOT NULL) ON COMMIT DROP"
    )
    conn.execute(
        "CREATE TEMP TABLE reprocess_sheets ("
        " sheet_id bigint PRIMARY KEY, measurement_hash text NOT NULL,"
        " identifiers jsonb NOT NULL, fills real[] NOT NULL) ON COMMIT DROP"
    )


def copy_chunk(conn: psycopg.Connection, answers: bytes, sheets: bytes) -> None:
    """Stream one chunk of encoded rows into the staging tables."""
    with conn.cursor().copy(
        "COPY reprocess_answers (sheet_id, question, position, answer_raw,"
        " answer_corrected, confidence_score, fills, reason, needs_review)"
        " FROM STDIN"
    ) as copy:
        copy.write(answers)
    with conn.cursor().copy(
        "COPY reprocess_sheets (sheet_id, measurement_hash, identifiers, fills)"
        " FROM STDIN"
    ) as copy:
        copy.write(sheets)


def apply_changes(
    conn: psycopg.Connection, task_id: str, keep_manual: bool
) -> ChangeCounts:
    """Record history, then write the staged rows that differ from the stored ones.

    With ``keep_manual``, an answer corrected by hand keeps its
    ``answer_corrected`` and who corrected it; its raw answer, fills,
    confidence, reason and review marker still take the new values.
    """
    conn.execute("ANALYZE reprocess_answers")
    _select_changed(conn, keep_manual)
    counts = _count_changes(conn)
    _record_history(conn, task_id)
    _update_answers(conn, counts.answers_updated)
    _update_sheets(conn, task_id)
    return counts


def _select_changed(conn: psycopg.Connection, keep_manual: bool) -> None:
    keep = sql.Literal(keep_manual)
    new_values = sql.SQL(
        "s.answer_raw,"
        " CASE WHEN {keep} AND a.corrected_at IS NOT NULL"
        "      THEN a.answer_corrected ELSE s.answer_corrected END,"
        " s.confidence_score, s.fills, s.reason, s.needs_review,"
        " CASE WHEN {keep} THEN a.corrected_by END,"
        " CASE WHEN {keep} THEN a.corrected_at END"
    ).format(keep=keep)
    old_values = sql.SQL(", ").join(
        sql.SQL("a.{}").format(sql.Identifier(c)) for c in _ANSWER_VALUES
    )
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE reprocess_changed ON COMMIT DROP AS"
            " SELECT s.sheet_id, s.question, s.position, n.*,"
            "        a.ctid AS row_ctid, a.sheet_id IS NULL AS inserted,"
            "        a.answer_raw AS old_raw, a.answer_corrected AS old_corrected,"
            "        a.confidence_score AS old_confidence, a.fills AS old_fills,"
            "        a.reason AS old_reason, a.needs_review AS old_review,"
            "        a.corrected_by AS old_corrected_by,"
            "        a.corrected_at AS old_corrected_at"
            " FROM reprocess_answers s"
            " LEFT JOIN omr_answers a"
            "   ON a.sheet_id = s.sheet_id AND a.question = s.question"
            " CROSS JOIN LATERAL (SELECT {new}) AS n ({names})"
            " WHERE a.sheet_id IS NULL OR ROW({old}) IS DISTINCT FROM ROW(n.*)"
        ).format(
            new=new_values,
            old=old_values,
            names=sql.SQL(", ").join(map(sql.Identifier, _ANSWER_VALUES)),
        )
    )


def _count_changes(conn: psycopg.Connection) -> ChangeCounts:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE NOT inserted),"
        " count(*) FILTER (WHERE NOT inserted AND (answer_raw, answer_corrected)"
        "   IS DISTINCT FROM (old_raw, old_corrected)),"
        " count(*) FILTER (WHERE inserted),"
        " count(*) FILTER (WHERE corrected_at IS NOT NULL)"
        " FROM reprocess_changed"
    ).fetchone()
    assert row is not None
    return ChangeCounts(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def _record_history(conn: psycopg.Connection, task_id: str) -> None:
    conn.execute(
        "INSERT INTO answer_history (task_id, sheet_id, question, answer_raw,"
        " answer_corrected, confidence_score, fills, reason, needs_review,"
        " corrected_by, corrected_at, inserted)"
        " SELECT %s, sheet_id, question, coalesce(old_raw, ''),"
        "  coalesce(old_corrected, ''), coalesce(old_confidence, 0),"
        "  coalesce(old_fills, '{}'), coalesce(old_reason, 'blank'),"
        "  coalesce(old_review, false), old_corrected_by, old_corrected_at, inserted"
        " FROM reprocess_changed",
        (task_id,),
    )
    conn.execute(
        "INSERT INTO sheet_history (task_id, sheet_id, status, error,"
        " last_profile_id, processed_at, measurement_hash, identifiers, score, fills)"
        " SELECT %s, s.id, s.status, s.error, s.last_profile_id, s.processed_at,"
        "  s.measurement_hash, s.identifiers, s.score, s.fills"
        " FROM sheets s JOIN reprocess_sheets r ON r.sheet_id = s.id",
        (task_id,),
    )


def _update_answers(conn: psycopg.Connection, expected: int) -> None:
    """Write the changed rows, found again by the ctid read with their old values.

    When the changed rows are at most a quarter of the staged ones, each is
    fetched by its ctid: the planner's own choice, a hash join, scans all
    of omr_answers, and took 0.70 s against 0.38 s for one answer in ten
    of 7,109 sheets x 150 (embedded PostgreSQL 16, ``benchmarks/db_load.py``).
    When every answer changes, the hash join was faster (4.6 s against
    5.8 s), so the planner chooses. A ctid stays valid here because every
    writer of these rows first locks their sheets' rows, which this
    transaction holds. The row count is checked all the same: a row
    changed by a writer that skipped those locks fails the task instead
    of losing that writer's value.

    Raises:
        ConcurrentChangeError: fewer rows were updated than were read.
    """
    staged = conn.execute(
        "SELECT reltuples FROM pg_class WHERE oid = 'reprocess_answers'::regclass"
    ).fetchone()
    by_ctid = staged is not None and expected * TID_UPDATE_SHARE <= float(staged[0])
    if by_ctid:
        conn.execute("SET LOCAL enable_hashjoin = off")
        conn.execute("SET LOCAL enable_mergejoin = off")
    updated = conn.execute(
        "UPDATE omr_answers a SET answer_raw = c.answer_raw,"
        " answer_corrected = c.answer_corrected,"
        " confidence_score = c.confidence_score, fills = c.fills,"
        " reason = c.reason, needs_review = c.needs_review,"
        " corrected_by = c.corrected_by, corrected_at = c.corrected_at"
        " FROM reprocess_changed c"
        " WHERE NOT c.inserted AND a.ctid = c.row_ctid"
        "   AND a.sheet_id = c.sheet_id AND a.question = c.question"
    ).rowcount
    if by_ctid:
        conn.execute("RESET enable_hashjoin")
        conn.execute("RESET enable_mergejoin")
    if updated != expected:
        raise ConcurrentChangeError(
            f"{expected - updated} of {expected} answers changed while this task "
            "ran, so nothing was written. Start the reprocess again."
        )
    conn.execute(
        "INSERT INTO omr_answers (sheet_id, question, position, answer_raw,"
        " answer_corrected, confidence_score, fills, reason, needs_review)"
        " SELECT sheet_id, question, position, answer_raw, answer_corrected,"
        "  confidence_score, fills, reason, needs_review"
        " FROM reprocess_changed WHERE inserted"
    )


def _update_sheets(conn: psycopg.Connection, task_id: str) -> None:
    conn.execute(
        "UPDATE sheets s SET status = 'processed', error = NULL,"
        " last_profile_id = t.profile_id, processed_at = now(),"
        " measurement_hash = r.measurement_hash, identifiers = r.identifiers,"
        " fills = r.fills"
        " FROM reprocess_sheets r, reprocess_tasks t"
        " WHERE s.id = r.sheet_id AND t.task_id = %s",
        (task_id,),
    )


def staged_sheet_ids(conn: psycopg.Connection) -> list[int]:
    rows = conn.execute("SELECT sheet_id FROM reprocess_sheets ORDER BY 1").fetchall()
    return [int(r[0]) for r in rows]


def count_score_changes(conn: psycopg.Connection, task_id: str) -> int:
    """Count the task's sheets whose score differs from before the task."""
    row = conn.execute(
        "SELECT count(*) FROM sheets s JOIN sheet_history h ON h.sheet_id = s.id"
        " WHERE h.task_id = %s AND s.score IS DISTINCT FROM h.score",
        (task_id,),
    ).fetchone()
    return int(row[0]) if row else 0

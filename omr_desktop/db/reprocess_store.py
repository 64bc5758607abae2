"""The database side of a reprocess: lock, stage by COPY, apply, record history.

Every function here runs inside the caller's transaction on one connection,
so the staging tables (temporary, dropped at commit) and the row locks live
exactly as long as the task's transaction.
"""

from __future__ import annotations

import logging
import time
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


# Numbers a counting sequence of `_update_answers` keeps in this session's
# memory. Taking a new range loops once per number on the server, so a
# range far larger than a reprocess would cost time, not save it.
_COUNTER_CACHE = 100_000


class SheetsBusyError(RuntimeError):
    """Another transaction has locked some of the sheets."""


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
    # A sheet's fills (850 floats, 3.4 kB on a demo sheet) make its row
    # large enough for PostgreSQL to compress them. Compressing took three
    # quarters of the server's CPU per staged sheet: 0.19 ms, against
    # 0.05 ms stored out of line as they are (a 2-core VM, embedded
    # PostgreSQL 16). The table lasts one transaction, so its size matters
    # little.
    conn.execute("ALTER TABLE reprocess_sheets ALTER COLUMN fills SET STORAGE EXTERNAL")


def copy_chunk(conn: psycopg.Connection, answers: bytes, sheets: bytes) -> None:
    """Stream one chunk of encoded rows into the staging tables.

    Both are binary COPY data with its header and trailer, columns in the
    order of ``ANSWER_COLUMNS`` and ``SHEET_COLUMNS`` of
    ``omr_desktop.pipeline.copy_rows``.
    """
    with conn.cursor().copy(
        "COPY reprocess_answers (sheet_id, question, position, confidence_score,"
        " fills, answer_raw, answer_corrected, reason, needs_review)"
        " FROM STDIN (FORMAT binary)"
    ) as copy:
        copy.write(answers)
    with conn.cursor().copy(
        "COPY reprocess_sheets (sheet_id, measurement_hash, identifiers, fills)"
        " FROM STDIN (FORMAT binary)"
    ) as copy:
        copy.write(sheets)


def apply_changes(
    conn: psycopg.Connection, task_id: str, keep_manual: bool, staged: int
) -> ChangeCounts:
    """Write the staged rows that differ from the stored ones, with their history.

    ``staged`` is the number of rows in the answer staging table. With
    ``keep_manual``, an answer corrected by hand keeps its
    ``answer_corrected`` and who corrected it; its raw answer, fills,
    confidence, reason and review marker still take the new values.
    """
    started = time.perf_counter()
    update = _update_answers(conn, task_id, keep_manual)
    update_done = time.perf_counter()
    inserted = 0
    if update.matched < staged:
        inserted = _insert_missing_answers(conn, task_id)
    insert_done = time.perf_counter()
    _record_sheet_history(conn, task_id)
    _update_sheets(conn, task_id)
    logger.debug(
        "Task %s: updated %d answers in %.2f s, inserted %d in %.2f s, "
        "sheets and their history in %.2f s",
        task_id,
        update.updated,
        update_done - started,
        inserted,
        insert_done - update_done,
        time.perf_counter() - insert_done,
    )
    return ChangeCounts(
        update.updated, update.changed, inserted, update.corrections_kept
    )


def _insert_missing_answers(conn: psycopg.Connection, task_id: str) -> int:
    """Insert the staged answers that have no stored row; return the count.

    A sheet that was never read has no answers; a row deleted by hand is
    missing too. The rows go into the history as inserted, so that undo
    deletes them. Called only when the UPDATE found fewer stored rows than
    were staged: the anti-join reads both tables whole.
    """
    row = conn.execute(
        "WITH added AS ("
        "  INSERT INTO omr_answers (sheet_id, question, position, answer_raw,"
        "   answer_corrected, confidence_score, fills, reason, needs_review)"
        "  SELECT s.sheet_id, s.question, s.position, s.answer_raw,"
        "   s.answer_corrected, s.confidence_score, s.fills, s.reason, s.needs_review"
        "  FROM reprocess_answers s WHERE NOT EXISTS (SELECT 1 FROM omr_answers a"
        "   WHERE a.sheet_id = s.sheet_id AND a.question = s.question)"
        "  RETURNING sheet_id, question),"
        " recorded AS ("
        "  INSERT INTO answer_history_sheets (task_id, sheet_id, answers)"
        "  SELECT %s, sheet_id, array_agg(ROW(question, '', '', 0, '{}', 'blank',"
        "   false, NULL, NULL, true)::answer_snapshot)"
        "  FROM added GROUP BY sheet_id"
        "  RETURNING cardinality(answers) AS n)"
        " SELECT coalesce(sum(n), 0) FROM recorded",
        (task_id,),
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class _Update:
    """What the UPDATE of the stored answers did.

    Attributes:
        matched: staged rows that found a stored row.
        updated: stored rows it rewrote.
        changed: of those, rows whose raw or corrected answer changed.
        corrections_kept: of those, rows that kept a manual correction.
    """

    matched: int
    updated: int
    changed: int
    corrections_kept: int


def _update_answers(
    conn: psycopg.Connection, task_id: str, keep_manual: bool
) -> _Update:
    """Update the stored answers that differ from the staged ones.

    One hash join of the staging table with omr_answers feeds the UPDATE.
    The statement trigger of migration 0007 writes the replaced rows to
    the history while ``omr_desktop.history_task`` names this task. For
    1,066,350 changed answers (embedded PostgreSQL 16,
    ``benchmarks/db_load.py``) this took 4.3 s; selecting the changed rows
    into a temporary table first, then writing the history and the UPDATE
    from it took 6.1 s.

    The UPDATE's own condition counts the staged rows that found a stored
    row, and those whose raw or corrected answer changes, by drawing
    numbers from two temporary sequences. Counting them afterwards needs
    the old and the new values side by side: a join of the trigger's old
    rows with the new ones took 1.1 s of the 5.3 s.

    A row that another writer changes while this statement runs, without
    locking its sheet as every writer of OMR Desktop does, is updated from
    its new version, and that version goes into the history: undo gives
    back the other writer's value. NOTE: the condition is evaluated again
    for such a row, so the counts may include it twice; the changed count
    is capped at the rows updated.
    """
    keep = sql.Literal(keep_manual)
    old: dict[str, sql.Composable] = {
        c: sql.SQL("a.{}").format(sql.Identifier(c)) for c in _ANSWER_VALUES
    }
    new: dict[str, sql.Composable] = {
        c: sql.SQL("s.{}").format(sql.Identifier(c)) for c in _ANSWER_VALUES
    }
    new["answer_corrected"] = sql.SQL(
        "CASE WHEN {keep} AND a.corrected_at IS NOT NULL"
        " THEN a.answer_corrected ELSE s.answer_corrected END"
    ).format(keep=keep)
    new["corrected_by"] = sql.SQL("CASE WHEN {keep} THEN a.corrected_by END").format(
        keep=keep
    )
    new["corrected_at"] = sql.SQL("CASE WHEN {keep} THEN a.corrected_at END").format(
        keep=keep
    )

    def values(
        side: dict[str, sql.Composable], columns: tuple[str, ...]
    ) -> sql.Composed:
        return sql.SQL("ROW({})").format(sql.SQL(", ").join(side[c] for c in columns))

    answer, rest = _ANSWER_VALUES[:2], _ANSWER_VALUES[2:]
    query = sql.SQL(
        "UPDATE omr_answers a SET {assignments} FROM reprocess_answers s"
        " WHERE a.sheet_id = s.sheet_id AND a.question = s.question"
        "   AND CASE WHEN nextval('pg_temp.reprocess_answers_matched') < 0 THEN false"
        "            WHEN {old_answer} IS DISTINCT FROM {new_answer}"
        "            THEN nextval('pg_temp.reprocess_answers_changed') > 0"
        "            ELSE {old_rest} IS DISTINCT FROM {new_rest} END"
    ).format(
        assignments=sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), new[c]) for c in _ANSWER_VALUES
        ),
        old_answer=values(old, answer),
        new_answer=values(new, answer),
        old_rest=values(old, rest),
        new_rest=values(new, rest),
    )
    # With a cache, nextval hands out numbers from this session's memory
    # and writes the sequence once a range, instead of once a row.
    for name in ("reprocess_answers_matched", "reprocess_answers_changed"):
        conn.execute(
            sql.SQL("CREATE TEMP SEQUENCE {} CACHE {}").format(
                sql.Identifier(name), sql.Literal(_COUNTER_CACHE)
            )
        )
    conn.execute("SELECT set_config('omr_desktop.history_task', %s, true)", (task_id,))
    updated = conn.execute(query).rowcount
    # The next number, less one, is how many the UPDATE drew: the sequence's
    # stored last_value is the end of the cached range.
    row = conn.execute(
        "SELECT nextval('pg_temp.reprocess_answers_matched') - 1,"
        " nextval('pg_temp.reprocess_answers_changed') - 1,"
        " current_setting('omr_desktop.history_counts', true),"
        " set_config('omr_desktop.history_task', '', true)"
    ).fetchone()
    conn.execute(
        "DROP SEQUENCE pg_temp.reprocess_answers_matched,"
        " pg_temp.reprocess_answers_changed"
    )
    if row is None or not (row[2] or "").isdigit():
        raise RuntimeError(
            "The answer history trigger did not run, so nothing was written. "
            "Run 'omr-desktop db migrate' to bring the database schema up to date."
        )
    return _Update(
        matched=int(row[0]),
        updated=updated,
        changed=min(int(row[1]), updated),
        corrections_kept=int(row[2]) if keep_manual else 0,
    )


def _record_sheet_history(conn: psycopg.Connection, task_id: str) -> None:
    # Fills the task leaves as they were are not copied (fills_kept).
    conn.execute(
        "INSERT INTO sheet_history (task_id, sheet_id, status, error,"
        " last_profile_id, processed_at, measurement_hash, identifiers, score,"
        " fills, fills_kept)"
        " SELECT %s, s.id, s.status, s.error, s.last_profile_id, s.processed_at,"
        "  s.measurement_hash, s.identifiers, s.score,"
        "  CASE WHEN k.kept THEN NULL ELSE s.fills END, k.kept"
        " FROM sheets s JOIN reprocess_sheets r ON r.sheet_id = s.id"
        " CROSS JOIN LATERAL (SELECT s.fills IS NOT DISTINCT FROM r.fills AS kept) k",
        (task_id,),
    )


def _update_sheets(conn: psycopg.Connection, task_id: str) -> None:
    conn.execute(
        "UPDATE sheets s SET status = 'processed', error = NULL,"
        " last_profile_id = t.profile_id, processed_at = now(),"
        " measurement_hash = r.measurement_hash, identifiers = r.identifiers,"
        # The old value, when equal, keeps its stored copy: no rewrite.
        " fills = CASE WHEN s.fills IS NOT DISTINCT FROM r.fills"
        "  THEN s.fills ELSE r.fills END"
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

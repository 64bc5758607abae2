"""The database side of a reprocess: lock, stage by COPY, apply, record history.

Every function here runs inside the caller's transaction on one connection,
so the staging tables (temporary, dropped at commit) and the row locks live
exactly as long as the task's transaction.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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
    "reason",
    "needs_review",
    "corrected_by",
    "corrected_at",
)


class SheetsBusyError(RuntimeError):
    """Another transaction has locked some of the sheets."""


class ConcurrentChangeError(RuntimeError):
    """Stored answers changed during the write, by a writer without a lock."""


@dataclass(frozen=True)
class Staging:
    """This transaction's answer staging table.

    Attributes:
        answers: its qualified name.
        shared: an unlogged table, which parallel workers can read and
            ``apply_changes`` drops, rather than a temporary table.
    """

    answers: sql.Identifier
    shared: bool


@dataclass(frozen=True)
class SheetRow:
    """A sheet selected for reprocessing, as Loading Sheets reads it."""

    id: int
    image_path: str
    template_id: int
    measurement_hash: str | None
    fills: list[float] | None
    fills_digest: bytes | None = None


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
        + ", s.fills_digest FROM sheets s JOIN batches b ON b.id = s.batch_id"
        " WHERE s.id = ANY(%s) ORDER BY s.id" + lock,
        (sheet_ids,),
    ).fetchall()
    return [SheetRow(int(r[0]), str(r[1]), int(r[2]), r[3], r[4], r[5]) for r in rows]


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


# The advisory lock that a task's writing transaction takes (shared), keyed
# by its id. By it, other processes tell a running task from a STARTED row
# that a dead process left. Seed 1, because the cluster's final step takes
# seed 0's key exclusively, for another purpose, on another connection.
_WRITING_KEY = "hashtextextended(%s::text, 1)"


def mark_writing(conn: psycopg.Connection, task_id: str) -> None:
    """Show other processes that ``task_id`` runs, until this transaction ends."""
    conn.execute(f"SELECT pg_advisory_xact_lock_shared({_WRITING_KEY})", (task_id,))


def running_overlap(
    conn: psycopg.Connection, sheet_ids: list[int], exclude: set[str]
) -> tuple[str, list[int]] | None:
    """Find a task of another process that is running on some of ``sheet_ids``.

    A STARTED row alone is not enough, since a process that died on another
    host leaves its task STARTED: the task's writing lock (`mark_writing`)
    must be held too.

    Returns:
        The oldest such task's id and the sheets of ``sheet_ids`` it
        includes, sorted; None when no other task runs on any of them.
    """
    key = _WRITING_KEY % "t.task_id"
    rows = conn.execute(
        "SELECT t.task_id::text, ARRAY(SELECT unnest(t.sheet_ids) INTERSECT"
        " SELECT unnest(%s::bigint[]) ORDER BY 1)"
        " FROM reprocess_tasks t WHERE t.status = 'STARTED'"
        " AND t.sheet_ids && %s::bigint[] AND EXISTS ("
        "  SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
        "  AND l.database = (SELECT oid FROM pg_database"
        "   WHERE datname = current_database())"
        f"  AND l.classid = (({key} >> 32) & 4294967295)::oid"
        f"  AND l.objid = ({key} & 4294967295)::oid AND l.objsubid = 1)"
        " ORDER BY t.created_at",
        (sheet_ids, sheet_ids),
    ).fetchall()
    for task_id, overlap in rows:
        if task_id not in exclude:
            return task_id, [int(i) for i in overlap]
    return None


def load_layouts(conn: psycopg.Connection, template_ids: set[int]) -> dict[int, Any]:
    """Return template id to its stored layout (the engine's to_dict form)."""
    rows = conn.execute(
        "SELECT id, layout FROM templates WHERE id = ANY(%s)", (list(template_ids),)
    ).fetchall()
    return {int(r[0]): r[1] for r in rows}


def create_staging(conn: psycopg.Connection) -> Staging:
    """Create this transaction's staging tables, dropped at commit or rollback.

    The answers go to an unlogged table when the server runs parallel
    workers and the role may create tables: parallel workers cannot read a
    temporary table. Otherwise, and when the CREATE is rejected, they go to
    a temporary table as the sheets do.
    """
    answers = _create_answer_staging(conn)
    conn.execute(
        "CREATE TEMP TABLE reprocess_sheets ("
        " sheet_id bigint PRIMARY KEY, measurement_hash text NOT NULL,"
        " identifiers jsonb NOT NULL, fills real[], fills_digest bytea NOT NULL)"
        " ON COMMIT DROP"
    )
    # A sheet's fills (850 floats, 3.4 kB on a demo sheet) make its row
    # large enough for PostgreSQL to compress them. Compressing took three
    # quarters of the server's CPU per staged sheet: 0.19 ms, against
    # 0.05 ms stored out of line as they are (a 2-core VM, embedded
    # PostgreSQL 16). The table lasts one transaction, so its size matters
    # little.
    conn.execute("ALTER TABLE reprocess_sheets ALTER COLUMN fills SET STORAGE EXTERNAL")
    return answers


# The staged columns, in the order of the staging table: the keys, then the
# compared values up to those of a manual correction, which are not staged.
_STAGED_COLUMNS = ("sheet_id", "question", "position", *_ANSWER_VALUES[:5])
_ANSWER_STAGING_COLUMNS = (
    " (sheet_id bigint NOT NULL, question text NOT NULL, position integer NOT NULL,"
    " answer_raw text NOT NULL, answer_corrected text NOT NULL,"
    " confidence_score real NOT NULL, reason text NOT NULL,"
    " needs_review boolean NOT NULL)"
)


def _create_answer_staging(conn: psycopg.Connection) -> Staging:
    # A search_path that starts with pg_temp makes the session's temporary
    # schema the current one, where only temporary tables may be created.
    row = conn.execute(
        "SELECT current_schema(),"
        " least(current_setting('max_parallel_workers_per_gather')::int,"
        "       current_setting('max_parallel_workers')::int)"
        " * (current_schema() NOT LIKE 'pg\\_temp\\_%')::int"
    ).fetchone()
    if row is not None and row[0] is not None and int(row[1]) > 0:
        # A random name: tasks of other processes stage at the same time.
        table = sql.Identifier(str(row[0]), f"reprocess_answers_{uuid.uuid4().hex}")
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL(
                        "CREATE UNLOGGED TABLE {}" + _ANSWER_STAGING_COLUMNS
                    ).format(table)
                )
            return Staging(table, shared=True)
        except psycopg.errors.InsufficientPrivilege as exc:
            logger.info(
                "Staging the answers in a temporary table, without parallel "
                "workers: %s",
                exc.diag.message_primary,
            )
    conn.execute(
        "CREATE TEMP TABLE reprocess_answers"
        + _ANSWER_STAGING_COLUMNS
        + " ON COMMIT DROP"
    )
    return Staging(sql.Identifier("pg_temp", "reprocess_answers"), shared=False)


def copy_chunk(
    conn: psycopg.Connection, staging: Staging, answers: bytes, sheets: bytes
) -> None:
    """Stream one chunk of encoded rows into the staging tables.

    Both are binary COPY data with its header and trailer, columns in the
    order of ``ANSWER_COLUMNS`` and ``SHEET_COLUMNS`` of
    ``omr_desktop.pipeline.copy_rows``.
    """
    with conn.cursor().copy(
        sql.SQL(
            "COPY {} (sheet_id, question, position, confidence_score,"
            " answer_raw, answer_corrected, reason, needs_review)"
            " FROM STDIN (FORMAT binary)"
        ).format(staging.answers)
    ) as copy:
        copy.write(answers)
    with conn.cursor().copy(
        "COPY reprocess_sheets"
        " (sheet_id, measurement_hash, identifiers, fills, fills_digest)"
        " FROM STDIN (FORMAT binary)"
    ) as copy:
        copy.write(sheets)


def apply_changes(
    conn: psycopg.Connection,
    staging: Staging,
    task_id: str,
    keep_manual: bool,
    staged: int,
) -> ChangeCounts:
    """Write the staged rows that differ from the stored ones, with their history.

    ``staged`` is the number of rows in the answer staging table. With
    ``keep_manual``, an answer corrected by hand keeps its
    ``answer_corrected`` and who corrected it; its raw answer, confidence,
    reason and review marker still take the new values, and its sheet the
    new fills.

    Two ways write the answers, chosen by how many rows differ in a sample
    of the staged rows (``_changed_share``):

    - When few differ, as in the usual reprocess, one join of the staging
      table with omr_answers keeps the differing rows, with the ctid of
      each stored row, in a temporary table; then one UPDATE writes them
      by ctid. Only the join reads every row, and it can run on parallel
      workers, which an UPDATE cannot. When one answer in ten of 7,109
      sheets changed (1,066,350 rows, embedded PostgreSQL 16, two cores),
      one UPDATE joined with the staging table took 1.2-1.5 s; the join on
      two processes took 0.5-0.65 s, and the UPDATE by ctid 0.4-0.5 s.
    - When nearly all differ, copying every staged row into that temporary
      table costs more than the parallel join saves, and one UPDATE joined
      with the staging table writes them. For every answer of the same
      batch the answers step took 5.9 s with its history, against 6.8 s
      with the join and the UPDATE by ctid (medians of ten alternations).

    Raises:
        ConcurrentChangeError: another connection changed a stored answer
            while it was being written (nothing is written once the caller
            rolls back).
    """
    started = time.perf_counter()
    share = _changed_share(conn, staging, keep_manual, staged)
    sampled = time.perf_counter()
    joined = share >= _JOINED_FROM_SHARE
    if joined:
        way = "one UPDATE joined with the staged rows"
        update, matched = _update_joined(conn, staging, task_id, keep_manual)
        look_for_missing = matched < staged
        found_done = sampled
    else:
        way = "the changed rows found first, then updated by ctid"
        found = _find_changes(conn, staging, keep_manual, staged)
        found_done = time.perf_counter()
        update = _update_answers(conn, task_id, keep_manual, found)
        look_for_missing = found.missing > 0
    inserted = 0
    if look_for_missing:
        inserted = _insert_missing_answers(conn, task_id, staging if joined else None)
    if staging.shared:
        # Not a temporary table: it would outlive the transaction.
        conn.execute(sql.SQL("DROP TABLE {}").format(staging.answers))
    answers_done = time.perf_counter()
    _record_sheet_history(conn, task_id)
    _update_sheets(conn, task_id)
    logger.debug(
        "Task %s: %.0f %% of the sampled rows differ, so %s (%.3f s); found "
        "changed rows in %.2f s; updated %d and inserted %d in %.2f s; sheets "
        "and their history in %.2f s",
        task_id,
        share * 100,
        way,
        sampled - started,
        found_done - sampled,
        update.updated,
        inserted,
        answers_done - found_done,
        time.perf_counter() - answers_done,
    )
    return ChangeCounts(
        update.updated, update.changed, inserted, update.corrections_kept
    )


@dataclass(frozen=True)
class _Found:
    """The rows the staging join found to write.

    Attributes:
        changed_rows: stored rows whose values differ from the staged ones.
        answer_changes: of those, rows whose raw or corrected answer differs.
        missing: staged rows without a stored row.
    """

    changed_rows: int
    answer_changes: int
    missing: int


# Staged rows from which the join is planned for parallel workers whatever
# the planner's estimate: the staging table is never analysed, and the
# default costs kept a join of 1 M rows on one process. A staging table
# below min_parallel_table_scan_size (8 MB by default, about 130,000 rows)
# is still read by one process.
_PARALLEL_FROM_ROWS = 50_000

# Below this many staged rows the answers are written by ctid without a
# sample: it would read a large part of them, to save a few hundredths of a
# second at most (this is a twentieth of the batch measured below).
_SAMPLE_FROM_ROWS = 50_000
# Staged rows the sample reads, in whole pages of the staging table.
_SAMPLE_ROWS = 2_000
# From this share of differing rows in the sample, one UPDATE joined with
# the staging table writes the answers. Medians of alternating runs of the
# answers step for 7,109 sheets (1,066,350 rows, embedded PostgreSQL 16, two
# cores), joined first, then by ctid. One row in ten changed: 3.8 and 2.2 s.
# Half: 4.1 and 4.1 s. Three quarters: 5.0 and 5.0 s. Every row: 5.9 and 6.8 s.
# With the narrower rows of migration 0010, medians of three: every row
# 3.7 and 4.3 s, half 3.1 and 2.8 s. The share where both ways cost the
# same still lies between a half and all rows.
_JOINED_FROM_SHARE = 0.8

# Numbers a counting sequence of ``_update_joined`` keeps in this session's
# memory. Taking a new range loops once per number on the server, so a
# range far larger than a reprocess would cost time, not save it.
_COUNTER_CACHE = 100_000


def _changed_share(
    conn: psycopg.Connection, staging: Staging, keep_manual: bool, staged: int
) -> float:
    """Return the share of a sample of the staged rows that differ, 0 to 1.

    A staged row without a stored row counts as differing. Returns 0 for
    fewer than ``_SAMPLE_FROM_ROWS`` rows, and for an empty sample.
    """
    if staged < _SAMPLE_FROM_ROWS:
        return 0.0
    _, any_differs = _differences(keep_manual, "s")
    percent = min(100.0, 100.0 * _SAMPLE_ROWS / staged)
    # SYSTEM reads whole pages of the staging table, each holding the rows
    # of one or two sheets; REPEATABLE makes a rerun read the same pages.
    # Each sampled row looks its stored row up in the primary key.
    with _local_settings(conn, _BY_CTID):
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE a.ctid IS NULL OR {any_differs}),"
                " count(*)"
                " FROM {staging} s TABLESAMPLE SYSTEM (%s) REPEATABLE (0)"
                " LEFT JOIN omr_answers a"
                "  ON a.sheet_id = s.sheet_id AND a.question = s.question"
            ).format(staging=staging.answers, any_differs=any_differs),
            (percent,),
        ).fetchone()
    if row is None or not row[1]:
        return 0.0
    return int(row[0]) / int(row[1])


def _new_values(keep_manual: bool, staged: str) -> dict[str, sql.Composable]:
    """Return each answer column's new value as an SQL expression.

    The expressions read the stored row as ``a`` and the row with the new
    values under the alias ``staged``.
    """
    keep = sql.Literal(keep_manual)
    alias = sql.Identifier(staged)
    new: dict[str, sql.Composable] = {
        c: sql.SQL("{}.{}").format(alias, sql.Identifier(c)) for c in _ANSWER_VALUES
    }
    new["answer_corrected"] = sql.SQL(
        "CASE WHEN {keep} AND a.corrected_at IS NOT NULL"
        " THEN a.answer_corrected ELSE {alias}.answer_corrected END"
    ).format(keep=keep, alias=alias)
    new["corrected_by"] = sql.SQL("CASE WHEN {keep} THEN a.corrected_by END").format(
        keep=keep
    )
    new["corrected_at"] = sql.SQL("CASE WHEN {keep} THEN a.corrected_at END").format(
        keep=keep
    )
    return new


def _find_changes(
    conn: psycopg.Connection, staging: Staging, keep_manual: bool, staged: int
) -> _Found:
    """Keep in ``reprocess_changes`` the staged rows to update or insert.

    With each, the ctid of its stored row, or NULL when it has none.
    """
    with _local_settings(conn, _join_settings(staging, staged)):
        conn.execute(_changes_statement(staging, keep_manual))
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE stored IS NOT NULL),"
        " count(*) FILTER (WHERE stored IS NOT NULL AND answer_changed),"
        " count(*) FILTER (WHERE stored IS NULL)"
        " FROM reprocess_changes"
    ).fetchone()
    assert row is not None
    return _Found(int(row[0]), int(row[1]), int(row[2]))


def _join_settings(staging: Staging, staged: int) -> dict[str, str]:
    """Return the planner settings for ``_changes_statement`` over ``staged`` rows."""
    if staging.shared and staged >= _PARALLEL_FROM_ROWS:
        return {"parallel_setup_cost": "0", "parallel_tuple_cost": "0.001"}
    return {}


def _assignments(keep_manual: bool, staged: str) -> sql.Composed:
    """Return the SET list of an UPDATE of ``a`` from the staged row ``staged``."""
    new = _new_values(keep_manual, staged)
    return sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c), new[c]) for c in _ANSWER_VALUES
    )


def _differences(keep_manual: bool, staged: str) -> tuple[sql.Composed, sql.Composed]:
    """Return two conditions on a stored row ``a`` and its staged row.

    The first holds when the raw or corrected answer changes, the second
    when any stored value does. ``staged`` is the staged row's alias.
    """
    new = _new_values(keep_manual, staged)
    old: dict[str, sql.Composable] = {
        c: sql.SQL("a.{}").format(sql.Identifier(c)) for c in _ANSWER_VALUES
    }

    def differ(columns: tuple[str, ...]) -> sql.Composed:
        return sql.SQL("ROW({}) IS DISTINCT FROM ROW({})").format(
            sql.SQL(", ").join(old[c] for c in columns),
            sql.SQL(", ").join(new[c] for c in columns),
        )

    return differ(_ANSWER_VALUES[:2]), differ(_ANSWER_VALUES)


def _staged_columns(alias: str) -> sql.Composed:
    """Return the staged columns of the row ``alias``, comma-separated."""
    return sql.SQL(", ").join(
        sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c))
        for c in _STAGED_COLUMNS
    )


def _changes_statement(staging: Staging, keep_manual: bool) -> sql.Composed:
    """Return the statement that fills ``reprocess_changes``."""
    answer_differs, any_differs = _differences(keep_manual, "s")
    return sql.SQL(
        "CREATE TEMP TABLE reprocess_changes ON COMMIT DROP AS"
        " SELECT a.ctid AS stored, {staged_columns},"
        "  {answer_differs} AS answer_changed"
        " FROM {staging} s LEFT JOIN omr_answers a"
        "  ON a.sheet_id = s.sheet_id AND a.question = s.question"
        # A stored row's ctid is never NULL: NULL means no stored row.
        " WHERE a.ctid IS NULL OR {any_differs}"
    ).format(
        staging=staging.answers,
        staged_columns=_staged_columns("s"),
        answer_differs=answer_differs,
        any_differs=any_differs,
    )


@contextmanager
def _local_settings(
    conn: psycopg.Connection, settings: dict[str, str]
) -> Iterator[None]:
    """Set planner settings for the statements inside, then restore them."""
    if not settings:
        yield
        return
    names = list(settings)
    row = conn.execute(
        "SELECT array_agg(current_setting(n)) FROM unnest(%s::text[]) n", (names,)
    ).fetchone()
    assert row is not None
    before: list[str] = row[0]
    _set_local(conn, names, [settings[n] for n in names])
    try:
        yield
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            _set_local(conn, names, before)


def _set_local(conn: psycopg.Connection, names: list[str], values: list[str]) -> None:
    conn.execute(
        "SELECT set_config(n, v, true) FROM unnest(%s::text[], %s::text[]) AS t (n, v)",
        (names, values),
    )


# The UPDATE reads each changed row by its ctid, in a nested loop. The
# planner estimates a hash join of omr_answers with reprocess_changes
# cheaper, although it hashes every stored row. For 106,825 changed rows of
# 1,066,350 the UPDATE took 0.34-0.39 s by ctid, 0.65-0.80 s with the hash.
_BY_CTID = {"enable_hashjoin": "off", "enable_mergejoin": "off"}


def _insert_missing_answers(
    conn: psycopg.Connection, task_id: str, staging: Staging | None
) -> int:
    """Insert the staged answers that have no stored row; return the count.

    A sheet that was never read has no answers; a row deleted by hand is
    missing too. The rows go into the history as inserted, so that undo
    deletes them. They are read from ``reprocess_changes``, or, with
    ``staging``, from the staging table by an anti-join.
    """
    columns = sql.SQL(", ").join(map(sql.Identifier, _STAGED_COLUMNS))
    if staging is None:
        source = sql.SQL(
            "SELECT {} FROM reprocess_changes WHERE stored IS NULL"
        ).format(columns)
    else:
        source = sql.SQL(
            "SELECT {} FROM {} s WHERE NOT EXISTS (SELECT 1 FROM omr_answers a"
            " WHERE a.sheet_id = s.sheet_id AND a.question = s.question)"
        ).format(
            _staged_columns("s"),
            staging.answers,
        )
    row = conn.execute(
        sql.SQL(
            "WITH added AS ("
            "  INSERT INTO omr_answers ({columns}) {source}"
            "  RETURNING sheet_id, question),"
            " recorded AS ("
            "  INSERT INTO answer_history_sheets (task_id, sheet_id, answers)"
            "  SELECT %s, sheet_id, array_agg(ROW(question, '', '', 0, NULL,"
            "   'blank', false, NULL, NULL, true)::answer_snapshot)"
            "  FROM added GROUP BY sheet_id"
            "  RETURNING cardinality(answers) AS n)"
            " SELECT coalesce(sum(n), 0) FROM recorded"
        ).format(columns=columns, source=source),
        (task_id,),
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class _Update:
    """What the UPDATE of the stored answers did.

    Attributes:
        updated: stored rows it rewrote.
        changed: of those, rows whose raw or corrected answer changed.
        corrections_kept: of those, rows that kept a manual correction.
    """

    updated: int
    changed: int
    corrections_kept: int


def _update_answers(
    conn: psycopg.Connection,
    task_id: str,
    keep_manual: bool,
    found: _Found,
) -> _Update:
    """Update the stored rows that ``_find_changes`` found changed.

    The statement trigger of migration 0007 writes the replaced rows to
    the history while ``omr_desktop.history_task`` names this task.

    The sheets are locked, and every writer of OMR Desktop locks a sheet
    before it changes its answers. A writer that does not, and changes a
    row after ``_find_changes`` read it, gives the row a new ctid: the
    UPDATE then misses it (the keys are compared too, in case its old
    place has been reused), updates fewer rows than were found, and
    raises.
    """
    query = sql.SQL(
        "UPDATE omr_answers a SET {assignments}"
        " FROM reprocess_changes c WHERE a.ctid = c.stored"
        # Compared as rows, so that the planner does not look the row up by
        # these keys in the primary key's index instead of by its ctid.
        "   AND ROW(a.sheet_id, a.question) IS NOT DISTINCT FROM"
        "       ROW(c.sheet_id, c.question)"
    ).format(
        assignments=_assignments(keep_manual, "c"),
    )
    _name_history_task(conn, task_id)
    with _local_settings(conn, _BY_CTID):
        updated = conn.execute(query).rowcount
    corrections = _history_written(conn)
    _check_all_updated(found.changed_rows, updated)
    return _Update(
        updated=updated,
        changed=found.answer_changes,
        corrections_kept=corrections if keep_manual else 0,
    )


def _update_joined(
    conn: psycopg.Connection, staging: Staging, task_id: str, keep_manual: bool
) -> tuple[_Update, int]:
    """Update the differing stored answers in one UPDATE joined with the staging table.

    Returns what it did and how many staged rows found a stored row.

    The UPDATE's own condition counts the staged rows that found a stored
    row, those whose raw or corrected answer changes, and those left
    unchanged, by drawing numbers from three temporary sequences. Counting
    them afterwards needs the old and the new values side by side, which
    only this statement has: a join of the history trigger's old rows with
    the new ones took 1.1 s of 5.3 s for a million rows.

    Every writer of OMR Desktop locks a sheet before it changes its
    answers. A writer that does not, and changes or deletes a row after
    this statement read it, makes the UPDATE skip the row or evaluate its
    condition twice. Either way the rows found differing no longer equal
    the rows updated, and the task fails as it does by ctid.

    Raises:
        ConcurrentChangeError: another connection changed or deleted a
            stored answer while the UPDATE ran.
    """
    answer_differs, any_differs = _differences(keep_manual, "s")
    query = sql.SQL(
        "UPDATE omr_answers a SET {assignments} FROM {staging} s"
        " WHERE a.sheet_id = s.sheet_id AND a.question = s.question"
        "   AND CASE WHEN nextval('pg_temp.reprocess_answers_matched') < 0 THEN false"
        "            WHEN {answer_differs}"
        "            THEN nextval('pg_temp.reprocess_answers_changed') > 0"
        "            WHEN {any_differs} THEN true"
        "            ELSE nextval('pg_temp.reprocess_answers_unchanged') < 0 END"
    ).format(
        assignments=_assignments(keep_manual, "s"),
        staging=staging.answers,
        answer_differs=answer_differs,
        any_differs=any_differs,
    )
    # With a cache, nextval hands out numbers from this session's memory
    # and writes the sequence once a range, instead of once a row.
    counters = ("matched", "changed", "unchanged")
    for name in counters:
        conn.execute(
            sql.SQL("CREATE TEMP SEQUENCE {} CACHE {}").format(
                sql.Identifier(f"reprocess_answers_{name}"),
                sql.Literal(_COUNTER_CACHE),
            )
        )
    _name_history_task(conn, task_id)
    updated = conn.execute(query).rowcount
    corrections = _history_written(conn)
    # The next number, less one, is how many the UPDATE drew: the sequence's
    # stored last_value is the end of the cached range.
    row = conn.execute(
        "SELECT nextval('pg_temp.reprocess_answers_matched') - 1,"
        " nextval('pg_temp.reprocess_answers_changed') - 1,"
        " nextval('pg_temp.reprocess_answers_unchanged') - 1"
    ).fetchone()
    assert row is not None
    matched, changed, unchanged = (int(n) for n in row)
    conn.execute(
        sql.SQL("DROP SEQUENCE {}").format(
            sql.SQL(", ").join(
                sql.Identifier("pg_temp", f"reprocess_answers_{name}")
                for name in counters
            )
        )
    )
    _check_all_updated(matched - unchanged, updated)
    update = _Update(
        updated=updated,
        changed=changed,
        corrections_kept=corrections if keep_manual else 0,
    )
    return update, matched


def _check_all_updated(found: int, updated: int) -> None:
    """Raise unless the UPDATE wrote as many rows as were found differing.

    Raises:
        ConcurrentChangeError: the counts differ.
    """
    if updated != found:
        raise ConcurrentChangeError(
            f"{abs(found - updated)} of the {found} answers to update were "
            "changed by another connection during the reprocess, without "
            "locking their sheets, so nothing was written. Start the "
            "reprocess again."
        )


def _name_history_task(conn: psycopg.Connection, task_id: str) -> None:
    """Have the history trigger of migration 0007 record the next UPDATE."""
    conn.execute("SELECT set_config('omr_desktop.history_task', %s, true)", (task_id,))


def _history_written(conn: psycopg.Connection) -> int:
    """Stop recording history; return how many replaced rows had a correction.

    Raises:
        RuntimeError: the trigger did not run (the schema is out of date).
    """
    row = conn.execute(
        "SELECT current_setting('omr_desktop.history_counts', true),"
        " set_config('omr_desktop.history_task', '', true)"
    ).fetchone()
    if row is None or not (row[0] or "").isdigit():
        raise RuntimeError(
            "The answer history trigger did not run, so nothing was written. "
            "Run 'omr-desktop db migrate' to bring the database schema up to date."
        )
    return int(row[0])


def _record_sheet_history(conn: psycopg.Connection, task_id: str) -> None:
    # Fills the task leaves as they were are not copied (fills_kept). Staged
    # fills are NULL when their digest matched the stored one.
    conn.execute(
        "INSERT INTO sheet_history (task_id, sheet_id, status, error,"
        " last_profile_id, processed_at, measurement_hash, identifiers, score,"
        " fills, fills_kept)"
        " SELECT %s, s.id, s.status, s.error, s.last_profile_id, s.processed_at,"
        "  s.measurement_hash, s.identifiers, s.score,"
        "  CASE WHEN k.kept THEN NULL ELSE s.fills END, k.kept"
        " FROM sheets s JOIN reprocess_sheets r ON r.sheet_id = s.id"
        " CROSS JOIN LATERAL (SELECT CASE WHEN r.fills IS NULL THEN true"
        "  ELSE s.fills IS NOT DISTINCT FROM r.fills END AS kept) k",
        (task_id,),
    )


_UPDATE_SHEETS = (
    "UPDATE sheets s SET status = 'processed', error = NULL,"
    " last_profile_id = t.profile_id, processed_at = now(),"
    " measurement_hash = r.measurement_hash, identifiers = r.identifiers{fills}"
    " FROM reprocess_sheets r, reprocess_tasks t"
    " WHERE s.id = r.sheet_id AND t.task_id = %s AND r.fills IS {null}"
)


def _update_sheets(conn: psycopg.Connection, task_id: str) -> None:
    # Sheets whose fills matched their digest: the fills stay out of the SET
    # list, so the digest trigger does not run for them.
    conn.execute(_UPDATE_SHEETS.format(fills="", null="NULL"), (task_id,))
    fills = (
        # The old value, when equal, keeps its stored copy: no rewrite.
        ", fills = CASE WHEN s.fills IS NOT DISTINCT FROM r.fills"
        "  THEN s.fills ELSE r.fills END, fills_digest = r.fills_digest"
    )
    conn.execute(_UPDATE_SHEETS.format(fills=fills, null="NOT NULL"), (task_id,))


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

"""The cluster's Celery tasks: coordinate, detect chunks, write in one transaction.

``reprocess_omr_sheet_task(task_id, sheet_ids, profile_id)`` is the task
the web deployment sends. It runs on a worker and:

1. creates the task's row if the sender did not, marks it STARTED, checks
   the profile and the sheets (Loading Sheets);
2. replaces itself with a chord: one ``detect_chunk`` per ``chunk_sheets``
   sheets, detected in parallel on any worker (Processing Sheets), then
   ``write_results``, which reads every chunk's readings from Redis and
   runs the local pipeline's ``run_reprocess`` on them: lock NOWAIT, COPY,
   history, ``REPROCESS_SHEET_SURGICAL`` and the SUCCESS row in one
   transaction.

Because the chord is frozen with the coordinator's id, the Celery result of
``task_id`` is the final step's: PENDING while queued, STARTED while any
part runs, then SUCCESS with the task's result or FAILURE.

A chunk detects but writes nothing, so the database holds the old rows
until the final step commits. A chunk that cannot finish (a lost database,
a crash on every delivery) marks the task FAILURE and publishes the error
event; the final step then writes nothing.

Every task is acknowledged late: the chunk of a worker that dies is
delivered again after the visibility timeout, and its sheets are counted
once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from celery import Task, chord, shared_task

from omr_desktop import config
from omr_desktop.cluster.chunk_codec import (
    ChunkFormatError,
    pack_readings,
    unpack_readings,
)
from omr_desktop.cluster.redis_events import RedisEvents, RedisSink
from omr_desktop.cluster.settings import VISIBILITY_VARIABLE, ClusterConfigError
from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.db.migrate import check_schema
from omr_desktop.db.reprocess_store import SheetsBusyError
from omr_desktop.engine import SheetReading
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.events import ProgressEvent
from omr_desktop.pipeline.reprocess import (
    PrecomputedDetections,
    ReprocessError,
    ReprocessRequest,
    SheetJob,
    TaskCancelledError,
    detect_reading,
    load_jobs,
    load_profile_settings,
    run_reprocess,
)
from omr_desktop.plural import counted

logger = logging.getLogger(__name__)

TASK_NAME = "reprocess_omr_sheet_task"
CHUNK_TASK_NAME = "omr_desktop.detect_chunk"
FINAL_TASK_NAME = "omr_desktop.write_results"

# Sheets per chunk: about 1 s of detection on one core of the benchmark
# machine (60 sheets/s), so a chunk lost with its worker costs little to
# redo, and a 7,109-sheet task makes 112 messages, not 7,109.
DEFAULT_CHUNK_SHEETS = 64

# A chunk delivered this many times without finishing fails the task,
# because redelivering it for ever would never end the task. Either its
# workers keep dying on it (out of memory, say), or it runs longer than
# the visibility timeout, which delivers it again while it still runs.
MAX_CHUNK_DELIVERIES = 3

# The final step waits for late chunk results (a chunk delivered twice can
# complete the chord before a third one has stored its result) this many
# times, RESULT_WAIT_S apart, before it fails the task.
RESULT_WAITS = 150
RESULT_WAIT_S = 2.0


class ClusterTaskError(RuntimeError):
    """A cluster task failed; the task's row and error event record the reason."""


# -- Per-process resources -------------------------------------------------

_resources_lock = threading.Lock()
_database: Database | None = None
_events: dict[str, RedisEvents] = {}


def worker_database() -> Database:
    """Return this worker process's Database, opened on first use.

    Raises:
        ClusterConfigError: the database is the embedded one, which other
            machines cannot reach.
    """
    global _database
    with _resources_lock:
        if _database is None:
            _database = open_shared_database()
        return _database


def open_shared_database() -> Database:
    """Open the shared PostgreSQL of ``OMR_DATABASE_URL`` and check its schema.

    Raises:
        ClusterConfigError: no external database is configured.
        omr_desktop.db.database.DatabaseUnavailableError: it cannot be reached.
        omr_desktop.db.migrate.MigrationError: its schema is not this
            version's.
    """
    choice = config.database_choice()
    if choice.embedded:
        raise ClusterConfigError(
            "Cluster workers need a shared PostgreSQL: set OMR_DATABASE_URL "
            "to the database the application uses; the embedded database "
            "is reachable from this machine only."
        )
    database = Database(choice)
    # Workers never migrate: the application that owns the schema does.
    database.open(apply_migrations=False)
    with database.connect() as conn:
        check_schema(conn)
    return database


def worker_events(task: Task) -> RedisEvents:
    """Return this process's RedisEvents on the task's broker."""
    url = str(task.app.conf.broker_url)
    with _resources_lock:
        events = _events.get(url)
        if events is None:
            events = _events[url] = RedisEvents.from_url(url)
        return events


# -- Events ----------------------------------------------------------------


def _progress(
    task_id: str,
    stage: str,
    message: str,
    percentage: float,
    processed: int,
    total: int,
    failed: int = 0,
) -> ProgressEvent:
    """Build a progress event; RedisSink and publish set its elapsed time."""
    return ProgressEvent(
        task_id=task_id,
        event=ev.PROGRESS,
        stage=stage,
        message=message,
        progress_percentage=round(percentage, 1),
        overall_percentage=ev.overall_percentage(stage, percentage),
        processed=processed,
        total=total,
        failed=failed,
        timestamp=datetime.now(UTC).isoformat(timespec="milliseconds"),
        elapsed_s=0.0,
        status=task_store.STARTED,
    )


def fail_task(
    database: Database, sink: RedisSink, task_id: str, reason: str, total: int
) -> None:
    """Mark the task FAILURE and publish its error event, unless it had ended."""
    with database.connect(autocommit=True) as conn:
        failed_now = task_store.fail_if_unfinished(conn, task_id, reason, {})
    if failed_now:
        logger.warning("Task %s failed: %s", task_id, reason)
        sink.report(ev.error_event(task_id, reason, total, sink.last_event))


def failure_reason(exc: BaseException) -> str:
    """Return the FAILURE reason of an exception, in the local pipeline's words."""
    if isinstance(exc, TaskCancelledError):
        return "cancelled"
    if isinstance(exc, ReprocessError | SheetsBusyError | ClusterTaskError):
        return str(exc)
    if isinstance(exc, psycopg.Error):
        text = str(exc).strip()
        return f"Database error: {text.splitlines()[0] if text else type(exc).__name__}"
    return f"Internal error: {type(exc).__name__}: {exc}"


# -- Arguments -------------------------------------------------------------


def check_arguments(
    task_id: object, sheet_ids: object, profile_id: object, chunk_sheets: object
) -> tuple[str, tuple[int, ...], int]:
    """Validate the task's arguments; return them normalised.

    Raises:
        ClusterTaskError: a value of the wrong type or range, named.
    """
    try:
        task_uuid = str(uuid.UUID(str(task_id)))
    except ValueError:
        raise ClusterTaskError(
            f"task_id {task_id!r} is not a UUID; send the task id the trigger returned."
        ) from None
    if not isinstance(sheet_ids, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in sheet_ids
    ):
        raise ClusterTaskError(
            f"sheet_ids must be a list of integers, not {sheet_ids!r:.80}."
        )
    if not sheet_ids:
        raise ClusterTaskError("sheet_ids is empty: give at least one sheet id.")
    if not isinstance(profile_id, int) or isinstance(profile_id, bool):
        raise ClusterTaskError(f"profile_id must be an integer, not {profile_id!r}.")
    if not isinstance(chunk_sheets, int) or chunk_sheets < 1:
        raise ClusterTaskError(
            f"chunk_sheets must be a positive integer, not {chunk_sheets!r}."
        )
    return task_uuid, tuple(dict.fromkeys(sheet_ids)), profile_id


def split(sheet_ids: Sequence[int], size: int) -> list[list[int]]:
    """Cut ``sheet_ids`` into lists of ``size`` (the last may be shorter)."""
    return [list(sheet_ids[i : i + size]) for i in range(0, len(sheet_ids), size)]


# -- The coordinator -------------------------------------------------------


@shared_task(bind=True, name=TASK_NAME)
def reprocess_omr_sheet_task(
    self: Task,
    task_id: str,
    sheet_ids: list[int],
    profile_id: int,
    keep_manual: bool = True,
    redecide: bool = False,
    chunk_sheets: int = DEFAULT_CHUNK_SHEETS,
) -> Any:
    """Reprocess ``sheet_ids`` with ``profile_id`` on the cluster's workers.

    Replaces itself with the chunks' chord, so its result is the final
    step's: the task's result dictionary, as the status endpoint returns.

    Raises:
        ClusterTaskError: invalid arguments, an unknown profile or sheets.
    """
    task_id, ids, profile_id = check_arguments(
        task_id, sheet_ids, profile_id, chunk_sheets
    )
    request = ReprocessRequest(ids, profile_id, keep_manual, redecide)
    database = worker_database()
    events = worker_events(self)
    _check_profile_exists(database, events, task_id, profile_id, len(ids))
    row = _start(database, events, task_id, request)
    if row.status == task_store.SUCCESS:
        return row.result
    if row.status == task_store.FAILURE:
        raise ClusterTaskError(row.error or "failed")
    sink = RedisSink(events, task_id)
    total = len(ids)
    sheets = counted(total, "sheet")
    sink.report(_progress(task_id, ev.LOADING_SHEETS, f"Loading {sheets}", 0, 0, total))
    try:
        with database.connect() as conn:
            settings = load_profile_settings(conn, profile_id)
            jobs = load_jobs(conn, request, settings)
    except (ReprocessError, psycopg.Error) as exc:
        fail_task(database, sink, task_id, failure_reason(exc), total)
        raise ClusterTaskError(failure_reason(exc)) from exc
    chunks = split([job.sheet.id for job in jobs], chunk_sheets)
    sink.report(
        _progress(task_id, ev.LOADING_SHEETS, f"Loaded {sheets}", 100, 0, total)
    )
    mode = "re-deciding stored fills" if redecide else "detecting"
    count = counted(len(chunks), "chunk")
    message = f"Dispatching {sheets} in {count} to the workers"
    sink.report(
        _progress(task_id, ev.PROCESSING_SHEETS, f"{message} ({mode})", 0, 0, total)
    )
    header = [
        detect_chunk.s(task_id, index, chunk, profile_id, redecide, total)
        for index, chunk in enumerate(chunks)
    ]
    body = write_results.si(
        task_id, list(ids), profile_id, keep_manual, redecide, len(chunks)
    )
    logger.info("Task %s: %d sheets in %s dispatched", task_id, total, count)
    return self.replace(chord(header, body))


def _check_profile_exists(
    database: Database,
    events: RedisEvents,
    task_id: str,
    profile_id: int,
    total: int,
) -> None:
    """Publish the error event and raise unless the profile exists.

    The task's row references ``profiles``, so no row can record this
    failure: only the Redis events and the Celery result do.

    Raises:
        ClusterTaskError: the profile does not exist.
    """
    with database.connect() as conn:
        found = conn.execute(
            "SELECT 1 FROM profiles WHERE id = %s", (profile_id,)
        ).fetchone()
    if found is not None:
        return
    reason = (
        f"Profile {profile_id} does not exist: send the id of a row of the "
        "profiles table (GET /profiles lists them)."
    )
    logger.warning("Task %s failed: %s", task_id, reason)
    RedisSink(events, task_id).report(ev.error_event(task_id, reason, total, None))
    raise ClusterTaskError(reason)


def _start(
    database: Database,
    events: RedisEvents,
    task_id: str,
    request: ReprocessRequest,
) -> task_store.TaskRow:
    """Create the row if the sender did not, mark it STARTED; return the row."""
    with database.connect(autocommit=True) as conn:
        task_store.create_task(
            conn,
            task_id,
            request.profile_id,
            list(request.sheet_ids),
            request.options(),
            (task_store.CLUSTER_RUNNER, None),
            if_missing=True,
        )
        row = task_store.get_task(conn, task_id)
        assert row is not None
        if row.status == task_store.PENDING:
            task_store.mark_started(conn, task_id)
    events.mark_started(task_id)
    return row


# -- Chunks ----------------------------------------------------------------


@shared_task(bind=True, name=CHUNK_TASK_NAME)
def detect_chunk(
    self: Task,
    task_id: str,
    chunk: int,
    sheet_ids: list[int],
    profile_id: int,
    redecide: bool,
    total: int,
) -> dict[str, int]:
    """Detect one chunk's sheets and store their readings in Redis.

    Returns the chunk's index and its sheet and failure counts. Writes
    nothing to the database.

    Raises:
        ClusterTaskError: the chunk cannot be detected; the task is FAILURE.
    """
    events = worker_events(self)
    sink = RedisSink(events, task_id)
    database = worker_database()
    stored = events.stored_chunk(task_id, chunk)
    if stored is not None:
        # Another delivery finished this chunk. Copies of a chunk that ran
        # longer than the visibility timeout stay queued after it ends.
        logger.info("Task %s: chunk %d already detected, skipped", task_id, chunk)
        try:
            return _chunk_summary(chunk, unpack_readings(stored))
        except ChunkFormatError as exc:
            # Stored by a worker of another version, or damaged in Redis.
            reason = f"The stored result of chunk {chunk} is unreadable: {exc}"
            fail_task(database, sink, task_id, reason, total)
            raise ClusterTaskError(reason) from exc
    deliveries = events.count_attempt(task_id, chunk)
    if deliveries > MAX_CHUNK_DELIVERIES:
        reason = (
            f"Chunk {chunk} (sheets {sheet_ids[0]} to {sheet_ids[-1]}) was "
            f"delivered {deliveries - 1} times and never finished: it ran "
            "longer than the visibility timeout, or its workers stopped while "
            f"detecting it. Raise {VISIBILITY_VARIABLE} above the longest "
            "chunk's time, or check the workers' logs."
        )
        fail_task(database, sink, task_id, reason, total)
        raise ClusterTaskError(reason)
    try:
        readings = _detect(
            database, events, sink, task_id, sheet_ids, profile_id, redecide, total
        )
    except ClusterTaskError:
        raise
    except TaskCancelledError as exc:
        logger.info("Task %s: chunk %d stopped: the task ended", task_id, chunk)
        fail_task(database, sink, task_id, failure_reason(exc), total)
        raise ClusterTaskError(failure_reason(exc)) from exc
    except Exception as exc:
        logger.exception("Task %s: chunk %d failed", task_id, chunk)
        fail_task(database, sink, task_id, failure_reason(exc), total)
        raise ClusterTaskError(failure_reason(exc)) from exc
    events.store_chunk(task_id, chunk, pack_readings(readings))
    return _chunk_summary(chunk, readings)


def _chunk_summary(
    chunk: int, readings: dict[int, SheetReading | str]
) -> dict[str, int]:
    failed = sum(isinstance(r, str) for r in readings.values())
    return {"chunk": chunk, "sheets": len(readings), "failed": failed}


def _detect(
    database: Database,
    events: RedisEvents,
    sink: RedisSink,
    task_id: str,
    sheet_ids: list[int],
    profile_id: int,
    redecide: bool,
    total: int,
) -> dict[int, SheetReading | str]:
    request = ReprocessRequest(tuple(sheet_ids), profile_id, redecide=redecide)
    with database.connect() as conn:
        settings = load_profile_settings(conn, profile_id)
        jobs = load_jobs(conn, request, settings)
    readings: dict[int, SheetReading | str] = {}
    for job in jobs:
        if sink.cancelled:
            raise TaskCancelledError()
        # Re-deciding reads stored fills, not images, so any path will do.
        path_failure = None if redecide else _relative_path_failure(job)
        reading = path_failure or detect_reading(job, settings, redecide)
        readings[job.sheet.id] = reading
        processed, failed, due = events.sheet_done(
            task_id, job.sheet.id, isinstance(reading, str), total
        )
        if due:
            event = _progress(
                task_id,
                ev.PROCESSING_SHEETS,
                ev.processing_message(processed, total),
                100.0 * processed / max(total, 1),
                processed,
                total,
                failed,
            )
            sink.report_counted(event, processed)
    return readings


def _relative_path_failure(job: SheetJob) -> str | None:
    """Return why the sheet fails if its image path is relative, else None.

    A worker would resolve a relative path against its own working
    directory, which differs between workers and from the importer's. As
    in the local pipeline, an image that cannot be read fails its sheet
    only; the application's ClusterEngine rejects such tasks before
    sending them, but a task sent straight to the broker reaches here.
    """
    path = job.sheet.image_path
    if Path(path).is_absolute():
        return None
    logger.warning(
        "Sheet %d not reprocessed: relative image path %r", job.sheet.id, path
    )
    return (
        f"Image path {path!r} is relative: cluster mode needs absolute image "
        "paths that every worker can read, such as a shared folder mounted at "
        "the same path on every worker. Re-import the sheet with an absolute "
        "path, or reprocess it with the local engine."
    )


# -- The final step --------------------------------------------------------


@shared_task(bind=True, name=FINAL_TASK_NAME, max_retries=RESULT_WAITS)
def write_results(
    self: Task,
    task_id: str,
    sheet_ids: list[int],
    profile_id: int,
    keep_manual: bool,
    redecide: bool,
    chunks: int,
) -> dict[str, Any]:
    """Write every chunk's readings in one transaction and return the result.

    Raises:
        ClusterTaskError: the task failed; its row is FAILURE and the
            database's answers are as they were.
    """
    events = worker_events(self)
    database = worker_database()
    sink = RedisSink(events, task_id)
    total = len(sheet_ids)
    with _task_lock(database, task_id):
        row = _task_row(database, task_id)
        if row.status == task_store.SUCCESS:
            # Delivered again after it committed, so the stored result is kept.
            return row.result
        if row.status == task_store.FAILURE:
            raise ClusterTaskError(row.error or "failed")
        readings = _chunk_readings(self, database, events, sink, task_id, chunks, total)
        request = ReprocessRequest(tuple(sheet_ids), profile_id, keep_manual, redecide)
        started_wall = events.started_at(task_id) or time.time()
        started = time.monotonic() - (time.time() - started_wall)
        try:
            result = run_reprocess(
                database,
                task_id,
                request,
                PrecomputedDetections(readings),
                sink,
                started=started,
            )
        except Exception as exc:
            if not isinstance(
                exc,
                ReprocessError | SheetsBusyError | TaskCancelledError | psycopg.Error,
            ):
                logger.exception("Task %s: the final step failed", task_id)
            fail_task(database, sink, task_id, failure_reason(exc), total)
            raise ClusterTaskError(failure_reason(exc)) from exc
    events.delete_chunks(task_id, chunks)
    logger.info(
        "Task %s succeeded: %d sheets, %d answers changed in %.1f s",
        task_id,
        result["sheets_processed"],
        result["answers_changed"],
        result["duration_s"],
    )
    return result


def _task_row(database: Database, task_id: str) -> task_store.TaskRow:
    with database.connect() as conn:
        row = task_store.get_task(conn, task_id)
    if row is None:
        raise ClusterTaskError(f"Task {task_id} has no row in the database.")
    return row


def _chunk_readings(
    task: Task,
    database: Database,
    events: RedisEvents,
    sink: RedisSink,
    task_id: str,
    chunks: int,
    total: int,
) -> dict[int, SheetReading | str]:
    stored = events.load_chunks(task_id, chunks)
    missing = [n for n, data in enumerate(stored) if data is None]
    if missing:
        if task.request.retries < RESULT_WAITS:
            raise task.retry(countdown=RESULT_WAIT_S)
        reason = f"The results of chunks {missing[:10]} never reached Redis."
        fail_task(database, sink, task_id, reason, total)
        raise ClusterTaskError(reason)
    readings: dict[int, SheetReading | str] = {}
    try:
        for data in stored:
            assert data is not None
            readings.update(unpack_readings(data))
    except ChunkFormatError as exc:
        reason = f"A chunk result is unreadable: {exc}"
        fail_task(database, sink, task_id, reason, total)
        raise ClusterTaskError(reason) from exc
    return readings


@contextlib.contextmanager
def _task_lock(database: Database, task_id: str) -> Iterator[None]:
    """Hold a session advisory lock on the task while the block runs.

    Two deliveries of the final step (after a visibility timeout) run one
    after the other: the second finds the row SUCCESS and writes nothing.
    The lock ends with its connection, also when the worker dies.
    """
    with database.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (task_id,))
        try:
            yield
        finally:
            conn.execute(
                "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (task_id,)
            )

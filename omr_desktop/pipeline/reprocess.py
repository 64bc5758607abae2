"""Run one reprocess task: detect the sheets again and replace their answers.

The whole task is one transaction on one connection (the writer): lock the
sheets, stream every sheet's rows into staging tables by COPY while the
executor detects the next ones, record history, update the changed answers,
rescore with ``REPROCESS_SHEET_SURGICAL``, mark the task SUCCESS, commit.
If any step fails, or the task is cancelled, the transaction rolls back and
the database holds exactly what it held before. The ``complete`` event is
published only after the commit.

No Qt here: the GUI, the CLI and the HTTP server pass in a detection source
and a progress sink. ``LocalDetection`` detects on an executor they own (a
QThreadPool or a thread pool) while the writer streams the rows; the
cluster's final step passes ``PrecomputedDetections``, the readings its
chunk workers made before the transaction began.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Executor, Future, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import psycopg

from omr_desktop.db import reprocess_store, task_store
from omr_desktop.db.database import Database
from omr_desktop.db.migrate import SchemaTooNewError, check_not_newer
from omr_desktop.db.reprocess_store import SheetRow
from omr_desktop.engine import (
    SheetImageError,
    SheetReading,
    Template,
    decide,
    measurement_hash,
    read_sheet,
)
from omr_desktop.engine.image import load_sheet_for_measuring
from omr_desktop.engine.profile import ProfileSettings, parse_profile_settings
from omr_desktop.engine.reader import read_loaded_sheet
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.copy_rows import (
    binary_copy,
    encode_answer_columns,
    encode_sheet,
)
from omr_desktop.pipeline.events import ProgressEvent, ProgressSink
from omr_desktop.plural import counted, id_list, noun

logger = logging.getLogger(__name__)

# At most this many progress events a second while sheets are processed,
# whatever the sheet count: a 7,109-sheet task sends about 700, not 7,109.
PROCESSING_EVENTS_PER_S = 10

# Sheets whose COPY rows are sent in one go. 64 demo sheets of 150 answers
# are about 1.6 MB of binary COPY data: small enough to keep memory flat,
# large enough that the two COPY round trips per chunk do not matter.
CHUNK_SHEETS = 64

# Detections in flight per worker thread, so that no thread waits while the
# writer sends a chunk, without queueing the whole selection. The server
# spent 0.4-0.5 ms of CPU a sheet on the COPY during Processing Sheets,
# about 30 ms a chunk. It shares the 2 cores with both detection threads,
# so a chunk can take several times that (an estimate). 16 sheets in
# flight covered about 110 ms at 150 sheets/s, 64 cover about 400 ms.
IN_FLIGHT_PER_WORKER = 32

# Sheets a detection thread takes at a time. It decodes all of them, then
# measures and decides each, so the decoder's tables and the template's
# index arrays stay in the CPU caches between sheets, and the writer waits
# on one future per group instead of one per sheet. On a 2-core VM
# (benchmarks/reprocess.py --alternate 8, 300 sheets, one run each) the
# detection threads used 1.42 times the CPU of the decode pass one sheet
# at a time and 1.37 times in groups of 4. The pages of a group wait in memory
# (1 MB each at half size), so groups stay small.
SHEETS_PER_GROUP = 4


# Errors that fail one sheet and not its task: an unreadable or corrupt
# image, an image size that does not fit the template, a file that cannot
# be read. SheetImageError is a ValueError, listed for the reader.
_SHEET_ERRORS = (SheetImageError, ValueError, OSError)


class TaskCancelledError(RuntimeError):
    """The task was cancelled between sheets; nothing was written."""

    def __init__(self) -> None:
        super().__init__("cancelled")


class ReprocessError(RuntimeError):
    """The task cannot finish; the message is the FAILURE reason."""


@dataclass(frozen=True)
class ReprocessRequest:
    """What to reprocess and how.

    Attributes:
        keep_manual: keep the ``answer_corrected`` of answers an editor
            corrected by hand (their new raw answer and fills are stored).
        redecide: decide again from the stored fills, without reading any
            image; only for a profile that measures like the stored fills.
    """

    sheet_ids: tuple[int, ...]
    profile_id: int
    keep_manual: bool = True
    redecide: bool = False

    def options(self) -> dict[str, Any]:
        return {"keep_manual": self.keep_manual, "redecide": self.redecide}


@dataclass
class _Run:
    """The running task's counters and its way to report."""

    task_id: str
    request: ReprocessRequest
    sink: ProgressSink
    started: float = field(default_factory=time.monotonic)
    # Set when the sheets were loaded and detected before this run, by
    # workers that sent the Loading Sheets and per-sheet progress events.
    detected_elsewhere: bool = False
    total: int = 0
    processed: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    stage_times: dict[str, float] = field(default_factory=dict)
    answers_written: int = 0
    copy_bytes: int = 0
    db_seconds: float = 0.0
    staging: reprocess_store.Staging | None = None
    _last_emit: float = 0.0

    def emit(
        self,
        stage: str,
        message: str,
        percentage: float,
        event: str = ev.PROGRESS,
        status: str = task_store.STARTED,
        result: dict[str, Any] | None = None,
    ) -> None:
        now = time.monotonic()
        self._last_emit = now
        self.sink.report(
            ProgressEvent(
                task_id=self.task_id,
                event=event,
                stage=stage,
                message=message,
                progress_percentage=round(percentage, 1),
                overall_percentage=ev.overall_percentage(stage, percentage),
                processed=self.processed,
                total=self.total,
                failed=len(self.failed),
                timestamp=datetime.now(UTC).isoformat(timespec="milliseconds"),
                elapsed_s=round(now - self.started, 3),
                status=status,
                result=result,
            )
        )

    def due(self) -> bool:
        return time.monotonic() - self._last_emit >= 1.0 / PROCESSING_EVENTS_PER_S

    def check_cancelled(self) -> None:
        if self.sink.cancelled:
            raise TaskCancelledError()

    def result(
        self, counts: reprocess_store.ChangeCounts | None, sheets_score_changed: int
    ) -> dict[str, Any]:
        return {
            "sheets_total": self.total,
            "sheets_processed": self.processed - len(self.failed),
            "sheets_failed": len(self.failed),
            "failed_sheets": sorted(self.failed, key=lambda f: f["sheet_id"]),
            "answers_written": self.answers_written,
            "answers_changed": counts.answers_changed if counts else 0,
            "answers_updated": counts.answers_updated if counts else 0,
            "answers_inserted": counts.answers_inserted if counts else 0,
            "manual_corrections_kept": counts.manual_kept if counts else 0,
            "sheets_score_changed": sheets_score_changed,
            "duration_s": round(time.monotonic() - self.started, 3),
            "database_s": round(self.db_seconds, 3),
            "stage_s": {k: round(v, 3) for k, v in self.stage_times.items()},
            "profile_id": self.request.profile_id,
        }


@dataclass(frozen=True)
class SheetJob:
    """One sheet to detect, with the template it was scanned on."""

    sheet: SheetRow
    template: Template


@dataclass(frozen=True)
class EncodedSheet:
    """One sheet's COPY rows, encoded on the thread that detected it."""

    sheet_id: int
    answers: bytes
    sheet: bytes
    answer_count: int


# What a detection gives the writer: the sheet's COPY rows, or why it failed.
Outcome = EncodedSheet | str


class DetectionSource(Protocol):
    """The source of each sheet's detection for the writer, in any order."""

    @property
    def detected_elsewhere(self) -> bool:
        """True when the detections were made, and reported, before the run."""
        ...

    def dispatch_message(self, sheets: int, mode: str) -> str | None:
        """Return the Processing Sheets start message; None to send none."""
        ...

    def outcomes(
        self,
        jobs: list[SheetJob],
        settings: ProfileSettings,
        redecide: bool,
        check_cancelled: Callable[[], None],
    ) -> Iterator[tuple[SheetJob, Outcome]]: ...


class LocalDetection:
    """Detect on ``executor`` while the writer streams the finished sheets.

    Args:
        workers: threads of ``executor``, which sizes the in-flight window.
    """

    detected_elsewhere = False

    def __init__(self, executor: Executor, workers: int) -> None:
        self.executor = executor
        self.workers = workers

    def dispatch_message(self, sheets: int, mode: str) -> str | None:
        return (
            f"Dispatching {counted(sheets, 'task')} to "
            f"{counted(self.workers, 'worker')} ({mode})"
        )

    def outcomes(
        self,
        jobs: list[SheetJob],
        settings: ProfileSettings,
        redecide: bool,
        check_cancelled: Callable[[], None],
    ) -> Iterator[tuple[SheetJob, Outcome]]:
        work = _redecide_group if redecide else _detect_group
        return _as_completed(
            jobs, work, settings, self.executor, self.workers, check_cancelled
        )


class PrecomputedDetections:
    """Readings made before the run, such as the cluster's chunk results.

    Args:
        readings: sheet id to its reading, or to the reason it failed.
            A sheet missing from it fails with "not detected".
    """

    detected_elsewhere = True

    def __init__(self, readings: Mapping[int, SheetReading | str]) -> None:
        self.readings = readings

    def dispatch_message(self, sheets: int, mode: str) -> str | None:
        # The workers announced the dispatch when they started.
        return None

    def outcomes(
        self,
        jobs: list[SheetJob],
        settings: ProfileSettings,
        redecide: bool,
        check_cancelled: Callable[[], None],
    ) -> Iterator[tuple[SheetJob, Outcome]]:
        for job in jobs:
            check_cancelled()
            reading = self.readings.get(job.sheet.id, "not detected")
            if isinstance(reading, str):
                yield job, reading
            else:
                yield job, _encode(job.sheet, reading)


def run_reprocess(
    database: Database,
    task_id: str,
    request: ReprocessRequest,
    source: DetectionSource,
    sink: ProgressSink,
    *,
    started: float | None = None,
) -> dict[str, Any]:
    """Run the task to the commit and return its result.

    Args:
        started: ``time.monotonic()`` at the task's start, when it began
            before this call (elsewhere); elapsed times count from it.

    Raises:
        TaskCancelledError: cancelled between sheets (nothing written).
        ReprocessError: no sheet could be read, or the profile cannot be used.
        psycopg.Error: a database step failed (nothing written).
    """
    run = _Run(
        task_id,
        request,
        sink,
        started=time.monotonic() if started is None else started,
        total=len(request.sheet_ids),
        detected_elsewhere=source.detected_elsewhere,
    )
    with database.connect() as conn:
        # The workers encode the COPY rows' texts as UTF-8; the server
        # converts them to the database's own encoding, and fails the task
        # where it cannot.
        conn.execute("SET client_encoding TO 'UTF8'")
        # The staging tables of a 7,109-sheet task hold about 1 M rows
        # (around 150 MB). With the default 8 MB of temp_buffers they spill
        # to temporary files; this must be set before the session's first
        # temporary table.
        conn.execute("SET temp_buffers TO '512MB'")
        # The hash table of the staging join over 1 M stored answers takes
        # about 170 MB: with 64 MB it was split into batches written to
        # temporary files (100 MB of them for 7,109 sheets).
        conn.execute("SET work_mem TO '256MB'")
        conn.commit()
        with conn.transaction():
            jobs, settings = _load_sheets(conn, run)
            run.staging = reprocess_store.create_staging(conn)
            _process_sheets(conn, run, jobs, settings, source)
            _collect_results(run)
            counts = _load_to_database(conn, run)
            score_changes = _recalculate_scores(conn, run)
            result = run.result(counts, score_changes)
            if not task_store.mark_succeeded(conn, task_id, result):
                # Raising here rolls the whole write back.
                raise ReprocessError(_ended_elsewhere_reason(conn, task_id))
            commit_started = time.monotonic()
        run.db_seconds += time.monotonic() - commit_started
    result["database_s"] = round(run.db_seconds, 3)
    run.emit(
        ev.COMPLETED,
        _completed_message(result),
        100,
        event=ev.COMPLETE,
        status=task_store.SUCCESS,
        result=result,
    )
    return result


def _ended_elsewhere_reason(conn: psycopg.Connection, task_id: str) -> str:
    row = task_store.get_task(conn, task_id)
    status = row.status if row is not None else "deleted"
    error = row.error if row is not None and row.error else status
    return (
        f"Task {task_id} ended ({error}) while its results were being "
        "written, so nothing was written."
    )


def _completed_message(result: dict[str, Any]) -> str:
    failed = result["sheets_failed"]
    return (
        f"Reprocess completed: {counted(result['sheets_processed'], 'sheet')}, "
        f"{counted(result['answers_changed'], 'answer')} changed, "
        f"{counted(result['sheets_score_changed'], 'score')} changed"
        + (f", {counted(failed, 'sheet')} failed" if failed else "")
    )


# -- Loading Sheets ------------------------------------------------------------


def _load_sheets(
    conn: psycopg.Connection, run: _Run
) -> tuple[list[SheetJob], ProfileSettings]:
    started = time.monotonic()
    if not run.detected_elsewhere:
        run.emit(ev.LOADING_SHEETS, f"Loading {counted(run.total, 'sheet')}", 0)
    _check_schema_not_newer(conn)
    reprocess_store.mark_writing(conn, run.task_id)
    settings = load_profile_settings(conn, run.request.profile_id)
    rows = reprocess_store.lock_sheets(
        conn, list(run.request.sheet_ids), with_fills=run.request.redecide
    )
    jobs = jobs_for_rows(conn, run.request, rows, settings)
    run.stage_times[ev.LOADING_SHEETS] = time.monotonic() - started
    if not run.detected_elsewhere:
        run.emit(ev.LOADING_SHEETS, f"Loaded {counted(len(jobs), 'sheet')}", 100)
    return jobs, settings


def _check_schema_not_newer(conn: psycopg.Connection) -> None:
    """Fail the task if a newer OMR Desktop migrated the database since start-up."""
    try:
        check_not_newer(conn)
    except SchemaTooNewError as exc:
        raise ReprocessError(str(exc)) from exc


def load_jobs(
    conn: psycopg.Connection, request: ReprocessRequest, settings: ProfileSettings
) -> list[SheetJob]:
    """Read the request's sheets without locking them, for detection elsewhere.

    Raises:
        ReprocessError: unknown sheet ids, or a re-decide without usable fills.
    """
    rows = reprocess_store.read_sheets(
        conn, list(request.sheet_ids), with_fills=request.redecide
    )
    return jobs_for_rows(conn, request, rows, settings)


def jobs_for_rows(
    conn: psycopg.Connection,
    request: ReprocessRequest,
    rows: Sequence[SheetRow],
    settings: ProfileSettings,
) -> list[SheetJob]:
    """Pair each sheet row with its template, in the rows' order.

    Raises:
        ReprocessError: unknown sheet ids, or a re-decide without usable fills.
    """
    missing = sorted(set(request.sheet_ids) - {r.id for r in rows})
    if missing:
        raise ReprocessError(f"Unknown sheet ids: {id_list(missing)}.")
    layouts = reprocess_store.load_layouts(conn, {r.template_id for r in rows})
    templates = {tid: Template.from_dict(layout) for tid, layout in layouts.items()}
    if request.redecide:
        _check_redecide(rows, settings)
    return [SheetJob(row, templates[row.template_id]) for row in rows]


def load_profile_settings(conn: psycopg.Connection, profile_id: int) -> ProfileSettings:
    """Read and validate a profile's settings.

    Raises:
        ReprocessError: the profile does not exist or its settings are invalid.
    """
    row = conn.execute(
        "SELECT name, settings FROM profiles WHERE id = %s", (profile_id,)
    ).fetchone()
    if row is None:
        raise ReprocessError(f"Profile {profile_id} does not exist.")
    try:
        return parse_profile_settings(row[1] or {})
    except ValueError as exc:
        raise ReprocessError(f"Profile {profile_id} ({row[0]}): {exc}") from exc


def _check_redecide(rows: Sequence[SheetRow], settings: ProfileSettings) -> None:
    wanted = measurement_hash(settings)
    unusable = [r.id for r in rows if r.fills is None or r.measurement_hash != wanted]
    if unusable:
        subject = "Sheet {} has" if len(unusable) == 1 else "Sheets {} have"
        raise ReprocessError(
            subject.format(id_list(unusable))
            + " no stored fills measured the way this profile measures (other"
            " measurement settings, or an earlier version of the engine)."
            " Reprocess without --redecide to read the images again."
        )


# -- Processing Sheets -----------------------------------------------------------


def _process_sheets(
    conn: psycopg.Connection,
    run: _Run,
    jobs: list[SheetJob],
    settings: ProfileSettings,
    source: DetectionSource,
) -> None:
    started = time.monotonic()
    mode = "re-deciding stored fills" if run.request.redecide else "detecting"
    message = source.dispatch_message(len(jobs), mode)
    if message is not None:
        run.emit(ev.PROCESSING_SHEETS, message, 0)
    outcomes = source.outcomes(
        jobs, settings, run.request.redecide, run.check_cancelled
    )
    chunk: list[EncodedSheet] = []
    for job, outcome in outcomes:
        run.processed += 1
        if isinstance(outcome, EncodedSheet):
            chunk.append(outcome)
            run.answers_written += outcome.answer_count
        else:
            run.failed.append({"sheet_id": job.sheet.id, "error": outcome})
        if len(chunk) >= CHUNK_SHEETS:
            _send(conn, run, chunk)
            chunk = []
        # Workers that detected elsewhere reported these counts already; a
        # second count from zero would move the client's bar backwards.
        if not run.detected_elsewhere and (run.due() or run.processed == run.total):
            percent = 100.0 * run.processed / max(run.total, 1)
            run.emit(
                ev.PROCESSING_SHEETS,
                ev.processing_message(run.processed, run.total),
                percent,
            )
    _send(conn, run, chunk)
    run.stage_times[ev.PROCESSING_SHEETS] = time.monotonic() - started
    run.emit(
        ev.PROCESSING_SHEETS,
        ev.processing_done_message(run.total, len(run.failed)),
        100,
    )
    if run.processed and len(run.failed) == run.processed:
        first = run.failed[0]
        raise ReprocessError(
            f"No sheet could be read, so nothing was written. Sheet "
            f"{first['sheet_id']}: {first['error']}"
        )


def detect_reading(
    job: SheetJob, settings: ProfileSettings, redecide: bool
) -> SheetReading | str:
    """Detect (or re-decide) one sheet; return its reading or why it failed.

    A sheet that fails (an unreadable image, a size that does not fit the
    template) fails alone, as in the local pipeline; other errors raise.
    """
    work = _redecide_reading if redecide else _detect_reading
    try:
        return work(job, settings)
    except _SHEET_ERRORS as exc:
        return _sheet_failure(job, exc)


def _detect_reading(job: SheetJob, settings: ProfileSettings) -> SheetReading:
    return read_sheet(Path(job.sheet.image_path), job.template, settings)


def _redecide_reading(job: SheetJob, settings: ProfileSettings) -> SheetReading:
    fills = np.asarray(job.sheet.fills, dtype=np.float32)
    reading = decide(fills, job.template, settings.decision)
    stored = job.sheet.measurement_hash or ""
    return _with_hash(reading, stored)


def _detect_group(jobs: Sequence[SheetJob], settings: ProfileSettings) -> list[Outcome]:
    """Detect a group of sheets: load every page, then read each one.

    A sheet that fails gives the reason as its outcome, as in
    `detect_reading`, and the others of the group are still read.
    """
    pages = [_load_page(job) for job in jobs]
    outcomes: list[Outcome] = []
    for job, page in zip(jobs, pages, strict=True):
        if isinstance(page, str):
            outcomes.append(page)
        else:
            read = functools.partial(read_loaded_sheet, page, job.template, settings)
            outcomes.append(_encode_or_fail(job, read))
    return outcomes


def _redecide_group(
    jobs: Sequence[SheetJob], settings: ProfileSettings
) -> list[Outcome]:
    return [
        _encode_or_fail(job, functools.partial(_redecide_reading, job, settings))
        for job in jobs
    ]


def _load_page(job: SheetJob) -> npt.NDArray[np.uint8] | str:
    """Return the sheet's page for `read_loaded_sheet`, or why it failed."""
    try:
        return load_sheet_for_measuring(Path(job.sheet.image_path), job.template)
    except _SHEET_ERRORS as exc:
        return _sheet_failure(job, exc)


def _encode_or_fail(job: SheetJob, read: Callable[[], SheetReading]) -> Outcome:
    """Return the COPY rows of the reading ``read`` makes, or why it failed."""
    try:
        return _encode(job.sheet, read())
    except _SHEET_ERRORS as exc:
        return _sheet_failure(job, exc)


def _with_hash(reading: SheetReading, value: str) -> SheetReading:
    return dataclasses.replace(reading, measurement_hash=value)


def _encode(sheet: SheetRow, reading: SheetReading) -> EncodedSheet:
    return EncodedSheet(
        sheet.id,
        encode_answer_columns(sheet.id, reading.columns),
        encode_sheet(sheet.id, reading, sheet.fills_digest),
        len(reading.columns),
    )


def _as_completed(
    jobs: list[SheetJob],
    work: Callable[[Sequence[SheetJob], ProfileSettings], list[Outcome]],
    settings: ProfileSettings,
    executor: Executor,
    workers: int,
    check_cancelled: Callable[[], None],
) -> Iterator[tuple[SheetJob, Outcome]]:
    """Yield each job with its encoded rows or its error, checking for cancel.

    ``work`` runs on the executor for groups of jobs (`SHEETS_PER_GROUP`,
    fewer when the selection would leave a worker idle). Groups come back
    as they finish, so a slow sheet (a file on a slow share, say) holds up
    neither the other workers nor the progress. The staging table needs no
    order: the UPDATE joins on the sheet and the question.
    """
    workers = max(1, workers)
    size = max(1, min(SHEETS_PER_GROUP, len(jobs) // (2 * workers)))
    groups = (jobs[i : i + size] for i in range(0, len(jobs), size))
    in_flight: dict[Future[list[Outcome]], list[SheetJob]] = {}
    limit = max(1, workers * IN_FLIGHT_PER_WORKER // size)
    try:
        while True:
            check_cancelled()
            while len(in_flight) < limit:
                group = next(groups, None)
                if group is None:
                    break
                in_flight[executor.submit(work, group, settings)] = group
            if not in_flight:
                return
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            # Groups that finished together go in sheet order.
            for future in sorted(done, key=lambda f: in_flight[f][0].sheet.id):
                group = in_flight.pop(future)
                for job, outcome in zip(group, _outcomes(group, future), strict=True):
                    check_cancelled()
                    yield job, outcome
    finally:
        for future in in_flight:
            future.cancel()


def _outcomes(group: list[SheetJob], future: Future[list[Outcome]]) -> list[Outcome]:
    """Return the group's outcomes; an error of the whole group fails each sheet."""
    try:
        return future.result()
    except CancelledError:
        return ["cancelled"] * len(group)
    except _SHEET_ERRORS as exc:
        return [_sheet_failure(job, exc) for job in group]


def _sheet_failure(job: SheetJob, exc: Exception) -> str:
    # An image whose size does not fit the template, or an unreadable
    # file, fails its sheet only.
    logger.warning("Sheet %d not reprocessed: %s", job.sheet.id, exc)
    if isinstance(exc, SheetImageError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _send(conn: psycopg.Connection, run: _Run, chunk: list[EncodedSheet]) -> None:
    if not chunk:
        return
    answers = binary_copy(b"".join(e.answers for e in chunk))
    sheets = binary_copy(b"".join(e.sheet for e in chunk))
    started = time.monotonic()
    assert run.staging is not None
    reprocess_store.copy_chunk(conn, run.staging, answers, sheets)
    run.db_seconds += time.monotonic() - started
    run.copy_bytes += len(answers) + len(sheets)


# -- Collecting, generating, loading, recalculating --------------------------------


def _collect_results(run: _Run) -> None:
    good = run.processed - len(run.failed)
    run.emit(ev.COLLECTING_RESULTS, "Collecting results from the workers", 0)
    run.emit(
        ev.COLLECTING_RESULTS,
        f"Collected {counted(good, 'result')} ({len(run.failed)} failed)",
        100,
    )
    run.emit(ev.GENERATING_CSV, "Encoding COPY rows for the staging tables", 0)
    megabytes = run.copy_bytes / 1e6
    run.emit(
        ev.GENERATING_CSV,
        f"CSV generation complete: {good} {noun(good, 'sheet')}, "
        f"{run.answers_written} {noun(run.answers_written, 'answer')} "
        f"({megabytes:.1f} MB of COPY data staged)",
        100,
    )


def _load_to_database(
    conn: psycopg.Connection, run: _Run
) -> reprocess_store.ChangeCounts:
    good = run.processed - len(run.failed)
    run.emit(
        ev.LOADING_TO_DATABASE,
        f"Updating answers of {counted(good, 'sheet')} from the staging table",
        0,
    )
    started = time.monotonic()
    assert run.staging is not None
    counts = reprocess_store.apply_changes(
        conn, run.staging, run.task_id, run.request.keep_manual, run.answers_written
    )
    elapsed = time.monotonic() - started
    run.db_seconds += elapsed
    run.stage_times[ev.LOADING_TO_DATABASE] = elapsed
    run.emit(
        ev.LOADING_TO_DATABASE,
        f"Database load complete: {good} {noun(good, 'sheet')}, "
        f"{run.answers_written} {noun(run.answers_written, 'answer')} "
        f"in {run.db_seconds * 1000:.0f}ms ({counts.answers_updated} "
        f"{noun(counts.answers_updated, 'row')} updated)",
        100,
    )
    return counts


def _recalculate_scores(conn: psycopg.Connection, run: _Run) -> int:
    run.emit(ev.RECALCULATING_SCORES, "Recalculating scores and flags", 0)
    started = time.monotonic()
    sheet_ids = reprocess_store.staged_sheet_ids(conn)
    row = conn.execute(
        "CALL REPROCESS_SHEET_SURGICAL(%s::bigint[], NULL)", (sheet_ids,)
    ).fetchone()
    rescored = int(row[0]) if row and row[0] is not None else 0
    changed = reprocess_store.count_score_changes(conn, run.task_id)
    elapsed = time.monotonic() - started
    run.db_seconds += elapsed
    run.stage_times[ev.RECALCULATING_SCORES] = elapsed
    run.emit(
        ev.RECALCULATING_SCORES,
        f"Rescored {counted(rescored, 'sheet')} ({counted(changed, 'score')} changed)",
        100,
    )
    return changed

"""Read new sheets on an executor and store them as a batch, all or nothing.

Shared by ``omr-desktop demo`` and ``omr-desktop import``. Sheets are read
(or rendered, then read) on the executor's threads and stored in chunks by
COPY as they arrive, in scan order, so memory stays flat whatever the batch
size. Everything happens in one transaction: a failure, or Ctrl+C, leaves
the database as it was.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg

from omr_desktop.db import batch_store
from omr_desktop.db.batch_store import AnswerRecord, SheetRecord
from omr_desktop.db.migrate import check_not_newer
from omr_desktop.engine import SheetImageError, SheetReading, Template, read_sheet
from omr_desktop.engine.profile import ProfileSettings

logger = logging.getLogger(__name__)

# Sheets per COPY chunk: large enough that round trips do not matter
# (150 answers a sheet makes 38,400 rows a chunk), small enough that a
# chunk's rows stay a few MB in memory.
CHUNK_SHEETS = 256

# Reads in flight per worker thread: keeps every thread busy while the
# writer catches up, without queueing the whole batch in memory.
IN_FLIGHT_PER_WORKER = 4


@dataclass(frozen=True)
class SheetJob:
    """One sheet to read: where its image is and who it belongs to if known."""

    sequence_no: int
    image_path: Path
    student_code: str | None = None
    student_name: str = ""


@dataclass(frozen=True)
class NewBatch:
    """What to create around the sheets.

    Attributes:
        key: question to accepted answers, or ``None`` for no answer key.
        points: points for a correct, wrong and blank answer.
        roster: roll number to student name, for matching by identifier.
        code_from_identifier: without a roster match, use the roll number
            read from the sheet as the student's code.
    """

    name: str
    template: Template
    template_name: str
    profile_id: int
    settings: ProfileSettings
    key: Mapping[str, Sequence[str]] | None = None
    points: tuple[Decimal, Decimal, Decimal] = (Decimal(1), Decimal(0), Decimal(0))
    roster: Mapping[str, str] | None = None
    code_from_identifier: bool = False


@dataclass(frozen=True)
class LoadResult:
    """The outcome of a batch load.

    Attributes:
        failed: (sequence number, image path, error) of each unreadable sheet.
    """

    batch_id: int
    sheets: int
    answers: int
    failed: tuple[tuple[int, str, str], ...]
    duration_s: float


ProgressCallback = Callable[[int, int], None]
ReadFunction = Callable[[SheetJob], SheetReading]


def load_batch(
    conn: psycopg.Connection,
    batch: NewBatch,
    jobs: Sequence[SheetJob],
    executor: Executor,
    workers: int,
    progress: ProgressCallback | None = None,
    read: ReadFunction | None = None,
) -> LoadResult:
    """Create ``batch`` from ``jobs``: read every sheet, store, score, commit.

    Args:
        conn: a connection not in a transaction; this function commits.
        read: how to get a sheet's reading; by default the image is read
            with ``batch.settings``. The demo renders the image first.
    """
    started = time.perf_counter()
    read = read or (
        lambda job: read_sheet(job.image_path, batch.template, batch.settings)
    )
    with conn.transaction():
        check_not_newer(conn)
        batch_id = _create_batch_rows(conn, batch)
        writer = _ChunkWriter(conn, batch_id)
        outcomes = _read_in_order(jobs, read, executor, workers)
        for done, (job, outcome) in enumerate(outcomes, start=1):
            writer.add(_sheet_record(job, outcome, batch))
            if progress is not None:
                progress(done, len(jobs))
        writer.flush()
        batch_store.rescore(conn, writer.sheet_ids)
        batch_store.finish_batch(conn, batch_id)
    # Fresh statistics for the tables a batch just grew: until autovacuum
    # got to them, the planner took a new batch of 10,000 sheets for a few
    # dozen rows and opened its student list with nested loops.
    conn.execute("ANALYZE sheets, students, sheet_flags, omr_answers")
    conn.commit()
    duration = time.perf_counter() - started
    logger.info(
        "Batch %r loaded: %d sheets, %d answers, %d failed in %.1f s",
        batch.name,
        len(writer.sheet_ids),
        writer.answers,
        len(writer.failed),
        duration,
    )
    return LoadResult(
        batch_id, len(writer.sheet_ids), writer.answers, tuple(writer.failed), duration
    )


def _create_batch_rows(conn: psycopg.Connection, batch: NewBatch) -> int:
    batch_store.check_batch_name_free(conn, batch.name)
    template_id = batch_store.ensure_template(
        conn, batch.template_name, batch.template.to_dict()
    )
    key_id = None
    if batch.key is not None:
        key_id = batch_store.create_answer_key(
            conn, f"{batch.name} key", batch.key, batch.points
        )
    return batch_store.create_batch(conn, batch.name, template_id, key_id)


def _read_in_order(
    jobs: Iterable[SheetJob], read: ReadFunction, executor: Executor, workers: int
) -> Iterator[tuple[SheetJob, SheetReading | SheetImageError]]:
    """Yield each job with its reading (or image error), in the jobs' order."""
    window: deque[tuple[SheetJob, Future[SheetReading]]] = deque()
    limit = max(1, workers) * IN_FLIGHT_PER_WORKER
    pending = iter(jobs)
    try:
        for job in pending:
            window.append((job, executor.submit(read, job)))
            if len(window) >= limit:
                yield _result(*window.popleft())
        while window:
            yield _result(*window.popleft())
    finally:
        for _job, future in window:
            future.cancel()


def _result(
    job: SheetJob, future: Future[SheetReading]
) -> tuple[SheetJob, SheetReading | SheetImageError]:
    try:
        return job, future.result()
    except SheetImageError as exc:
        logger.warning(
            "Sheet %d (%s) not read: %s", job.sequence_no, job.image_path, exc
        )
        return job, exc


def _sheet_record(
    job: SheetJob, outcome: SheetReading | SheetImageError, batch: NewBatch
) -> SheetRecord:
    now = datetime.now(UTC)
    if isinstance(outcome, SheetImageError):
        return SheetRecord(
            job.sequence_no,
            str(job.image_path),
            job.student_code,
            job.student_name,
            "failed",
            str(outcome),
            batch.profile_id,
            now,
            None,
            {},
        )
    code, name = _student_of(job, outcome, batch)
    answers = tuple(
        AnswerRecord(
            a.question,
            a.answer_raw,
            a.answer_corrected,
            a.confidence_score,
            a.reason,
            a.needs_review,
        )
        for a in outcome.answers
    )
    return SheetRecord(
        job.sequence_no,
        str(job.image_path),
        code,
        name,
        "processed",
        None,
        batch.profile_id,
        now,
        outcome.measurement_hash,
        dict(outcome.identifiers),
        answers,
        outcome.fills.tolist(),
    )


def _student_of(
    job: SheetJob, reading: SheetReading, batch: NewBatch
) -> tuple[str | None, str]:
    """Match a sheet to a student.

    With a roster, by the roll number read from the sheet; with
    ``code_from_identifier``, the roll number becomes the student's code;
    otherwise (and when the roll number is unreadable) the job's student.
    """
    roll = roll_number(reading, batch.template)
    if batch.roster is not None and roll is not None and roll in batch.roster:
        return roll, batch.roster[roll]
    if batch.code_from_identifier and roll:
        return roll, job.student_name
    return job.student_code, job.student_name


def roll_number(reading: SheetReading, template: Template) -> str | None:
    """Return the first identifier column's value when every digit was read once.

    A digit left unmarked reads as its field's empty value and a digit with
    two marks as both values, so a complete reading has exactly one
    character per field and no doubt recorded against it.
    """
    for column in template.identifier_columns:
        labels = template.column_fields(column)
        value = reading.identifiers.get(column, "")
        empties = {template.field_by_label(f).empty_value for f in labels} - {""}
        complete = (
            len(value) == len(labels)
            and value.isalnum()
            and not any(e in value for e in empties)
        )
        if complete and column not in reading.identifiers_in_doubt:
            return value
        return None
    return None


class _ChunkWriter:
    """Collect sheet records and COPY them CHUNK_SHEETS at a time."""

    def __init__(self, conn: psycopg.Connection, batch_id: int) -> None:
        self._conn = conn
        self._batch_id = batch_id
        self._chunk: list[SheetRecord] = []
        self.sheet_ids: list[int] = []
        self.answers = 0
        self.failed: list[tuple[int, str, str]] = []

    def add(self, record: SheetRecord) -> None:
        self._chunk.append(record)
        self.answers += len(record.answers)
        if record.status == "failed":
            self.failed.append(
                (record.sequence_no, record.image_path, record.error or "")
            )
        if len(self._chunk) >= CHUNK_SHEETS:
            self.flush()

    def flush(self) -> None:
        self.sheet_ids += batch_store.write_sheets(
            self._conn, self._batch_id, self._chunk
        )
        self._chunk = []

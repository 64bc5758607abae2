"""Progress events of a reprocess task: one shape for the GUI, the CLI and the stream.

A task goes through its stages in this order, each with a start event and an
end event at 100 %:

1. Loading Sheets: read the selected sheets' rows and lock them.
2. Processing Sheets: detect every sheet on the worker pool; each sheet's
   rows are encoded for COPY on the worker and streamed into a staging
   table as they arrive.
3. Collecting Results: finish the COPY stream.
4. Generating CSV Files: report the COPY data that was generated and staged.
5. Loading to Database: record history and update the changed answers.
6. Recalculating Scores: ``REPROCESS_SHEET_SURGICAL`` for the processed sheets.
7. Completed, or Failed with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from omr_desktop.plural import noun

LOADING_SHEETS = "Loading Sheets"
PROCESSING_SHEETS = "Processing Sheets"
COLLECTING_RESULTS = "Collecting Results"
GENERATING_CSV = "Generating CSV Files"
LOADING_TO_DATABASE = "Loading to Database"
RECALCULATING_SCORES = "Recalculating Scores"
COMPLETED = "Completed"
FAILED = "Failed"

STAGES = (
    LOADING_SHEETS,
    PROCESSING_SHEETS,
    COLLECTING_RESULTS,
    GENERATING_CSV,
    LOADING_TO_DATABASE,
    RECALCULATING_SCORES,
    COMPLETED,
)

# Share of the overall bar each stage fills, from the time each takes on a
# 7,109-sheet batch: detection dominates, the database steps come next.
_STAGE_WEIGHTS = {
    LOADING_SHEETS: 2,
    PROCESSING_SHEETS: 78,
    COLLECTING_RESULTS: 2,
    GENERATING_CSV: 1,
    LOADING_TO_DATABASE: 12,
    RECALCULATING_SCORES: 5,
    COMPLETED: 0,
}

# Event names of the stream; a task's last event is complete or error.
PROGRESS = "progress"
COMPLETE = "complete"
ERROR = "error"


def processing_message(processed: int, total: int) -> str:
    """Return the Processing Sheets message in the contract's words.

    For example "Processing: 324/7109 sheets completed". The noun follows
    the total, so one sheet reads "Processing: 1/1 sheet completed".
    """
    return f"Processing: {processed}/{total} {noun(total, 'sheet')} completed"


def processing_done_message(total: int, failed: int) -> str:
    """Return the message that ends Processing Sheets.

    For example "All 7109 sheets completed (2 failed)", and with one sheet
    "1/1 sheet completed (0 failed)".
    """
    done = f"All {total}" if total != 1 else "1/1"
    return f"{done} {noun(total, 'sheet')} completed ({failed} failed)"


def overall_percentage(stage: str, stage_percentage: float) -> float:
    """Map a stage's own percentage onto the whole task's 0-100 scale."""
    if stage in (COMPLETED, FAILED):
        return 100.0 if stage == COMPLETED else 0.0
    done = 0
    for name in STAGES:
        if name == stage:
            return round(done + _STAGE_WEIGHTS[name] * stage_percentage / 100.0, 1)
        done += _STAGE_WEIGHTS[name]
    raise ValueError(f"unknown stage {stage!r}")


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report.

    Attributes:
        event: ``progress``, ``complete`` or ``error``.
        progress_percentage: the stage's own progress, 0-100.
        overall_percentage: the whole task's progress, 0-100.
        processed, total, failed: sheets detected so far, selected, failed.
        timestamp: ISO 8601 time of the event, UTC.
        elapsed_s: seconds since the task started.
        status: the task's status when the event was made.
        result: the task's result, on ``complete`` and ``error`` events.
        event_id: 1, 2, 3... in the task's stream, set when the event is
            stored; 0 before.
    """

    task_id: str
    event: str
    stage: str
    message: str
    progress_percentage: float
    overall_percentage: float
    processed: int
    total: int
    failed: int
    timestamp: str
    elapsed_s: float
    status: str
    result: dict[str, Any] | None = None
    event_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["result"] is None:
            del data["result"]
        return data


def error_event(
    task_id: str,
    reason: str,
    total: int,
    last: ProgressEvent | None,
    result: dict[str, Any] | None = None,
) -> ProgressEvent:
    """Build a failed task's ``error`` event.

    The counts, elapsed time and overall percentage are those of ``last``,
    the last event sent, so a client sees how far the task got and a
    single progress bar stays where the task stopped.
    """
    return ProgressEvent(
        task_id=task_id,
        event=ERROR,
        stage=FAILED,
        message=f"Reprocess failed: {reason}",
        progress_percentage=0.0,
        overall_percentage=last.overall_percentage if last else 0.0,
        processed=last.processed if last else 0,
        total=total,
        failed=last.failed if last else 0,
        timestamp=datetime.now(UTC).isoformat(timespec="milliseconds"),
        elapsed_s=last.elapsed_s if last else 0.0,
        status="FAILURE",
        result={"reason": reason, **(result or {})},
    )


class ProgressSink(Protocol):
    """Where a running task reports, and how it learns that it should stop.

    ``report`` is called from the task's runner thread; implementations
    hand events to other threads themselves (a Qt signal, a queue).
    """

    def report(self, event: ProgressEvent) -> None: ...

    @property
    def cancelled(self) -> bool: ...


class ListSink:
    """A sink that keeps every event in a list; cancel by setting ``cancel_now``."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.cancel_now = False

    def report(self, event: ProgressEvent) -> None:
        self.events.append(event)

    @property
    def cancelled(self) -> bool:
        return self.cancel_now

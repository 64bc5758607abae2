"""The reprocess queue of one application instance.

Tasks run one at a time, in the order they were submitted; later ones wait
as PENDING. A request whose sheets overlap those of a running or queued
task is rejected at once, naming that task. Across processes (the GUI and a
command-line run on the same database), row locks taken with NOWAIT reject
the second task in the same way, so two tasks never interleave their writes.

Every event a task publishes is stored in ``task_events`` (on its own
connection, so it is visible while the task's transaction is still open)
and handed to the listeners, on the runner thread.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import psycopg

from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.db.profiles import list_profiles
from omr_desktop.db.reprocess_store import (
    SheetsBusyError,
    busy_tasks,
    running_overlap,
)
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.events import ProgressEvent, ProgressSink
from omr_desktop.pipeline.reprocess import (
    LocalDetection,
    ReprocessError,
    ReprocessRequest,
    TaskCancelledError,
    run_reprocess,
)
from omr_desktop.plural import id_list, noun

logger = logging.getLogger(__name__)

# A selection larger than this is rejected: it is 14 batches of 7,109 sheets.
MAX_SHEETS_PER_TASK = 100_000

# An unknown-profile error names this many profiles; the rest are counted.
SHOWN_PROFILES = 20

Listener = Callable[[ProgressEvent], None]


class TaskRequestError(ValueError):
    """A reprocess request is invalid; nothing was queued.

    Attributes:
        http_status: the HTTP status the server returns.
    """

    http_status = 400


class EmptySelectionError(TaskRequestError):
    """No sheet was selected."""


class TooManySheetsError(TaskRequestError):
    """More sheets than one task takes."""

    http_status = 413


class UnknownProfileError(TaskRequestError):
    """The profile id does not exist."""

    http_status = 404


class UnknownSheetsError(TaskRequestError):
    """Some sheet ids do not exist.

    Attributes:
        missing: the unknown ids, sorted.
    """

    http_status = 404

    def __init__(self, missing: Sequence[int]) -> None:
        super().__init__(f"Unknown sheet ids: {id_list(missing)}.")
        self.missing = list(missing)


class TaskConflictError(TaskRequestError):
    """The sheets overlap those of a running or queued task.

    Attributes:
        task_id: the task that has them.
        sheet_ids: the overlapping sheets, sorted.
    """

    http_status = 409

    def __init__(self, task_id: str, sheet_ids: Sequence[int]) -> None:
        sheets = noun(len(sheet_ids), "Sheet")
        verb = "is" if len(sheet_ids) == 1 else "are"
        # Only waiting works for every caller: the HTTP interface has no
        # cancel route, so a task it started cannot be cancelled there.
        super().__init__(
            f"{sheets} {id_list(sheet_ids)} {verb} already in task {task_id}, "
            "which is queued or running. Wait for that task to finish, then "
            "try again."
        )
        self.task_id = task_id
        self.sheet_ids = list(sheet_ids)


class TaskFailedElsewhereError(ReprocessError):
    """The task failed where it ran, which stored its FAILURE and error event."""


class ReprocessEngine(Protocol):
    """The runner of queued tasks: this process's threads or a cluster."""

    def runner_identity(self) -> tuple[str, int | None]:
        """Return the (host, pid) recorded as the runner of new task rows."""
        ...

    def run(
        self, task_id: str, request: ReprocessRequest, sink: ProgressSink
    ) -> dict[str, Any]:
        """Run the task to its end and return its result.

        Raises the exceptions of ``run_reprocess``, and
        TaskFailedElsewhereError when the failure was recorded already.
        """
        ...


class LocalEngine:
    """Run tasks in this process: detect on ``executor``, write on the runner.

    Args:
        workers: how many threads the executor runs, for the in-flight window.
    """

    def __init__(self, database: Database, executor: Executor, workers: int) -> None:
        self.database = database
        self.executor = executor
        self.workers = workers

    def runner_identity(self) -> tuple[str, int | None]:
        return task_store.runner_identity()

    def run(
        self, task_id: str, request: ReprocessRequest, sink: ProgressSink
    ) -> dict[str, Any]:
        with self.database.connect(autocommit=True) as conn:
            task_store.mark_started(conn, task_id)
        source = LocalDetection(self.executor, self.workers)
        return run_reprocess(self.database, task_id, request, source, sink)


@dataclass
class _Active:
    task_id: str
    request: ReprocessRequest
    sheets: frozenset[int]
    cancel_requested: bool = False
    started: bool = False
    future: Future[None] | None = None
    done: threading.Event = field(default_factory=threading.Event)


class _TaskSink:
    """Store a task's events and pass them to the listeners."""

    def __init__(self, manager: TaskManager, active: _Active) -> None:
        self._manager = manager
        self._active = active
        self._conn: psycopg.Connection | None = None
        self._next_id = 1
        self.last_event: ProgressEvent | None = None

    def report(self, event: ProgressEvent) -> None:
        stored = replace(event, event_id=self._next_id)
        self._next_id += 1
        self.last_event = stored
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._manager.database.connect(autocommit=True)
            task_store.append_event(
                self._conn,
                stored.task_id,
                stored.event_id,
                stored.event,
                stored.to_dict(),
            )
        except psycopg.Error:
            # The live listeners still get the event; only a late
            # subscriber's history misses it.
            logger.exception(
                "Storing event %d of task %s failed", stored.event_id, stored.task_id
            )
        self._manager.notify(stored)

    @property
    def cancelled(self) -> bool:
        return self._active.cancel_requested

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class TaskManager:
    """Queue and run reprocess tasks; thread-safe.

    Args:
        executor: where sheets are detected (a QThreadPool adapter in the
            GUI, a thread pool elsewhere); the manager does not shut it down.
        workers: how many threads the executor runs, for the in-flight window.
        engine: where tasks run, in place of ``executor`` and ``workers``
            (a cluster engine, for example).
    """

    def __init__(
        self,
        database: Database,
        executor: Executor | None = None,
        workers: int = 0,
        *,
        engine: ReprocessEngine | None = None,
    ) -> None:
        if engine is None:
            if executor is None:
                raise ValueError("TaskManager needs an executor or an engine")
            engine = LocalEngine(database, executor, workers)
        self.database = database
        self.engine = engine
        self._runner = ThreadPoolExecutor(1, thread_name_prefix="reprocess-runner")
        self._lock = threading.Lock()
        self._active: dict[str, _Active] = {}
        self._listeners: list[Listener] = []
        self._closed = False
        self._fail_interrupted()

    def _fail_interrupted(self) -> None:
        with self.database.connect(autocommit=True) as conn:
            task_store.mark_interrupted(conn)

    def set_engine(self, engine: ReprocessEngine) -> None:
        """Run later tasks on ``engine``.

        Raises:
            TaskRequestError: a task is queued or running; its row names
                the engine it was queued for.
        """
        with self._lock:
            if self._active:
                raise TaskRequestError(
                    "The engine cannot change while a reprocess is queued or "
                    "running. Wait for it to finish, then change the engine."
                )
            self.engine = engine

    # -- Listeners -------------------------------------------------------

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event of every task; return a remover."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def notify(self, event: ProgressEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - one bad listener must not stop a task
                logger.exception("A progress listener failed on task %s", event.task_id)

    # -- Submitting and cancelling -----------------------------------------

    def submit(self, request: ReprocessRequest) -> str:
        """Validate and queue ``request``; return its task id.

        Raises:
            TaskRequestError: empty selection, too many sheets, unknown
                profile or sheets, or an overlap with a queued or running task.
        """
        self._check_open()
        request = self._validated(request)
        task_id = str(uuid.uuid4())
        active = _Active(task_id, request, frozenset(request.sheet_ids))
        with self._lock:
            self._check_open()
            self._check_overlap(active.sheets)
            with self.database.connect(autocommit=True) as conn:
                task_store.create_task(
                    conn,
                    task_id,
                    request.profile_id,
                    list(request.sheet_ids),
                    request.options(),
                    self.engine.runner_identity(),
                )
            self._active[task_id] = active
        logger.info(
            "Task %s queued: %d sheets, profile %d",
            task_id,
            len(request.sheet_ids),
            request.profile_id,
        )
        active.future = self._runner.submit(self._run, active)
        return task_id

    def _validated(self, request: ReprocessRequest) -> ReprocessRequest:
        sheet_ids = tuple(dict.fromkeys(request.sheet_ids))
        if not sheet_ids:
            raise EmptySelectionError("No sheets selected: give at least one sheet id.")
        if len(sheet_ids) > MAX_SHEETS_PER_TASK:
            raise TooManySheetsError(
                f"{len(sheet_ids):,} sheets are more than one task takes "
                f"({MAX_SHEETS_PER_TASK:,}). Split the selection."
            )
        with self.database.connect() as conn:
            _check_profile(conn, request.profile_id)
            rows = conn.execute(
                "SELECT id FROM sheets WHERE id = ANY(%s)", (list(sheet_ids),)
            ).fetchall()
            missing = sorted(set(sheet_ids) - {int(r[0]) for r in rows})
            if missing:
                raise UnknownSheetsError(missing)
            # Tasks of this instance are checked under the lock, in submit.
            with self._lock:
                own = set(self._active)
            elsewhere = running_overlap(conn, list(sheet_ids), own)
        if elsewhere is not None:
            raise TaskConflictError(*elsewhere)
        return replace(request, sheet_ids=sheet_ids)

    def _check_open(self) -> None:
        if self._closed:
            raise TaskRequestError(
                "The reprocess queue is shut down; restart the application to "
                "reprocess."
            )

    def _check_overlap(self, sheets: frozenset[int]) -> None:
        for other in self._active.values():
            overlap = sheets & other.sheets
            if overlap:
                raise TaskConflictError(other.task_id, sorted(overlap))

    def cancel(self, task_id: str) -> bool:
        """Ask a queued or running task to stop; return False if it is not active."""
        with self._lock:
            active = self._active.get(task_id)
            if active is None:
                return False
            active.cancel_requested = True
            # A queued task is taken off the runner's queue, so that it ends
            # now rather than once the tasks before it have run.
            dequeued = active.future is not None and active.future.cancel()
        logger.info("Cancel requested for task %s", task_id)
        if dequeued:
            # Storing its end takes a database round trip, which the caller
            # (the GUI thread, say) should not wait for.
            threading.Thread(
                target=self._run, args=(active,), name="reprocess-cancel"
            ).start()
        return True

    def is_active(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._active

    def active_task_ids(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def wait(self, task_id: str, timeout_s: float | None = None) -> bool:
        """Wait until the task has ended; return False on timeout."""
        with self._lock:
            active = self._active.get(task_id)
        return True if active is None else active.done.wait(timeout_s)

    def shutdown(self, cancel: bool = True) -> None:
        """Cancel (by default) the active tasks and wait for the runner to stop.

        Later submits raise TaskRequestError.
        """
        with self._lock:
            self._closed = True
            if cancel:
                for active in self._active.values():
                    active.cancel_requested = True
        self._runner.shutdown(wait=True)
        # Tasks taken off the queue by cancel() end on threads of their own.
        with self._lock:
            left = list(self._active.values())
        for active in left:
            active.done.wait()

    # -- Running ---------------------------------------------------------

    def _run(self, active: _Active) -> None:
        sink = _TaskSink(self, active)
        try:
            self._run_with(active, sink)
        finally:
            sink.close()
            with self._lock:
                self._active.pop(active.task_id, None)
            active.done.set()

    def _run_with(self, active: _Active, sink: _TaskSink) -> None:
        task_id = active.task_id
        if active.cancel_requested:
            self._fail(sink, active, "cancelled", {})
            return
        active.started = True
        logger.info("Task %s started", task_id)
        try:
            result = self.engine.run(task_id, active.request, sink)
        except TaskFailedElsewhereError as exc:
            logger.warning("Task %s failed: %s", task_id, exc)
        except TaskCancelledError:
            self._fail(sink, active, "cancelled", {})
        except (ReprocessError, SheetsBusyError) as exc:
            self._fail(sink, active, self._reason(exc, active), {})
        except psycopg.Error as exc:
            logger.exception("Task %s failed in the database", task_id)
            self._fail(sink, active, f"Database error: {_first_line(exc)}", {})
        except Exception as exc:  # noqa: BLE001 - the task ends as FAILURE
            logger.exception("Task %s failed", task_id)
            self._fail(sink, active, f"Internal error: {type(exc).__name__}: {exc}", {})
        else:
            logger.info(
                "Task %s succeeded: %d sheets, %d answers changed in %.1f s",
                task_id,
                result["sheets_processed"],
                result["answers_changed"],
                result["duration_s"],
            )

    def _reason(self, exc: Exception, active: _Active) -> str:
        if not isinstance(exc, SheetsBusyError):
            return str(exc)
        with self.database.connect() as conn:
            others = [
                t
                for t in busy_tasks(conn, list(active.request.sheet_ids))
                if t != active.task_id
            ]
        if others:
            tasks = noun(len(others), "task")
            them = "it" if len(others) == 1 else "them"
            return (
                f"Some of the selected sheets are being reprocessed by {tasks} "
                f"{', '.join(others)}. Wait for {them} to finish, then try again."
            )
        return str(exc)

    def _fail(
        self, sink: _TaskSink, active: _Active, reason: str, result: dict[str, Any]
    ) -> None:
        with self.database.connect(autocommit=True) as conn:
            task_store.mark_failed(conn, active.task_id, reason, result)
        logger.warning("Task %s failed: %s", active.task_id, reason)
        total = len(active.request.sheet_ids)
        sink.report(
            ev.error_event(active.task_id, reason, total, sink.last_event, result)
        )


def _check_profile(conn: psycopg.Connection, profile_id: int) -> None:
    """Raise UnknownProfileError, listing the profiles, unless ``profile_id`` exists.

    The message lists the profiles itself because it reaches the command
    line, the GUI and HTTP clients alike, and no single hint fits all three.
    """
    found = conn.execute("SELECT 1 FROM profiles WHERE id = %s", (profile_id,))
    if found.fetchone() is not None:
        return
    profiles = list_profiles(conn)
    if not profiles:
        raise UnknownProfileError(
            f"Profile {profile_id} does not exist, and the database has no profiles."
        )
    choices = ", ".join(f"{p.id} {p.name}" for p in profiles[:SHOWN_PROFILES])
    if len(profiles) > SHOWN_PROFILES:
        choices += f" and {len(profiles) - SHOWN_PROFILES:,} more"
    raise UnknownProfileError(
        f"Profile {profile_id} does not exist. Choose one of: {choices}."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""The TaskManager's cluster engine: send the task to the workers, relay events.

``ClusterEngine.run`` subscribes to the task's Redis channel, sends
``reprocess_omr_sheet_task``, and hands every event, in id order, to the
manager's sink, so the progress dialog, the activity log and the HTTP
stream see a cluster task as they see a local one. It returns when the
terminal event arrives. Cancel sets the task's cancel flag in Redis, which
the chunks and the final step check between sheets.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from omr_desktop.cluster.celery_app import make_celery
from omr_desktop.cluster.redis_events import (
    RedisEvents,
    channel,
    event_from_dict,
    parse_frame,
)
from omr_desktop.cluster.settings import (
    BrokerUnavailableError,
    ClusterConfigError,
    ClusterSettings,
    check_broker,
    settings_from_env,
)
from omr_desktop.cluster.tasks import TASK_NAME
from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.events import ProgressSink
from omr_desktop.pipeline.reprocess import ReprocessError, ReprocessRequest
from omr_desktop.pipeline.task_manager import TaskFailedElsewhereError

logger = logging.getLogger(__name__)

# How often the history in Redis and the task's row are read while no
# event arrives, to catch an event the subscription missed (a reconnect)
# and a task that ended without one.
CHECK_INTERVAL_S = 2.0

# Seconds without any event after which one warning is logged that no
# worker has taken the task.
NO_WORKER_WARNING_S = 30.0


def open_cluster_engine(broker_url: str | None, database: Database) -> ClusterEngine:
    """Check that cluster mode can work here, then build its engine.

    Raises:
        ClusterConfigError: the database is the embedded one, which the
            workers cannot reach, or the broker URL is missing or invalid.
        BrokerUnavailableError: the broker does not respond.
    """
    if database.choice.embedded:
        raise ClusterConfigError(
            "Cluster mode needs a PostgreSQL that every worker can reach: set "
            "OMR_DATABASE_URL (or 'omr-desktop db use'); the embedded database "
            "is reachable from this machine only."
        )
    settings = settings_from_env(broker_url)
    check_broker(settings)
    return ClusterEngine(settings, database)


class ClusterEngine:
    """Run the TaskManager's tasks on the cluster's workers.

    Args:
        database: the shared PostgreSQL the workers use too; the task rows
            are created there by the manager.
    """

    def __init__(self, settings: ClusterSettings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self._app = make_celery(settings)
        self._events = RedisEvents.from_url(settings.broker_url)

    def runner_identity(self) -> tuple[str, int | None]:
        return task_store.CLUSTER_RUNNER, None

    def close(self) -> None:
        self._events.close()
        self._app.close()

    def run(
        self, task_id: str, request: ReprocessRequest, sink: ProgressSink
    ) -> dict[str, Any]:
        """Send the task and relay its events until it ends; return its result.

        Raises:
            ReprocessError: the broker is unreachable (the task never ran).
            TaskFailedElsewhereError: the workers failed the task and
                published its error event, which the sink received.
        """
        self._check_image_paths(request)
        try:
            check_broker(self.settings)
            pubsub = self._events.client.pubsub(  # type: ignore[no-untyped-call]
                ignore_subscribe_messages=True
            )
            pubsub.subscribe(channel(task_id))
        except (BrokerUnavailableError, redis.RedisError) as exc:
            raise ReprocessError(
                f"{exc} The task was not sent; switch the engine to local "
                "threads, or start Redis."
            ) from exc
        try:
            self._app.send_task(
                TASK_NAME,
                args=[task_id, list(request.sheet_ids), request.profile_id],
                kwargs={
                    "keep_manual": request.keep_manual,
                    "redecide": request.redecide,
                },
                task_id=task_id,
            )
            logger.info(
                "Task %s sent to the cluster at %s", task_id, self.settings.describe()
            )
            total = len(request.sheet_ids)
            return _Relay(self, task_id, total, sink, pubsub).follow()
        finally:
            pubsub.close()

    def _check_image_paths(self, request: ReprocessRequest) -> None:
        """Reject sheets whose image path is relative, so no worker can find it.

        NOTE: whether every worker can read an absolute path (a shared
        mount) is known only on the workers; a sheet whose image a worker
        cannot read fails with the path in its error.
        """
        with self.database.connect() as conn:
            rows = conn.execute(
                "SELECT id, image_path FROM sheets WHERE id = ANY(%s)"
                " AND image_path !~ '^(/|[A-Za-z]:[\\\\/]|\\\\\\\\)'"
                " ORDER BY id LIMIT 5",
                (list(request.sheet_ids),),
            ).fetchall()
        if rows:
            shown = ", ".join(f"{r[0]} ({r[1]})" for r in rows)
            sheets, have = ("Sheet", "has a") if len(rows) == 1 else ("Sheets", "have")
            raise ReprocessError(
                f"{sheets} {shown} {have} relative image paths, which cluster "
                "workers cannot resolve. Re-import them with absolute paths "
                "on a shared folder, or use the local engine."
            )

    def history(self, task_id: str, after_id: int) -> list[dict[str, Any]]:
        return self._events.history(task_id, after_id)

    def request_cancel(self, task_id: str) -> None:
        self._events.request_cancel(task_id)

    def publish(self, event: ev.ProgressEvent) -> int:
        """Store and publish ``event`` in Redis; return its id (0 if dropped)."""
        return self._events.publish(event)


class _Relay:
    """Hand one task's events to the sink in id order, once each.

    A task that publishes no event for ``progress_limit_s`` seconds of the
    engine's settings is marked FAILURE here, because no worker runs it.
    """

    def __init__(
        self,
        engine: ClusterEngine,
        task_id: str,
        total: int,
        sink: ProgressSink,
        pubsub: Any,
    ) -> None:
        self._engine = engine
        self._task_id = task_id
        self._total = total
        self._sink = sink
        self._pubsub = pubsub
        self._last_id = 0
        self._last_event: ev.ProgressEvent | None = None
        self._cancel_sent = False
        self._redis_down = False
        self._last_seen = time.monotonic()

    def follow(self) -> dict[str, Any]:
        started = self._last_seen = time.monotonic()
        next_check = started + CHECK_INTERVAL_S
        warned = False
        while True:
            self._forward_cancel()
            frames: list[dict[str, Any]] = []
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + CHECK_INTERVAL_S
                frames = self._read_history()
                ended = None if frames else self._check_row()
                if ended is not None:
                    return ended
            else:
                frames = self._read_message()
            result = self._relay(frames)
            if result is not None:
                return result
            silent_s = time.monotonic() - self._last_seen
            if silent_s > self._engine.settings.progress_limit_s:
                ended = self._fail_silent_task(silent_s)
                if ended is not None:
                    return ended
            waited_s = time.monotonic() - started
            if not warned and not self._last_id and waited_s > NO_WORKER_WARNING_S:
                warned = True
                logger.warning(
                    "Task %s: no cluster worker has started it after %.0f s",
                    self._task_id,
                    NO_WORKER_WARNING_S,
                )

    def _read_message(self) -> list[dict[str, Any]]:
        """Return the next published event, if one arrives within 0.5 s."""
        try:
            message = self._pubsub.get_message(timeout=0.5)
        except redis.RedisError as exc:
            self._on_redis_error(exc)
            return []
        if message is not None and message.get("type") == "message":
            return [parse_frame(message["data"])]
        return []

    def _read_history(self) -> list[dict[str, Any]]:
        try:
            frames = self._engine.history(self._task_id, self._last_id)
        except redis.RedisError as exc:
            self._on_redis_error(exc)
            return []
        self._redis_down = False
        return frames

    def _on_redis_error(self, exc: redis.RedisError) -> None:
        # The task may still end while Redis restarts: keep reading, and
        # let the progress timeout end a task that no worker resumes.
        if not self._redis_down:
            logger.warning("Task %s: reading its events failed: %s", self._task_id, exc)
        self._redis_down = True
        time.sleep(0.5)

    def _relay(self, frames: list[dict[str, Any]]) -> dict[str, Any] | None:
        if frames and int(frames[0]["event_id"]) > self._last_id + 1:
            # A gap: the subscription missed events, which the history has.
            frames = self._read_history()
        for data in frames:
            event_id = int(data["event_id"])
            if event_id <= self._last_id:
                continue
            self._last_id = event_id
            self._last_seen = time.monotonic()
            event = event_from_dict(data)
            self._last_event = event
            self._sink.report(event)
            if event.event == ev.COMPLETE:
                return event.result or {}
            if event.event == ev.ERROR:
                reason = (event.result or {}).get("reason", event.message)
                raise TaskFailedElsewhereError(str(reason))
        return None

    def _forward_cancel(self) -> None:
        if not self._cancel_sent and self._sink.cancelled:
            self._cancel_sent = True
            self._engine.request_cancel(self._task_id)
            logger.info("Task %s: cancel sent to the cluster", self._task_id)

    def _fail_silent_task(self, silent_s: float) -> dict[str, Any] | None:
        """Mark the task FAILURE and relay its error event.

        A task that committed is never marked FAILURE, because
        ``fail_if_unfinished`` updates only a PENDING or STARTED row (and a
        final step still writing then finds FAILURE and rolls back). So
        when the row ended meanwhile, this returns its result, or None
        while its events are still in Redis to relay.

        Raises:
            TaskFailedElsewhereError: the task is now FAILURE, and the
                sink received its error event.
            ReprocessError: the row was FAILURE already.
        """
        reason = (
            f"No cluster worker reported progress for {silent_s:.0f} s: check "
            "that a worker is running ('omr-desktop worker') and that the "
            f"broker at {self._engine.settings.describe()} is up."
        )
        with self._engine.database.connect(autocommit=True) as conn:
            failed_now = task_store.fail_if_unfinished(conn, self._task_id, reason, {})
        if not failed_now:
            ended = self._check_row()
            self._last_seen = time.monotonic()
            return ended
        logger.warning("Task %s failed: %s", self._task_id, reason)
        event = ev.error_event(self._task_id, reason, self._total, self._last_event)
        try:
            # Workers that take the task later find it ended and stop.
            event_id = self._engine.publish(event)
        except redis.RedisError as exc:
            logger.warning(
                "Task %s: publishing its error event failed: %s", self._task_id, exc
            )
            event_id = 0
        if event_id > self._last_id:
            # Relaying the history ends with the error event, which raises.
            self._relay(self._read_history())
        # Redis dropped the event (it restarted and numbered it from 1
        # again, or it is down), so the sink gets it straight from here.
        self._sink.report(event)
        raise TaskFailedElsewhereError(reason)

    def _check_row(self) -> dict[str, Any] | None:
        """Return the result of a task whose row ended with no terminal event.

        Raises:
            ReprocessError: the row is FAILURE (the manager then sends the
                error event).
        """
        with self._engine.database.connect() as conn:
            row = task_store.get_task(conn, self._task_id)
        if row is None or row.status not in (task_store.SUCCESS, task_store.FAILURE):
            return None
        if self._read_history():
            return None
        if row.status == task_store.FAILURE:
            raise ReprocessError(row.error or "failed on the cluster")
        logger.warning(
            "Task %s succeeded on the cluster without a complete event", self._task_id
        )
        return row.result

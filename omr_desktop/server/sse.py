"""The progress stream: ``GET /sheets/reprocess/{task_id}/stream``.

Each event is framed as ``id:``, ``event:`` and ``data:`` lines; the data
is the JSON of the pipeline's ``ProgressEvent``. Event names are
``progress``, ``complete`` and ``error``. A task failure is sent as
``event: error`` with JSON data (``status`` FAILURE and the message), so a
client can tell it from the data-less ``error`` event a browser fires when
the connection itself fails.

How one connection is served:

1. Subscribe to the task's live events, then read the stored events after
   ``Last-Event-ID`` (all of them without the header). Because the
   subscription comes first, no event falls between the two. Live events
   whose id is not above the last one sent are dropped, so none is sent
   twice.
2. Send the stored events, then follow the task:

   - a task this process runs: live events from the task manager, handed
     from its runner thread to the loop with ``call_soon_threadsafe``;
   - a task that has ended: the terminal event (``complete`` or ``error``)
     is sent again when the client has seen it already;
   - a task another process runs on the same database: the stored events,
     read every ``poll_interval_s``.

3. Close after the terminal event. A client that closes on ``complete`` and
   ``error``, as browsers' clients of this interface do, never reconnects in
   a loop.

A comment line is sent after ``heartbeat_s`` without an event, so proxies
keep the connection open and a vanished client is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from omr_desktop.db import task_store
from omr_desktop.db.task_store import StoredEvent, TaskRow
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.events import ProgressEvent
from omr_desktop.pipeline.task_manager import TaskManager
from omr_desktop.server import db_calls
from omr_desktop.server.cluster_stream import (
    CLUSTER_EVENTS,
    ClusterEventSource,
    has_events,
)
from omr_desktop.server.errors import ApiError
from omr_desktop.server.keys import MANAGER, OPTIONS
from omr_desktop.server.validation import parse_last_event_id, parse_task_id

logger = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({ev.COMPLETE, ev.ERROR})


@dataclass(frozen=True)
class LiveEvent:
    """A live event with its frame, encoded once for all its subscribers."""

    event_id: int
    event: str
    frame: bytes


# Item of a subscriber's queue: a live event, or None when the server
# stops and every stream should end.
_QueueItem = LiveEvent | None

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

# Polls of a task run by another process after its row is marked ended,
# before a missing terminal event is built from the row.
POLLS_AFTER_END = 3


class EventHub:
    """Hand the task manager's events to the streams that follow each task.

    Every method but ``_on_event`` runs on the event loop's thread. The
    task manager calls ``_on_event`` on its runner thread, so that method
    touches no queue and only schedules ``_dispatch`` on the loop.
    """

    def __init__(self, manager: TaskManager) -> None:
        self._manager = manager
        self._loop: asyncio.AbstractEventLoop | None = None
        self._remove_listener: Any = None
        self._queues: defaultdict[str, set[asyncio.Queue[_QueueItem]]] = defaultdict(
            set
        )
        self.closed = False

    def start(self) -> None:
        """Start receiving the manager's events on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._remove_listener = self._manager.add_listener(self._on_event)

    def close(self) -> None:
        """Stop receiving events and end every open stream."""
        self.closed = True
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        for queues in self._queues.values():
            for queue in queues:
                queue.put_nowait(None)

    def subscribe(self, task_id: str) -> asyncio.Queue[_QueueItem]:
        """Return a new queue that receives ``task_id``'s live events."""
        # Unbounded: a task sends at most ten events a second while sheets
        # are processed and a few dozen otherwise (about 700 for 7,109
        # sheets), so even a stalled client's queue stays small.
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(None)
        self._queues[task_id].add(queue)
        return queue

    def unsubscribe(self, task_id: str, queue: asyncio.Queue[_QueueItem]) -> None:
        queues = self._queues.get(task_id)
        if queues is None:
            return
        queues.discard(queue)
        if not queues:
            del self._queues[task_id]

    def subscriber_count(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def wait_for_streams(self, timeout_s: float) -> None:
        """Wait until every open stream has ended, for at most ``timeout_s``.

        A stream ends after its task's terminal event, so a server that
        cancels its tasks first and then waits here sends each client the
        ``error`` event of its task before it stops.
        """
        deadline = time.monotonic() + timeout_s
        while self.subscriber_count() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _on_event(self, event: ProgressEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # RuntimeError: the loop closed between the check and the call.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._dispatch, event)

    def _dispatch(self, event: ProgressEvent) -> None:
        queues = self._queues.get(event.task_id)
        if not queues:
            return
        frame = format_event(event.event_id, event.event, event_json(event.to_dict()))
        live = LiveEvent(event.event_id, event.event, frame)
        for queue in queues:
            queue.put_nowait(live)


HUB = web.AppKey("hub", EventHub)


def format_event(event_id: int, event: str, data: str) -> bytes:
    """Frame one server-sent event; each line of ``data`` gets its own ``data:``.

    A browser joins the ``data:`` lines with line feeds again, so ``data``
    arrives unchanged, whichever of CR, LF or CRLF broke its lines.
    """
    lines = [f"id: {event_id}", f"event: {event}"]
    lines += [f"data: {line}" for line in _LINE_BREAK.split(data)]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def event_json(data: dict[str, Any]) -> str:
    """Encode event data as compact JSON on one line."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)


class _Stream:
    """One client's response, with the id of the last event it was sent."""

    def __init__(self, response: web.StreamResponse, last_event_id: int) -> None:
        self.response = response
        self.last_sent = last_event_id
        self.ended = False
        self._last_write = time.monotonic()

    async def send(self, event_id: int, event: str, data: dict[str, Any]) -> None:
        """Send an event unless the client has it already."""
        if event_id > self.last_sent:
            frame = format_event(event_id, event, event_json(data))
            await self.send_frame(event_id, event, frame)

    async def send_frame(self, event_id: int, event: str, frame: bytes) -> None:
        """Send an encoded event unless the client has it already."""
        if event_id <= self.last_sent:
            return
        await self._write(frame)
        self.last_sent = event_id
        self.ended = event in TERMINAL_EVENTS

    async def send_again(self, stored: StoredEvent) -> None:
        """Send a terminal event whatever its id, to a client that saw it."""
        await self._write(
            format_event(stored.event_id, stored.event, event_json(stored.data))
        )
        self.ended = True

    async def send_stored(self, events: list[StoredEvent]) -> None:
        for stored in events:
            await self.send(stored.event_id, stored.event, stored.data)
            if self.ended:
                return

    async def send_retry_hint(self, retry_ms: int) -> None:
        await self._write(f"retry: {retry_ms}\n\n".encode())

    async def heartbeat_if_idle(self, heartbeat_s: float) -> None:
        if time.monotonic() - self._last_write >= heartbeat_s:
            await self._write(b": heartbeat\n\n")

    async def _write(self, data: bytes) -> None:
        await self.response.write(data)
        self._last_write = time.monotonic()


async def stream_task(request: web.Request) -> web.StreamResponse:
    """Stream a task's progress events (the handler of both stream routes)."""
    task_id = parse_task_id(request.match_info["task_id"])
    last_event_id = parse_last_event_id(request)
    app = request.app
    hub = app[HUB]
    manager = app[MANAGER]
    queue = hub.subscribe(task_id)
    try:
        # Whether the task is live here is read before the history. A task
        # leaves the manager only after its terminal event was stored and
        # passed to the listeners, so a live task's terminal event reaches
        # this queue, and an ended task's is in the history.
        live = manager.is_active(task_id)
        snapshot = await db_calls.run_blocking(
            app, db_calls.read_task, app[db_calls.CONNECTIONS], task_id, last_event_id
        )
        if snapshot.task is None:
            raise ApiError(404, f"No task {task_id}.")
        stream = _Stream(await _open(request), last_event_id)
        try:
            await _serve_stream(request, stream, queue, snapshot, live)
        except ConnectionResetError:
            logger.debug("Stream of task %s closed by the client", task_id)
        except Exception:
            # The headers are sent, so no error response can follow. After
            # the close, EventSource reconnects with Last-Event-ID unless
            # its page closes it.
            logger.exception("Stream of task %s failed; closing it", task_id)
        return stream.response
    finally:
        hub.unsubscribe(task_id, queue)


async def _serve_stream(
    request: web.Request,
    stream: _Stream,
    queue: asyncio.Queue[_QueueItem],
    snapshot: db_calls.TaskSnapshot,
    live: bool,
) -> None:
    task = snapshot.task
    assert task is not None
    await stream.send_retry_hint(request.app[OPTIONS].retry_ms)
    source = request.app.get(CLUSTER_EVENTS)
    if (
        not live
        and snapshot.last_event is None
        and source is not None
        and await has_events(source, task)
    ):
        await _follow_cluster(request, stream, source, task)
        return
    await stream.send_stored(snapshot.events)
    if stream.ended:
        return
    if live:
        await _follow_live(request, stream, queue, task.task_id)
    elif task.status in (task_store.SUCCESS, task_store.FAILURE):
        await _finish_ended(stream, task, snapshot.last_event)
    else:
        await _follow_by_polling(request, stream, task.task_id)


async def _open(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Cache-Control": "no-cache",
            # Tells nginx not to buffer the stream.
            "X-Accel-Buffering": "no",
        }
    )
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    await response.prepare(request)
    return response


async def _follow_live(
    request: web.Request,
    stream: _Stream,
    queue: asyncio.Queue[_QueueItem],
    task_id: str,
) -> None:
    options = request.app[OPTIONS]
    manager = request.app[MANAGER]
    while not stream.ended:
        try:
            item = await asyncio.wait_for(queue.get(), options.heartbeat_s)
        except TimeoutError:
            await stream.heartbeat_if_idle(options.heartbeat_s)
            if not manager.is_active(task_id):
                # The terminal event may still be on its way to the loop;
                # it was stored before it was handed over, so read it.
                await _finish_from_database(request, stream, task_id)
            continue
        if item is None:
            return
        await stream.send_frame(item.event_id, item.event, item.frame)


async def _follow_by_polling(
    request: web.Request, stream: _Stream, task_id: str
) -> None:
    options = request.app[OPTIONS]
    hub = request.app[HUB]
    connections = request.app[db_calls.CONNECTIONS]
    # NOTE: a task whose process died on another host stays STARTED in its
    # row, since no process here can tell it died, so this loop then polls
    # until the client disconnects.
    # The other process marks the task ended before it stores the terminal
    # event, so a few more polls wait for the event before one is built
    # from the row.
    polls_left_after_end = POLLS_AFTER_END
    while not stream.ended and not hub.closed:
        await asyncio.sleep(options.poll_interval_s)
        await stream.heartbeat_if_idle(options.heartbeat_s)
        snapshot = await db_calls.run_blocking(
            request.app, db_calls.read_task, connections, task_id, stream.last_sent
        )
        await stream.send_stored(snapshot.events)
        task = snapshot.task
        if stream.ended or task is None:
            return
        if task.status in (task_store.SUCCESS, task_store.FAILURE):
            polls_left_after_end -= 1
            if polls_left_after_end <= 0:
                await _finish_ended(stream, task, snapshot.last_event)


async def _follow_cluster(
    request: web.Request,
    stream: _Stream,
    source: ClusterEventSource,
    task: TaskRow,
) -> None:
    """Stream a cluster task's events from Redis until its terminal event."""
    options = request.app[OPTIONS]
    hub = request.app[HUB]
    task_id = task.task_id
    async with source.subscribe(task_id) as subscription:
        await _send_cluster_history(stream, source, task_id)
        if not stream.ended:
            last = await source.last(task_id)
            if last is not None and last["event"] in TERMINAL_EVENTS:
                # The client has seen every event, the terminal one too.
                await stream.send_again(_stored(last))
        while not stream.ended and not hub.closed:
            data = await subscription.get(options.heartbeat_s)
            if data is None:
                await stream.heartbeat_if_idle(options.heartbeat_s)
                # Catch up on anything the subscription missed.
                await _send_cluster_history(stream, source, task_id)
                continue
            if int(data["event_id"]) > stream.last_sent + 1:
                await _send_cluster_history(stream, source, task_id)
            else:
                await stream.send(int(data["event_id"]), str(data["event"]), data)


async def _send_cluster_history(
    stream: _Stream, source: ClusterEventSource, task_id: str
) -> None:
    events = await source.history(task_id, stream.last_sent)
    await stream.send_stored([_stored(data) for data in events])


def _stored(data: dict[str, Any]) -> StoredEvent:
    return StoredEvent(int(data["event_id"]), str(data["event"]), data)


async def _finish_from_database(
    request: web.Request, stream: _Stream, task_id: str
) -> None:
    """Send the stored events the client lacks, then end the stream.

    Called once the task has left the manager: its row is final and its
    terminal event, if any, is stored.
    """
    snapshot = await db_calls.run_blocking(
        request.app,
        db_calls.read_task,
        request.app[db_calls.CONNECTIONS],
        task_id,
        stream.last_sent,
    )
    await stream.send_stored(snapshot.events)
    if stream.ended or snapshot.task is None:
        stream.ended = True
        return
    await _finish_ended(stream, snapshot.task, snapshot.last_event)


async def _finish_ended(
    stream: _Stream, task: TaskRow, last_event: StoredEvent | None
) -> None:
    """Send the terminal event of an ended task and mark the stream ended."""
    if last_event is not None and last_event.event in TERMINAL_EVENTS:
        await stream.send_again(last_event)
        return
    # No terminal event was stored: the task was interrupted by a process
    # that died, or storing the event failed. Build it from the row.
    event_id = (last_event.event_id if last_event else 0) + 1
    event = terminal_event_from_row(task, event_id)
    await stream.send(event.event_id, event.event, event.to_dict())
    stream.ended = True


def terminal_event_from_row(task: TaskRow, event_id: int) -> ProgressEvent:
    """Build the ``complete`` or ``error`` event of an ended task from its row."""
    succeeded = task.status == task_store.SUCCESS
    result = dict(task.result)
    if not succeeded:
        result.setdefault("reason", task.error or "unknown")
    finished = task.finished_at or task.created_at
    started = task.started_at or task.created_at
    total = len(task.sheet_ids)
    return ProgressEvent(
        task_id=task.task_id,
        event=ev.COMPLETE if succeeded else ev.ERROR,
        stage=ev.COMPLETED if succeeded else ev.FAILED,
        message=(
            "Reprocess completed"
            if succeeded
            else f"Reprocess failed: {task.error or 'unknown'}"
        ),
        progress_percentage=100.0 if succeeded else 0.0,
        overall_percentage=100.0 if succeeded else 0.0,
        processed=int(result.get("sheets_total", total)) if succeeded else 0,
        total=total,
        failed=int(result.get("sheets_failed", 0)),
        timestamp=finished.isoformat(timespec="milliseconds"),
        elapsed_s=round((finished - started).total_seconds(), 3),
        status=task.status,
        result=result,
        event_id=event_id,
    )

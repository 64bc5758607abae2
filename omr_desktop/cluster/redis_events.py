"""A cluster task's progress events, counters and chunk results in Redis.

Every event of a task is appended to a Redis list and published on the
task's channel in one Lua script, which also numbers it: the script runs
atomically, so ids are 1, 2, 3... in list order whichever worker sends the
event, and a late subscriber reads the list (``LRANGE``) for the history.
The event's JSON is the pipeline's ``ProgressEvent.to_dict()``, the same as
the local pipeline stores in ``task_events``.

The sheets detected so far are counted in Redis sets, so a chunk that is
delivered again after its worker died counts each sheet once.

Keys (all under ``omr:task:<task id>:``, each expiring ``KEY_TTL_S`` after
its last write): ``seq`` last event id, ``log`` event list, ``events``
the pub/sub channel, ``done`` and ``failed`` sheet id sets, ``max_done``
and ``last_emit_ms`` for the per-sheet events, ``started`` start time,
``cancel`` cancel flag, ``ended`` set with the terminal event,
``chunk:<n>`` chunk results and ``attempts:<n>`` deliveries of chunk n.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any, cast

import redis

from omr_desktop.pipeline.events import COMPLETE, ERROR, ProgressEvent

# Redis keeps a task's events and results this long after the last write:
# long enough to follow any task, short enough that Redis does not grow.
# After it, the stream falls back to the task's row in the database.
KEY_TTL_S = 24 * 3600

# At most one per-sheet progress event this often across all workers,
# the local pipeline's rate of ten a second.
SHEET_EVENT_GAP_MS = 100

TERMINAL_EVENTS = frozenset({COMPLETE, ERROR})

_PUBLISH = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if ARGV[5] == '1' then redis.call('SET', KEYS[4], '1', 'EX', ARGV[4]) end
local floor = tonumber(ARGV[3])
if floor >= 0 then
  local last = tonumber(redis.call('GET', KEYS[3]) or '-1')
  if floor <= last then return 0 end
  redis.call('SET', KEYS[3], floor, 'EX', ARGV[4])
end
local id = redis.call('INCR', KEYS[1])
local frame = string.sub(ARGV[2], 1, -2) .. ',"event_id":' .. id .. '}'
redis.call('RPUSH', KEYS[2], frame)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], frame)
return id
"""

_SHEET_DONE = """
redis.call('SADD', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
local processed = redis.call('SCARD', KEYS[1])
local failed = redis.call('SCARD', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
local due = 0
if processed >= tonumber(ARGV[3]) or now - last >= tonumber(ARGV[4]) then
  due = 1
  redis.call('SET', KEYS[3], now, 'EX', ARGV[5])
end
return {processed, failed, due}
"""


def key(task_id: str, name: str) -> str:
    """Return the Redis key ``name`` of ``task_id``."""
    return f"omr:task:{task_id}:{name}"


def channel(task_id: str) -> str:
    """Return the pub/sub channel of ``task_id``'s events."""
    return key(task_id, "events")


def event_body(event: ProgressEvent) -> str:
    """Encode an event as the JSON object the script numbers (no ``event_id``)."""
    data = event.to_dict()
    data.pop("event_id", None)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)


def parse_frame(frame: bytes | str) -> dict[str, Any]:
    """Decode one stored or published event."""
    data: dict[str, Any] = json.loads(frame)
    return data


def event_from_dict(data: dict[str, Any]) -> ProgressEvent:
    """Rebuild the ProgressEvent of a stored or published event."""
    fields = dict(data)
    return ProgressEvent(**fields)


class RedisEvents:
    """Send and read a cluster task's events and counters; thread-safe.

    Args:
        client: a redis-py client (its connection pool is thread-safe).
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._publish = client.register_script(_PUBLISH)
        self._sheet_done = client.register_script(_SHEET_DONE)

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 10.0) -> RedisEvents:
        return cls(
            redis.Redis.from_url(
                url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
            )
        )

    def close(self) -> None:
        self.client.close()

    # -- Events ----------------------------------------------------------

    def publish(self, event: ProgressEvent, processed_floor: int = -1) -> int:
        """Store and publish ``event``; return its id, or 0 if it was dropped.

        Nothing is published after a terminal event (``complete`` or
        ``error``): a chunk still running when another one failed the task
        cannot add progress after the error.

        Args:
            processed_floor: for a per-sheet progress event, its processed
                count; the event is dropped unless the count is above every
                count published before, so counts never go backwards.
        """
        task_id = event.task_id
        keys = [
            key(task_id, "seq"),
            key(task_id, "log"),
            key(task_id, "max_done"),
            key(task_id, "ended"),
        ]
        args: list[str | int] = [
            channel(task_id),
            event_body(event),
            processed_floor,
            KEY_TTL_S,
            "1" if event.event in TERMINAL_EVENTS else "0",
        ]
        return int(cast(int, self._publish(keys=keys, args=args)))

    def history(self, task_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        """Return the task's events after ``after_id``, in id order."""
        # Event n is at index n - 1, because the script appends in id order.
        frames = cast(
            list[bytes], self.client.lrange(key(task_id, "log"), max(after_id, 0), -1)
        )
        return [parse_frame(f) for f in frames]

    def has_events(self, task_id: str) -> bool:
        return bool(self.client.exists(key(task_id, "log")))

    # -- Counters ----------------------------------------------------------

    def sheet_done(
        self, task_id: str, sheet_id: int, failed: bool, total: int
    ) -> tuple[int, int, bool]:
        """Count one detected sheet; return (processed, failed, event due)."""
        keys = [
            key(task_id, "done"),
            key(task_id, "failed"),
            key(task_id, "last_emit_ms"),
        ]
        args: list[str | int] = [
            sheet_id,
            "1" if failed else "0",
            total,
            SHEET_EVENT_GAP_MS,
            KEY_TTL_S,
        ]
        counts = cast(list[int], self._sheet_done(keys=keys, args=args))
        processed, failed_count, due = counts
        return int(processed), int(failed_count), bool(due)

    def mark_started(self, task_id: str) -> float:
        """Record the task's start time once; return the recorded time.

        Returns the earlier time when the task was started before, so a
        coordinator that is delivered again keeps the first start.
        """
        name = key(task_id, "started")
        self.client.set(name, repr(time.time()), nx=True, ex=KEY_TTL_S)
        return self.started_at(task_id) or time.time()

    def started_at(self, task_id: str) -> float | None:
        """Return the task's start time (``time.time()`` seconds), if recorded."""
        value = cast(bytes | None, self.client.get(key(task_id, "started")))
        return float(value) if value is not None else None

    def request_cancel(self, task_id: str) -> None:
        self.client.set(key(task_id, "cancel"), "1", ex=KEY_TTL_S)

    def cancel_requested(self, task_id: str) -> bool:
        """Tell whether the task should stop: cancelled, or ended elsewhere."""
        names = (key(task_id, "cancel"), key(task_id, "ended"))
        return bool(self.client.exists(*names))

    def count_attempt(self, task_id: str, chunk: int) -> int:
        """Count one delivery of chunk ``chunk``; return the count so far."""
        name = key(task_id, f"attempts:{chunk}")
        pipe = self.client.pipeline()
        pipe.incr(name)
        pipe.expire(name, KEY_TTL_S)
        count, _ = pipe.execute()
        return int(count)

    # -- Chunk results -----------------------------------------------------

    def store_chunk(self, task_id: str, chunk: int, data: bytes) -> None:
        self.client.set(key(task_id, f"chunk:{chunk}"), data, ex=KEY_TTL_S)

    def stored_chunk(self, task_id: str, chunk: int) -> bytes | None:
        """Return the stored result of chunk ``chunk``, or None if missing."""
        return cast(bytes | None, self.client.get(key(task_id, f"chunk:{chunk}")))

    def load_chunks(self, task_id: str, chunks: int) -> list[bytes | None]:
        """Return the stored results of chunks 0..chunks-1; None where missing."""
        names = [key(task_id, f"chunk:{n}") for n in range(chunks)]
        if not names:
            return []
        return list(cast(list[bytes | None], self.client.mget(names)))

    def delete_chunks(self, task_id: str, chunks: int) -> None:
        names = [key(task_id, f"chunk:{n}") for n in range(chunks)]
        names += [key(task_id, f"attempts:{n}") for n in range(chunks)]
        if names:
            self.client.delete(*names)


class RedisSink:
    """A ProgressSink that publishes a task's events to Redis.

    Elapsed times count from the task's recorded start, so events of the
    final step continue those of the coordinator and the chunks.
    """

    def __init__(self, events: RedisEvents, task_id: str) -> None:
        self._events = events
        self._task_id = task_id
        self._started = events.started_at(task_id) or time.time()
        self._cancel_checked = 0.0
        self._cancelled = False
        self.last_event: ProgressEvent | None = None

    def report(self, event: ProgressEvent) -> None:
        self.report_counted(event, -1)

    def report_counted(self, event: ProgressEvent, processed_floor: int) -> None:
        """Publish ``event`` as ``RedisEvents.publish`` does with the floor."""
        elapsed = round(time.time() - self._started, 3)
        event = replace(event, elapsed_s=elapsed)
        self.last_event = event
        self._events.publish(event, processed_floor)

    @property
    def cancelled(self) -> bool:
        # Read at most five times a second: the writer checks once per sheet.
        now = time.monotonic()
        if not self._cancelled and now - self._cancel_checked >= 0.2:
            self._cancel_checked = now
            self._cancelled = self._events.cancel_requested(self._task_id)
        return self._cancelled

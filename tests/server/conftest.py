"""Fixtures for the HTTP server: demo sheets, a real TaskManager, a test server.

Coroutine tests run on a fresh asyncio loop each (``pytest_pyfunc_call``
below), so the suite needs no asyncio plugin. The server is aiohttp's
``TestServer`` on 127.0.0.1 and a free port, with the runner options
production uses, and a real task manager over a thread pool.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from omr_desktop.config import DatabaseChoice
from omr_desktop.db.database import Database
from omr_desktop.pipeline.demo import seed_demo
from omr_desktop.pipeline.task_manager import TaskManager
from omr_desktop.server.app import create_app, runner_options

WORKERS = 2

# Demo sheets per test: two disjoint selections of two, seeded in about a
# second.
DEMO_SHEETS = 4

# Seconds a test waits for a task or a stream before it fails.
TIMEOUT_S = 120


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests to completion on their own event loop."""
    function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(function):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(asyncio.wait_for(function(**kwargs), TIMEOUT_S * 2))
    return True


@pytest.fixture
def database(db_conninfo: str) -> Iterator[Database]:
    """Return an open Database on this test's own migrated database."""
    database = Database(DatabaseChoice(db_conninfo, "environment"))
    database.open()
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def sheet_ids(db_conninfo: str, tmp_path: Path) -> list[int]:
    """Seed DEMO_SHEETS demo sheets with images in ``tmp_path``; return their ids."""
    with psycopg.connect(db_conninfo) as conn:
        seed_demo(conn, tmp_path, sheets=DEMO_SHEETS, workers=WORKERS)
        return [int(r[0]) for r in conn.execute("SELECT id FROM sheets ORDER BY id")]


@pytest.fixture
def manager(database: Database) -> Iterator[TaskManager]:
    """Return a TaskManager over a two-thread pool, shut down after the test."""
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="test-detect")
    manager = TaskManager(database, pool, WORKERS)
    try:
        yield manager
    finally:
        manager.shutdown(cancel=True)
        pool.shutdown(wait=True, cancel_futures=True)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    """Serve ``app`` on 127.0.0.1 and a free port; yield a client for it."""
    server = TestServer(app, host="127.0.0.1", port=0)
    # TestServer sets handler_cancellation itself, as production does.
    options = {k: v for k, v in runner_options().items() if k != "handler_cancellation"}
    await server.start_server(**options)
    async with TestClient(server) as client:
        yield client


@pytest.fixture
def make_app(manager: TaskManager) -> Callable[..., web.Application]:
    """Return ``create_app`` bound to the test's manager, with a quick heartbeat."""

    def make(**kwargs: Any) -> web.Application:
        kwargs.setdefault("heartbeat_s", 0.2)
        kwargs.setdefault("poll_interval_s", 0.1)
        return create_app(manager, **kwargs)

    return make


@pytest.fixture
def detect_pool_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Hold every detection until the returned event is set.

    Patches the pool of the ``manager`` fixture (its threads are named
    test-detect), so that a task stays STARTED, and the ones after it
    PENDING, until the test sets the event.
    """
    gate = threading.Event()
    original = ThreadPoolExecutor.submit

    def gated_submit(
        self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kw: Any
    ) -> Any:
        if self._thread_name_prefix != "test-detect":
            return original(self, fn, *args, **kw)

        def held() -> Any:
            gate.wait(TIMEOUT_S)
            return fn(*args, **kw)

        return original(self, held)

    monkeypatch.setattr(ThreadPoolExecutor, "submit", gated_submit)
    yield gate
    gate.set()


@dataclass
class Event:
    """One event read back from a stream."""

    id: int
    event: str
    data: str

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.data)
        return parsed


@dataclass
class StreamRead:
    """Everything one stream connection delivered, in order."""

    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


async def read_stream(
    response: aiohttp.ClientResponse, stop_after: int | None = None
) -> StreamRead:
    """Parse server-sent events line by line until the server closes the stream.

    Stops early after ``stop_after`` events, for reconnect tests.
    """
    read = StreamRead()
    fields: dict[str, list[str]] = {}
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        read.lines.append(line)
        if line == "":
            if "event" in fields or "data" in fields:
                read.events.append(
                    Event(
                        int(fields["id"][-1]),
                        fields["event"][-1],
                        "\n".join(fields.get("data", [])),
                    )
                )
                if stop_after is not None and len(read.events) >= stop_after:
                    return read
            fields = {}
            continue
        if line.startswith(":"):
            read.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "retry":
            read.retry.append(int(value))
        else:
            fields.setdefault(name, []).append(value)
    return read

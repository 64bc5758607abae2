"""Fixtures for the cluster tests: a private Redis and real worker processes.

Each test gets its own ``redis-server`` on a free loopback port, in a
temporary folder, with persistence off, so runs never collide with each
other or with a Redis the machine runs. Workers are ``omr-desktop worker``
subprocesses (threads pool) on the test's own database; a test may kill
one with SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from omr_desktop.pipeline.demo import seed_demo
from tests.conftest import RUN_ID, create_database, drop_database, with_dbname

redis = pytest.importorskip("redis")
pytest.importorskip("celery")

from omr_desktop.cluster.celery_app import make_celery  # noqa: E402
from omr_desktop.cluster.redis_events import RedisEvents  # noqa: E402
from omr_desktop.cluster.settings import ClusterSettings  # noqa: E402

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

# Short, so that a killed worker's chunk comes back within the test; each
# chunk of the tests runs well under it.
VISIBILITY_TIMEOUT_S = 4.0

# Seconds for a worker to answer a ping after it starts (imports, database
# check, broker connection), on a loaded 2-core machine.
WORKER_START_TIMEOUT_S = 60.0

# Seconds a cluster task of the tests may take, seeding excluded.
TASK_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_redis(folder: Path, *options: str) -> Iterator[str]:
    """Run a redis-server on a free loopback port in ``folder``; yield its URL.

    ``options`` are added to its command line, such as ``--rename-command``.
    """
    if not os.path.exists(REDIS_SERVER):
        pytest.skip(
            "redis-server not found: install Debian's redis-server package "
            "(scripts/run-tests does so when run as root)."
        )
    folder.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            *options,
        ],
        stdout=(folder / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {port} did not start; see "
                        f"{folder / 'redis.log'}"
                    ) from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(10)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """Start a private redis-server on a free loopback port; return its URL."""
    with running_redis(tmp_path / "redis") as url:
        yield url


@pytest.fixture
def cluster_settings(redis_url: str) -> ClusterSettings:
    return ClusterSettings(redis_url, VISIBILITY_TIMEOUT_S, 0.5)


@pytest.fixture
def celery_app(cluster_settings: ClusterSettings) -> Iterator[Any]:
    """Return a Celery app on the private Redis, as a sender uses it."""
    app = make_celery(cluster_settings)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def redis_events(redis_url: str) -> Iterator[RedisEvents]:
    events = RedisEvents.from_url(redis_url)
    try:
        yield events
    finally:
        events.close()


@dataclass
class Worker:
    """A running ``omr-desktop worker`` subprocess."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def kill(self) -> None:
        """Kill the worker at once (SIGKILL), as a crash or power loss would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(
    redis_url: str, celery_app: Any, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    """Return a factory of worker subprocesses on a database; stopped after."""
    workers: list[Worker] = []

    def start(dsn: str, concurrency: int = 2, pool: str | None = None) -> Worker:
        number = len(workers) + 1
        worker = spawn_worker(
            dsn, redis_url, tmp_path, f"worker{number}", concurrency, pool
        )
        workers.append(worker)
        _wait_ready(celery_app, worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()


def spawn_worker(
    dsn: str,
    broker_url: str,
    folder: Path,
    label: str,
    concurrency: int = 2,
    pool: str | None = None,
) -> Worker:
    """Start an ``omr-desktop worker`` subprocess without waiting for it.

    Its log is ``folder/<label>.log`` and its data folder ``<label>-data``.
    """
    # Threads by default, so SIGKILL ends every task slot at once;
    # OMR_TEST_WORKER_POOL=prefork runs the same tests on the default pool.
    pool = pool or os.environ.get("OMR_TEST_WORKER_POOL") or "threads"
    name = f"test-{label}@{RUN_ID}"
    log_path = folder / f"{label}.log"
    env = dict(os.environ)
    env.update(
        OMR_DATABASE_URL=dsn,
        OMR_BROKER_URL=broker_url,
        OMR_CLUSTER_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_S),
        OMR_LOG_LEVEL="INFO",
        OMR_DATA_DIR=str(folder / f"{label}-data"),
    )
    command = [
        sys.executable,
        "-m",
        "omr_desktop.cli",
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--name",
        name,
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Worker(name, process, log_path)


def _wait_ready(app: Any, worker: Worker) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker {worker.name} exited:\n{worker.log()}")
        if app.control.ping(destination=[worker.name], timeout=0.5):
            return
    raise RuntimeError(f"worker {worker.name} did not start:\n{worker.log()}")


@pytest.fixture
def seeded_pair(
    pg_admin_conninfo: str, db_conninfo: str, tmp_path: Path
) -> Callable[[int], tuple[str, str, list[int]]]:
    """Return a factory: seed N demo sheets, clone the database twice.

    The factory returns the two clones' connection strings (one for the
    local engine, one for the cluster) and the sheet ids, which are the
    same in both.
    """
    names: list[str] = []

    def make(sheets: int) -> tuple[str, str, list[int]]:
        with psycopg.connect(db_conninfo, autocommit=True) as conn:
            seed_demo(conn, tmp_path / "images", sheets=sheets, workers=2)
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM sheets ORDER BY id")]
        source = psycopg.conninfo.conninfo_to_dict(db_conninfo)["dbname"]
        clones = []
        for role in ("local", "cluster"):
            name = f"{source}_{role}"
            create_database(pg_admin_conninfo, name, template=str(source))
            names.append(name)
            clones.append(with_dbname(pg_admin_conninfo, name))
        return clones[0], clones[1], ids

    yield make  # type: ignore[misc]
    for name in names:
        drop_database(pg_admin_conninfo, name)


# Every row a reprocess writes, without what differs between two runs of
# the same work: task ids and the times rows were written.
RESULT_QUERIES = {
    "sheets": "SELECT to_jsonb(t) - 'processed_at' - 'scored_at' FROM sheets t"
    " ORDER BY id",
    "omr_answers": "SELECT to_jsonb(t) FROM omr_answers t ORDER BY sheet_id, question",
    "sheet_flags": "SELECT to_jsonb(t) FROM sheet_flags t ORDER BY sheet_id, flag",
    "answer_history": "SELECT to_jsonb(t) - 'task_id' - 'recorded_at'"
    " FROM answer_history t ORDER BY sheet_id, question",
    "sheet_history": "SELECT to_jsonb(t) - 'task_id' - 'recorded_at'"
    " FROM sheet_history t ORDER BY sheet_id",
}


def result_rows(dsn: str) -> dict[str, list[Any]]:
    """Return every written row of the database, comparable across runs."""
    with psycopg.connect(dsn) as conn:
        return {
            table: [r[0] for r in conn.execute(query).fetchall()]
            for table, query in RESULT_QUERIES.items()
        }

"""The exit status of ``omr-desktop worker``, which a service manager acts on."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.conftest import (
    WORKER_START_TIMEOUT_S,
    Worker,
    running_redis,
    spawn_worker,
)

pytestmark = [pytest.mark.db, pytest.mark.slow]


def test_worker_exits_1_when_celery_dies(db_conninfo: str, tmp_path: Path) -> None:
    # NOTE: the crash seen in production (kombu 5.7's "Unrecoverable error:
    # AttributeError(... 'hostname')" after a Redis restart) did not recur
    # when this test's Redis was killed and restarted: the worker
    # reconnected. A Redis without SADD fails the same way for certain:
    # the worker's start-up check (PING) passes, then kombu's queue
    # binding raises and Celery stops with "Unrecoverable error".
    with running_redis(tmp_path / "redis", "--rename-command", "SADD", "") as url:
        worker = spawn_worker(db_conninfo, url, tmp_path, "doomed")
        try:
            status = worker.process.wait(WORKER_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            pytest.fail(f"the worker kept running:\n{worker.log()}")

    log = worker.log()
    assert status == 1, log
    assert "Unrecoverable error" in log
    assert f"error: the Celery worker {worker.name} stopped with exit code 1" in log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_worker_stopped_by_signal_exits_0(
    signum: signal.Signals,
    db_conninfo: str,
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(db_conninfo)

    os.killpg(worker.process.pid, signum)
    status = worker.process.wait(WORKER_START_TIMEOUT_S)

    assert status == 0, worker.log()
    assert "error:" not in worker.log()

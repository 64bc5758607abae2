"""The ``omr-desktop`` commands on the cluster engine, with real workers."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from omr_desktop.cli import main
from omr_desktop.db import task_store
from omr_desktop.pipeline import events as ev
from tests.cluster.conftest import VISIBILITY_TIMEOUT_S, Worker, free_port

pytestmark = [pytest.mark.db, pytest.mark.slow]

SENSITIVE = "2"


def use_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dsn: str, broker_url: str
) -> None:
    """Point the command at ``dsn`` and the cluster engine on ``broker_url``."""
    monkeypatch.setenv("OMR_DATABASE_URL", dsn)
    monkeypatch.setenv("OMR_DATA_DIR", str(tmp_path / "cli-data"))
    monkeypatch.setenv("OMR_ENGINE", "cluster")
    monkeypatch.setenv("OMR_BROKER_URL", broker_url)
    monkeypatch.setenv("OMR_CLUSTER_VISIBILITY_TIMEOUT", str(VISIBILITY_TIMEOUT_S))


def task_row(dsn: str, err: str) -> task_store.TaskRow:
    """Return the row of the task whose id the command printed on stderr."""
    task_id = err.split("Task ", 1)[1].split(":", 1)[0]
    with psycopg.connect(dsn) as conn:
        row = task_store.get_task(conn, task_id)
    assert row is not None, err
    return row


def test_reprocess_runs_on_cluster_engine(
    seeded_pair: Callable[[int], tuple[str, str, list[int]]],
    start_worker: Callable[..., Worker],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _local_dsn, dsn, ids = seeded_pair(4)
    start_worker(dsn)
    use_cluster(monkeypatch, tmp_path, dsn, redis_url)
    sheets = ",".join(str(i) for i in ids)

    status = main(["reprocess", "--sheets", sheets, "--profile", SENSITIVE])

    out = capsys.readouterr()
    assert status == 0, out.err
    row = task_row(dsn, out.err)
    assert row.status == task_store.SUCCESS, row.error
    assert row.runner_host == task_store.CLUSTER_RUNNER
    assert f"on cluster at {redis_url}" in out.err
    # The progress lines are the local engine's, relayed from the workers.
    assert f"[{ev.PROCESSING_SHEETS}]" in out.err
    assert f"[{ev.RECALCULATING_SCORES}]" in out.err
    assert f"sheets: {len(ids)} processed" in out.out


def test_reprocess_falls_back_when_broker_is_down(
    seeded_pair: Callable[[int], tuple[str, str, list[int]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _local_dsn, dsn, ids = seeded_pair(2)
    # A loopback port with no listener.
    use_cluster(monkeypatch, tmp_path, dsn, f"redis://127.0.0.1:{free_port()}/0")
    sheets = ",".join(str(i) for i in ids)

    status = main(["reprocess", "--sheets", sheets, "--profile", SENSITIVE])

    out = capsys.readouterr()
    assert status == 0, out.err
    assert "is unreachable" in out.err
    assert "Reprocessing on local threads." in out.err
    row = task_row(dsn, out.err.split("Reprocessing on local threads.", 1)[1])
    assert row.status == task_store.SUCCESS, row.error
    assert row.runner_host == socket.gethostname()

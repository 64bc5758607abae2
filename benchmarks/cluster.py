"""Compare the cluster engine (two worker processes) with the local engine.

    python benchmarks/cluster.py [--sheets 1000] [--dsn URL] [--chunk 64]

1. Seeds N demo sheets (1700 x 2400 grey JPEG, 150 questions x 5 options)
   read with Default, in a scratch database and folder, and clones the
   database so that both engines start from the same rows.
2. Local engine: a TaskManager over 2 detection threads reprocesses every
   sheet with Sensitive.
3. Cluster engine: a private redis-server on a free loopback port and two
   ``omr-desktop worker`` processes (solo pool, one task at a time each);
   the same reprocess is sent as ``reprocess_omr_sheet_task`` in chunks of
   ``--chunk`` sheets.

Prints, for each engine, the time from submit to SUCCESS, the time to the
first and last Processing Sheets event, and the final write (Loading to
Database and Recalculating Scores), and checks that both databases hold
the same answers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch_db import scratch_database  # noqa: E402

from omr_desktop.cluster.celery_app import make_celery  # noqa: E402
from omr_desktop.cluster.redis_events import RedisEvents  # noqa: E402
from omr_desktop.cluster.settings import ClusterSettings  # noqa: E402
from omr_desktop.cluster.tasks import TASK_NAME  # noqa: E402
from omr_desktop.config import DatabaseChoice  # noqa: E402
from omr_desktop.db import task_store  # noqa: E402
from omr_desktop.db.database import Database  # noqa: E402
from omr_desktop.db.migrate import migrate  # noqa: E402
from omr_desktop.pipeline import events as ev  # noqa: E402
from omr_desktop.pipeline.demo import seed_demo  # noqa: E402
from omr_desktop.pipeline.reprocess import ReprocessRequest  # noqa: E402
from omr_desktop.pipeline.task_manager import TaskManager  # noqa: E402

SENSITIVE = 2
# Every answer, then every sheet's fills.
ANSWERS = (
    "SELECT sheet_id, question, answer_raw, answer_corrected, confidence_score"
    " FROM omr_answers ORDER BY sheet_id, question"
)
FILLS = "SELECT id, fills FROM sheets ORDER BY id"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--dsn", help="a role that may create databases")
    args = parser.parse_args()
    with scratch_database(args.dsn) as (conninfo, scratch):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrate(conn)
            started = time.monotonic()
            seed_demo(conn, scratch / "images", sheets=args.sheets, workers=2)
            print(f"seeded {args.sheets} sheets in {time.monotonic() - started:.1f} s")
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM sheets ORDER BY id")]
        local_dsn = clone(conninfo, "local")
        cluster_dsn = clone(conninfo, "cluster")
        try:
            local = run_local(local_dsn, ids)
            report("local engine, 2 threads", local)
            cluster = run_cluster(cluster_dsn, ids, args.chunk, scratch)
            report(f"cluster, 2 worker processes, chunks of {args.chunk}", cluster)
            same = answers(local_dsn) == answers(cluster_dsn)
            print(f"same answers in both databases: {same}")
        finally:
            drop(conninfo, "local")
            drop(conninfo, "cluster")
    return 0


def clone(conninfo: str, suffix: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    source = str(params["dbname"])
    params["dbname"] = "postgres"
    with psycopg.connect(psycopg.conninfo.make_conninfo("", **params)) as conn:
        conn.autocommit = True
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(f"{source}_{suffix}"), sql.Identifier(source)
            )
        )
    params["dbname"] = f"{source}_{suffix}"
    return psycopg.conninfo.make_conninfo("", **params)


def drop(conninfo: str, suffix: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    name = f"{params['dbname']}_{suffix}"
    params["dbname"] = "postgres"
    with psycopg.connect(psycopg.conninfo.make_conninfo("", **params)) as conn:
        conn.autocommit = True
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )


def answers(dsn: str) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(ANSWERS).fetchall() + conn.execute(FILLS).fetchall()


def run_local(dsn: str, ids: list[int]) -> dict[str, float]:
    database = Database(DatabaseChoice(dsn, "environment"))
    database.open()
    pool = ThreadPoolExecutor(2)
    manager = TaskManager(database, pool, 2)
    events: list[tuple[float, Any]] = []
    manager.add_listener(lambda e: events.append((time.monotonic(), e)))
    try:
        started = time.monotonic()
        task_id = manager.submit(ReprocessRequest(tuple(ids), SENSITIVE))
        manager.wait(task_id)
        total = time.monotonic() - started
        with database.connect() as conn:
            row = task_store.get_task(conn, task_id)
    finally:
        manager.shutdown()
        pool.shutdown()
        database.close()
    assert row is not None
    assert row.status == task_store.SUCCESS, row.error
    return timings(started, total, [(t, e.to_dict()) for t, e in events])


def run_cluster(
    dsn: str, ids: list[int], chunk: int, scratch: Path
) -> dict[str, float]:
    redis_dir = Path(tempfile.mkdtemp(prefix="omr-bench-redis-", dir=scratch))
    port = free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(redis_dir),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        time.sleep(0.5)
        app = make_celery(ClusterSettings(url))
        env = dict(
            os.environ,
            OMR_DATABASE_URL=dsn,
            OMR_BROKER_URL=url,
            OMR_LOG_LEVEL="WARNING",
            OMR_DATA_DIR=str(scratch / "w"),
        )
        for n in (1, 2):
            name = f"bench{n}@{os.getpid()}"
            workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "omr_desktop.cli",
                        "worker",
                        "--pool",
                        "solo",
                        "--concurrency",
                        "1",
                        "--name",
                        name,
                    ],
                    env=env,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            while not app.control.ping(destination=[name], timeout=0.5):
                time.sleep(0.2)
        events = RedisEvents.from_url(url)
        task_id = str(uuid.uuid4())
        started = time.monotonic()
        app.send_task(
            TASK_NAME,
            args=[task_id, ids, SENSITIVE],
            kwargs={"chunk_sheets": chunk},
            task_id=task_id,
        )
        seen: list[tuple[float, dict[str, Any]]] = []
        while not seen or seen[-1][1]["event"] not in (ev.COMPLETE, ev.ERROR):
            for data in events.history(task_id, len(seen)):
                seen.append((time.monotonic(), data))
            time.sleep(0.01)
        total = time.monotonic() - started
        assert seen[-1][1]["event"] == ev.COMPLETE, seen[-1]
        events.close()
        app.close()
        return timings(started, total, seen)
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
        redis.terminate()
        redis.wait(10)


def timings(
    started: float, total: float, events: list[tuple[float, dict[str, Any]]]
) -> dict[str, float]:
    processing = [t for t, e in events if e["stage"] == ev.PROCESSING_SHEETS]
    final = [t for t, e in events if e["stage"] == ev.LOADING_TO_DATABASE]
    result = events[-1][1].get("result") or {}
    stage_s = result.get("stage_s", {})
    return {
        "total_s": total,
        "first_processing_s": processing[0] - started,
        "last_processing_s": processing[-1] - started,
        "final_write_s": events[-1][0] - final[0] if final else 0.0,
        "load_s": stage_s.get(ev.LOADING_TO_DATABASE, 0.0),
        "rescore_s": stage_s.get(ev.RECALCULATING_SCORES, 0.0),
        "sheets": float(result.get("sheets_processed", 0)),
    }


def report(name: str, numbers: dict[str, float]) -> None:
    sheets = numbers["sheets"]
    detect = numbers["last_processing_s"] - numbers["first_processing_s"]
    print(
        f"{name}: {numbers['total_s']:.1f} s submit to SUCCESS "
        f"({sheets / numbers['total_s']:.0f} sheets/s); Processing Sheets "
        f"{detect:.1f} s ({sheets / max(detect, 1e-9):.0f} sheets/s); final "
        f"write {numbers['final_write_s']:.2f} s (load {numbers['load_s']:.2f} s, "
        f"rescore {numbers['rescore_s']:.2f} s)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())

"""Load the HTTP server: many streams on one task, many tasks back to back.

    python benchmarks/server_load.py [--clients 200] [--sheets 400]
        [--tasks 50] [--workers 2] [--dsn URL]

1. Seeds max(sheets, tasks) demo sheets in a scratch database and folder.
2. Starts ``omr-desktop serve`` in a child process on 127.0.0.1 and a free
   port, so the server's loop is not shared with the clients.
3. One task: posts a reprocess of ``--sheets`` sheets with Sensitive and
   opens ``--clients`` streams on it at once.
4. Back to back: posts ``--tasks`` one-sheet tasks one after another, then
   follows each with one stream.

For each phase it prints the events delivered, lost (stored but not
received) and out of order (both must be 0), the delay from an event's
timestamp to its arrival at a client (p50, p95, max), and the time to the
first byte of a stream. Without --dsn it starts an embedded server in a
temporary folder; with --dsn it creates and drops a database
omr_bench_<pid> there. Every request goes to 127.0.0.1, and every loop is
bounded by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import psycopg
from psycopg import sql

from omr_desktop.db import task_store
from omr_desktop.db.embedded import EmbeddedServer
from omr_desktop.db.migrate import migrate
from omr_desktop.pipeline.demo import seed_demo

SENSITIVE = 2

# Runs the omr-desktop entry point with its log folder as the first argument.
SERVE_DRIVER = """
import os, sys
os.environ["OMR_LOG_DIR"] = sys.argv[1]
from omr_desktop.cli import main
sys.exit(main(["--log-level", "WARNING", *sys.argv[2:]]))
"""

LISTENING = re.compile(r"Serving on http://127\.0\.0\.1:(\d+)")


def main() -> int:
    args = parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="omr-bench-server-"))
    scratch.chmod(0o755)
    server = None
    admin = args.dsn
    try:
        if admin is None:
            server = EmbeddedServer(scratch / "pg")
            server.start()
            admin = server.conninfo("postgres")
        run(args, admin, scratch)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--sheets", type=int, default=400)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per phase at most"
    )
    parser.add_argument(
        "--dsn",
        help="PostgreSQL URL of a role that may create "
        "databases (default: a temporary embedded server)",
    )
    return parser.parse_args()


def run(args: argparse.Namespace, admin: str, scratch: Path) -> None:
    name = f"omr_bench_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(admin)
    params["dbname"] = name
    conninfo = psycopg.conninfo.make_conninfo(**params)
    try:
        count = max(args.sheets, args.tasks)
        started = time.monotonic()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrate(conn)
            seed_demo(conn, scratch / "data", sheets=count, workers=args.workers)
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM sheets ORDER BY id")]
        print(f"seeded {count} sheets in {time.monotonic() - started:.1f} s")
        with serve(conninfo, scratch, args.workers) as port:
            asyncio.run(phases(args, conninfo, port, ids))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


class serve:  # noqa: N801 - used as a context manager, like open()
    """Run the serve command in a child process; yield its port."""

    def __init__(self, conninfo: str, scratch: Path, workers: int) -> None:
        env = dict(os.environ, OMR_DATABASE_URL=conninfo, OMR_SERVER_PORT="0")
        env["OMR_DATA_DIR"] = str(scratch / "data")
        env.pop("OMR_SERVER_HOST", None)
        env.pop("OMR_SERVER_TOKEN", None)
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SERVE_DRIVER,
                str(scratch / "logs"),
                "serve",
                "--workers",
                str(workers),
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> int:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            match = LISTENING.search(line)
            if match:
                return int(match.group(1))
        raise RuntimeError(f"serve exited with {self._process.wait()}")

    def __exit__(self, *exc: object) -> None:
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@dataclass
class StreamRecord:
    """What one stream delivered: (id, event, delay in s) and its first byte."""

    received: list[tuple[int, str, float]] = field(default_factory=list)
    first_byte_s: float = 0.0


async def read_events(
    session: aiohttp.ClientSession, task_id: str, timeout_s: float
) -> StreamRecord:
    record = StreamRecord()
    opened = time.monotonic()
    async with session.get(
        f"/api/sheets/reprocess/{task_id}/stream",
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as response:
        record.first_byte_s = time.monotonic() - opened
        fields: dict[str, str] = {}
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if line:
                if not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    fields[key] = value
                continue
            if "event" in fields:
                data = json.loads(fields["data"])
                sent = datetime.fromisoformat(data["timestamp"]).timestamp()
                record.received.append(
                    (int(fields["id"]), fields["event"], time.time() - sent)
                )
            fields = {}
    return record


def stored_ids(conninfo: str, task_id: str) -> list[tuple[int, str]]:
    with psycopg.connect(conninfo) as conn:
        return [(e.event_id, e.event) for e in task_store.events_after(conn, task_id)]


def check(
    records: list[StreamRecord], expected: list[tuple[int, str]]
) -> dict[str, int]:
    lost = 0
    disorder = 0
    delivered = 0
    for record in records:
        got = [(i, e) for i, e, _ in record.received]
        delivered += len(got)
        lost += len(set(expected) - set(got))
        disorder += sum(1 for a, b in itertools.pairwise(got) if b[0] <= a[0])
    return {"delivered": delivered, "lost": lost, "out_of_order": disorder}


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, "
        f"p95 {p95 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )


async def phases(
    args: argparse.Namespace, conninfo: str, port: int, ids: list[int]
) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{port}", connector=connector
    ) as session:
        await one_task_many_clients(args, conninfo, session, ids[: args.sheets])
        await many_tasks_back_to_back(args, conninfo, session, ids[: args.tasks])


async def post(session: aiohttp.ClientSession, sheet_ids: list[int]) -> str:
    async with session.post(
        "/api/sheets/reprocess",
        json={"sheet_ids": sheet_ids, "profile_id": SENSITIVE},
    ) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"POST failed with {response.status}: {body}")
        return str(body["task_id"])


async def one_task_many_clients(
    args: argparse.Namespace,
    conninfo: str,
    session: aiohttp.ClientSession,
    sheet_ids: list[int],
) -> None:
    started = time.monotonic()
    task_id = await post(session, sheet_ids)
    records = await asyncio.gather(
        *(read_events(session, task_id, args.timeout) for _ in range(args.clients))
    )
    elapsed_s = time.monotonic() - started
    counts = check(list(records), stored_ids(conninfo, task_id))
    delays = [d for r in records for _, _, d in r.received]
    print(
        f"\none task of {len(sheet_ids)} sheets, {args.clients} clients: "
        f"all streams ended after {elapsed_s:.1f} s"
    )
    print(
        f"  events delivered {counts['delivered']}, lost {counts['lost']}, "
        f"out of order {counts['out_of_order']}"
    )
    print(f"  delay from event to client: {percentiles(delays)}")
    print(f"  first byte: {percentiles([r.first_byte_s for r in records])}")


async def many_tasks_back_to_back(
    args: argparse.Namespace,
    conninfo: str,
    session: aiohttp.ClientSession,
    sheet_ids: list[int],
) -> None:
    started = time.monotonic()
    post_times: list[float] = []
    task_ids = []
    readers = []
    for sheet_id in sheet_ids:
        sent = time.monotonic()
        task_id = await post(session, [sheet_id])
        post_times.append(time.monotonic() - sent)
        task_ids.append(task_id)
        # Each stream opens while the later tasks are still being posted.
        readers.append(
            asyncio.ensure_future(read_events(session, task_id, args.timeout))
        )
    records = await asyncio.gather(*readers)
    elapsed_s = time.monotonic() - started
    totals = {"delivered": 0, "lost": 0, "out_of_order": 0}
    for task_id, record in zip(task_ids, records, strict=True):
        for key, value in check([record], stored_ids(conninfo, task_id)).items():
            totals[key] += value
    delays = [d for r in records for _, _, d in r.received]
    print(
        f"\n{len(task_ids)} one-sheet tasks back to back: all ended after "
        f"{elapsed_s:.1f} s"
    )
    print(f"  POST: {percentiles(post_times)}")
    print(
        f"  events delivered {totals['delivered']}, lost {totals['lost']}, "
        f"out of order {totals['out_of_order']}"
    )
    print(f"  delay from event to client: {percentiles(delays)}")


if __name__ == "__main__":
    sys.exit(main())

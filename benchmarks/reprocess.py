"""Reprocess a batch end to end and compare it with two baselines.

    python benchmarks/reprocess.py [--sheets 7109] [--workers 2] [--rounds 1]
        [--alternate K [--alternate-numpy]] [--dsn URL]

1. Seeds N demo sheets (1700 x 2400 grey JPEG at quality 90, 150 questions
   x 5 options) read with Default, in a scratch database and folder.
2. Decode baseline: only decodes the same images, with the same imread flags
   and resize as the pipeline, on the same number of threads.
3. Reprocess with Sensitive (about one answer in ten changes), in a child
   process so its peak memory is its own.
4. Every answer changed: the stored answers are overwritten first, so the
   same reprocess has to update every row.
5. executemany baseline: the same rows updated one statement per row
   (psycopg's pipelined executemany) in one transaction, on an identical
   copy of omr_answers.

Each reprocess and the executemany baseline start right after a
CHECKPOINT, so that no checkpoint started by earlier writes overlaps them,
and each reprocess after a VACUUM ANALYZE of the database, so that no
autovacuum shares the cores with it. Prints per-stage times, sheets and
answers per second, peak memory, the checkpoints and autovacuums during
each reprocess, the CPU time of the reprocess and of the postgres
processes, and the two ratios. With --rounds N, steps 2-5 run N times on
the same batch, each round after the batch was read with Default again. Without --dsn it
starts an embedded server in a temporary folder; with --dsn it creates and
drops a database omr_bench_<pid> there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch_db import (  # noqa: E402
    checkpoint,
    checkpoints_done,
    executemany_baseline,
    scratch_database,
)

from omr_desktop.config import DatabaseChoice
from omr_desktop.db.database import Database
from omr_desktop.db.migrate import migrate
from omr_desktop.engine import BUILTIN_PROFILES, Template, read_sheet
from omr_desktop.engine.image import load_sheet_for_measuring
from omr_desktop.pipeline.copy_rows import encode_answer_columns, encode_sheet

DEFAULT = 1
SENSITIVE = 2


def main() -> int:
    args = parse_args()
    if args.child:
        return child(args)
    with scratch_database(args.dsn) as (conninfo, scratch):
        report(args, conninfo, scratch)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets", type=int, default=7109)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--dsn",
        help="PostgreSQL URL of a role that may create "
        "databases (default: a temporary embedded server)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the timed reprocesses on the same seeded batch (default 1)",
    )
    parser.add_argument(
        "--alternate",
        type=int,
        default=0,
        metavar="K",
        help="then alternate K decode passes and reprocesses of the first "
        "--alternate-sheets sheets and compare the best of each (default 0)",
    )
    parser.add_argument("--alternate-sheets", type=int, default=300, metavar="M")
    parser.add_argument(
        "--alternate-numpy",
        action="store_true",
        help="in each alternating round, also reprocess with the numpy path "
        "in place of the compiled measuring kernels",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile", type=int, default=SENSITIVE, help=argparse.SUPPRESS
    )
    return parser.parse_args()


def report(args: argparse.Namespace, conninfo: str, scratch: Path) -> None:
    from omr_desktop.pipeline.demo import seed_demo

    with psycopg.connect(conninfo, autocommit=True) as conn:
        migrate(conn)
        version = conn.execute("SHOW server_version").fetchone()
        wal_before = _wal_lsn(conn)
    started = time.perf_counter()
    with psycopg.connect(conninfo) as conn:
        seeded = seed_demo(
            conn, scratch / "data", sheets=args.sheets, workers=args.workers
        )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        seed_wal_mb = (_wal_lsn(conn) - wal_before) / 1e6
    print(
        f"PostgreSQL {version[0] if version else '?'}, {args.workers} workers, "
        f"{os.cpu_count()} cores"
    )
    print(
        f"Seeded {seeded.sheets:,} sheets, {seeded.answers:,} answers in "
        f"{time.perf_counter() - started:.0f} s ({seed_wal_mb:,.0f} MB of WAL)"
    )

    for number in range(1, args.rounds + 1):
        if number > 1:
            # Read with Default again, so that Sensitive changes one answer
            # in ten once more.
            child_run(conninfo, args.workers, DEFAULT)
        # Earlier writes would start autovacuums during a timed pass, unless
        # a VACUUM has just done their work.
        vacuum(conninfo)
        if args.rounds > 1:
            print(f"Round {number} of {args.rounds}:")
        run_round(args, conninfo)
    if args.alternate:
        vacuum(conninfo)
        alternate(args, conninfo)


def alternate(args: argparse.Namespace, conninfo: str) -> None:
    """Alternate decode passes and reprocesses of the same sheets, best of each.

    The machine's speed drifts over minutes, and a full batch takes a
    minute per pass, so a ratio of two full passes moves by a fifth from
    one round to the next. Short passes taken in turn see the same drift,
    and the best of each is the closest to an undisturbed machine. The
    reprocesses run in this process; their Processing Sheets stage is
    compared with the decode pass.
    """
    from omr_desktop.engine import kernels
    from omr_desktop.pipeline.reprocess import ReprocessRequest
    from omr_desktop.pipeline.task_manager import TaskManager

    if args.alternate_numpy and kernels.compiled is None:
        raise SystemExit("--alternate-numpy: this install has no compiled kernels")

    database = Database(DatabaseChoice(conninfo, "environment"))
    database.open()
    with database.connect() as conn:
        ids = tuple(
            r[0]
            for r in conn.execute(
                "SELECT id FROM sheets ORDER BY id LIMIT %s", (args.alternate_sheets,)
            )
        )
    decode_s: list[float] = []
    detect_s: list[float] = []
    processing_s: list[float] = []
    numpy_s: list[float] = []
    finished: list[Any] = []
    decode_cpu = reprocess_cpu = server_cpu = 0.0
    # Server CPU at the first and the last event of Processing Sheets.
    processing_server: list[float] = []

    def listen(event: Any) -> None:
        if event.event != "progress":
            finished.append(event)
        elif event.stage == "Processing Sheets" and (
            not processing_server or event.progress_percentage >= 100
        ):
            processing_server.append(_server_cpu_s())

    thread_cpu: dict[str, float] = {}
    with ThreadPoolExecutor(args.workers) as executor:
        manager = TaskManager(database, executor, args.workers)
        manager.add_listener(listen)
        copy_cpu = 0.0
        for _ in range(args.alternate):
            cpu = time.process_time()
            decode_s.append(decode_baseline(conninfo, args.workers, len(ids)))
            decode_cpu += time.process_time() - cpu
            detect_s.append(decode_baseline(conninfo, args.workers, len(ids), True))
            cpu, server = time.process_time(), _server_cpu_s()
            before = _thread_cpu_s()
            manager.wait(manager.submit(ReprocessRequest(ids, SENSITIVE)))
            after = _thread_cpu_s()
            reprocess_cpu += time.process_time() - cpu
            server_cpu += _server_cpu_s() - server
            copy_cpu += processing_server[-1] - processing_server[0]
            processing_server.clear()
            for name, seconds in after.items():
                used = seconds - before.get(name, 0.0)
                thread_cpu[name] = thread_cpu.get(name, 0.0) + used
            event = finished[-1]
            if event.event != "complete":
                raise RuntimeError(f"Alternating reprocess failed: {event.message}")
            processing_s.append(event.result["stage_s"]["Processing Sheets"])
            if args.alternate_numpy:
                numpy_s.append(_numpy_processing_s(manager, ids, finished))
                processing_server.clear()
        manager.shutdown()
    database.close()
    print(
        f"Alternating {args.alternate} decode passes and reprocesses of "
        f"{len(ids)} sheets on {args.workers} threads:"
    )
    passes = [
        ("decode", decode_s),
        ("read and encode", detect_s),
        ("Processing Sheets", processing_s),
    ]
    if numpy_s:
        passes.append(("... numpy path", numpy_s))
    for label, times in passes:
        print(
            f"  {label:<18} best {min(times):.2f} s ({len(ids) / min(times):.0f} "
            f"sheets/s), median {statistics.median(times):.2f} s"
        )
    ratios = [
        ("Processing Sheets", processing_s),
        ("read and encode without the pipeline", detect_s),
    ]
    if numpy_s:
        ratios.append(("Processing Sheets, numpy path", numpy_s))
    for label, times in ratios:
        best = min(times) / min(decode_s)
        median = statistics.median(times) / statistics.median(decode_s)
        print(f"  Ratio {label} / decode: best {best:.2f}, median {median:.2f}")
    # The CPU of whole reprocesses, Loading to Database and the rescore
    # included, per sheet.
    sheets = args.alternate * len(ids)
    shares = ", ".join(
        f"{name} {1e3 * seconds / sheets:.2f}" for name, seconds in thread_cpu.items()
    )
    print(
        f"  CPU per sheet: decode {1e3 * decode_cpu / sheets:.2f} ms; reprocess "
        f"{1e3 * reprocess_cpu / sheets:.2f} ms ({shares}), postgres processes "
        f"{1e3 * server_cpu / sheets:.2f} ms, of which during Processing Sheets "
        f"{1e3 * copy_cpu / sheets:.2f} ms"
    )


def _numpy_processing_s(
    manager: Any, ids: tuple[int, ...], finished: list[Any]
) -> float:
    """Reprocess ``ids`` with the numpy measuring path; return its Processing s."""
    from omr_desktop.engine import kernels
    from omr_desktop.pipeline.reprocess import ReprocessRequest

    with kernels.numpy_path():
        manager.wait(manager.submit(ReprocessRequest(ids, SENSITIVE)))
    event = finished[-1]
    if event.event != "complete":
        raise RuntimeError(f"Alternating reprocess failed: {event.message}")
    return float(event.result["stage_s"]["Processing Sheets"])


def run_round(args: argparse.Namespace, conninfo: str) -> None:
    """Time both reprocesses, the decode passes around them and executemany."""
    # The machine's speed drifts over minutes, so each reprocess is compared
    # with the mean of the decode passes just before and just after it.
    decodes = [timed_decode(conninfo, args)]
    usual = child_run(conninfo, args.workers, SENSITIVE)
    print_run("Sensitive, one answer in ten changes", usual, args.sheets)
    decodes.append(timed_decode(conninfo, args))
    overwrite_answers(conninfo)
    vacuum(conninfo)
    every = child_run(conninfo, args.workers, SENSITIVE)
    print_run("Sensitive, every answer changes", every, args.sheets)
    decodes.append(timed_decode(conninfo, args))

    baseline_s = executemany_baseline(conninfo)
    print(
        f"executemany baseline: {baseline_s:.1f} s for "
        f"{every['result']['answers_written']:,} rows "
        f"({every['result']['answers_written'] / baseline_s:,.0f} rows/s)"
    )
    stages = every["result"]["stage_s"]
    after_processing = stages["Loading to Database"] + stages["Recalculating Scores"]
    print(
        "Ratio executemany / pipeline database time (every answer changes): "
        f"{baseline_s / every['result']['database_s']:.1f}x with the COPY "
        f"during processing, {baseline_s / after_processing:.1f}x without it"
    )
    ratios = [
        run["result"]["stage_s"]["Processing Sheets"] / ((before + after) / 2)
        for run, before, after in (
            (usual, decodes[0], decodes[1]),
            (every, decodes[1], decodes[2]),
        )
    ]
    print(
        "Ratio Processing Sheets / mean of the decode passes around it: "
        f"{ratios[0]:.2f} (every-answer run: {ratios[1]:.2f})"
    )


def vacuum(conninfo: str) -> None:
    """VACUUM ANALYZE the whole database, so that no autovacuum starts soon."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def timed_decode(conninfo: str, args: argparse.Namespace) -> float:
    """Run and print one decode baseline pass; return its seconds."""
    cpu = time.process_time()
    seconds = decode_baseline(conninfo, args.workers)
    cpu = time.process_time() - cpu
    print(
        f"Decode baseline: {seconds:.1f} s, {args.sheets / seconds:.0f} sheets/s, "
        f"CPU {cpu:.1f} s"
    )
    return seconds


def print_run(label: str, run_data: dict[str, Any], sheets: int) -> None:
    result = run_data["result"]
    stages = result["stage_s"]
    processing = stages["Processing Sheets"]
    db_steps = stages["Loading to Database"] + stages["Recalculating Scores"]
    print(f"{label}:")
    for stage, seconds in stages.items():
        print(f"  {stage:<22} {seconds:7.2f} s")
    print(
        f"  total {result['duration_s']:.1f} s; {sheets / processing:.0f} sheets/s "
        f"and {result['answers_written'] / processing:,.0f} answers/s processing"
    )
    copy_s = result["database_s"] - db_steps
    print(
        f"  database time {result['database_s']:.2f} s (COPY {copy_s:.2f} s while "
        f"processing, then load + rescore + commit {db_steps:.2f} s)"
    )
    print(
        f"  answers changed {result['answers_changed']:,}, rows updated "
        f"{result['answers_updated']:,}, scores changed "
        f"{result['sheets_score_changed']:,}"
    )
    print(f"  peak memory {run_data['peak_rss_mb']:.0f} MB")
    print(f"  checkpoints during the run: {run_data['checkpoints']}")
    vacuumed = ", ".join(run_data["autovacuums"]) or "none"
    print(f"  tables autovacuumed or autoanalyzed during the run: {vacuumed}")
    print(
        f"  CPU: reprocess process {run_data['child_cpu_s']:.1f} s, postgres "
        f"processes {run_data['server_cpu_s']:.1f} s"
    )
    threads = run_data.get("thread_cpu_s", {})
    if threads:
        shares = ", ".join(f"{name} {cpu:.1f} s" for name, cpu in threads.items())
        print(f"  CPU by thread: {shares}")
    for line in run_data["log"]:
        print(f"  {line}")


def decode_baseline(
    conninfo: str, workers: int, limit: int | None = None, detect: bool = False
) -> float:
    """Decode the first ``limit`` sheets (all by default) as the pipeline does.

    With ``detect``, read and encode them as the pipeline's detection
    threads do instead, without the database.
    """
    with psycopg.connect(conninfo) as conn:
        layout = conn.execute("SELECT layout FROM templates LIMIT 1").fetchone()
        paths = [
            Path(r[0])
            for r in conn.execute(
                "SELECT image_path FROM sheets ORDER BY id LIMIT %s", (limit,)
            )
        ]
    assert layout is not None
    template = Template.from_dict(layout[0])
    # The decode read_sheet does: reduced where the template allows, kept at
    # half the page (load_sheet_image would also enlarge it, about 1.5 ms
    # a sheet that the pipeline never spends).
    settings = BUILTIN_PROFILES[SENSITIVE].settings

    def detect_one(path: Path) -> object:
        reading = read_sheet(path, template, settings)
        return encode_answer_columns(1, reading.columns), encode_sheet(1, reading)

    def decode_one(path: Path) -> object:
        return load_sheet_for_measuring(path, template)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as executor:
        for _result in executor.map(detect_one if detect else decode_one, paths):
            pass
    return time.perf_counter() - started


def _wal_lsn(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def _counted_checkpoints(conninfo: str, previous: int) -> int:
    """Return the checkpoint count once it includes the one just requested.

    The checkpointer wakes the CHECKPOINT command before it updates its
    statistics, so a count read at once may still miss that checkpoint
    and then show it as one run during the reprocess.
    """
    deadline = time.monotonic() + 5.0
    count = checkpoints_done(conninfo)
    while count <= previous and time.monotonic() < deadline:
        time.sleep(0.05)
        count = checkpoints_done(conninfo)
    return count


def child_run(conninfo: str, workers: int, profile: int) -> dict[str, Any]:
    """Run one reprocess in a child process, right after a checkpoint."""
    previous = checkpoints_done(conninfo)
    checkpoint(conninfo)
    before = _counted_checkpoints(conninfo, previous)
    vacuums = _autovacuums(conninfo)
    server_cpu = _server_cpu_s()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            conninfo,
            "--workers",
            str(workers),
            "--profile",
            str(profile),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    run_data["checkpoints"] = checkpoints_done(conninfo) - before
    run_data["autovacuums"] = sorted(
        name
        for name, count in _autovacuums(conninfo).items()
        if count > vacuums.get(name, 0)
    )
    run_data["server_cpu_s"] = _server_cpu_s() - server_cpu
    run_data["child_cpu_s"] = (after.ru_utime + after.ru_stime) - (
        children.ru_utime + children.ru_stime
    )
    return run_data


def _autovacuums(conninfo: str) -> dict[str, int]:
    """Return each table's count of autovacuums and autoanalyzes so far."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relid::regclass::text, autovacuum_count + autoanalyze_count"
            " FROM pg_stat_all_tables"
        ).fetchall()
    return {str(name): int(count) for name, count in rows}


def _server_cpu_s() -> float:
    """Return the CPU seconds used so far by this machine's postgres processes.

    Each running process counts its own time and the time of its children
    that have exited, so backends and autovacuum workers that ended since
    the last call still count through the postmaster. On a machine without
    /proc it is 0.
    """
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text[text.find("(") + 1 : text.rfind(")")] != "postgres":
            continue
        total += _cpu_ticks(text, with_children=True)
    return total / ticks


def child(args: argparse.Namespace) -> int:
    from omr_desktop.pipeline.reprocess import ReprocessRequest
    from omr_desktop.pipeline.task_manager import TaskManager

    database = Database(DatabaseChoice(args.child, "environment"))
    database.open()
    with database.connect() as conn:
        ids = tuple(r[0] for r in conn.execute("SELECT id FROM sheets ORDER BY id"))
    final: list[Any] = []
    steps = _StepLog()
    store_logger = logging.getLogger("omr_desktop.db.reprocess_store")
    store_logger.setLevel(logging.DEBUG)
    store_logger.addHandler(steps)
    with ThreadPoolExecutor(args.workers) as executor:
        manager = TaskManager(database, executor, args.workers)
        manager.add_listener(
            lambda e: final.append(e) if e.event != "progress" else None
        )
        task_id = manager.submit(ReprocessRequest(ids, args.profile))
        manager.wait(task_id)
        threads = _thread_cpu_s()  # before the pool's threads exit
        manager.shutdown()
    database.close()
    event = final[-1]
    if event.event != "complete":
        print(event.message, file=sys.stderr)
        return 1
    report = {
        "result": event.result,
        "peak_rss_mb": _peak_rss_mb(),
        "log": steps.lines,
        "thread_cpu_s": threads,
    }
    print(json.dumps(report))
    return 0


def _thread_cpu_s() -> dict[str, float]:
    """Return CPU seconds per Python thread name of this process, from /proc.

    Threads of one pool share a name prefix ("ThreadPoolExecutor-0_1"), so
    the pool's threads add up under the prefix. Threads that Python did not
    start (none in a reprocess) are left out. Empty without /proc.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            text = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:
            continue
        seconds = _cpu_ticks(text, with_children=False) / ticks
        name = thread.name.rsplit("_", 1)[0]
        totals[name] = totals.get(name, 0.0) + seconds
    return totals


def _cpu_ticks(stat: str, with_children: bool) -> int:
    """Return utime + stime of a /proc stat line, plus cutime + cstime if asked.

    Those are fields 14 to 17 of proc(5). They are counted after the
    command name, which may contain spaces but ends at the last ")".
    """
    fields = stat[stat.rfind(")") + 2 :].split()
    return sum(int(value) for value in fields[11 : 15 if with_children else 13])


def _peak_rss_mb() -> float:
    """Return this process's peak resident memory in MB.

    Linux carries ru_maxrss over an exec from the process that forked, so a
    child of a parent that once held a million executemany rows reported
    1.2 GB. VmHWM in /proc belongs to the memory map made at the exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StepLog(logging.Handler):
    """A logging handler that keeps the database steps' debug lines for the report."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def overwrite_answers(conninfo: str) -> None:
    """Make every stored answer differ from what the next reprocess reads."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            "UPDATE omr_answers SET answer_raw = 'Z', answer_corrected = 'Z',"
            " confidence_score = 0"
        )


if __name__ == "__main__":
    sys.exit(main())

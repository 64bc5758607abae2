"""The ``omr-desktop reprocess`` and ``omr-desktop export`` commands."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omr_desktop.db.batch_store import unknown_batch_message
from omr_desktop.db.database import Database
from omr_desktop.db.id_range import MAX_PROFILE_ID, MAX_SHEET_ID
from omr_desktop.engine_setup import EngineSetup, close_engine, configured_engine
from omr_desktop.pipeline.events import ProgressEvent
from omr_desktop.plural import counted, noun

if TYPE_CHECKING:
    from omr_desktop.pipeline.reprocess import ReprocessRequest

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_SHEETS_FAILED = 3

# A value that starts like a negative number, such as -5 or -5,6.
_DASH_VALUE = re.compile(r"-\d")


def add_reprocess_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``reprocess`` and ``export``."""
    cmd = commands.add_parser(
        "reprocess",
        help="reprocess sheets with a profile, or undo a reprocess",
        description="Detect the selected sheets again with a profile and replace "
        "their answers, scores and flags in one transaction. Exit status: 0 "
        "success (failed sheets are listed), 1 the task failed, 2 invalid "
        "arguments, 3 with --strict when any sheet failed.",
    )
    target = cmd.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--sheets",
        type=_id_list,
        metavar="IDS",
        help="comma-separated sheet ids, such as 12345,12346; "
        "a repeated id counts once",
    )
    target.add_argument("--batch", metavar="NAME", help="every sheet of a batch")
    target.add_argument(
        "--undo",
        metavar="TASK_ID",
        help="restore what a reprocess task changed; TASK_ID is the id "
        "that the reprocess printed",
    )
    cmd.add_argument(
        "--profile",
        type=_profile_id,
        metavar="ID",
        help="id of the detection profile; 'omr-desktop profiles' lists them",
    )
    cmd.add_argument(
        "--redecide",
        action="store_true",
        help="decide again from stored fills without reading images "
        "(profiles that measure like the stored fills only)",
    )
    cmd.add_argument(
        "--override-manual",
        action="store_true",
        help="replace answers an editor corrected by hand too",
    )
    cmd.add_argument(
        "--strict", action="store_true", help="exit with status 3 when any sheet failed"
    )
    cmd.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        metavar="N",
        help="detection threads (default: number of cores)",
    )
    cmd.set_defaults(handler=run_reprocess_command, interrupt_on_sigterm=True)

    export = commands.add_parser(
        "export",
        help="write a batch's scores and answers to a CSV file",
        description="Write a batch to a CSV file: one row per sheet (sequence "
        "number, sheet id, student, score, flags, then each question's "
        "corrected answer), or with --answers one row per answer. An existing "
        "file is replaced only when the new one is complete. Exit status: 0 "
        "success, 1 the file could not be written, 2 invalid arguments (an "
        "unknown batch, sheets outside it, or a folder as --out).",
    )
    export.add_argument(
        "--batch", required=True, metavar="NAME", help="name of the batch to export"
    )
    export.add_argument(
        "--sheets",
        type=_id_list,
        metavar="IDS",
        help="only these comma-separated sheet ids of the batch (default: all)",
    )
    export.add_argument(
        "--out",
        type=_csv_path,
        required=True,
        metavar="FILE.csv",
        help="path of the CSV file to write (UTF-8) in an existing folder, or "
        "- for standard output; an existing file is replaced and a link is "
        "followed",
    )
    export.add_argument(
        "--answers",
        action="store_true",
        help="one row per answer (raw, corrected, confidence, "
        "reason) instead of one row per sheet",
    )
    export.set_defaults(handler=run_export, interrupt_on_sigterm=True)


def _csv_path(text: str) -> Path:
    """Parse ``--out``, rejecting a path that ends with a separator.

    Path() drops a trailing slash, which would turn a folder name into the
    name of the file written.
    """
    if text != "-" and text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(
            f"{text!r} names a folder: give the path of a CSV file, such as "
            f"{text.rstrip('/' + os.sep) or os.sep}{os.sep}export.csv"
        )
    return Path(text)


def _id_list(text: str) -> list[int]:
    """Parse comma-separated sheet ids, dropping repeats after the first."""
    ids: dict[int, None] = {}
    for part in text.split(","):
        part = part.strip()
        if part:
            ids[_sheet_id(part)] = None
    if not ids:
        raise argparse.ArgumentTypeError("no sheet ids given")
    return list(ids)


def _sheet_id(text: str) -> int:
    # isdecimal() alone would also accept digits of other scripts.
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdecimal()) or not digits:
        raise argparse.ArgumentTypeError(
            f"{_shortened(text)!r} is not a sheet id: use positive integers "
            "such as 12,13"
        )
    # The length check comes first because int() rejects more than 4,300
    # digits with an error about its own limit.
    if len(digits) > len(str(MAX_SHEET_ID)) or int(digits) > MAX_SHEET_ID:
        raise argparse.ArgumentTypeError(
            f"sheet id {_shortened(text)} ({len(text):,} digits) is out of "
            f"range: sheet ids are integers from 1 to {MAX_SHEET_ID}"
        )
    return int(digits)


def _profile_id(text: str) -> int:
    text = text.strip()
    valid = text.isascii() and text.isdecimal()
    if (
        not valid
        or len(text.lstrip("0")) > len(str(MAX_PROFILE_ID))
        or not 1 <= int(text) <= MAX_PROFILE_ID
    ):
        raise argparse.ArgumentTypeError(
            f"{_shortened(text)!r} is not a profile id: profile ids are integers "
            f"from 1 to {MAX_PROFILE_ID}; 'omr-desktop profiles' lists them"
        )
    return int(text)


def join_dash_values(argv: Sequence[str]) -> list[str]:
    """Join each ``--sheets`` with a next argument such as ``-5,6`` into one.

    argparse reads ``-5`` as a value but ``-5,6`` as an unknown option, so
    ``--sheets -5,6`` would fail with "expected one argument" instead of
    naming the invalid id. ``--sheets=-5,6`` is the form argparse accepts.
    """
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] == "--sheets" and _DASH_VALUE.match(arg):
            joined[-1] = f"--sheets={arg}"
        else:
            joined.append(arg)
    return joined


def _shortened(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def run_reprocess_command(args: argparse.Namespace) -> int:
    if args.undo:
        return _run_undo(args.undo)
    if args.profile is None:
        print(
            "error: --profile is required; 'omr-desktop profiles' lists the "
            "profile ids.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.workers < 1:
        print(
            f"error: --workers must be at least 1, not {args.workers}.", file=sys.stderr
        )
        return EXIT_USAGE
    with Database() as database:
        sheet_ids = args.sheets or _batch_sheet_ids(database, args.batch)
        if sheet_ids is None:
            return EXIT_USAGE
        return _run_task(database, sheet_ids, args)


def _batch_sheet_ids(database: Database, name: str) -> list[int] | None:
    with database.connect() as conn:
        batch = conn.execute(
            "SELECT id FROM batches WHERE name = %s", (name,)
        ).fetchone()
        if batch is None:
            print(f"error: {unknown_batch_message(conn, name)}", file=sys.stderr)
            return None
        rows = conn.execute(
            "SELECT id FROM sheets WHERE batch_id = %s ORDER BY sequence_no",
            (batch[0],),
        ).fetchall()
    if not rows:
        print(
            f"error: the batch {name!r} has no sheets, so there is nothing to "
            "reprocess. Import scans with 'omr-desktop import', or name "
            "another batch.",
            file=sys.stderr,
        )
        return None
    return [int(r[0]) for r in rows]


def _run_task(
    database: Database, sheet_ids: list[int], args: argparse.Namespace
) -> int:
    from omr_desktop.pipeline.reprocess import ReprocessRequest

    request = ReprocessRequest(
        tuple(sheet_ids),
        args.profile,
        keep_manual=not args.override_manual,
        redecide=args.redecide,
    )
    with ThreadPoolExecutor(args.workers, thread_name_prefix="detect") as executor:
        setup = configured_engine(database, executor, args.workers)
        if setup.fallback_reason is not None:
            print(
                f"warning: {setup.fallback_reason} Reprocessing on local threads.",
                file=sys.stderr,
            )
        try:
            return _run_on(setup, database, request, args)
        finally:
            close_engine(setup.engine)


def _run_on(
    setup: EngineSetup,
    database: Database,
    request: ReprocessRequest,
    args: argparse.Namespace,
) -> int:
    from omr_desktop.pipeline.task_manager import (
        TaskConflictError,
        TaskManager,
        TaskRequestError,
    )

    final: list[ProgressEvent] = []
    bar = ProgressBar(sys.stderr)
    manager = TaskManager(database, engine=setup.engine)
    manager.add_listener(bar.update)
    manager.add_listener(lambda e: final.append(e) if e.event != "progress" else None)
    # An interrupt (Ctrl-C, or SIGTERM) from here on cancels the task: one
    # that escaped would shut the detection pool down under the running task.
    task_id: str | None = None
    try:
        try:
            task_id = manager.submit(request)
        except TaskRequestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            manager.shutdown()
            # Sheets in another running task are not an invalid argument:
            # the same command works once that task has finished.
            if isinstance(exc, TaskConflictError):
                return EXIT_TASK_FAILED
            return EXIT_USAGE
        print(
            f"Task {task_id}: {counted(len(request.sheet_ids), 'sheet')}, profile "
            f"{args.profile}, on {setup.description}",
            file=sys.stderr,
        )
        while not manager.wait(task_id, 0.5):
            pass
    except KeyboardInterrupt:
        if task_id is None:
            manager.shutdown(cancel=True)
            raise
        manager.cancel(task_id)
        manager.wait(task_id)
        interrupted = True
    else:
        interrupted = False
    manager.shutdown()
    bar.finish()
    last = final[-1] if final else None
    if interrupted and last is not None and last.event == "complete":
        # Cancel works between sheets; past the last one the task completes.
        print(
            "note: the cancel came after the last sheet was read, so the task "
            "completed and its changes are saved. Undo it with "
            f"'omr-desktop reprocess --undo {task_id}'.",
            file=sys.stderr,
        )
    return _report(last, args.strict)


def _report(event: ProgressEvent | None, strict: bool) -> int:
    if event is None or event.event != "complete" or event.result is None:
        reason = event.message if event else "the task ended without a result"
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_TASK_FAILED
    result = event.result
    print(f"Task {event.task_id} succeeded in {result['duration_s']:.1f} s:")
    print(
        f"  sheets: {result['sheets_processed']} processed, "
        f"{result['sheets_failed']} failed, of {result['sheets_total']}"
    )
    # A row is updated when any stored value differs, confidence and reason
    # included, and undo restores those rows. "changed" counts new answers.
    print(
        f"  answers: {result['answers_written']:,} written, "
        f"{result.get('answers_updated', 0):,} updated, of which "
        f"{result['answers_changed']:,} with another answer; "
        f"{counted(result['sheets_score_changed'], 'score')} changed"
    )
    for failed in result["failed_sheets"]:
        print(f"  failed sheet {failed['sheet_id']}: {failed['error']}")
    if strict and result["sheets_failed"]:
        return EXIT_SHEETS_FAILED
    return EXIT_OK


def _run_undo(task_id: str) -> int:
    import uuid

    from omr_desktop.db.history_store import UndoError, UnknownTaskError, undo_task

    try:
        task_id = str(uuid.UUID(task_id))
    except ValueError:
        print(
            f"error: {_shortened(task_id, 40)!r} is not a task id. Task ids are "
            "UUIDs such as c8f2b3c4-0000-4000-8000-000000000000; give the one "
            "that the reprocess printed.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    with Database() as database, database.connect() as conn:
        try:
            result = undo_task(conn, task_id)
        except UnknownTaskError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except UndoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_TASK_FAILED
    message = (
        f"Undid task {task_id}: {counted(result.sheets_restored, 'sheet')} and "
        f"{counted(result.answers_restored, 'answer')} restored"
    )
    if result.answers_deleted:
        # Answers the task inserted, for sheets that had none before it.
        message += f", {counted(result.answers_deleted, 'inserted answer')} deleted"
    print(message + ".")
    return EXIT_OK


class ProgressBar:
    """A one-line terminal progress bar: stage, processed/total, rate, time left.

    Updated from the task's runner thread; prints a line per stage when the
    output is not a terminal.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last_stage = ""
        self._drawn = False

    def update(self, event: ProgressEvent) -> None:
        with self._lock:
            if self._tty:
                self._draw(event)
            elif event.stage != self._last_stage or event.progress_percentage == 100:
                print(f"[{event.stage}] {event.message}", file=self._stream, flush=True)
            self._last_stage = event.stage

    def _draw(self, event: ProgressEvent) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = event.processed / elapsed
        left = (event.total - event.processed) / rate if rate > 0 else 0.0
        cells = 24
        filled = int(cells * event.overall_percentage / 100)
        bar = "#" * filled + "-" * (cells - filled)
        text = (
            f"[{bar}] {event.overall_percentage:5.1f}% {event.stage}: "
            f"{event.processed}/{event.total} {noun(event.total, 'sheet')}, "
            f"{rate:.0f}/s, "
            f"{_duration(left)} left"
        )
        self._stream.write("\r" + text[: width - 1].ljust(width - 1))
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m {seconds % 60}s"


def run_export(args: argparse.Namespace) -> int:
    from omr_desktop.db.export import ExportError, ExportWriteError, export_batch

    # "-" is standard output, as for most command-line tools.
    to_stdout = str(args.out) == "-"
    with Database() as database, database.connect() as conn:
        try:
            rows = export_batch(
                conn,
                args.batch,
                sys.stdout if to_stdout else args.out,
                sheet_ids=args.sheets,
                per_answer=args.answers,
            )
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except ExportWriteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_TASK_FAILED
    where = "standard output" if to_stdout else args.out
    # On standard error when the rows go to standard output.
    print(
        f"Wrote {counted(rows, 'row')} to {where}.",
        file=sys.stderr if to_stdout else sys.stdout,
    )
    return EXIT_OK

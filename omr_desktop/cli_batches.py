"""The ``omr-desktop demo`` and ``omr-desktop import`` commands."""

from __future__ import annotations

import argparse
import os
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

from omr_desktop import config
from omr_desktop.db.database import Database
from omr_desktop.pipeline.batch_load import LoadResult
from omr_desktop.plural import counted


def add_batch_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``demo`` and ``import``."""
    demo = commands.add_parser(
        "demo", help="seed a demo batch of generated sheets into the database in use"
    )
    demo.add_argument(
        "--sheets",
        type=int,
        default=200,
        metavar="N",
        help="number of sheets (default 200)",
    )
    demo.add_argument(
        "--batch",
        type=_batch_name,
        default="Demo",
        metavar="NAME",
        help="batch name (default 'Demo')",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=2026,
        help="random seed; the same seed gives the same sheets",
    )
    demo.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when the batch exists already",
    )
    _add_workers(demo)
    demo.set_defaults(handler=run_demo, interrupt_on_sigterm=True)

    imp = commands.add_parser(
        "import", help="create a batch from aligned scans and read them with Default"
    )
    imp.add_argument(
        "--template",
        type=Path,
        required=True,
        metavar="T.json",
        help="OMRChecker template.json of the sheets",
    )
    imp.add_argument(
        "--images",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder of aligned sheet images, read in name order",
    )
    imp.add_argument(
        "--batch", type=_batch_name, required=True, metavar="NAME", help="batch name"
    )
    imp.add_argument(
        "--key",
        type=Path,
        metavar="KEY.csv",
        help='answer key: question,answer lines; several accepted answers as "B,C"',
    )
    imp.add_argument(
        "--correct",
        type=_points,
        default=Decimal(1),
        metavar="P",
        help="points for a correct answer (default 1)",
    )
    imp.add_argument(
        "--wrong",
        type=_points,
        default=Decimal(0),
        metavar="P",
        help="points for a wrong answer (default 0)",
    )
    imp.add_argument(
        "--blank",
        type=_points,
        default=Decimal(0),
        metavar="P",
        help="points for a blank answer (default 0)",
    )
    imp.add_argument(
        "--roster",
        type=Path,
        metavar="CSV",
        help="roll number,name lines, matched by the sheet's roll number",
    )
    _add_workers(imp)
    imp.set_defaults(handler=run_import, interrupt_on_sigterm=True)


def _add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        metavar="N",
        help="reader threads (default: number of cores)",
    )


def _points(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _batch_name(value: str) -> str:
    """Return a new batch's name as given, rejecting one that is blank."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            f"invalid batch name {value!r}: give a name with a visible character"
        )
    return value


def run_demo(args: argparse.Namespace) -> int:
    from omr_desktop.pipeline.demo import seed_demo

    if args.sheets < 1:
        print(
            f"error: --sheets must be at least 1, not {args.sheets}.", file=sys.stderr
        )
        return 2
    with Database() as database, database.connect() as conn:
        exists = conn.execute(
            "SELECT 1 FROM batches WHERE name = %s", (args.batch,)
        ).fetchone()
        conn.rollback()
        if exists and args.if_missing:
            print(f"The batch {args.batch!r} exists already; nothing to do.")
            return 0
        where = database.location().describe()
        print(f"Generating {counted(args.sheets, 'demo sheet')} into {where}")
        result = seed_demo(
            conn,
            config.data_dir(),
            sheets=args.sheets,
            batch_name=args.batch,
            seed=args.seed,
            workers=args.workers,
            progress=_Progress("Demo"),
        )
    _print_result(args.batch, result)
    return 0


def run_import(args: argparse.Namespace) -> int:
    from omr_desktop.pipeline.importer import ImportInputError, import_batch

    try:
        with Database() as database, database.connect() as conn:
            result = import_batch(
                conn,
                args.template,
                args.images,
                args.batch,
                key_path=args.key,
                points=(args.correct, args.wrong, args.blank),
                roster_path=args.roster,
                workers=args.workers,
                progress=_Progress("Import"),
            )
    except ImportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_result(args.batch, result)
    return 0


def _print_result(name: str, result: LoadResult) -> None:
    print(
        f"Batch {name!r}: {counted(result.sheets, 'sheet')}, "
        f"{counted(result.answers, 'answer')} in {result.duration_s:.1f} s "
        f"({len(result.failed)} failed)."
    )
    for sequence_no, path, error in result.failed:
        print(f"  sheet {sequence_no} ({path}): {error}")


class _Progress:
    """Print sheets done on one terminal line, or every 10 % when not a terminal."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._started = time.monotonic()
        self._last_percent = -1
        self._tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        line = (
            f"{self._label}: {done:,}/{total:,} sheets ({percent}%), "
            f"{rate:.0f} sheets/s"
        )
        if self._tty:
            end = "\n" if done == total else "\r"
            print(line, end=end, file=sys.stderr, flush=True)
        elif percent // 10 != self._last_percent // 10 or done == total:
            print(line, file=sys.stderr, flush=True)
        self._last_percent = percent

"""The ``omr-desktop accuracy`` subcommand: run the synthetic accuracy suite.

`omr_desktop.cli` builds the parser; it calls `add_accuracy_arguments` on
the subcommand's parser and `run_accuracy` with the parsed namespace.
"""

from __future__ import annotations

import argparse
import logging
import time

from omr_desktop.engine.accuracy import (
    FULL_SHEETS_PER_CONDITION,
    SUITE_SEED,
    check_targets,
    format_table,
    run_suite,
)
from omr_desktop.engine.synthetic import CONDITIONS
from omr_desktop.plural import counted

logger = logging.getLogger(__name__)


def add_accuracy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the accuracy subcommand's options to ``parser``."""
    parser.add_argument(
        "--sheets",
        type=int,
        default=FULL_SHEETS_PER_CONDITION,
        help="sheets rendered per condition (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=SUITE_SEED,
        help="random seed of the suite (default: %(default)s)",
    )
    parser.add_argument(
        "--condition",
        action="append",
        choices=CONDITIONS,
        help="run only this condition; repeat for several (default: all)",
    )


def run_accuracy(args: argparse.Namespace) -> int:
    """Run the suite, print its table and missed targets; return the exit code.

    Returns 0 when every target is met, 1 when one is missed and 2 for an
    invalid option.
    """
    if args.sheets < 1:
        print(f"--sheets must be at least 1, got {args.sheets}")
        return 2
    conditions = tuple(args.condition) if args.condition else CONDITIONS
    start = time.perf_counter()
    result = run_suite(args.sheets, seed=args.seed, conditions=conditions)
    elapsed = time.perf_counter() - start
    logger.info(
        "accuracy suite finished: %d sheets per condition, %d conditions, %.1f s",
        args.sheets,
        len(conditions),
        elapsed,
    )
    print(format_table(result, ["Default", "Sensitive", "Strict"]))
    print()
    print(
        f"{counted(args.sheets, 'sheet')} per condition, "
        f"{counted(len(conditions), 'condition')}, "
        f"seed {args.seed}, {elapsed:.1f} s"
    )
    failures = check_targets(result)
    for failure in failures:
        print(f"target missed: {failure}")
    if not failures:
        print("all accuracy targets met")
    return 1 if failures else 0

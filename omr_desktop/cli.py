"""The ``omr-desktop`` command: the GUI by default, and its subcommands.

Exit status: 0 success, 1 the operation failed, 2 invalid arguments.
Qt is imported only when the GUI starts, so the subcommands run on machines
without a display.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from omr_desktop import __version__, config
from omr_desktop.log_setup import configure_logging

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]

# Six demo sheets carry about a hundred light marks that Default leaves
# blank (107 with the demo's seed) and render and read in about a second.
SELF_TEST_SHEETS = 6
# The embedded database's first start is the slowest step: initdb takes a
# few seconds, and as root the server binaries may be copied first.
SELF_TEST_TIMEOUT_S = 300.0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="omr-desktop",
        description="Review and reprocess scanned OMR answer sheets. "
        "Without a command, opens the desktop application.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default: OMR_LOG_LEVEL, else INFO)",
    )
    parser.add_argument(
        "--serve",
        metavar="[HOST:]PORT",
        help="with the GUI, also serve the HTTP interface on HOST:PORT "
        "(127.0.0.1 unless HOST is given; other addresses need OMR_SERVER_TOKEN)",
    )
    parser.set_defaults(handler=_run_gui)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    gui = commands.add_parser("gui", help="open the desktop application (default)")
    gui.set_defaults(handler=_run_gui)

    from omr_desktop import cli_db

    cli_db.add_db_commands(commands)
    from omr_desktop import cli_batches

    cli_batches.add_batch_commands(commands)
    from omr_desktop import cli_reprocess

    cli_reprocess.add_reprocess_commands(commands)
    from omr_desktop import cli_profiles

    cli_profiles.add_profiles_command(commands)
    from omr_desktop import cli_serve

    cli_serve.add_serve_command(commands)
    from omr_desktop import cli_worker

    cli_worker.add_worker_command(commands)
    _add_engine_commands(commands)
    _add_self_test_command(commands)
    return parser


def _add_engine_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from omr_desktop import cli_engine

    accuracy = commands.add_parser(
        "accuracy",
        help="measure the engine's accuracy on synthetic sheets per profile",
    )
    cli_engine.add_accuracy_arguments(accuracy)
    accuracy.set_defaults(handler=cli_engine.run_accuracy)


def _add_self_test_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    self_test = commands.add_parser(
        "self-test",
        help="check this installation: reprocess demo sheets offscreen through "
        "the real windows, on a private temporary database; exit 0 when it works",
    )
    self_test.add_argument(
        "--sheets",
        type=_positive_int,
        default=SELF_TEST_SHEETS,
        metavar="N",
        help="number of demo sheets to seed and reprocess "
        f"(default {SELF_TEST_SHEETS})",
    )
    self_test.add_argument(
        "--timeout",
        type=float,
        default=SELF_TEST_TIMEOUT_S,
        metavar="SECONDS",
        help=f"fail when the whole test takes longer (default {SELF_TEST_TIMEOUT_S:g})",
    )
    self_test.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary data folder and the demo batch for inspection",
    )
    self_test.set_defaults(handler=_run_self_test, configures_own_logging=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _run_self_test(args: argparse.Namespace) -> int:
    # Qt is imported only here, as for the GUI.
    from omr_desktop.gui.self_test import run_self_test

    return run_self_test(args)


def _run_gui(args: argparse.Namespace) -> int:
    from omr_desktop.app import run_gui

    return run_gui(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    from omr_desktop.cli_reprocess import join_dash_values

    parser = build_parser()
    args = parser.parse_args(join_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        level = config.log_level_name(args.log_level)
    except config.ConfigError as exc:
        parser.error(str(exc))
    log_file = None
    # The self-test writes its log into its own private data folder, which
    # it creates itself, so it never creates the editor's log folder.
    if not getattr(args, "configures_own_logging", False):
        log_file = configure_logging(level, config.log_dir())
    handler: Handler = args.handler
    if getattr(args, "interrupt_on_sigterm", False):
        # A command that writes files cleans them up on KeyboardInterrupt,
        # and SIGTERM, as from kill or a service manager, takes that path too.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader of the output went away (``| head``). Python would
        # report the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        return _report_failure(exc, log_file)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _report_failure(exc: Exception, log_file: object) -> int:
    from omr_desktop.errors import is_expected_error

    if is_expected_error(exc):
        # The console already gets the message below; the log file keeps it.
        logger.error("%s", exc, extra={"console": False})
        print(f"error: {exc}", file=sys.stderr)
    else:
        logger.error("Unexpected error", exc_info=exc)
        where = f" (traceback in {log_file})" if log_file else ""
        print(f"error: unexpected {type(exc).__name__}: {exc}{where}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

"""The ``omr-desktop worker`` command: a Celery worker of the cluster engine.

It runs ``reprocess_omr_sheet_task`` and its chunks on the shared
PostgreSQL of ``OMR_DATABASE_URL``, taking tasks from the Redis broker of
``--broker`` or ``OMR_BROKER_URL``. Start one per machine (or several);
every worker must read the sheets' image paths as the database stores them.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

POOLS = ("prefork", "threads", "solo")


def add_worker_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``worker``."""
    cmd = commands.add_parser(
        "worker",
        help="run a cluster worker (Celery over Redis) for reprocess tasks",
        description="Take reprocess tasks from the cluster's Redis broker and "
        "run them on the shared PostgreSQL of OMR_DATABASE_URL until Ctrl+C "
        "or SIGTERM. Needs the 'cluster' extra. Exit status: 0 stopped by "
        "a signal, 1 the worker failed (the broker or database unreachable "
        "at start, or the Celery worker stopped on an error), 2 invalid "
        "options or settings.",
    )
    cmd.add_argument(
        "--broker",
        metavar="URL",
        help="Redis URL of the broker and result backend "
        "(default: OMR_BROKER_URL), such as redis://10.0.0.5:6379/0",
    )
    cmd.add_argument(
        "--concurrency",
        type=int,
        default=os.cpu_count() or 2,
        metavar="N",
        help="tasks run at once (default: number of cores)",
    )
    cmd.add_argument(
        "--pool",
        choices=POOLS,
        default="prefork",
        help="prefork: one process per task slot (default); threads: one "
        "process with N threads; solo: one task at a time in this process",
    )
    cmd.add_argument(
        "--name",
        metavar="NAME",
        help="the worker's node name (default: omr@HOST.PID)",
    )
    cmd.set_defaults(handler=run_worker_command)


def run_worker_command(args: argparse.Namespace) -> int:
    """Check the settings, then run the worker until it is stopped."""
    try:
        from omr_desktop.cluster.settings import (
            BrokerUnavailableError,
            ClusterConfigError,
            check_broker,
            settings_from_env,
        )
    except ImportError as exc:
        print(
            f"error: the worker needs the 'cluster' extra ({exc}): "
            "pip install 'omr-desktop[cluster]'.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.concurrency < 1:
        print(
            f"error: --concurrency must be at least 1, not {args.concurrency}.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        settings = settings_from_env(args.broker)
        check_broker(settings)
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerUnavailableError as exc:
        print(f"error: {exc} Start Redis or fix --broker.", file=sys.stderr)
        return EXIT_FAILED
    status = _check_database()
    if status != EXIT_OK:
        return status
    return _run(settings, args)


def _check_database() -> int:
    from omr_desktop.cluster.settings import ClusterConfigError
    from omr_desktop.cluster.tasks import open_shared_database
    from omr_desktop.db.database import DatabaseUnavailableError
    from omr_desktop.db.migrate import MigrationError

    try:
        database = open_shared_database()
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DatabaseUnavailableError, MigrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    logger.info("Worker database: %s", database.location().describe())
    database.close()
    return EXIT_OK


def _run(settings: object, args: argparse.Namespace) -> int:
    from omr_desktop.cluster.celery_app import make_celery
    from omr_desktop.cluster.settings import ClusterSettings

    assert isinstance(settings, ClusterSettings)
    app = make_celery(settings)
    name = args.name or f"omr@{socket.gethostname()}.{os.getpid()}"
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    logger.info(
        "Worker %s starting: broker %s, pool %s, concurrency %d",
        name,
        settings.describe(),
        args.pool,
        args.concurrency,
    )
    argv = [
        "worker",
        f"--pool={args.pool}",
        f"--concurrency={args.concurrency}",
        f"--hostname={name}",
        f"--loglevel={level}",
        # Workers share nothing but the broker; gossip and mingle only
        # slow start-up down.
        "--without-gossip",
        "--without-mingle",
    ]
    outcome = _WorkerOutcome()
    outcome.connect()
    try:
        app.worker_main(argv=argv)
    finally:
        outcome.disconnect()
    return outcome.exit_status(name)


class _WorkerOutcome:
    """Record how the Celery worker of this process ended.

    ``app.worker_main`` returns nothing: Celery 5.7's ``app.start`` drops
    the exit code that click returns in non-standalone mode. The
    WorkController keeps it in ``exitcode`` (1 after "Unrecoverable
    error"), and the ``worker_init`` signal hands the controller over.
    """

    def __init__(self) -> None:
        self.controller: Any = None
        self.stop_signal: str | None = None

    def connect(self) -> None:
        from celery import signals

        signals.worker_init.connect(self._on_worker_init, weak=False)
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)

    def disconnect(self) -> None:
        from celery import signals

        signals.worker_init.disconnect(self._on_worker_init)
        signals.worker_shutting_down.disconnect(self._on_shutting_down)

    def _on_worker_init(self, sender: Any = None, **_kwargs: Any) -> None:
        self.controller = sender

    def _on_shutting_down(self, sig: str = "", **_kwargs: Any) -> None:
        self.stop_signal = sig

    def exit_status(self, name: str) -> int:
        """Return the command's exit status, with a one-line error on failure."""
        if self.stop_signal is not None:
            # Celery exits 1 after Ctrl+C; a requested stop is a success here.
            logger.info("Worker %s stopped by %s", name, self.stop_signal)
            return EXIT_OK
        code = getattr(self.controller, "exitcode", None)
        if self.controller is None:
            message = f"the Celery worker {name} did not start"
        elif code in (None, 0):
            logger.info("Worker %s stopped", name)
            return EXIT_OK
        else:
            message = (
                f"the Celery worker {name} stopped with exit code {code}; "
                "its log above gives the cause"
            )
        logger.error("Worker %s failed: %s", name, message)
        # Celery has replaced sys.stderr with a logging proxy by now, which
        # would prefix the line with "WARNING:".
        print(f"error: {message}.", file=sys.__stderr__ or sys.stderr, flush=True)
        return EXIT_FAILED

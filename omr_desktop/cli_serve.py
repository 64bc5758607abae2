"""The ``omr-desktop serve`` command: the HTTP server without the GUI.

It runs the same task pipeline as the GUI: a TaskManager over a thread
pool, on the configured database. Options fall back to environment
variables, then to defaults:

==================  ===========================  =====================
option              variable                     default
==================  ===========================  =====================
``--host``          ``OMR_SERVER_HOST``          ``127.0.0.1``
``--port``          ``OMR_SERVER_PORT``          ``8765``
``--token``         ``OMR_SERVER_TOKEN``         none
``--cors-origin``   ``OMR_SERVER_CORS_ORIGINS``  none (comma separated)
==================  ===========================  =====================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from omr_desktop.db.database import Database
from omr_desktop.engine_setup import (
    EngineSetup,
    close_engine,
    cluster_event_source,
    configured_engine,
)

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

HOST_VARIABLE = "OMR_SERVER_HOST"
PORT_VARIABLE = "OMR_SERVER_PORT"
TOKEN_VARIABLE = "OMR_SERVER_TOKEN"
CORS_VARIABLE = "OMR_SERVER_CORS_ORIGINS"

# Seconds that stopping waits for open streams to send their tasks' last
# event. A stream that follows another process's task goes on until it ends.
STREAMS_END_TIMEOUT_S = 3.0


def add_serve_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``serve``."""
    from omr_desktop.server.app import DEFAULT_HOST, DEFAULT_PORT

    cmd = commands.add_parser(
        "serve",
        help="run the HTTP server (REST and Server-Sent Events) without the GUI",
        description="Serve the reprocess interface over HTTP until Ctrl+C or "
        "SIGTERM, which cancel running tasks. Serving on an address other "
        "than 127.0.0.1, ::1 or localhost needs a token. Exit status: 0 "
        "stopped, 1 the server failed, 2 invalid options.",
    )
    cmd.add_argument(
        "--host",
        default=os.environ.get(HOST_VARIABLE) or DEFAULT_HOST,
        metavar="HOST",
        help=f"address to listen on (default: {HOST_VARIABLE}, else {DEFAULT_HOST})",
    )
    cmd.add_argument(
        "--port",
        type=_port,
        default=None,
        metavar="PORT",
        help=f"TCP port, 0 for a free one (default: {PORT_VARIABLE}, "
        f"else {DEFAULT_PORT})",
    )
    cmd.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help=f"require 'Authorization: Bearer TOKEN' on every request (default: "
        f"{TOKEN_VARIABLE}; prefer the variable, since other users can read "
        "command lines)",
    )
    cmd.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN, such as http://localhost:5173; "
        f"repeatable (default: {CORS_VARIABLE}, comma separated; else CORS off)",
    )
    cmd.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        metavar="N",
        help="detection threads (default: number of cores)",
    )
    cmd.set_defaults(handler=run_serve_command)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 0 and 65535")
    return port


def _env_port() -> int | None:
    text = os.environ.get(PORT_VARIABLE, "").strip()
    return _port(text) if text else None


def _cors_origins(args: argparse.Namespace) -> list[str]:
    if args.cors_origin:
        return [str(o) for o in args.cors_origin]
    text = os.environ.get(CORS_VARIABLE, "")
    return [part.strip() for part in text.split(",") if part.strip()]


def run_serve_command(args: argparse.Namespace) -> int:
    """Run the server until Ctrl+C or SIGTERM; return the exit status."""
    from omr_desktop.server.app import DEFAULT_PORT, ServerConfigError, is_loopback

    try:
        port = args.port if args.port is not None else _env_port()
    except argparse.ArgumentTypeError as exc:
        print(f"error: {PORT_VARIABLE}: {exc}.", file=sys.stderr)
        return EXIT_USAGE
    if args.workers < 1:
        print(
            f"error: --workers must be at least 1, not {args.workers}.", file=sys.stderr
        )
        return EXIT_USAGE
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if not is_loopback(args.host) and token is None:
        print(
            f"error: serving on {args.host or 'all addresses'} needs a token: set "
            f"{TOKEN_VARIABLE} (or --token), or serve on 127.0.0.1.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    settings = _Settings(
        host=args.host,
        port=DEFAULT_PORT if port is None else port,
        token=token,
        cors_origins=_cors_origins(args),
        workers=args.workers,
    )
    try:
        return asyncio.run(_serve(settings))
    except ServerConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        logger.error("Cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        print(
            f"error: cannot listen on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}. Choose another --port.",
            file=sys.stderr,
        )
        return EXIT_FAILED


@dataclass(frozen=True)
class _Settings:
    host: str
    port: int
    token: str | None
    cors_origins: Sequence[str]
    workers: int


async def _serve(settings: _Settings) -> int:
    from omr_desktop.pipeline.task_manager import TaskManager
    from omr_desktop.server.app import create_app, start_server
    from omr_desktop.server.sse import HUB

    loop = asyncio.get_running_loop()
    database = Database()
    await loop.run_in_executor(None, database.open)
    executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="detect")
    manager: TaskManager | None = None
    app = None
    runner = None
    try:
        setup = await loop.run_in_executor(
            None, _engine_setup, database, executor, settings.workers
        )
        manager = await loop.run_in_executor(
            None, functools.partial(TaskManager, database, engine=setup.engine)
        )
        app = create_app(
            manager,
            token=settings.token,
            cors_origins=settings.cors_origins,
            cluster_events=cluster_event_source(setup.engine),
        )
        runner, port = await start_server(app, settings.host, settings.port)
        print(
            f"Serving on http://{_url_host(settings.host)}:{port} (Ctrl+C stops)",
            file=sys.stderr,
            flush=True,
        )
        await _wait_for_stop_signal()
        logger.info("Server stopping on %s:%d", settings.host, port)
    finally:
        if manager is not None:
            # Cancels queued and running tasks; a running one rolls back.
            # The server still runs meanwhile, so that each open stream
            # gets its task's error event before the server closes it.
            await loop.run_in_executor(None, manager.shutdown)
        if app is not None:
            await app[HUB].wait_for_streams(STREAMS_END_TIMEOUT_S)
        if runner is not None:
            await runner.cleanup()
        if manager is not None:
            close_engine(manager.engine)
        executor.shutdown(wait=True, cancel_futures=True)
        database.close()
    logger.info("Server stopped")
    return EXIT_OK


def _engine_setup(
    database: Database, executor: ThreadPoolExecutor, workers: int
) -> EngineSetup:
    """Build the engine of the engine setting; fall back to local with a warning."""
    setup = configured_engine(database, executor, workers)
    if setup.fallback_reason is not None:
        print(
            f"warning: {setup.fallback_reason} Serving with the local engine.",
            file=sys.stderr,
        )
    logger.info("Reprocess engine: %s", setup.description)
    return setup


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # add_signal_handler is missing on Windows' loops; there Ctrl+C
        # arrives as KeyboardInterrupt, which cli.main reports.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)

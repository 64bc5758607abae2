"""The application factory and the runner that serves it on the running loop.

Nothing here owns the event loop: ``start_server`` starts on whichever loop
runs it (the qasync loop under the GUI, ``asyncio.run`` in ``omr-desktop
serve``), and the caller stops it with ``await runner.cleanup()``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from omr_desktop.pipeline.task_manager import TaskManager
from omr_desktop.server import routes
from omr_desktop.server.access_log import PathOnlyAccessLogger
from omr_desktop.server.auth import auth_middleware
from omr_desktop.server.cluster_stream import CLUSTER_EVENTS, ClusterEventSource
from omr_desktop.server.cors import add_cors_headers, cors_preflight_middleware
from omr_desktop.server.db_calls import CONNECTIONS, ConnectionCache
from omr_desktop.server.errors import error_middleware
from omr_desktop.server.keys import DB_EXECUTOR, MANAGER, OPTIONS, ServerOptions
from omr_desktop.server.sse import HUB, EventHub
from omr_desktop.server.validation import MAX_BODY_BYTES

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

# Comment lines keep idle streams open through proxies that close silent
# connections; 15 s is well below nginx's default read timeout of 60 s.
HEARTBEAT_S = 15.0

# How often a stream reads the database for a task another process runs.
POLL_INTERVAL_S = 1.0

# The reconnect delay, in milliseconds, that a stream suggests to browsers.
RETRY_MS = 3000

# Threads for the database work of requests, each with one cached
# connection: well below the embedded server's max_connections of 50,
# which the task manager and the GUI share.
DB_THREADS = 8

# Seconds that stopping waits for requests still in progress. Streams end at
# once when the server stops, so only short requests remain.
SHUTDOWN_TIMEOUT_S = 5.0

_LOOPBACK_NAMES = frozenset({"localhost"})


class ServerConfigError(ValueError):
    """The server cannot start with these settings; the message gives the reason."""


def create_app(
    manager: TaskManager,
    *,
    token: str | None = None,
    cors_origins: Sequence[str] = (),
    heartbeat_s: float = HEARTBEAT_S,
    poll_interval_s: float = POLL_INTERVAL_S,
    retry_ms: int = RETRY_MS,
    cluster_events: ClusterEventSource | None = None,
) -> web.Application:
    """Build the application over ``manager``, the GUI's or the command's queue.

    Args:
        token: the bearer token every request must carry; ``None`` or an
            empty string for none, which ``start_server`` allows on
            loopback addresses only.
        cors_origins: origins allowed to call from a browser page, such as
            ``http://localhost:5173``; empty turns CORS off.
        heartbeat_s: seconds without an event after which a stream sends a
            comment line.
        poll_interval_s: how often a stream reads the database for a task
            another process runs.
        retry_ms: the reconnect delay a stream suggests to the browser.
        cluster_events: where the stream reads the events of cluster tasks
            this database has none of (the cluster's Redis); the server
            closes it on cleanup.
    """
    app = web.Application(
        middlewares=[cors_preflight_middleware, error_middleware, auth_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[MANAGER] = manager
    app[OPTIONS] = ServerOptions(
        token=token or None,
        cors_origins=frozenset(o.strip().rstrip("/") for o in cors_origins if o),
        heartbeat_s=heartbeat_s,
        poll_interval_s=poll_interval_s,
        retry_ms=retry_ms,
    )
    app[HUB] = EventHub(manager)
    if cluster_events is not None:
        app[CLUSTER_EVENTS] = cluster_events
    # Threads start on first use, so an app that is never started has none.
    app[DB_EXECUTOR] = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="http-db")
    app[CONNECTIONS] = ConnectionCache(manager.database, DB_THREADS)
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_end_streams)
    app.on_response_prepare.append(add_cors_headers)
    app.on_response_prepare.append(_add_security_headers)
    routes.add_routes(app)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    app[HUB].start()
    yield
    app[HUB].close()
    # Waits for calls in progress, which are short, so that no thread is
    # left holding a connection when the cache closes.
    await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(app[DB_EXECUTOR].shutdown, cancel_futures=True)
    )
    app[CONNECTIONS].close()
    source = app.get(CLUSTER_EVENTS)
    if source is not None:
        await source.close()


async def _end_streams(app: web.Application) -> None:
    app[HUB].close()


async def _add_security_headers(
    request: web.Request, response: web.StreamResponse
) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def runner_options() -> dict[str, Any]:
    """Return the ``AppRunner`` keyword arguments ``start_server`` uses.

    Tests that build their own runner (aiohttp's ``TestServer``) pass the
    same ones, so the access log is the one production writes.
    """
    return {
        "access_log_class": PathOnlyAccessLogger,
        "handler_cancellation": True,
        "shutdown_timeout": SHUTDOWN_TIMEOUT_S,
    }


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` is a loopback address or ``localhost``."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_address(text: str, default_host: str = DEFAULT_HOST) -> tuple[str, int]:
    """Parse ``[HOST:]PORT``, the value of the GUI's ``--serve`` option.

    Accepts ``8765``, ``0.0.0.0:8765`` and ``[::1]:8765``; without a host,
    ``default_host`` is used.

    Raises:
        ServerConfigError: no valid port between 0 and 65535.
    """
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host = default_host
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ServerConfigError(
            f"{text!r}: write an IPv6 host in brackets, such as [::1]:8765."
        )
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ServerConfigError(
            f"{text!r} is not [HOST:]PORT with a port from 0 to 65535, "
            "such as 8765 or 127.0.0.1:8765."
        )
    return host or default_host, int(port_text)


def check_bind_address(app: web.Application, host: str) -> None:
    """Raise ServerConfigError for a non-loopback ``host`` without a token."""
    if not is_loopback(host) and app[OPTIONS].token is None:
        raise ServerConfigError(
            f"Serving on {host or 'all addresses'} needs a token, since other "
            "machines can reach it: set --token or OMR_SERVER_TOKEN, or serve on "
            "127.0.0.1."
        )


async def start_server(
    app: web.Application, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` on the running loop.

    Returns:
        The runner, which the caller stops with ``await runner.cleanup()``,
        and the port actually bound (a free one when ``port`` is 0).

    Raises:
        ServerConfigError: a non-loopback ``host`` without a token.
        OSError: the address cannot be bound (in use, not local).
    """
    check_bind_address(app, host)
    runner = web.AppRunner(app, **runner_options())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    actual_port = site.port
    logger.info("Server listening on %s:%d", host, actual_port)
    return runner, actual_port

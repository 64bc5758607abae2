"""The embedded HTTP server: the REST and Server-Sent Events interface.

No Qt here: the GUI starts the application on its qasync loop, and
``omr-desktop serve`` on a plain asyncio loop.
"""

from omr_desktop.server.app import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ServerConfigError,
    create_app,
    is_loopback,
    parse_address,
    start_server,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ServerConfigError",
    "create_app",
    "is_loopback",
    "parse_address",
    "start_server",
]

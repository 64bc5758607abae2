"""JSON error responses: every failed request gets ``{"status": "error", ...}``.

The middleware turns the handlers' ``ApiError`` and aiohttp's own HTTP
errors (unknown route, wrong method, body too large) into JSON with the same
status. Any other exception is logged with its traceback, and the client
gets a 500 with a generic message, so no traceback reaches it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from aiohttp import web
from aiohttp.typedefs import Handler

from omr_desktop.db.database import DatabaseUnavailableError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A request that cannot be served; becomes a JSON error response.

    Attributes:
        status: the HTTP status, 4xx for a bad request.
        message: what failed and what to do, for the client.
        extra: more keys of the JSON body (a conflicting task id, unknown ids).
        headers: headers of the response, such as ``WWW-Authenticate``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def json_error(
    status: int,
    message: str,
    *,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Build the JSON error response ``{"status": "error", "message": ...}``."""
    body: dict[str, Any] = {"status": "error", "message": message}
    body.update(extra or {})
    return web.json_response(body, status=status, headers=headers)


# Messages for aiohttp's own errors, whose default texts are bare reasons.
_HTTP_MESSAGES = {
    404: "No such endpoint: {path}.",
    405: "Method {method} is not allowed on {path}.",
    413: "The request body is too large.",
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Turn every error into a JSON response; log each with its status."""
    try:
        return await handler(request)
    except ApiError as exc:
        logger.info(
            "Request %s %s rejected with %d: %s",
            request.method,
            request.path,
            exc.status,
            exc.message,
        )
        return json_error(exc.status, exc.message, extra=exc.extra, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        template = _HTTP_MESSAGES.get(exc.status, "{reason}.")
        message = template.format(
            path=request.path, method=request.method, reason=exc.reason
        )
        headers = {k: v for k, v in exc.headers.items() if k == "Allow"}
        return json_error(exc.status, message, headers=headers)
    except (DatabaseUnavailableError, psycopg.OperationalError) as exc:
        logger.error(
            "Request %s %s: database unavailable: %s",
            request.method,
            request.path,
            _first_line(exc),
        )
        return json_error(
            503, "The database is unavailable. Try again once it is reachable."
        )
    except Exception:
        logger.exception("Request %s %s failed", request.method, request.path)
        return json_error(500, "Internal server error; the server log has details.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

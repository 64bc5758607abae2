"""Bearer-token authentication.

With a token configured, every request must carry ``Authorization: Bearer
<token>``. The stream routes also accept ``?token=<token>``, because a
browser's ``EventSource`` cannot send headers. The access log writes the
path without its query string, so the token never reaches the log.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from omr_desktop.server.errors import ApiError
from omr_desktop.server.keys import OPTIONS

# Route names of the streams, where the query parameter is accepted.
STREAM_ROUTE_NAMES = frozenset({"stream", "api-stream"})

TOKEN_QUERY_PARAMETER = "token"


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reject a request without the configured token with 401."""
    token = request.app[OPTIONS].token
    if token is None:
        return await handler(request)
    presented = _bearer_token(request)
    if presented is None and request.match_info.route.name in STREAM_ROUTE_NAMES:
        presented = request.query.get(TOKEN_QUERY_PARAMETER)
    if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
        raise ApiError(
            401,
            "Missing or wrong token: send the header 'Authorization: Bearer "
            "<token>' (streams also take ?token=<token>).",
            headers={"WWW-Authenticate": 'Bearer realm="omr-desktop"'},
        )
    return await handler(request)


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()

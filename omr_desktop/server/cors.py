"""Cross-origin requests from the allowed origins only; off by default.

An origin is allowed when it is in the list exactly as a browser sends it
(scheme, host and port, such as ``http://localhost:5173``). A preflight
from another origin gets 403; an actual request from another origin is
served without CORS headers, so the browser withholds the response from
the page.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from omr_desktop.server.errors import json_error
from omr_desktop.server.keys import OPTIONS

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID"

# Browsers cache a preflight for at most this long (Chromium caps it at
# 7200 s); ten minutes keeps a changed allow-list effective soon.
PREFLIGHT_MAX_AGE_S = 600


@web.middleware
async def cors_preflight_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Respond to CORS preflight requests before routing and authentication."""
    origins = request.app[OPTIONS].cors_origins
    origin = request.headers.get("Origin")
    is_preflight = (
        request.method == "OPTIONS"
        and origin is not None
        and "Access-Control-Request-Method" in request.headers
    )
    if not origins or not is_preflight:
        return await handler(request)
    if origin not in origins:
        # This middleware runs outside the error middleware, so it builds
        # the JSON error itself.
        return json_error(403, f"Origin {origin} is not allowed.")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            "Vary": "Origin",
        },
    )


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Add the CORS headers for an allowed origin (an ``on_response_prepare`` hook).

    The hook runs when a response is prepared, so it reaches the event
    streams too, whose headers are sent before their body.
    """
    origins = request.app[OPTIONS].cors_origins
    origin = request.headers.get("Origin")
    if not origins or origin is None:
        return
    if origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
    # The response depends on the Origin header, so caches must key on it.
    # A preflight response names Origin already.
    vary = response.headers.get("Vary")
    if not vary:
        response.headers["Vary"] = "Origin"
    elif "origin" not in (v.strip().lower() for v in vary.split(",")):
        response.headers["Vary"] = f"{vary}, Origin"

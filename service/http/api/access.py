"""Who may call what: with VAE_API_KEY set, every route but the public ones needs `Authorization: Bearer <key>`.

A pure ASGI middleware in front of the routes, the fast path included, so the key is checked from the
headers alone, before a byte of the body is received (an unauthenticated 60 MB body used to be parsed
first) and before any routing. Only CORS (a preflight carries no key) and the observability middleware
(metrics, logs, the declared-size check) run before it.
"""

from __future__ import annotations

import secrets

from fastapi import Request

from service.core.errors import Unauthorized
from service.http.api.deps import render_error
from service.http.api.oip import protocol_error

# Public with a key set: probes must reach these, and the page holds nothing secret (it sends the key
# the user types in to the API it calls). Exact paths; docs/operations.md ("Access") lists the same set.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"})
PAGE_FILES = "/ui/"  # the page's script and style sheet, /ui/{name} (service/http/api/web.py)
NEEDS_KEY = "this service needs an API key: send the header `Authorization: Bearer <key>`"


def _is_oip(path: str) -> bool:
    """The Open Inference Protocol's routes, which answer errors in its own shape, `{"error": message}`."""
    return path == "/v2" or path.startswith("/v2/")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or (path.startswith(PAGE_FILES) and "/" not in path[len(PAGE_FILES) :])


def has_key(headers: list[tuple[bytes, bytes]], key: bytes) -> bool:
    """True when the headers carry `Authorization: Bearer <key>` (scheme case-insensitive)."""
    return bearer_matches(next((value for name, value in headers if name == b"authorization"), b""), key)


def bearer_matches(given: bytes, key: bytes) -> bool:
    """True when an Authorization header's value is `Bearer <key>` (scheme case-insensitive)."""
    scheme, _, token = given.partition(b" ")
    # compare_digest: the time taken says nothing about how much of the key was right
    return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), key)


class ApiKeyMiddleware:
    def __init__(self, app, key: bytes) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]) or has_key(scope["headers"], self.key):
            return await self.app(scope, receive, send)
        # No `receive`: the answer needs nothing from the body, and never reading it is the point.
        request = Request(scope)
        render = protocol_error if _is_oip(scope["path"]) else render_error
        response = await render(request, Unauthorized(NEEDS_KEY))
        await response(scope, receive, send)

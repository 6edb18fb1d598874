"""The hottest routes without FastAPI's routing and dependency solving, which took about a quarter of the
event loop's time per request on the digits model (a py-spy profile at c=64; docs/benchmark-serving.md).

A pure ASGI middleware, inside the observability middleware (metrics, logs, request ids, the body limit
and the model release still apply), CORS and the API key (service/http/api/access.py): a POST to one of
`ROUTES` calls that route's own endpoint function with the same dependency (the model version), and an
error goes through the app's own exception handlers. So the answers, errors included, are those of the
FastAPI route, which stays registered for everything else (other methods, /docs, the OpenAPI schema).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response

from service.http.api import inference
from service.http.api.deps import get_executor, render_error
from service.http.executor import Executor

Endpoint = Callable[[Request, Executor], Awaitable[Response]]
# The routes that read their own body (service/http/api/body.py), so FastAPI's body handling adds nothing.
ROUTES: dict[str, Endpoint] = {"/elbo": inference.elbo, "/encode": inference.encode, "/decode": inference.decode}


class FastPath:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        endpoint = ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        try:
            response = await endpoint(request, await get_executor(request))
        except Exception as exc:
            response = await render_error(request, exc)
        await response(scope, receive, send)

"""The API key over every route the app registers, checked before any body is read."""

from __future__ import annotations

import asyncio
import re

import pytest
from fastapi.testclient import TestClient

from service.http.api.access import NEEDS_KEY
from service.http.app import create_app
from service.http.observability import flat_routes
from service.http.settings import Settings

KEY = {"authorization": "Bearer s3cret"}
# Public with a key set, exactly these (docs/operations.md, "Access", lists the same).
PUBLIC = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/ui/{name}"}
PARAMETERS = {"model_name": "digits-elbo", "model_version": "1", "name": "app.js"}


def requests_for_every_route(app) -> list[tuple[str, str, str]]:
    """(method, path, template) for every method of every route the app registers, parameters filled in."""
    found = []
    for route in flat_routes(app):
        path = re.sub(r"{(\w+)(:\w+)?}", lambda m: PARAMETERS[m.group(1)], route.path)
        for method in sorted(route.methods or ["GET"]):
            if method != "HEAD":
                found.append((method, path, route.path))
    return found


@pytest.fixture(scope="module")
def keyed(digits_model_dir):
    with TestClient(create_app(Settings(model_dir=digits_model_dir, api_key="s3cret"))) as client:
        yield client


def test_every_route_but_the_public_ones_needs_the_key(keyed):
    routes = requests_for_every_route(keyed.app)
    assert len(routes) >= 25  # the enumeration found the included routers' routes, not only /docs
    open_without_key = set()
    for method, path, template in routes:
        response = keyed.request(method, path)
        if response.status_code != 401:
            open_without_key.add(template)
            continue
        body = response.json()
        assert body["error"] == NEEDS_KEY, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
        with_key = keyed.request(method, path, headers=KEY)
        assert with_key.status_code != 401, (method, path, with_key.text)
    assert open_without_key == PUBLIC


def test_the_docs_and_the_schema_need_the_key(keyed):
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert keyed.get(path).status_code == 401, path
        assert keyed.get(path, headers=KEY).status_code == 200, path


def test_oip_routes_answer_401_in_the_protocols_shape(keyed):
    assert keyed.get("/v2/models/digits-elbo/ready").json() == {"error": NEEDS_KEY}
    assert keyed.get("/v1/model").json() == {"error": NEEDS_KEY, "code": "unauthorized"}


def test_unknown_paths_need_the_key_too(keyed):
    """Nothing about the routes is given away: a made-up path gets the same 401 as a real one."""
    assert keyed.get("/nope").status_code == 401
    assert keyed.get("/nope", headers=KEY).status_code == 404
    assert keyed.get("/ui/a/b").status_code == 401  # not one of the page's files


async def _call(app, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """(status, times the app asked for the body) of one request whose body is 60 MB, never all sent."""
    reads = 0
    sent: list[dict] = []

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"[" * (1 << 20), "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(60 << 20).encode()), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return sent[0]["status"], reads


def test_the_key_is_checked_before_any_body_is_read(digits_model_dir):
    """An unauthenticated 60 MB body used to be parsed before its 401 (510 MB resident)."""
    app = create_app(Settings(model_dir=digits_model_dir, api_key="s3cret"))
    protected = [(m, p) for m, p, template in requests_for_every_route(app) if template not in PUBLIC]
    assert ("POST", "/decode") in protected and ("POST", "/v2/models/digits-elbo/infer") in protected

    async def every_route():
        return [await _call(app, method, path, []) for method, path in protected]

    assert asyncio.run(every_route()) == [(401, 0)] * len(protected)
    wrong = [(b"authorization", b"Bearer wrong")]
    assert asyncio.run(_call(app, "POST", "/elbo", wrong)) == (401, 0)


@pytest.mark.parametrize(
    "header", ["Bearer wrong", "Basic s3cret", "Bearer", "s3cret", "Bearer s3cret2", "Bearer s3cre"]
)
def test_wrong_keys(keyed, header):
    response = keyed.get("/v1/model", headers={"authorization": header})
    assert response.status_code == 401
    assert response.json() == {"error": NEEDS_KEY, "code": "unauthorized"}


def test_the_scheme_is_case_insensitive(keyed):
    assert keyed.get("/v1/model", headers={"authorization": "bearer s3cret"}).status_code == 200


def test_cors_preflights_need_no_key(digits_model_dir):
    """A browser's preflight carries no Authorization header; the request that follows does."""
    settings = Settings(model_dir=digits_model_dir, api_key="s3cret", cors_origins="https://ui.example")
    with TestClient(create_app(settings)) as client:
        preflight = client.options(
            "/elbo",
            headers={
                "origin": "https://ui.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        refused = client.post("/elbo", json={"instances": []}, headers={"origin": "https://ui.example"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "https://ui.example"  # the page can read why

"""The fast path answers /elbo, /encode and /decode exactly as the FastAPI routes behind it would, errors
included, and leaves what it does not take to them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.api.fast_path import FastPath
from service.http.api.inference import JSON_ROUTES as ROUTES
from service.http.app import create_app
from service.http.settings import Settings

DIGIT = [float(v) for v in np.arange(64) % 17]
KEY = {"authorization": "Bearer s3cret"}


def npy(rows) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(rows, dtype=np.float64))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def both(digits_model_dir):
    """(with the fast path, without it): the same app otherwise."""

    def make(fast: bool) -> TestClient:
        settings = Settings(model_dir=digits_model_dir, api_key="s3cret", max_instances=3, fast_path=fast)
        return TestClient(create_app(settings))

    with make(True) as fast, make(False) as slow:
        assert isinstance(fast.app.fast_path, FastPath)
        assert slow.app.fast_path is None
        yield fast, slow


@pytest.fixture
def passed_on(both, monkeypatch):
    """The paths of the requests that the fast path left to the app's middleware and routes."""
    fast_path = both[0].app.fast_path
    seen: list[str] = []
    stack = fast_path.app

    async def recording(scope, receive, send):
        if scope["type"] == "http":
            seen.append(scope["path"])
        await stack(scope, receive, send)

    monkeypatch.setattr(fast_path, "app", recording)
    return seen


REQUESTS = {
    "ok": dict(json={"instances": [DIGIT, DIGIT], "n_samples": 3, "seed": 4}),
    "options": dict(json={"instances": [DIGIT], "seed": 1, "iw_samples": 7, "fpr": 0.05, "feature_scores": True}),
    "wrong width": dict(json={"instances": [[1.0, 2.0]]}),
    "too many": dict(json={"instances": [DIGIT] * 4}),
    "not JSON": dict(content=b"{", headers={"content-type": "application/json"}),
    "NaN": dict(content=b'{"instances": [[NaN' + b",0" * 63 + b"]]}", headers={"content-type": "application/json"}),
    "unknown field": dict(json={"instances": [DIGIT], "temperature": 2}),
    "npy": dict(content=npy([DIGIT]), headers={"content-type": "application/x-npy"}, params={"seed": "2"}),
    "npy, bad": dict(content=b"\x93NUMPY nope", headers={"content-type": "application/x-npy"}),
    "npy, options": dict(
        content=npy([DIGIT, DIGIT]),
        headers={"content-type": "application/x-npy"},
        params={"seed": "3", "n_samples": "2"},
    ),
    "npy, unknown option": dict(
        content=npy([DIGIT]), headers={"content-type": "application/x-npy"}, params={"temperature": "2"}
    ),
    "npy, instances in the query": dict(
        content=npy([DIGIT]), headers={"content-type": "application/x-npy"}, params={"instances": "1"}
    ),
    "npy, wrong width": dict(content=npy([[1.0, 2.0]]), headers={"content-type": "application/x-npy"}),
    "npy, too many": dict(content=npy([DIGIT] * 4), headers={"content-type": "application/x-npy"}),
    "npy, NaN": dict(content=npy([[float("nan")] + DIGIT[1:]]), headers={"content-type": "application/x-npy"}),
    "text": dict(content=b"hello", headers={"content-type": "text/plain"}),
}


@pytest.mark.parametrize("path", sorted(ROUTES))
@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_the_same_answer_with_and_without_the_fast_path(both, path, name):
    fast, slow = both
    options = REQUESTS[name]
    if path == "/encode" and "json" in options:
        options = dict(
            options, json={k: v for k, v in options["json"].items() if k == "instances" or name == "unknown field"}
        )
    headers = {**KEY, **options.get("headers", {})}
    answers = [client.post(path, **{**options, "headers": headers}) for client in (fast, slow)]
    assert answers[0].status_code == answers[1].status_code
    assert answers[0].content == answers[1].content
    assert answers[0].headers["content-type"] == answers[1].headers["content-type"]
    assert answers[0].headers["x-model-version"] == answers[1].headers["x-model-version"]


@pytest.mark.parametrize(
    "repeated",
    [
        [("content-type", "application/json"), ("content-type", "application/x-npy")],
        [("content-type", "application/x-npy"), ("content-type", "application/json")],
        [("content-type", "application/json"), ("accept", "image/png"), ("accept", "application/json")],
    ],
    ids=["json then npy", "npy then json", "accept png then json"],
)
def test_of_repeated_headers_the_first_counts_as_on_the_routes(both, repeated):
    fast, slow = both
    body = json.dumps({"instances": [DIGIT], "seed": 0}).encode()
    if repeated[0][1] == "application/x-npy":
        body = npy([DIGIT])
    path = "/decode" if repeated[-1][0] == "accept" else "/elbo"
    if path == "/decode":
        body = json.dumps({"z": [[0.0] * 4]}).encode()
    headers = [("authorization", KEY["authorization"]), *repeated]
    params = {"seed": "0"} if body.startswith(b"\x93NUMPY") else {}
    answers = [client.post(path, content=body, headers=headers, params=params) for client in (fast, slow)]
    assert answers[0].status_code == answers[1].status_code
    assert answers[0].content == answers[1].content
    assert answers[0].headers["content-type"] == answers[1].headers["content-type"]


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_the_api_key_and_other_methods_behave_as_on_the_routes(both, path):
    fast, slow = both
    for call in (lambda c: c.post(path, json={"instances": [DIGIT]}), lambda c: c.get(path, headers=KEY)):
        a, b = call(fast), call(slow)
        assert (a.status_code, a.json(), a.headers.get("www-authenticate")) == (
            b.status_code,
            b.json(),
            b.headers.get("www-authenticate"),
        )
    assert fast.post(path, json={"instances": [DIGIT]}).status_code == 401
    assert fast.get(path, headers=KEY).status_code == 405


def test_the_fast_path_is_counted_and_released_like_any_request(both):
    fast, _ = both
    assert fast.post("/elbo", json={"instances": [DIGIT], "seed": 0}, headers=KEY).status_code == 200
    metrics = fast.get("/metrics", headers=KEY).text
    counted = [s for s in metrics.splitlines() if s.startswith("vae_requests_total{") and 'endpoint="/elbo"' in s]
    assert any('status="200"' in s and 'model="digits"' in s for s in counted), counted
    assert fast.app.state.host.current.in_flight == 0


def test_the_fast_path_answers_a_json_post_with_the_key_itself(both, passed_on):
    fast, _ = both
    for path, body in (("/elbo", {"instances": [DIGIT], "seed": 0}), ("/encode", {"instances": [DIGIT]})):
        response = fast.post(path, json=body, headers={**KEY, "x-request-id": "fast-1"})
        assert (response.status_code, response.headers["x-request-id"]) == (200, "fast-1")
    assert fast.post("/decode", json={"z": [[0.0] * 4]}, headers=KEY).status_code == 200
    assert fast.post("/elbo", json={"instances": [[1.0, 2.0]]}, headers=KEY).status_code == 422  # its own error
    npy_headers = {**KEY, "content-type": "application/x-npy"}
    for path, params in (("/elbo", {"seed": "1"}), ("/encode", {})):  # .npy bodies too, where instances are taken
        assert fast.post(path, content=npy([DIGIT]), headers=npy_headers, params=params).status_code == 200
    assert passed_on == []


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("/elbo", dict(json={"instances": [DIGIT]}, headers={})),  # no key: the key middleware's 401
        ("/decode", dict(content=npy([[0.0] * 4]), headers={**KEY, "content-type": "application/x-npy"})),
        ("/elbo", dict(content=b"{}", headers={**KEY, "content-type": "text/plain"})),
        ("/decode", dict(json={"z": [[0.0] * 4]}, headers={**KEY, "accept": "image/png"})),
        ("/sample", dict(json={"instances": [DIGIT]}, headers=KEY)),  # not a fast route
    ],
    ids=["no key", "npy", "text", "png", "sample"],
)
def test_what_the_fast_path_does_not_take_goes_on_to_the_routes(both, passed_on, path, options):
    fast, _ = both
    fast.post(path, **options)
    assert passed_on == [path]


def test_a_body_over_the_fast_limit_goes_the_routes_way(both, passed_on):
    fast, _ = both
    padded = b'{"instances": [' + b",".join([str(DIGIT).encode()] * 3) + b"]" + b" " * (1 << 20) + b"}"
    response = fast.post("/elbo", content=padded, headers={**KEY, "content-type": "application/json"})
    assert response.status_code == 200
    assert passed_on == ["/elbo"]


def test_an_error_nothing_handles_is_a_plain_500_on_the_fast_path(digits_model_dir, monkeypatch):
    from service.http.api import inference

    async def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setitem(inference.JSON_ROUTES, "/elbo", inference.JsonRoute(inference.ElboRequest, broken))
    with TestClient(create_app(Settings(model_dir=digits_model_dir)), raise_server_exceptions=False) as client:
        response = client.post("/elbo", json={"instances": [DIGIT]})
        assert (response.status_code, response.text) == (500, "Internal Server Error")
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert client.app.state.host.current.in_flight == 0


def test_a_cors_request_goes_the_routes_way_and_gets_its_headers(digits_model_dir):
    settings = Settings(model_dir=digits_model_dir, cors_origins="https://ui.example")
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/elbo", json={"instances": [DIGIT], "seed": 0}, headers={"origin": "https://ui.example"}
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://ui.example"

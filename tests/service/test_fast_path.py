"""The fast path answers /elbo and /encode exactly as the FastAPI routes behind it would, errors included."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.api.fast_path import ROUTES, FastPath
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
        app = create_app(Settings(model_dir=digits_model_dir, api_key="s3cret", max_instances=3))
        if not fast:
            app.user_middleware = [m for m in app.user_middleware if m.cls is not FastPath]
        return TestClient(app)

    with make(True) as fast, make(False) as slow:
        assert [m.cls is FastPath for m in fast.app.user_middleware].count(True) == 1
        assert not any(m.cls is FastPath for m in slow.app.user_middleware)
        yield fast, slow


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

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.http.settings import Settings
from tests.helpers import start_server, stop

MODELS = ["digits", "tabular"]
RUNTIMES = ["onnx", "torchscript"]


@pytest.fixture(scope="session")
def clients(model_dirs):
    """One started app per (model, runtime), shared across the session."""
    opened = {}
    for model in MODELS:
        for runtime in RUNTIMES:
            client = TestClient(create_app(Settings(model_dir=model_dirs[model], runtime=runtime)))
            client.__enter__()
            opened[model, runtime] = client
    yield opened
    for client in opened.values():
        client.__exit__(None, None, None)


@pytest.fixture
def start_app():
    """A factory of started apps with settings of the test's own: start_app(model_dir, runtime=None, **settings)."""
    opened = []

    def make(model_dir, runtime=None, **settings) -> TestClient:
        client = TestClient(create_app(Settings(model_dir=model_dir, **settings), runtime=runtime))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture(params=[(m, r) for m in MODELS for r in RUNTIMES], ids=lambda p: f"{p[0]}-{p[1]}")
def client(request, clients) -> TestClient:
    return clients[request.param]


@pytest.fixture(params=MODELS)
def onnx_client(request, clients) -> TestClient:
    return clients[request.param, "onnx"]


@pytest.fixture(scope="session")
def digits_client(clients) -> TestClient:
    return clients["digits", "onnx"]


@pytest.fixture(scope="module")
def served_digits(digits_model_dir):
    """A real `vae serve` process on the digits model with the default settings, one per test module: its URL."""
    process, base = start_server(digits_model_dir)
    yield base
    stop(process)

"""`promtool check metrics` on /metrics, one worker and two: Prometheus' own linter finds nothing.

promtool comes from Debian's prometheus package (`make system`: scripts/promtool_setup.sh); the tests
never install it. Without it they fail in CI and skip loudly elsewhere.
"""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

from tests.helpers import missing_tool, start_server, stop

DIGIT = [0.0] * 64


@pytest.fixture(scope="module")
def promtool(request) -> str:
    found = shutil.which("promtool")
    if found is not None:
        return found
    missing_tool(request, "promtool is", "/metrics was not linted")


def check(promtool: str, text: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def test_one_worker_passes_promtool(promtool, start_app, digits_model_dir):
    client = start_app(digits_model_dir, None)
    assert client.post("/elbo", json={"instances": [DIGIT], "seed": 0}).status_code == 200
    assert client.post("/elbo", json={"instances": []}).status_code == 422
    result = check(promtool, client.get("/metrics").text)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_two_workers_pass_promtool(promtool, digits_model_dir):
    server, base = start_server(digits_model_dir, "--workers", "2")
    try:
        assert httpx.post(f"{base}/elbo", json={"instances": [DIGIT], "seed": 0}).status_code == 200
        text = httpx.get(f"{base}/metrics").text
    finally:
        stop(server)
    assert "vae_requests_total{" in text
    result = check(promtool, text)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_promtool_finds_a_bad_exposition(promtool):
    """The check can fail: a counter without `_total` is a lint finding."""
    result = check(promtool, "# HELP bad a counter\n# TYPE bad counter\nbad 1\n")
    assert result.returncode == 3 and "counter metrics should have" in result.stdout + result.stderr

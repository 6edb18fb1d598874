"""`vae serve DIR` as users run it: a real uvicorn process answering over a socket."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import VAE, start_server, stop


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
def test_vae_serve_answers_every_endpoint(digits_model_dir, runtime):
    server, base = start_server(digits_model_dir, "--host", "127.0.0.1", "--runtime", runtime)
    try:
        digit = [[0.0] * 64]
        assert httpx.get(f"{base}/healthz").json() == {"status": "alive"}
        assert httpx.get(f"{base}/v1/model").json()["runtime"] == runtime
        assert httpx.post(f"{base}/encode", json={"instances": digit}).status_code == 200
        assert httpx.post(f"{base}/decode", json={"z": [[0.0] * 4]}).status_code == 200
        assert httpx.post(f"{base}/sample", json={"n_samples": 3, "decode": True}).status_code == 200
        elbo = httpx.post(f"{base}/elbo", json={"instances": digit, "n_samples": 4, "seed": 1})
        assert elbo.status_code == 200 and len(elbo.json()["elbo"]) == 1
        bad = httpx.post(f"{base}/elbo", content=b"{", headers={"content-type": "application/json"})
        assert bad.status_code == 400
    finally:
        stop(server)


def _request(sock: socket.socket, path: str = "/healthz") -> bytes:
    """One keep-alive GET on `sock`; the whole answer (headers and Content-Length bytes of body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_vae_serve_closes_idle_keep_alive_connections(digits_model_dir):
    server, base = start_server(digits_model_dir, "--keep-alive-s", "1")
    try:
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as sock:
            assert _request(sock).startswith(b"HTTP/1.1 200 ")
            started = time.monotonic()
            assert sock.recv(1) == b""  # closed by the server
            idle = time.monotonic() - started
        assert 0.5 < idle < 5, idle  # about --keep-alive-s; uvicorn's default would be 5 s
    finally:
        stop(server)


def test_vae_serve_limits_concurrent_connections(digits_model_dir):
    server, base = start_server(digits_model_dir, "--limit-concurrency", "4", "--backlog", "16")
    port = int(base.rsplit(":", 1)[1])
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        time.sleep(0.3)  # accepted by the server, which now holds 4 connections
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert _request(sock).startswith(b"HTTP/1.1 503 ")
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert httpx.get(f"{base}/healthz").status_code == 200
    finally:
        stop(server)


@pytest.mark.parametrize(
    "flag, variable, value, message",
    [
        ("--backlog", "VAE_BACKLOG", "0", "Input should be greater than or equal to 1 (got 0)"),
        ("--limit-concurrency", "VAE_LIMIT_CONCURRENCY", "0", "Input should be greater than or equal to 1 (got 0)"),
        ("--keep-alive-s", "VAE_KEEP_ALIVE_S", "0", "Input should be greater than 0 (got 0.0)"),
    ],
)
def test_vae_serve_refuses_a_bad_limit_with_one_line(digits_model_dir, flag, variable, value, message):
    result = subprocess.run(
        [VAE, "serve", str(digits_model_dir), flag, value], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr == f"vae serve: invalid setting {variable}: {message}\n"


def test_vae_serve_logs_only_json_lines_uvicorns_included(digits_model_dir):
    server, base = start_server(digits_model_dir)
    try:
        assert httpx.post(f"{base}/elbo", json={"instances": [[0.0] * 64], "seed": 1}).status_code == 200
    finally:
        stop(server)
    lines = Path(server.log_path).read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    loggers = {record["logger"] for record in records}
    assert {"uvicorn.error", "vae.access"} <= loggers, loggers
    messages = [record["message"] for record in records if record["logger"] == "uvicorn.error"]
    assert "Application startup complete." in messages
    assert "Shutting down" in messages


def _requests_total(text: str, endpoint: str, status: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vae_requests_total{") and f'endpoint="{endpoint}"' in line and f'status="{status}"' in line
    )


def test_vae_serve_with_two_workers_counts_every_request_once(digits_model_dir, tmp_path):
    server, base = start_server(digits_model_dir, "--workers", "2", env={"TMPDIR": str(tmp_path)})
    try:
        assert len(list(tmp_path.glob("vae-metrics-*"))) == 1
        with httpx.Client(base_url=base) as client:  # new connections spread over the two workers
            for i in range(20):
                response = httpx.post(f"{base}/elbo", json={"instances": [[0.0] * 64], "seed": i})
                assert response.status_code == 200
            # Every scrape, whichever worker answers it, reads all 20.
            scrapes = [httpx.get(f"{base}/metrics").text for _ in range(6)]
            assert client.head("/metrics").status_code == 200
    finally:
        stop(server)
    assert [_requests_total(text, "/elbo", "200") for text in scrapes] == [20.0] * 6
    assert all("vae_model_info{" in text for text in scrapes)
    assert list(tmp_path.glob("vae-metrics-*")) == []  # the metrics directory goes with the server

"""The compose proxy in front of a real `vae serve`: the image's own entrypoint and nginx config, run directly.

Debian's nginx, the package the proxy image installs (scripts/proxy_setup.sh installs it where it is
missing), started by scripts/container_proxy.sh with scripts/nginx.conf.template: the files the image
copies, without building it (tests/test_container.py builds and runs the images themselves).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, missing_tool, start_server, stop

pytestmark = pytest.mark.proxy

ROOT = Path(__file__).resolve().parents[1]
PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # nginx is in /usr/sbin, off a user's PATH
# The shipped config's values (scripts/nginx.conf.template, docker-compose.yml).
HEADER_TIMEOUT_S = 10
BODY_TIMEOUT_S = 10
PER_CLIENT = 32


def _have_nginx() -> bool:
    return shutil.which("nginx", path=PATH) is not None


@pytest.fixture(scope="module")
def nginx(request):
    if not _have_nginx():
        missing_tool(request, "nginx is", "the proxy was not tested")


@pytest.fixture(scope="module")
def proxy(nginx, digits_model_dir, tmp_path_factory):
    """(proxy URL, proxy port) of the entrypoint's nginx in front of one `vae serve`."""
    server, base = start_server(digits_model_dir)
    workdir = tmp_path_factory.mktemp("proxy")
    port = free_port()
    log = (workdir / "proxy.log").open("w")
    env = dict(
        os.environ,
        PATH=PATH,
        VAE_PROXY_UPSTREAM=base.removeprefix("http://"),
        VAE_PROXY_RESOLVER="127.0.0.1",
        VAE_PROXY_LISTEN=str(port),
        VAE_PROXY_DIR=str(workdir),
        VAE_PROXY_TEMPLATE=str(ROOT / "scripts" / "nginx.conf.template"),
    )
    process = subprocess.Popen(
        ["sh", str(ROOT / "scripts" / "container_proxy.sh")], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (workdir / "proxy.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (workdir / "proxy.log").read_text()
            time.sleep(0.2)
        yield url, port
    finally:
        process.terminate()  # nginx's fast shutdown; its worker goes with it
        process.wait(timeout=30)
        stop(server)


def test_the_proxy_answers_from_the_service(proxy):
    url, _ = proxy
    response = httpx.post(f"{url}/elbo", json={"instances": [[0.0] * 64], "seed": 0})
    assert response.status_code == 200
    assert response.headers["x-upstream"].startswith("127.0.0.1:")
    assert httpx.get(f"{url}/proxy-healthz").text == "ok\n"


def _lifetime(port: int, first: bytes, drip: bytes, every_s: float, cap_s: float) -> tuple[float, bytes]:
    """Send `first`, then a byte of `drip` every `every_s`; (seconds until the server closed, what it said)."""
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=cap_s) as sock:
        sock.sendall(first)
        sock.settimeout(every_s)
        for i in range(10_000):
            if time.monotonic() - started > cap_s:
                return float("inf"), answer
            try:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
                continue
            except TimeoutError:
                pass
            except ConnectionResetError:  # reset_timedout_connection: closed with a RST
                break
            try:
                sock.sendall(drip[i % len(drip) : i % len(drip) + 1])
            except OSError:
                break
    return time.monotonic() - started, answer


def _in_threads(n: int, work) -> list:
    results: list = [None] * n

    def run(i: int) -> None:
        results[i] = work()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_slow_loris_connections_are_dropped(proxy):
    """Headers sent a byte a second: 50 such connections stayed open as long as the client wished."""
    url, port = proxy
    header = b"X-Slow: " + b"a" * 200 + b"\r\n"
    results = _in_threads(20, lambda: _lifetime(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", header, 1.0, 60))
    for seconds, answer in results:
        assert HEADER_TIMEOUT_S - 1 < seconds < HEADER_TIMEOUT_S + 5, seconds
        assert answer == b""  # nginx resets a connection whose headers time out, without a word
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_slow_body_is_dropped_and_never_reaches_the_service(proxy):
    url, port = proxy
    head = b"POST /elbo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    # A byte every 11 s: each pause is over client_body_timeout.
    seconds, answer = _lifetime(port, head + b'{"instances": [', b"[", BODY_TIMEOUT_S + 1, 60)
    assert BODY_TIMEOUT_S - 1 < seconds < BODY_TIMEOUT_S + 5, seconds
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b"", answer


def test_connections_per_client_are_limited(proxy):
    """Requests being read (slow bodies) count; past the limit a client gets 429 until they are dropped."""
    url, port = proxy
    head = b"POST /elbo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(PER_CLIENT)]
    try:
        for sock in held:
            sock.sendall(head)
        time.sleep(0.5)
        assert httpx.get(f"{url}/healthz").status_code == 429
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_the_entrypoint_refuses_a_bad_limit(nginx, tmp_path):
    env = dict(
        os.environ,
        PATH=PATH,
        VAE_PROXY_RESOLVER="127.0.0.1",
        VAE_PROXY_PER_CLIENT="many",
        VAE_PROXY_DIR=str(tmp_path),
        VAE_PROXY_TEMPLATE=str(ROOT / "scripts" / "nginx.conf.template"),
    )
    result = subprocess.run(
        ["sh", str(ROOT / "scripts" / "container_proxy.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr == (
        "vae-proxy: VAE_PROXY_PER_CLIENT and VAE_PROXY_LISTEN must be positive integers, got 'many'\n"
    )

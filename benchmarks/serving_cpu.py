"""CPU time per /elbo request of the service's ASGI app, driven in process: no sockets, no wrk.

On a machine shared with other jobs, requests per second under wrk move by tens of percent from one run to
the next; the CPU time the process spends per request (all its threads: event loop, batcher, access log,
ONNX Runtime) moves far less, so A/B comparisons of the HTTP layer are made with this. C coroutines each
send one-instance JSON requests (API key, JSON access log at info to a file) straight into the app, as
uvicorn would, after a warm-up.

    .venv/bin/python benchmarks/serving_cpu.py MODEL_DIR [--concurrency 64] [--requests 8000] [--no-fast-path]
        [--npy ROWS]

To compare with another source tree, run this file with PYTHONPATH pointing at that tree.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import uvloop

from service.core.artifact import load_artifact
from service.http.app import create_app
from service.http.settings import Settings

KEY = "bench-key"
NPY_QUERY = b"n_samples=1&iw_samples=1&seed=1"


def one_instance_body(model_dir: Path) -> bytes:
    manifest = load_artifact(model_dir, verify=False).manifest
    row = manifest.preprocessing.to_raw(np.full((1, manifest.n_features), 0.3))[0].round(4).tolist()
    return json.dumps({"instances": [row], "n_samples": 1, "iw_samples": 1, "seed": 1}).encode()


def npy_body(model_dir: Path, rows: int) -> bytes:
    """`rows` raw instances as one float32 .npy body: the bulk client's request (benchmarks/serving.py's)."""
    manifest = load_artifact(model_dir, verify=False).manifest
    data = manifest.preprocessing.to_raw(np.random.default_rng(2).random((rows, manifest.n_features)))
    out = io.BytesIO()
    np.save(out, data.astype(np.float32))
    return out.getvalue()


async def post(app, body: bytes, content_type: bytes, query: bytes) -> None:
    headers = [
        (b"host", b"bench"),
        (b"content-type", content_type),
        (b"authorization", f"Bearer {KEY}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/elbo",
        "raw_path": b"/elbo",
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    statuses = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never disconnects

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    if statuses != [200]:
        raise RuntimeError(f"POST /elbo answered {statuses}")


async def measure(
    app, body: bytes, concurrency: int, requests: int, content_type: bytes, query: bytes
) -> tuple[float, float, int]:
    """(requests per second, CPU microseconds per request, requests) after a warm-up, inside the lifespan."""
    to_app: asyncio.Queue = asyncio.Queue()
    from_app: asyncio.Queue = asyncio.Queue()
    await to_app.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, to_app.get, from_app.put))
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(str(started))

    async def client(n: int) -> None:
        for _ in range(n):
            await post(app, body, content_type, query)

    await asyncio.gather(*(client(max(1, 200 // concurrency)) for _ in range(concurrency)))
    per_client = max(1, requests // concurrency)
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(per_client) for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await to_app.put({"type": "lifespan.shutdown"})
    await from_app.get()
    await lifespan
    done = per_client * concurrency
    return done / wall, cpu / done * 1e6, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--concurrency", type=int, default=64, help="clients at once")
    parser.add_argument("--requests", type=int, default=8000, help="requests measured, after the warm-up")
    parser.add_argument("--no-fast-path", action="store_true", help="VAE_FAST_PATH=false")
    parser.add_argument("--log-level", default="info", help="info writes an access log line per request")
    parser.add_argument("--npy", type=int, default=0, metavar="ROWS", help="ROWS instances per .npy request")
    parser.add_argument("--log", type=Path, default=Path("/dev/null"), help="where the server's logs go")
    args = parser.parse_args()
    settings = {"model_dir": args.model_dir, "api_key": KEY, "log_level": args.log_level}
    if args.no_fast_path:  # only named when asked, so an older tree without the setting runs too
        settings["fast_path"] = False
    log = args.log.open("w")
    sys.stderr = log  # the service's logging handlers write to sys.stderr as it is when they are made
    app = create_app(Settings(**settings))
    if args.npy:  # options in the query string, as benchmarks/serving.py sends them
        body, content_type, query = npy_body(args.model_dir, args.npy), b"application/x-npy", NPY_QUERY
    else:
        body, content_type, query = one_instance_body(args.model_dir), b"application/json", b""
    rps, cpu_us, done = uvloop.run(measure(app, body, args.concurrency, args.requests, content_type, query))
    print(f"c={args.concurrency}: {done} requests, {rps:.0f} req/s, {cpu_us:.0f} us CPU per request")


if __name__ == "__main__":
    main()

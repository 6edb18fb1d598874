"""gRPC against REST /v2, and grpc.aio on uvloop against the standard asyncio loop: one digits-elbo instance a call.

Starts each server itself on loopback: `vae serve` (uvicorn picks uvloop, as in production) and uvicorn with
`--loop asyncio`, both with VAE_GRPC_PORT. Each is driven for a fixed time by Python clients in this process
(grpc.aio with the service's own stubs; httpx with the binary v2 body), `--concurrency` calls in flight. The
client shares the machine's cores with the server, so the numbers are a comparison made in one run, not a
ceiling. Prints a markdown table.

    .venv/bin/python benchmarks/grpc_serving.py MODEL_DIR [--seconds 5] [--concurrency 1 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
from sklearn.datasets import load_digits

from service.http.grpc import grpc_predict_v2_pb2 as pb
from service.http.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_dir: Path, loop: str) -> tuple[subprocess.Popen, str, str]:
    """A server on free ports: (process, REST base, gRPC address); `loop` is "uvloop" (vae serve) or "asyncio"."""
    http, rpc = free_port(), free_port()
    env = os.environ | {"VAE_MODEL_DIR": str(model_dir), "VAE_GRPC_PORT": str(rpc), "VAE_LOG_LEVEL": "warning"}
    if loop == "uvloop":
        command = [str(BIN / "vae"), "serve", str(model_dir), "--port", str(http)]
    else:
        command = [str(BIN / "uvicorn"), "service.http.main:app", "--port", str(http), "--loop", "asyncio"]
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base, f"127.0.0.1:{rpc}"
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    log.seek(0)
    sys.exit(f"the {loop} server did not become ready:\n{log.read().decode()[-2000:]}")


async def drive(call, seconds: float, concurrency: int) -> tuple[float, float, float]:
    """(calls per second, p50 ms, p99 ms) of `call` kept `concurrency` deep for `seconds`."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return len(latencies) / elapsed, statistics.median(ordered) * 1e3, p99 * 1e3


async def measure(
    base: str, address: str, seconds: float, concurrency: int, rest: bool
) -> dict[str, tuple[float, float, float]]:
    x = np.ascontiguousarray(load_digits().data[:1], dtype="<f8")  # (1, 64), raw units
    request = pb.ModelInferRequest(
        model_name="digits-elbo",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="instances", datatype="FP64", shape=[1, 64])],
        raw_input_contents=[x.tobytes()],
        parameters={"seed": pb.InferParameter(int64_param=0)},
    )
    header = json.dumps(
        {
            "inputs": [
                {"name": "instances", "shape": [1, 64], "datatype": "FP64", "parameters": {"binary_data_size": 512}}
            ],
            "parameters": {"seed": 0, "binary_data_output": True},
        }
    ).encode()
    headers = {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}
    results = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request)  # connect and warm up
        results["gRPC ModelInfer"] = await drive(lambda: stub.ModelInfer(request), seconds, concurrency)
    if not rest:
        return results
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits) as client:

        async def post():
            response = await client.post("/v2/models/digits-elbo/infer", content=header + x.tobytes(), headers=headers)
            response.raise_for_status()

        await post()
        results["REST /v2 infer"] = await drive(post, seconds, concurrency)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0, help="time driven per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="calls in flight")
    parser.add_argument("--no-rest", action="store_true", help="gRPC only (the REST rows are client-bound anyway)")
    parser.add_argument("--rounds", type=int, default=1, help="start both servers this many times, alternating")
    args = parser.parse_args()
    print("| server loop | protocol | c | calls/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    rates: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(args.rounds):
        for loop in ("uvloop", "asyncio"):
            process, base, address = start(args.model_dir, loop)
            try:
                for concurrency in args.concurrency:
                    measured = asyncio.run(measure(base, address, args.seconds, concurrency, not args.no_rest))
                    for protocol, (rate, p50, p99) in measured.items():
                        rates.setdefault((loop, protocol, concurrency), []).append(rate)
                        print(f"| {loop} | {protocol} | {concurrency} | {rate:.0f} | {p50:.2f} | {p99:.2f} |")
            finally:
                process.terminate()
                process.wait(timeout=60)
    print()
    # Only the loops are compared: the REST rows are bound by httpx in this process, not by the server.
    for concurrency in args.concurrency:
        uv, aio = (rates[loop, "gRPC ModelInfer", concurrency] for loop in ("uvloop", "asyncio"))
        ratios = ", ".join(f"{a / b:.2f}x" for a, b in zip(uv, aio, strict=True))
        print(f"c={concurrency}: gRPC calls/s on uvloop / on asyncio, each round: {ratios}")


if __name__ == "__main__":
    main()

"""Serving benchmark: the real server under wrk, against a bare-ASGI ceiling and a naive FastAPI baseline.

Starts every server itself on loopback, drives it with wrk (a separate process, in C), and prints one
table per model plus the ratios the targets are stated in; writes them to docs/benchmark-serving.md.
Needs `wrk` (Debian: apt-get install wrk). Every comparison is made in the same run.

    .venv/bin/python benchmarks/serving.py [--duration 8] [--out docs/benchmark-serving.md]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
import psutil

from service.core.artifact import load_artifact
from service.core.runtime import OnnxRuntime

ROOT = Path(__file__).resolve().parent.parent
VAE = str(Path(sys.executable).with_name("vae"))
UVICORN = str(Path(sys.executable).with_name("uvicorn"))
CONCURRENCY = (1, 16, 64)

CEILING_APP = """
import orjson
CONSTANT = orjson.dumps({"elbo": [0.0]})
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    orjson.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": CONSTANT})
"""

NAIVE_APP = """
import json, os
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

MODEL = os.environ["NAIVE_MODEL_DIR"]
manifest = json.load(open(os.path.join(MODEL, "manifest.json")))
encoder = ort.InferenceSession(os.path.join(MODEL, "encoder.onnx"))
decoder = ort.InferenceSession(os.path.join(MODEL, "decoder.onnx"))
offset = np.asarray(manifest["preprocessing"]["offset"])
scale = np.asarray(manifest["preprocessing"]["scale"])
app = FastAPI()

class Body(BaseModel):
    instances: list[list[float]]
    n_samples: int = 1
    iw_samples: int = 1
    seed: int = 0

@app.post("/elbo")
def elbo(body: Body):
    x = ((np.asarray(body.instances) - offset) / scale).reshape([-1, *manifest["input_shape"]]).astype(np.float32)
    mu, logvar = encoder.run(None, {"x": x})
    eps = np.random.default_rng(body.seed).standard_normal((len(x), body.n_samples, mu.shape[1])).astype(np.float32)
    z = (mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps).reshape(-1, mu.shape[1])
    out = decoder.run(None, {"z": z})
    flat = np.repeat(x.reshape(len(x), -1), body.n_samples, axis=0)
    if manifest["likelihood"] == "bernoulli":
        logits = out[0].reshape(len(flat), -1)
        logp = (flat * logits - np.logaddexp(0, logits)).sum(1)
    else:
        mean, lv = (o.reshape(len(flat), -1) for o in out)
        logp = (-0.5 * (np.log(2 * np.pi) + lv + (flat - mean) ** 2 / np.exp(lv))).sum(1)
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).sum(1)
    rec = logp.reshape(len(x), body.n_samples).mean(1)
    return {"elbo": (rec - kl).tolist(), "reconstruction": rec.tolist(), "kl": kl.tolist()}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on loopback: started, polled until ready, measured, stopped."""

    def __init__(self, command: list[str], env: dict, ready_path: str, ready_body: bytes | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [c.replace("{port}", str(self.port)) for c in command],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=os.environ | env,
            cwd=ROOT,
        )
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(Path(self.log.name).read_text())
            try:
                if ready_body is None:
                    ok = httpx.get(self.base + ready_path, timeout=1)
                else:
                    ok = httpx.post(
                        self.base + ready_path,
                        content=ready_body,
                        timeout=5,
                        headers={"content-type": "application/json"},
                    )
                if ok.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.ready_seconds = time.perf_counter() - started

    def rss_mb(self) -> float:
        process = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def wrk(url: str, body: bytes, content_type: str, connections: int, duration: float) -> dict:
    """Requests per second and latency percentiles from one wrk run."""
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "body"
        payload.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(
            textwrap.dedent(f"""
            local f = io.open("{payload}", "rb"); wrk.body = f:read("*all"); f:close()
            wrk.method = "POST"
            wrk.headers["Content-Type"] = "{content_type}"
            done = function(summary, latency, requests)
              io.write(string.format("JSON {{\\"p50\\": %f, \\"p99\\": %f, \\"requests\\": %d, " ..
                "\\"errors\\": %d, \\"non2xx\\": %d, \\"seconds\\": %f}}\\n",
                latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests,
                summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
                summary.errors.status, summary.duration / 1e6))
            end
        """)
        )
        threads = min(2, connections)
        result = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    stats = json.loads(re.search(r"^JSON (.*)$", result.stdout, re.MULTILINE).group(1))
    stats["rps"] = stats["requests"] / stats["seconds"]
    return stats


def raw_onnx(model_dir: Path, batch: int, n_samples: int, seconds: float = 3.0) -> float:
    """Instances per second for the networks alone: encoder on the batch, decoder on its draws."""
    artifact = load_artifact(model_dir)
    runtime = OnnxRuntime(artifact, intra_op_threads=os.cpu_count() or 1)
    shape = artifact.manifest.input_shape
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    z = np.random.default_rng(1).standard_normal((batch * n_samples, artifact.manifest.latent_dim), dtype=np.float32)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runtime.encode(x)
        runtime.decode(z)
        done += batch
    return done / (time.perf_counter() - started)


def train_models(workdir: Path) -> dict[str, tuple[Path, int]]:
    """The digits MLP, and a compute-heavy MLP (2048,1024) on 784-dimensional synthetic data."""
    digits = workdir / "digits"
    subprocess.run(
        [VAE, "train", "--out", str(digits), "--epochs", "30", "--no-progress"], check=True, capture_output=True
    )
    rng = np.random.default_rng(0)
    synthetic = workdir / "synthetic.npy"
    np.save(synthetic, (rng.random((3000, 784)) < 0.2).astype(np.float32))
    heavy = workdir / "heavy"
    subprocess.run(
        [
            VAE,
            "train",
            "--data",
            str(synthetic),
            "--likelihood",
            "bernoulli",
            "--hidden",
            "2048,1024",
            "--latent-dim",
            "16",
            "--epochs",
            "2",
            "--out",
            str(heavy),
            "--no-progress",
        ],
        check=True,
        capture_output=True,
    )
    return {"digits MLP": (digits, 1), "heavy MLP 784-2048-1024, n_samples=8": (heavy, 8)}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def bench_model(name: str, model_dir: Path, n_samples: int, duration: float) -> dict:
    artifact = load_artifact(model_dir)
    width = artifact.manifest.n_features
    low = artifact.manifest.preprocessing.to_raw(np.full((1, width), 0.3))[0]
    one = json.dumps(
        {"instances": [low.round(4).tolist()], "n_samples": n_samples, "iw_samples": 1, "seed": 1}
    ).encode()
    big = np.tile(low, (256, 1)).astype(np.float32)
    big_json = json.dumps(
        {"instances": big.round(4).tolist(), "n_samples": n_samples, "iw_samples": 1, "seed": 1}
    ).encode()
    out = {"name": name, "raw": {b: raw_onnx(model_dir, b, n_samples) for b in (1, 256)}, "runs": {}}

    for batching in ("on", "off"):
        env = {"VAE_BATCHING": "true" if batching == "on" else "false", "VAE_LOG_LEVEL": "warning"}
        server = Server([VAE, "serve", str(model_dir), "--port", "{port}"], env, "/readyz")
        try:
            for c in CONCURRENCY:
                out["runs"][f"batching {batching}", c] = wrk(
                    server.base + "/elbo", one, "application/json", c, duration
                )
            if batching == "on":
                out["ready_seconds"] = server.ready_seconds
                out["rss_mb"] = server.rss_mb()
                json_run = wrk(server.base + "/elbo", big_json, "application/json", 4, duration)
                binary_run = wrk(
                    server.base + f"/elbo?n_samples={n_samples}&iw_samples=1&seed=1",
                    npy(big),
                    "application/x-npy",
                    4,
                    duration,
                )
                out["bulk"] = {"json": json_run["rps"] * 256, "binary": binary_run["rps"] * 256}
                out["rss_after_mb"] = server.rss_mb()
        finally:
            server.stop()

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ceiling.py").write_text(CEILING_APP)
        (Path(tmp) / "naive.py").write_text(NAIVE_APP)
        for label, module, env in (
            ("ceiling", "ceiling:app", {}),
            ("naive FastAPI", "naive:app", {"NAIVE_MODEL_DIR": str(model_dir)}),
        ):
            server = Server(
                [
                    UVICORN,
                    module,
                    "--port",
                    "{port}",
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                    "--log-level",
                    "warning",
                    "--app-dir",
                    tmp,
                ],
                env,
                "/elbo",
                ready_body=one,
            )
            try:
                for c in CONCURRENCY:
                    out["runs"][label, c] = wrk(server.base + "/elbo", one, "application/json", c, duration)
            finally:
                server.stop()
    return out


def render(results: list[dict], duration: float) -> str:
    lines = [
        "# Benchmark: serving /elbo",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.platform()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}; "
        f"wrk {duration:g} s per cell, server and wrk on the same machine. Command: "
        "`.venv/bin/python benchmarks/serving.py`.",
        "",
        "Each request is one instance (`n_samples` as stated, `iw_samples` 1, a fixed seed). `vae serve` runs "
        "one worker. The ceiling is a bare ASGI callable under uvicorn (uvloop, httptools) that parses the same "
        "body with orjson and returns a constant; the naive baseline is a plain FastAPI app with a pydantic body "
        "and a sync endpoint that runs ONNX Runtime once per request and computes the same ELBO.",
        "",
    ]
    for r in results:
        runs = r["runs"]
        lines += [
            f"## {r['name']}",
            "",
            "| server | c | req/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|",
        ]
        for (label, c), s in runs.items():
            lines.append(
                f"| {label} | {c} | {s['rps']:.0f} | {s['p50']:.2f} | {s['p99']:.2f} | {s['errors'] + s['non2xx']} |"
            )
        on64, off64 = runs["batching on", 64]["rps"], runs["batching off", 64]["rps"]
        naive64, ceiling64 = runs["naive FastAPI", 64]["rps"], runs["ceiling", 64]["rps"]
        lines += [
            "",
            f"- Raw ONNX Runtime, in process: {r['raw'][1]:.0f} instances/s at batch 1, "
            f"{r['raw'][256]:.0f} at batch 256.",
            f"- Batching gain at c=64: {on64 / off64:.2f}x (on {on64:.0f} vs off {off64:.0f} req/s); at c=16: "
            f"{runs['batching on', 16]['rps'] / runs['batching off', 16]['rps']:.2f}x; at c=1: "
            f"{runs['batching on', 1]['rps'] / runs['batching off', 1]['rps']:.2f}x.",
            f"- Against the naive baseline at c=64: {on64 / naive64:.2f}x; "
            f"share of the ceiling: {on64 / ceiling64:.0%}.",
            "- Added latency of the batcher at c=1: p50 "
            f"{runs['batching on', 1]['p50'] - runs['batching off', 1]['p50']:+.2f} ms.",
            f"- 256-instance requests: JSON {r['bulk']['json']:.0f} instances/s, binary .npy {r['bulk']['binary']:.0f} "
            f"instances/s = {r['bulk']['binary'] / r['raw'][256]:.0%} of raw ONNX Runtime at batch 256.",
            f"- Start to ready: {r['ready_seconds']:.2f} s; RSS {r['rss_mb']:.0f} MB after start, "
            f"{r['rss_after_mb']:.0f} MB after the load.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--out", default="docs/benchmark-serving.md", help="where to write the tables ('' for nowhere)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("benchmarks/serving.py needs wrk: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        models = train_models(Path(tmp))
        results = [bench_model(name, path, n, args.duration) for name, (path, n) in models.items()]
    report = render(results, args.duration)
    print(report)
    if args.out:
        (ROOT / args.out).write_text(report)


if __name__ == "__main__":
    main()

"""Serving benchmark: `vae serve` under wrk, against a bare-ASGI ceiling, a naive FastAPI app and TorchServe.

Starts every server itself on loopback, drives each with wrk (-t1, a separate process in C) at c=1, 16 and
64 with one-instance POST /elbo requests, and prints one table plus the ratios the targets are stated in;
writes them to docs/benchmark-serving.md above its hand-written part. Every comparison is made in the
same run. `vae serve` runs as in production: an API key (sent by wrk), JSON access logs (to a file),
metrics, request ids and the default limits all on.

Needs `wrk` (Debian: apt-get install wrk). TorchServe runs through ../shared/peers/torchserve.sh (Java 17;
it installs TorchServe into a venv on first use); when it cannot run, the report says so and goes on.

    .venv/bin/python benchmarks/serving.py [--duration 6] [--baseline-src DIR] [--out docs/benchmark-serving.md]

--baseline-src DIR adds `vae serve` from another source tree (e.g. `git archive main | tar -x -C DIR`),
served by this venv, as the "before" rows of an A/B.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
import psutil

from service.core.artifact import load_artifact
from service.core.runtime import OnnxRuntime, available_cores

ROOT = Path(__file__).resolve().parent.parent
VAE = str(Path(sys.executable).with_name("vae"))
UVICORN = str(Path(sys.executable).with_name("uvicorn"))
CONCURRENCY = (1, 16, 64)
BINARY_ROWS = 256
JSON, NPY = "application/json", "application/x-npy"
API_KEY = "bench-key"
TORCHSERVE = ROOT.parent / "shared" / "peers" / "torchserve.sh"
LEAN = "lean reference (issue 15's design)"
MARKER = "<!-- Everything below is written by hand; benchmarks/serving.py keeps it. -->"

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


def free_port(span: int = 1) -> int:
    """A port p with p..p+span-1 free (TorchServe takes five in a row)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span < 65536 and all(_free(port + i) for i in range(1, span)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Server:
    """A server process on loopback, in a session of its own: started, polled until ready, measured, stopped."""

    def __init__(
        self,
        command: list[str],
        env: dict,
        ready_path: str,
        ready_body: bytes | None = None,
        span: int = 1,
        timeout_s: float = 60.0,
    ) -> None:
        self.port = free_port(span)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [c.replace("{port}", str(self.port)) for c in command],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=os.environ | env,
            cwd=ROOT,
            start_new_session=True,  # stop() ends the server and every process it started, and nothing else
        )
        headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
        while True:
            if self.process.poll() is not None or time.perf_counter() - started > timeout_s:
                tail = Path(self.log.name).read_text()[-3000:]
                self.stop()
                raise RuntimeError(f"{command[0]} did not get ready:\n" + tail)
            try:
                if ready_body is None:
                    ok = httpx.get(self.base + ready_path, timeout=1)
                else:
                    ok = httpx.post(self.base + ready_path, content=ready_body, timeout=5, headers=headers)
                if ok.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.ready_seconds = time.perf_counter() - started

    def rss_mb(self) -> float:
        process = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20

    def rss_process_mb(self) -> float:
        """The largest RSS of one process of the server (with several workers: a worker's)."""
        process = psutil.Process(self.process.pid)
        return max(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20

    def cpu_seconds(self) -> float:
        """CPU time (user and system) the server's processes have used so far, all their threads included."""
        process = psutil.Process(self.process.pid)
        return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])

    def stop(self) -> None:
        """End the server and remove its log (a run's access logs take hundreds of MB, left behind before)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def wrk(url: str, body: bytes, connections: int, duration: float, content_type: str = "application/json") -> dict:
    """Requests per second and latency percentiles from one wrk run (one thread, as in the issue)."""
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "body"
        payload.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(
            textwrap.dedent(f"""
            local f = io.open("{payload}", "rb"); wrk.body = f:read("*all"); f:close()
            wrk.method = "POST"
            wrk.headers["Content-Type"] = "{content_type}"
            wrk.headers["Authorization"] = "Bearer {API_KEY}"
            done = function(summary, latency, requests)
              io.write(string.format("JSON {{\\"p50\\": %f, \\"p99\\": %f, \\"requests\\": %d, " ..
                "\\"errors\\": %d, \\"non2xx\\": %d, \\"seconds\\": %f}}\\n",
                latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests,
                summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
                summary.errors.status, summary.duration / 1e6))
            end
        """)
        )
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s"]
        result = subprocess.run([*command, "-s", str(script), url], capture_output=True, text=True, check=True)
    stats = json.loads(re.search(r"^JSON (.*)$", result.stdout, re.MULTILINE).group(1))
    stats["rps"] = stats["requests"] / stats["seconds"]
    return stats


def raw_onnx(model_dir: Path, batch: int, seconds: float = 3.0) -> dict[str, float]:
    """Instances per second for the networks alone, encoder on the batch and decoder on one draw each: in one stream
    of calls with every core in each, and in two streams (threads) with one core each, as two workers run."""
    cores = available_cores()
    return {
        "one stream": _raw_streams(model_dir, batch, seconds, streams=1, threads=cores),
        "two streams": _raw_streams(model_dir, batch, seconds, streams=2, threads=max(1, cores // 2)),
    }


def _raw_streams(model_dir: Path, batch: int, seconds: float, streams: int, threads: int) -> float:
    artifact = load_artifact(model_dir, runtime="onnx")
    runtime = OnnxRuntime(artifact, intra_op_threads=threads)
    shape = artifact.manifest.input_shape
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    z = np.random.default_rng(1).standard_normal((batch, artifact.manifest.latent_dim), dtype=np.float32)
    done = [0] * streams
    started = time.perf_counter()

    def stream(i: int) -> None:
        while time.perf_counter() - started < seconds:
            runtime.encode(x)
            runtime.decode(z)
            done[i] += batch

    with ThreadPoolExecutor(max_workers=streams) as pool:
        list(pool.map(stream, range(streams)))
    return sum(done) / (time.perf_counter() - started)


def train_digits(workdir: Path) -> Path:
    """The digits MLP of the issue: 64-256-128-8, bernoulli (TorchServe's handler wants per-feature outputs)."""
    digits = workdir / "digits"
    command = [VAE, "train", "--data", "digits", "--likelihood", "bernoulli", "--hidden", "256,128"]
    command += ["--latent-dim", "8", "--epochs", "30", "--out", str(digits), "--no-progress"]
    subprocess.run(command, check=True, capture_output=True)
    return digits


def vae_serve(model_dir: Path, workers: int, env: dict, source: Path | None = None) -> Server:
    """`vae serve` as in production: an API key, JSON access logs at info (to `log_path`), metrics on."""
    env = {"VAE_API_KEY": API_KEY, "VAE_LOG_LEVEL": "info", **env}
    command = [VAE, "serve", str(model_dir), "--port", "{port}", "--workers", str(workers)]
    if source is not None:  # the same command from another source tree, with this venv's packages
        env["PYTHONPATH"] = str(source)
        # -P: `python -c` would put the working directory first on sys.path, and run from the checkout it would
        # import this tree, not `source` (the "before" rows of runs before 2026-11-26 19:50 UTC did).
        command = [
            sys.executable,
            "-P",
            "-c",
            "import sys; from vae_cli.main import main; sys.exit(main())",
            *command[1:],
        ]
    return Server(command, env, "/readyz")


def torchserve(model_dir: Path, batch: int, delay_ms: int) -> Server:
    body = json.dumps({"instances": [[0.0] * load_artifact(model_dir, verify=False).manifest.n_features]}).encode()
    command = ["bash", str(TORCHSERVE), str(model_dir), "{port}", str(batch), str(delay_ms)]
    # TorchServe refuses to start while its pid file (in $TMPDIR) names a live server, so each instance gets
    # a $TMPDIR of its own; PEERS_DIR keeps the one install (the first run takes minutes, later ones ~10 s).
    peers = os.environ.get("PEERS_DIR") or str(Path(tempfile.gettempdir()) / "vae-peers")
    env = {"PEERS_DIR": peers, "TMPDIR": tempfile.mkdtemp(prefix="vae-torchserve-")}
    return Server(command, env, "/predictions/vae", ready_body=body, span=5, timeout_s=900)


def start_servers(model_dir: Path, baseline: Path | None, app_dir: Path, probe: bytes, notes: list) -> dict:
    """Every server of the comparison, started one after another (each one's start-up measured alone)."""
    (app_dir / "ceiling.py").write_text(CEILING_APP)
    (app_dir / "naive.py").write_text(NAIVE_APP)
    starts: list[tuple[str, Callable[[], Server]]] = [
        ("vae serve, 1 worker", lambda: vae_serve(model_dir, 1, {})),
        ("vae serve, 2 workers", lambda: vae_serve(model_dir, 2, {})),
        ("vae serve, 1 worker, fast path off", lambda: vae_serve(model_dir, 1, {"VAE_FAST_PATH": "false"})),
    ]
    if baseline is not None:
        starts.append(("before (--baseline-src), 1 worker", lambda: vae_serve(model_dir, 1, {}, baseline)))
    for label, module, env, where in (
        ("ceiling (bare ASGI)", "ceiling:app", {}, app_dir),
        ("naive FastAPI + ORT", "naive:app", {"NAIVE_MODEL_DIR": str(model_dir)}, app_dir),
        (LEAN, "lean_reference:app", {"LEAN_MODEL_DIR": str(model_dir), "LEAN_API_KEY": API_KEY}, ROOT / "benchmarks"),
    ):
        command = [UVICORN, module, "--port", "{port}", "--loop", "uvloop", "--http", "httptools"]
        command += ["--log-level", "warning", "--app-dir", str(where)]
        starts.append((label, lambda command=command, env=env: Server(command, env, "/elbo", ready_body=probe)))
    starts.append(("TorchServe batched (32, 5 ms)", lambda: torchserve(model_dir, 32, 5)))
    starts.append(("TorchServe batchSize 1", lambda: torchserve(model_dir, 1, 0)))
    servers = {}
    for label, start in starts:
        try:
            servers[label] = start()
        except Exception as exc:  # a server that cannot run is reported, loudly, and the rest goes on
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            notes.append(f"**{label} could not run**: {reason}")
            print(f"\n!!! {notes[-1]}\n", file=sys.stderr)
    _check_lean(servers, probe, notes)
    return servers


def _check_lean(servers: dict, probe: bytes, notes: list) -> None:
    """The lean reference is a yardstick only while it answers with the same bytes as `vae serve`: else it is
    stopped and left out, loudly."""
    ours, lean = servers.get("vae serve, 1 worker"), servers.get(LEAN)
    if ours is None or lean is None:
        return
    headers = {"content-type": JSON, "authorization": f"Bearer {API_KEY}"}
    answers = [httpx.post(s.base + "/elbo", content=probe, headers=headers, timeout=10).content for s in (ours, lean)]
    if answers[0] != answers[1]:
        notes.append(f"**{LEAN} left out**: its answer differs from vae serve's ({answers[1][:200]!r})")
        print(f"\n!!! {notes[-1]}\n", file=sys.stderr)
        servers.pop(LEAN).stop()


def bench(model_dir: Path, duration: float, rounds: int, baseline: Path | None) -> dict:
    """Every cell measured `rounds` times, the rounds interleaved over all servers (which run side by side,
    idle but for the one under wrk), so a burst of load from other jobs on the machine hits every server
    alike; each cell keeps its best round (interference only ever slows a run down)."""
    artifact = load_artifact(model_dir, verify=False)
    width = artifact.manifest.n_features
    row = artifact.manifest.preprocessing.to_raw(np.full((1, width), 0.3))[0].round(4).tolist()
    k1 = json.dumps({"instances": [row], "n_samples": 1, "iw_samples": 1, "seed": 1}).encode()
    default_k = json.dumps({"instances": [row], "seed": 1}).encode()
    # 256 instances as one binary .npy body, options in the query string: the bulk client's request.
    rows = artifact.manifest.preprocessing.to_raw(np.random.default_rng(2).random((BINARY_ROWS, width)))
    npy = io.BytesIO()
    np.save(npy, rows.astype(np.float32))
    runs: dict = {}
    out = {"runs": runs, "servers": {}, "notes": [], "rounds": rounds}
    out["raw_streams"] = {b: raw_onnx(model_dir, b) for b in (1, BINARY_ROWS)}
    out["raw"] = {b: max(r.values()) for b, r in out["raw_streams"].items()}  # raw ONNX Runtime at its best
    scoring = artifact.manifest.scoring
    # The default request's estimator, as the tables name it: "−L_K, K = 8" or "−ELBO_L, L = 16".
    out["default_score"] = "uncalibrated" if scoring is None else scoring.score_label
    with tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(model_dir, baseline, Path(tmp), k1, out["notes"])
        try:
            cells = []
            for label, server in servers.items():
                path = "/predictions/vae" if label.startswith("TorchServe") else "/elbo"
                if label.startswith("vae serve") or label.startswith("before"):
                    cells.append((f"{label}, iw_samples=1", server, path, k1, JSON))
                    if "fast path off" not in label and not label.startswith("before"):
                        cells.append((f"{label}, default request", server, path, default_k, JSON))
                    if label in ("vae serve, 1 worker", "vae serve, 2 workers"):
                        binary = f"{label}, {BINARY_ROWS} instances .npy, iw_samples=1"
                        cells.append((binary, server, "/elbo?n_samples=1&iw_samples=1&seed=1", npy.getvalue(), NPY))
                else:
                    cells.append((label, server, path, k1, JSON))
            for _ in range(rounds):
                for label, server, path, body, content_type in cells:
                    for c in CONCURRENCY:
                        cpu = server.cpu_seconds()
                        stats = wrk(server.base + path, body, c, duration, content_type)
                        stats["cpu_us"] = (server.cpu_seconds() - cpu) / max(1, stats["requests"]) * 1e6
                        if (label, c) not in runs or stats["rps"] > runs[label, c]["rps"]:
                            runs[label, c] = stats
            for label, server in servers.items():
                out["servers"][label] = {
                    "ready_s": server.ready_seconds,
                    "rss_mb": server.rss_mb(),
                    "rss_process_mb": server.rss_process_mb(),
                    "log_lines": server_log_lines(Path(server.log.name)),
                }
        finally:
            for server in servers.values():
                server.stop()
    return out


def server_log_lines(path: Path) -> int:
    """The access log lines the server wrote: proof that logging was on while it was measured."""
    return sum(1 for line in path.read_text().splitlines() if '"logger":"vae.access"' in line)


def _rps(runs: dict, label: str, c: int) -> float | None:
    return runs[label, c]["rps"] if (label, c) in runs else None


def targets(out: dict) -> list[tuple[str, str, str]]:
    """(target, measured, met?) for each target of issue 15, from this run's numbers."""
    runs = out["runs"]
    one = "vae serve, 1 worker"
    ts32, ts1 = "TorchServe batched (32, 5 ms)", "TorchServe batchSize 1"
    rows = []

    def ratio(target: str, ours: str, c: int, other: str, need: float, c_other: int | None = None) -> None:
        a, b = _rps(runs, ours, c), _rps(runs, other, c_other or c)
        if a is None or b is None:
            rows.append((target, f"not measured ({other} missing)", "?"))
            return
        shown = f"{a / b:.0%}" if need < 1 else f"{a / b:.2f}×"
        rows.append((target, f"{shown} ({a:,.0f} vs {b:,.0f} req/s)", "yes" if a / b >= need else "no"))

    ratio("iw_samples=1, c=64, 1 worker ≥ 2× TorchServe batched", f"{one}, iw_samples=1", 64, ts32, 2.0)
    ratio(
        "iw_samples=1, c=64, 1 worker ≥ 35% of the bare ASGI ceiling",
        f"{one}, iw_samples=1",
        64,
        "ceiling (bare ASGI)",
        0.35,
    )
    ratio("c=1 ≥ 1.5× the naive FastAPI + ORT app", f"{one}, iw_samples=1", 1, "naive FastAPI + ORT", 1.5)
    ratio("c=1 ≥ 2× TorchServe batchSize 1", f"{one}, iw_samples=1", 1, ts1, 2.0)
    ratio(
        f"default request ({out['default_score']}), c=64 ≥ 1.0× TorchServe batched",
        f"{one}, default request",
        64,
        ts32,
        1.0,
    )
    two = "vae serve, 2 workers, iw_samples=1"
    ratio("(2 workers) iw_samples=1, c=64 against TorchServe batched", two, 64, ts32, 2.0)
    ratio("(2 workers) iw_samples=1, c=64 against the ceiling", two, 64, "ceiling (bare ASGI)", 0.35)
    # The yardstick: what the issue's own lean design reaches against the same targets, and ours as a share of it.
    ratio(f"(yardstick) {LEAN}, c=64, against TorchServe batched", LEAN, 64, ts32, 2.0)
    ratio(f"(yardstick) {LEAN}, c=64, against the ceiling", LEAN, 64, "ceiling (bare ASGI)", 0.35)
    ratio(f"(yardstick) {LEAN}, c=1, against the naive app", LEAN, 1, "naive FastAPI + ORT", 1.5)
    ratio(
        f"(yardstick) vae serve, 1 worker, iw_samples=1, c=64, against the {LEAN}",
        f"{one}, iw_samples=1",
        64,
        LEAN,
        1.0,
    )
    for label in ("vae serve, 1 worker", "vae serve, 2 workers"):
        server = out["servers"].get(label)
        if server is None:
            continue
        rss, largest, ready = server["rss_mb"], server["rss_process_mb"], server["ready_s"]
        rss_text = f"{rss:.0f} MB" + (f" (all processes; the largest {largest:.0f} MB)" if "2" in label else "")
        rows.append((f"({label}) RSS < 300 MB", rss_text, "yes" if rss < 300 else "no"))
        rows.append((f"({label}) ready within 3 s", f"{ready:.2f} s", "yes" if ready < 3 else "no"))
    raw, one_stream = out["raw"][BINARY_ROWS], out["raw_streams"][BINARY_ROWS]["one stream"]
    for workers in ("1 worker", "2 workers"):
        binary = [
            s["rps"] * BINARY_ROWS
            for (label, _), s in runs.items()
            if label.startswith(f"vae serve, {workers},") and label.endswith(".npy, iw_samples=1")
        ]
        if binary:
            best = max(binary)
            rows.append(
                (
                    f"({workers}) {BINARY_ROWS}-instance .npy requests (best c) ≥ 50% of raw ONNX Runtime at batch "
                    f"{BINARY_ROWS} (the better of one and two streams)",
                    f"{best / raw:.0%} ({best:,.0f} vs {raw:,.0f} instances/s; {best / one_stream:.0%} of one stream's "
                    f"{one_stream:,.0f})",
                    "yes" if best / raw >= 0.5 else "no",
                )
            )
    ours64, ts64 = runs.get((f"{one}, iw_samples=1", 64)), runs.get((ts32, 64))
    if ours64 and ts64:
        met = "yes" if ours64["p99"] <= ts64["p99"] else "no"
        rows.append(
            ("p99 at c=64 no worse than TorchServe batched", f"{ours64['p99']:.2f} vs {ts64['p99']:.2f} ms", met)
        )
    return rows


def render(out: dict, duration: float, command: str) -> str:
    runs = out["runs"]
    lines = [
        "# Benchmark: serving /elbo",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.platform()}, "
        f"{os.cpu_count()} CPUs **shared with other engineers' jobs** (the numbers move by tens of percent "
        f"between runs; only ratios within one run mean much), Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}; wrk -t1, {duration:g} s per cell, servers and wrk on the same "
        f"machine; every server running side by side, the cells measured in {out['rounds']} interleaved rounds, "
        f"each cell's best round shown. Command: `{command}`.",
        "",
        "Each request is one digits instance (MLP 64-256-128-8, bernoulli) to POST /elbo with a fixed seed: "
        f"`n_samples=1, iw_samples=1` (two draws: the single-draw ELBO and L_1), or no options (the calibrated "
        f"default: {out['default_score']}). `vae serve` runs with "
        "an API key, JSON access logs at info (to a file), metrics, request ids and the default limits on. "
        "`vae serve` writes each answer's head and body in one write (service/http/protocol.py); the ceiling "
        "and the naive app run plain uvicorn, which writes them in two. "
        "The ceiling is a bare ASGI callable under uvicorn (uvloop, httptools) that parses the same body with "
        "orjson and returns a constant; the naive app is FastAPI with a pydantic body and a sync endpoint that "
        "runs ONNX Runtime once per request and computes a plain ELBO; TorchServe "
        "(`../shared/peers/torchserve.sh`) serves the TorchScript graphs of the same model and computes a "
        "single-draw ELBO, one worker. The lean reference (benchmarks/lean_reference.py) is the one-worker server "
        "issue 15 describes as its measure of what Python can do: bare ASGI under uvicorn, orjson, a batcher "
        "feeding one worker thread, the same ELBO graph, the decision and p-value, and the service's own "
        "preprocessing, seeding, scoring and Observer (request ids, metrics, JSON access log); it answers this "
        "request with the same bytes as `vae serve` (checked "
        "before measuring) but leaves out the service's validation messages, limits, deadlines and every other "
        "route. One more cell sends 256 instances per request as a binary .npy body "
        "(`Content-Type: application/x-npy`, `?n_samples=1&iw_samples=1&seed=1`).",
        "",
        "The last column is the CPU time the server's own processes used per request in that round (user and "
        "system, every thread and worker; read from the kernel's accounting, so it leaves out wrk): how much "
        "machine each server spends on a request, whoever the client is.",
        "",
        "| server | c | req/s | p50 ms | p99 ms | errors | server CPU µs / request |",
        "|---|---|---|---|---|---|---|",
    ]
    for (label, c), s in runs.items():
        lines.append(
            f"| {label} | {c} | {s['rps']:.0f} | {s['p50']:.2f} | {s['p99']:.2f} | {s['errors'] + s['non2xx']} "
            f"| {s['cpu_us']:.0f} |"
        )
    lines += ["", *[f"- {note}" for note in out["notes"]]]
    raw = out["raw_streams"]
    lines += [
        f"- Raw ONNX Runtime, in process (encoder and one decoder pass): {raw[1]['one stream']:.0f} instances/s at "
        f"batch 1 and {raw[BINARY_ROWS]['one stream']:.0f} at batch {BINARY_ROWS} in one stream of calls with every "
        f"core; {raw[1]['two streams']:.0f} and {raw[BINARY_ROWS]['two streams']:.0f} in two streams of one core each.",
    ]
    for label, s in out["servers"].items():
        lines.append(
            f"- {label}: ready in {s['ready_s']:.2f} s; RSS {s['rss_mb']:.0f} MB after its runs (largest process "
            f"{s['rss_process_mb']:.0f} MB); {s['log_lines']:,} access log lines written."
        )
    lines += ["", "## Against the targets (this run)", "", "| target | measured | met? |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {ok} |" for t, m, ok in targets(out)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each cell keeps its best")
    parser.add_argument("--baseline-src", type=Path, default=None, help="another source tree to measure as 'before'")
    parser.add_argument("--model-dir", type=Path, default=None, help="a digits model to use instead of training one")
    parser.add_argument("--out", default="docs/benchmark-serving.md", help="where to write the tables ('' for nowhere)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("benchmarks/serving.py needs wrk: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or train_digits(Path(tmp))
        out = bench(model_dir, args.duration, args.rounds, args.baseline_src)
    command = "python benchmarks/serving.py " + " ".join(sys.argv[1:])
    report = render(out, args.duration, command.strip())
    print(report)
    if args.out:
        path = ROOT / args.out
        kept = path.read_text().partition(MARKER)[2] if path.exists() else ""
        path.write_text(report + "\n" + MARKER + kept)


if __name__ == "__main__":
    main()

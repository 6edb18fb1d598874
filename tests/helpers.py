"""What several test modules share: the small training settings, data writers, request data and a real server.

Test modules import these from here, never from each other.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import httpx
import numpy as np
import pytest

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing_tool(request: pytest.FixtureRequest, what: str, untested: str) -> NoReturn:
    """A tool `make system` installs is missing (`what`: "nginx is"): the test fails in CI, and elsewhere skips
    with one loud line that says what went `untested`, written past the output capture so -q runs show it."""
    if IN_CI:
        pytest.fail(f"{what} missing: `make system` installs it")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"!!!!! {what} missing: {untested} !!!!!", red=True, bold=True)
    pytest.skip(f"{what} missing (`make system` installs it)")


# Small enough to train in seconds, large enough to learn digits.
FAST = dict(hidden=[64, 32], latent_dim=4, epochs=12, patience=50, progress=False)


def change_after_export(*paths: Path) -> None:
    """Each file of a model directory changed as by hand after export: one byte appended, so its sha256 differs."""
    for path in paths:
        with path.open("ab") as f:
            f.write(b"\0")


def write_tabular_csv(path: Path, n: int = 1000, seed: int = 0) -> Path:
    """Correlated gaussian features, one constant column, and a header: what users' CSVs look like."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 2))
    features = latent @ rng.standard_normal((2, 5)) * [1.0, 10.0, 0.1, 3.0, 100.0] + [0, 50, -3, 7, 1000]
    features += 0.05 * rng.standard_normal(features.shape)
    table = np.column_stack([features, np.full(n, 4.0)])
    header = "a,b,c,d,e,constant"
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.6f")
    return path


def write_png_folder(root: Path, n_per_class: int = 30, size: tuple[int, int] = (12, 10), seed: int = 0) -> Path:
    """Two classes of RGB images (a bright square or a bright bar on a dark background) in sub-folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size
    for label in ("square", "bar"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 40, size=(height, width, 3)).astype(np.uint8)
            top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
            if label == "square":
                pixels[top : top + 4, left : left + 4] = [230, 200, 40]
            else:
                pixels[top : top + 2, :] = [40, 200, 230]
            Image.fromarray(pixels).save(root / label / f"{i:03d}.png")
    return root


def instances_for(client: TestClient, n: int = 3, seed: int = 0) -> list:
    """Realistic raw-unit instances for the client's model: real digits, or rows near the data."""
    card = client.get("/v1/model").json()
    if card["likelihood"] == "bernoulli":
        from sklearn.datasets import load_digits

        return load_digits().data[:n].reshape(n, 1, 8, 8).tolist()
    rng = np.random.default_rng(seed)
    offset = np.asarray(card["preprocessing"]["offset"])
    scale = np.asarray(card["preprocessing"]["scale"])
    return (offset + scale * rng.standard_normal((n, len(offset)))).tolist()


VAE = str(Path(sys.executable).with_name("vae"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, *args, env=None):
    """`vae serve` on a free port; its log goes to a file (a pipe nobody reads would fill and stall it)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="vae-serve-", suffix=".log", delete=False)
    atexit.register(Path(log.name).unlink, missing_ok=True)  # read after stop() by some tests; gone with the run
    process = subprocess.Popen(
        [VAE, "serve", str(model_dir), "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | (env or {}),
    )
    process.log_path = log.name
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, Path(log.name).read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.2)


def stop(process):
    if process.poll() is None:
        process.terminate()
    process.wait(timeout=60)

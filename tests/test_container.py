"""The container images, built and run for real.

Builds the serve, train and proxy targets with rootful Podman on a local Debian base
(scripts/container_setup.sh makes this machine able to), brings docker-compose.yml up with two serve
replicas through podman-compose, and asks the service through the proxy, as a user would.

Where this machine cannot run a container at all (a trivial `podman run` fails before any project
code is involved), the module is skipped with one loud line. A failure to build or run the
project's own images fails. Deselect it locally with `-m "not container"`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("VAE_LOCAL_BASE_IMAGE", "localhost/vae-base:bookworm")
IMAGES = {target: f"localhost/vae-{target}:latest" for target in ("serve", "train", "proxy")}
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# Bounds on waiting, generous for 2 slow cores; never asserted on.
BUILD_TIMEOUT_S = 1800
UP_TIMEOUT_S = 900
READY_ATTEMPTS = 300


def loud(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    text = f"!!!!! {line} !!!!!"
    if reporter is not None:
        reporter.write_line(text, red=True, bold=True)
    else:
        print(text, file=sys.stderr)


def run(
    cmd: list[str], *, timeout: float = 600, env: dict | None = None, check: bool = True, log: Path | None = None
) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail the test with the command and the end of its output."""
    result = subprocess.run(
        cmd, cwd=ROOT, env=env, timeout=timeout, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{result.stdout}\n")
    if check and result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-60:])
        pytest.fail(f"`{' '.join(cmd)}` exited {result.returncode}:\n{tail}", pytrace=False)
    return result


def podman_compose() -> list[str]:
    found = Path(sys.executable).with_name("podman-compose")
    if found.exists():
        return [str(found)]
    return [sys.executable, "-m", "podman_compose"]


def http(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict, Message]:
    """(status, JSON body, headers, case-insensitive) of a GET, or of a POST when body is given."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null"), response.headers
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = {"raw": payload.decode(errors="replace")}
        return exc.code, parsed, exc.headers


# ---------------------------------------------------------------------------------------------
# Fixtures: a machine that runs containers, the images, and the compose stack.


@pytest.fixture(scope="module")
def podman(request, tmp_path_factory) -> Path:
    """Podman as `make system` set it up (tools, containers.conf, local base image), shown to run a container."""
    log = tmp_path_factory.mktemp("container") / "setup.log"
    can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if shutil.which("podman") is None:
        if IN_CI and can_install:
            pytest.fail("podman is missing: `make system` (scripts/container_setup.sh) should have installed it")
        # in CI too where nothing can be installed: such a machine runs no container
        loud(request.config, "CONTAINER TESTS SKIPPED: podman is missing (`make system` installs it, as root)")
        pytest.skip("this machine cannot run containers: no podman (`make system` installs it, as root)")
    probe = run(["podman", "run", "--rm", "--network", "none", BASE_IMAGE, "true"], check=False, log=log)
    if probe.returncode != 0:
        first = (probe.stdout.strip().splitlines() or ["no output"])[-1]
        loud(
            request.config,
            f"CONTAINER TESTS SKIPPED: this machine cannot run containers: "
            f"`podman run {BASE_IMAGE} true` failed: {first}",
        )
        pytest.skip(f"this machine cannot run containers: {first}")
    return log


@pytest.fixture(scope="module")
def images(podman, tmp_path_factory) -> dict[str, str]:
    """The three images, built from this checkout (layers cached across runs)."""
    log = tmp_path_factory.mktemp("container") / "build.log"
    env = dict(os.environ, VAE_BASE_IMAGE=BASE_IMAGE, PYTHON=sys.executable)
    started = time.monotonic()
    result = run(["bash", "scripts/container_build.sh", *IMAGES], timeout=BUILD_TIMEOUT_S, env=env, log=log)
    for line in result.stdout.splitlines():
        if line.startswith("container_build: built"):
            print(line)
    print(f"container_build: all images in {time.monotonic() - started:.0f} s (log: {log})")
    for _target, image in IMAGES.items():
        size = run(["podman", "image", "inspect", "--format", "{{.Size}}", image]).stdout.strip()
        print(f"image {image}: {int(size) / 1e6:.0f} MB")
    return IMAGES


class Stack:
    def __init__(self, project: str, env: dict, data_dir: Path, log: Path):
        self.project, self.env, self.data_dir, self.log = project, env, data_dir, log
        self.url = f"http://127.0.0.1:{env['VAE_PUBLISH'].rsplit(':', 1)[1]}"

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run(
            [*podman_compose(), "-p", self.project, "-f", "docker-compose.yml", *args],
            timeout=timeout,
            env=self.env,
            check=check,
            log=self.log,
        )

    def containers(self, service: str, all_states: bool = False) -> list[dict]:
        cmd = [
            "podman",
            "ps",
            "--format",
            "json",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ]
        out = run(cmd + (["--all"] if all_states else [])).stdout
        return sorted(json.loads(out or "[]"), key=lambda c: c["Names"][0])

    def inspect(self, name: str) -> dict:
        return json.loads(run(["podman", "inspect", name]).stdout)[0]

    def wait_healthy(self, name: str) -> None:
        """The image's own healthcheck (GET /readyz), run by hand: no systemd timers here."""
        for _ in range(READY_ATTEMPTS):
            if run(["podman", "healthcheck", "run", name], check=False).returncode == 0:
                return
            if not self.inspect(name)["State"]["Running"]:
                break
            time.sleep(1)
        logs = run(["podman", "logs", "--tail", "40", name], check=False).stdout
        pytest.fail(f"{name} never became healthy:\n{logs}", pytrace=False)

    def wait_proxy(self) -> None:
        for _ in range(READY_ATTEMPTS):
            try:
                if http(self.url + "/readyz", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        pytest.fail("the proxy never answered /readyz with 200", pytrace=False)

    def dump_logs(self) -> str:
        out = []
        for service in ("train", "serve", "proxy"):
            for c in self.containers(service, all_states=True):
                name = c["Names"][0]
                logs = run(["podman", "logs", "--tail", "30", name], check=False).stdout
                out.append(f"--- {name} ({c.get('State')}, exit {c.get('ExitCode')})\n{logs}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def stack(images, tmp_path_factory) -> Stack:
    """`podman-compose up -d` on docker-compose.yml with two serve replicas; `down -v` afterwards, checked."""
    from tests.helpers import write_tabular_csv

    root = tmp_path_factory.mktemp("stack")
    data_dir = root / "data"
    data_dir.mkdir()
    write_tabular_csv(data_dir / "table.csv", n=1200)  # enough rows to calibrate at fpr 0.01
    # The containers run as an unprivileged user: the mounted data set must be readable by others.
    os.chmod(root, 0o755)
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / "table.csv", 0o644)
    # The defaults, as `docker compose up` has them (the full digits training, about 25 s): no VAE_*
    # from the caller's environment, but a free port on loopback and two replicas.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env.update(VAE_PUBLISH=f"127.0.0.1:{free_port()}", VAE_DATA_DIR=str(data_dir), VAE_SERVE_REPLICAS="2")
    s = Stack(f"vaetest{os.getpid()}", env, data_dir, root / "compose.log")
    try:
        s.compose("up", "-d", "--no-build", timeout=UP_TIMEOUT_S)
        yield s
    finally:
        down = s.compose("down", "-v", "-t", "30", check=False)
        leftovers = run(
            ["podman", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={s.project}"],
            check=False,
        ).stdout.split()
        volumes = run(
            ["podman", "volume", "ls", "--quiet", "--filter", f"name={s.project}_models"], check=False
        ).stdout.split()
        networks = run(
            ["podman", "network", "ls", "--quiet", "--filter", f"name={s.project}_default"], check=False
        ).stdout.split()
        assert down.returncode == 0, down.stdout[-3000:]
        assert not leftovers, f"containers left running after down -v: {leftovers}"
        assert not volumes, f"volumes left after down -v: {volumes}"
        assert not networks, f"networks left after down -v: {networks}"


@pytest.fixture(scope="module")
def ready(stack) -> Stack:
    """train exited 0, both serve replicas healthy, and the proxy answering."""
    trains = stack.containers("train", all_states=True)
    assert len(trains) == 1, stack.dump_logs()
    state = stack.inspect(trains[0]["Names"][0])["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0, stack.dump_logs()
    serves = stack.containers("serve")
    assert len(serves) == 2, stack.dump_logs()
    for c in serves:
        stack.wait_healthy(c["Names"][0])
    stack.wait_proxy()
    return stack


# ---------------------------------------------------------------------------------------------
# The tests.


def digits_rows() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data[:8]


def test_train_ran_once_and_the_model_is_in_the_volume(ready):
    train = ready.containers("train", all_states=True)[0]["Names"][0]
    logs = run(["podman", "logs", train]).stdout
    assert "training on digits into /models/digits" in logs
    serve = ready.containers("serve")[0]["Names"][0]
    listing = run(["podman", "exec", serve, "ls", "/models/digits"]).stdout.split()
    assert {"manifest.json", "encoder.onnx", "decoder.onnx"} <= set(listing)


def test_encode_elbo_decode_through_the_proxy(ready):
    url = ready.url
    status, model, _ = http(url + "/v1/model")
    assert status == 200, model
    latent_dim = model["latent_dim"]
    assert model["input_shape"] == [1, 8, 8]

    rows = digits_rows()
    status, enc, _ = http(url + "/encode", {"instances": rows.tolist()})
    assert status == 200, enc
    mu, sigma, logvar = (np.array(enc[k]) for k in ("mu", "sigma", "logvar"))
    assert mu.shape == sigma.shape == logvar.shape == (len(rows), latent_dim)
    assert np.all(sigma > 0) and np.allclose(sigma, np.exp(0.5 * logvar), rtol=1e-4)

    noise = np.random.default_rng(0).uniform(0, 16, size=(len(rows), 64)).round()
    body = {"instances": np.vstack([rows, noise]).tolist(), "n_samples": 8, "seed": 3}
    status, scores, _ = http(url + "/elbo", body)
    assert status == 200, scores
    elbo, rec, kl = (np.array(scores[k]) for k in ("elbo", "reconstruction", "kl"))
    assert elbo.shape == rec.shape == kl.shape == (2 * len(rows),)
    assert np.all(np.isfinite(elbo)) and np.all(kl >= 0)
    assert np.allclose(elbo, rec - kl, rtol=1e-4, atol=1e-3)
    # Even a few epochs tell real digits from uniform noise by a wide margin.
    assert elbo[: len(rows)].min() > elbo[len(rows) :].max()
    assert http(url + "/elbo", body)[1]["elbo"] == scores["elbo"]  # seeded: the same numbers again

    z = mu[:2].tolist()
    status, dec, _ = http(url + "/decode", {"z": z})
    assert status == 200, dec
    x = np.array(dec["x"])
    assert x.shape == (2, 1, 8, 8)
    assert np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 16


def test_requests_are_spread_over_both_replicas(ready):
    upstreams = set()
    for _ in range(40):
        status, _, headers = http(ready.url + "/healthz")
        assert status == 200
        upstreams.add(headers.get("X-Upstream"))
    assert len(upstreams) == 2, upstreams


def test_serve_image_has_no_torch_and_runs_unprivileged(ready):
    image = IMAGES["serve"]
    probe = run(
        [
            "podman",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python",
            image,
            "-c",
            "import importlib.util; print(importlib.util.find_spec('torch'))",
        ]
    ).stdout
    assert probe.strip().splitlines()[-1] == "None"
    assert run(["podman", "image", "inspect", "--format", "{{.Config.User}}", image]).stdout.strip() == "10001:10001"
    serve = ready.containers("serve")[0]["Names"][0]
    assert run(["podman", "exec", serve, "id", "-u"]).stdout.strip() == "10001"
    # the model volume is mounted read-only
    assert run(["podman", "exec", serve, "touch", "/models/x"], check=False).returncode != 0
    # and the train image does have torch, a CPU build
    cuda = run(
        [
            "podman",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python",
            IMAGES["train"],
            "-c",
            "import torch; print(torch.version.cuda)",
        ]
    ).stdout
    assert cuda.strip().splitlines()[-1] == "None"


def test_train_on_a_mounted_data_set(ready):
    """VAE_TRAIN_DATA names a file in the mounted data folder; the model lands beside the default."""
    ready.compose(
        "run",
        "--rm",
        "-e",
        "VAE_TRAIN_DATA=table.csv",
        "-e",
        "VAE_MODEL_DIR=/models/table",
        "-e",
        "VAE_TRAIN_ARGS=--epochs 5 --score-iw-samples 20",
        "train",
        timeout=UP_TIMEOUT_S,
    )
    serve = ready.containers("serve")[0]["Names"][0]
    manifest = json.loads(run(["podman", "exec", serve, "cat", "/models/table/manifest.json"]).stdout)
    assert manifest["input_shape"] == [6]
    # The default model is still there, untouched.
    assert run(["podman", "exec", serve, "test", "-f", "/models/digits/manifest.json"], check=False).returncode == 0


def test_new_model_goes_live_without_failed_requests(ready):
    """Retrain into the volume, then restart the replicas one at a time while a client keeps asking."""
    before = http(ready.url + "/v1/model")[1]
    ready.compose(
        "run",
        "--rm",
        "-e",
        "VAE_RETRAIN=1",
        "-e",
        "VAE_TRAIN_ARGS=--epochs 3 --seed 7 --score-iw-samples 20",
        "train",
        timeout=UP_TIMEOUT_S,
    )

    failures: list[str] = []
    answered = 0
    stop = threading.Event()
    body = {"instances": digits_rows()[:2].tolist(), "n_samples": 2, "seed": 0}

    def client() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                status, payload, _ = http(ready.url + "/elbo", body, timeout=30)
            except OSError as exc:
                failures.append(repr(exc))
                continue
            if status == 200:
                answered += 1
            else:
                failures.append(f"{status}: {payload}")

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        run(
            ["bash", "scripts/rolling_restart.sh", "-p", ready.project, "serve"],
            timeout=UP_TIMEOUT_S,
            env=ready.env,
            log=ready.log,
        )
    finally:
        stop.set()
        thread.join(timeout=60)
    print(f"rolling restart: {answered} requests answered, {len(failures)} failed")
    assert not failures, "\n".join([*failures[:5], ready.dump_logs()])
    assert answered > 0
    after = http(ready.url + "/v1/model")[1]
    assert after != before  # the replicas now serve the new model


def test_sighup_reloads_every_replica_in_place(ready):
    """`docker compose kill -s SIGHUP serve`: each replica loads the retrained model without a restart."""
    before = {http(ready.url + "/v1/model")[1]["version"]}
    ready.compose(
        "run",
        "--rm",
        "-e",
        "VAE_RETRAIN=1",
        "-e",
        "VAE_TRAIN_ARGS=--epochs 3 --seed 11 --score-iw-samples 20",
        "train",
        timeout=UP_TIMEOUT_S,
    )
    replicas = ready.containers("serve")
    started = {c["Names"][0]: ready.inspect(c["Names"][0])["State"]["StartedAt"] for c in replicas}
    for name in started:
        run(["podman", "kill", "--signal", "HUP", name])
    versions: dict[str, str] = {}
    for _ in range(READY_ATTEMPTS):
        status, _, headers = http(ready.url + "/elbo", {"instances": digits_rows()[:1].tolist(), "seed": 0})
        assert status == 200
        versions[headers["X-Upstream"]] = headers["X-Model-Version"]
        if len(versions) == 2 and not set(versions.values()) & before:
            break
        time.sleep(0.2)
    assert len(versions) == 2 and len(set(versions.values())) == 1 and not set(versions.values()) & before, versions
    # reloaded in place: the same containers, never restarted
    assert {n: ready.inspect(n)["State"]["StartedAt"] for n in started} == started

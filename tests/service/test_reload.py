"""Replacing the served model without downtime: POST /v1/model/reload and SIGHUP."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.core.artifact import MANIFEST_NAME, load_artifact
from service.http.live_model import model_version
from tests.helpers import change_after_export, start_server, stop

DIGITS = np.arange(128, dtype=np.float64).reshape(2, 64) % 17
BODY = {"instances": DIGITS.tolist(), "n_samples": 4, "iw_samples": 8, "seed": 5}


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory) -> Path:
    """Another digits model (another seed): what a new training run writes."""
    from tests.helpers import FAST
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "digits-seed-7"
    train(TrainConfig(data="digits", out=str(out), seed=7, **FAST))
    return out


def replace_dir(target: Path, source: Path) -> None:
    """What `vae train --out target` does at its end: the new directory takes the old one's place."""
    staged = target.with_name(target.name + ".new")
    shutil.copytree(source, staged)
    old = target.with_name(target.name + ".old")
    target.rename(old)
    staged.rename(target)
    shutil.rmtree(old)


@pytest.fixture
def live_dir(tmp_path, digits_model_dir) -> Path:
    target = tmp_path / "live"
    shutil.copytree(digits_model_dir, target)
    return target


def test_reload_swaps_in_the_new_model_and_names_the_version(start_app, live_dir, digits_model_dir, second_model_dir):
    old_version, new_version = (
        model_version(load_artifact(digits_model_dir)),
        model_version(load_artifact(second_model_dir)),
    )
    assert old_version != new_version
    client = start_app(live_dir)
    before = client.post("/elbo", json=BODY)
    assert before.headers["x-model-version"] == old_version
    assert client.get("/v1/model").json()["version"] == old_version

    replace_dir(live_dir, second_model_dir)
    # Until the reload, the loaded model goes on serving, whatever is on disk.
    assert client.post("/elbo", json=BODY).json() == before.json()
    reloaded = client.post("/v1/model/reload", json={})
    assert reloaded.status_code == 200, reloaded.text
    body = reloaded.json()
    assert (body["status"], body["version"], body["previous_version"]) == ("reloaded", new_version, old_version)
    assert body["seconds"] >= 0

    after = client.post("/elbo", json=BODY)
    assert after.headers["x-model-version"] == new_version
    assert client.get("/v1/model").json()["version"] == new_version
    assert client.get("/v1/model").json()["training"]["seed"] == 7
    # The new model's own numbers: the same as a fresh service on it gives.
    fresh = start_app(second_model_dir)
    assert after.json() == fresh.post("/elbo", json=BODY).json()
    assert after.json()["elbo"] != before.json()["elbo"]


def test_every_request_releases_the_model_it_used(start_app, live_dir):
    """Answered, refused or failed: once a response is done, the model counts no request of it in flight."""
    client = start_app(live_dir)
    live = client.app.state.host.current
    assert client.post("/elbo", json=BODY).status_code == 200
    assert client.post("/elbo", json={"instances": [[0.0] * 3]}).status_code == 422
    assert client.post("/elbo", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert client.get("/v1/model").status_code == 200
    assert client.post("/v2/models/digits-decode/infer", json={"inputs": []}).status_code == 400
    assert client.get("/healthz").status_code == 200
    assert live.in_flight == 0


def reload_failure(client: TestClient) -> str:
    response = client.post("/v1/model/reload", json={})
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "reload_failed"
    return response.json()["error"]


def test_a_corrupt_model_is_refused_and_the_old_one_goes_on_serving(start_app, live_dir, second_model_dir, capsys):
    client = start_app(live_dir)
    version = client.get("/v1/model").json()["version"]
    before = client.post("/elbo", json=BODY).json()
    replace_dir(live_dir, second_model_dir)
    change_after_export(live_dir / "decoder.onnx")

    message = reload_failure(client)
    assert message.startswith(
        f"the reload failed and version {version} goes on serving: {live_dir}/decoder.onnx fails its sha256 check"
    )
    assert message.endswith("it changed after export")
    assert client.post("/elbo", json=BODY).json() == before
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/model").json()["version"] == version
    metrics = client.get("/metrics").text
    assert 'vae_model_reloads_total{result="failed"} 1.0' in metrics
    assert 'vae_model_reloads_total{result="ok"}' not in metrics
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    errors = [line["message"] for line in logged if line["level"] == "error"]
    assert errors == [f"model reload from {live_dir} failed; still serving {version}: {message.split(': ', 1)[1]}"]


def test_a_reload_hashes_only_the_graphs_of_the_served_runtime(start_app, live_dir, second_model_dir):
    """A checkpoint or TorchScript graph changed by hand is read by nothing the service does: the reload goes on."""
    client = start_app(live_dir)
    replace_dir(live_dir, second_model_dir)
    change_after_export(live_dir / "checkpoint.pt", live_dir / "decoder.pt")
    reloaded = client.post("/v1/model/reload", json={})
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["version"] == model_version(load_artifact(second_model_dir))


def test_a_model_whose_export_parity_is_out_of_tolerance_is_refused(start_app, live_dir, second_model_dir):
    client = start_app(live_dir)
    version = client.get("/v1/model").json()["version"]
    replace_dir(live_dir, second_model_dir)
    manifest = json.loads((live_dir / MANIFEST_NAME).read_text())
    manifest["parity"]["onnx"]["decoder"] = 0.5
    (live_dir / MANIFEST_NAME).write_text(json.dumps(manifest))

    assert reload_failure(client) == (
        f"the reload failed and version {version} goes on serving: "
        f"{live_dir}/{MANIFEST_NAME}: the onnx decoder differs from the eager model by 0.5 > 0.0001"
    )
    assert client.get("/v1/model").json()["version"] == version


def test_a_missing_model_directory_is_refused(start_app, live_dir):
    client = start_app(live_dir)
    version = client.get("/v1/model").json()["version"]
    shutil.rmtree(live_dir)
    assert reload_failure(client) == (
        f"the reload failed and version {version} goes on serving: model directory {live_dir} does not exist"
    )
    assert client.post("/elbo", json=BODY).status_code == 200


def test_reload_needs_the_api_key(start_app, live_dir):
    client = start_app(live_dir, api_key="s3cret")
    assert client.post("/v1/model/reload", json={}).status_code == 401
    assert client.post("/v1/model/reload", json={}, headers={"authorization": "Bearer s3cret"}).status_code == 200


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_a_cross_site_simple_request_cannot_reload(start_app, live_dir, second_model_dir, content_type):
    """What any web page can send without a CORS preflight (no key set): refused with 415, nothing reloaded."""
    client = start_app(live_dir)
    version = client.get("/v1/model").json()["version"]
    replace_dir(live_dir, second_model_dir)
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/model/reload", content=b"x" if content_type else None, headers=headers)
    got = content_type.split(";")[0] if content_type else "none"
    assert response.status_code == 415, response.text
    assert response.json() == {
        "error": f"POST /v1/model/reload needs `Content-Type: application/json` (got {got}); the body is ignored",
        "code": "unsupported_media_type",
    }
    assert client.get("/v1/model").json()["version"] == version
    assert "vae_model_reloads_total{" not in client.get("/metrics").text


def test_with_several_workers_reload_points_at_sighup(start_app, live_dir):
    client = start_app(live_dir, workers=2)
    assert reload_failure(client) == (
        "this service runs 2 worker processes and a request reaches only one: "
        "send SIGHUP to the `vae serve` parent process instead, which replaces the workers one at a time"
    )


def test_reloads_under_concurrent_load_fail_no_request(live_dir, digits_model_dir, second_model_dir):
    """A real server; clients keep asking while the model is replaced and reloaded, back and forth.

    Every answer must be the whole answer of exactly one version: the one its header names.
    """
    versions = {model_version(load_artifact(d)): d for d in (digits_model_dir, second_model_dir)}
    server, base = start_server(live_dir)
    try:
        expected = {}
        for version, model_dir in versions.items():
            solo, solo_base = start_server(model_dir)
            try:
                expected[version] = httpx.post(f"{solo_base}/elbo", json=BODY).json()
            finally:
                stop(solo)
        assert expected[list(versions)[0]] != expected[list(versions)[1]]

        failures: list[str] = []
        seen: dict[str, int] = {v: 0 for v in versions}
        stop_clients = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                while not stop_clients.is_set():
                    try:
                        response = http.post("/elbo", json=BODY)
                    except httpx.TransportError as exc:
                        failures.append(repr(exc))
                        continue
                    version = response.headers.get("x-model-version")
                    if response.status_code != 200 or version not in expected:
                        failures.append(f"{response.status_code} {version}: {response.text[:200]}")
                    elif response.json() != expected[version]:
                        failures.append(f"an answer that is not version {version}'s own")
                    else:
                        seen[version] += 1

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        order = [second_model_dir, digits_model_dir] * 3
        reloads = []
        try:
            for model_dir in order:
                time.sleep(0.3)
                replace_dir(live_dir, model_dir)
                response = httpx.post(f"{base}/v1/model/reload", json={}, timeout=60)
                reloads.append((response.status_code, response.json().get("version")))
        finally:
            time.sleep(0.3)
            stop_clients.set()
            for t in threads:
                t.join(timeout=60)
        print(f"6 reloads under load: answers per version {seen}, {len(failures)} failed")
        want = [(200, model_version(load_artifact(d))) for d in order]
        assert reloads == want
        assert not failures, failures[:5]
        assert all(count > 0 for count in seen.values()), seen
    finally:
        stop(server)


def test_sighup_reloads_the_model_directory(live_dir, second_model_dir):
    server, base = start_server(live_dir)
    try:
        old = httpx.get(f"{base}/v1/model").json()["version"]
        replace_dir(live_dir, second_model_dir)
        server.send_signal(signal.SIGHUP)
        new = model_version(load_artifact(second_model_dir))
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/v1/model").json()["version"] != new:
            assert time.monotonic() < deadline, f"still serving {old} 30 s after SIGHUP"
            time.sleep(0.1)
        assert server.poll() is None
        log = Path(server.log_path).read_text()
        assert f'"model reloaded from {live_dir}: version {new} replaces {old}' in log
    finally:
        stop(server)


def test_sighup_with_several_workers_replaces_them_one_at_a_time(live_dir, second_model_dir):
    """uvicorn's parent takes SIGHUP and starts a new worker before it stops each old one."""
    server, base = start_server(live_dir, "--workers", "2")
    try:
        replace_dir(live_dir, second_model_dir)
        new = model_version(load_artifact(second_model_dir))
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 120
        answers = []
        while answers[-20:] != [new] * 20:
            assert time.monotonic() < deadline, f"not every worker serves {new} 120 s after SIGHUP: {answers[-20:]}"
            response = httpx.post(f"{base}/elbo", json=BODY, timeout=30)
            assert response.status_code == 200, response.text
            answers.append(response.headers["x-model-version"])
        assert server.poll() is None
    finally:
        stop(server)

"""The `vae` command's own texts: --version, --help and argument errors (vae_cli/main.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import pytest

from vae_cli.main import main


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help at the terminal's width


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_version_prints_the_installed_package_version(capsys):
    code, out, err = run(capsys, "--version")
    assert code == 0
    assert out == f"vae {version('vae-service')}\n"
    assert err == ""


@pytest.mark.parametrize("command", ["train", "evaluate", "score"])
def test_no_progress_help_reads_right(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert out.endswith("  --no-progress         hide the progress bar\n")
    assert "(default: True)" not in out
    assert "(default: None)" not in out


def test_help_shows_a_real_default_once(capsys):
    _, out, _ = run(capsys, "score", "--help")
    indent = "\n" + " " * 24
    assert f"  --chunk-rows CHUNK_ROWS{indent}rows scored at a time (bounds memory) (default: 4096)\n" in out
    assert f"  --iw-samples IW_SAMPLES{indent}K of L_K (default: the K the threshold was calibrated with)\n" in out
    assert out.count("(default:") == 6  # --iw-samples, --n-samples, --seed, --chunk-rows, --runtime, --engine


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["score", "m", "--data", "d.npy", "--out", "o.csv", "--chunk-rows", "x"],
            "vae score: error: argument --chunk-rows: expected a positive integer, got 'x'",
        ),
        (
            ["score", "m", "--data", "d.npy", "--out", "o.csv", "--chunk-rows", "0"],
            "vae score: error: argument --chunk-rows: expected a positive integer, got '0'",
        ),
        (
            ["score", "m", "--data", "d.npy", "--out", "o.csv", "--seed", "1.5"],
            "vae score: error: argument --seed: expected an integer, got '1.5'",
        ),
        (["train", "--epochs", "ten"], "vae train: error: argument --epochs: expected a positive integer, got 'ten'"),
        (["train", "--threads", "-1"], "vae train: error: argument --threads: expected an integer >= 0, got '-1'"),
        (
            ["train", "--fpr", "high"],
            "vae train: error: argument --fpr: expected a fraction strictly between 0 and 1, got 'high'",
        ),
        (["train", "--lr", "fast"], "vae train: error: argument --lr: expected a number, got 'fast'"),
        (["serve", "--port", "http"], "vae serve: error: argument --port: expected an integer, got 'http'"),
        (["serve", "--workers", "two"], "vae serve: error: argument --workers: expected a positive integer, got 'two'"),
        (
            ["serve", "--keep-alive-s", "soon"],
            "vae serve: error: argument --keep-alive-s: expected a number, got 'soon'",
        ),
    ],
)
def test_bad_values_are_refused_in_plain_words(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.splitlines()[-1] == message


class FakeUvicorn:
    def __init__(self):
        self.calls: list[tuple[object, dict]] = []

    def run(self, app, **options):
        self.calls.append((app, options))


class Exec:
    """os.execv, recorded instead of done."""

    def __init__(self):
        self.argv: list[str] | None = None

    def __call__(self, path, argv):
        assert path == argv[0]
        self.argv = list(argv)


def test_a_supervisor_of_several_workers_is_execd_without_an_app(monkeypatch, digits_model_dir):
    """Each worker builds its own app (service/http/main.py); the supervisor is a fresh process that builds none."""
    import service.http.app
    import service.http.supervise
    from service.http.settings import Settings
    from vae_cli.main import _run_uvicorn

    def no_app(settings):
        raise AssertionError("the supervisor built an app")

    monkeypatch.setattr(service.http.app, "create_app", no_app)
    execv = Exec()
    monkeypatch.setattr(service.http.supervise.os, "execv", execv)
    monkeypatch.setenv("VAE_WORKERS", "2")  # _run_uvicorn hands the settings to the workers this way; undone after
    uvicorn = FakeUvicorn()
    settings = Settings(model_dir=digits_model_dir, workers=2)
    assert _run_uvicorn(uvicorn, settings, {"workers": 2}, metrics_dir="/tmp/vae-metrics-x") == 0
    assert uvicorn.calls == []
    assert execv.argv is not None and execv.argv[:3] == [sys.executable, "-m", "service.http.supervise"]
    given = json.loads(execv.argv[3])
    assert given["remove_after"] == "/tmp/vae-metrics-x"  # the command's cleanup does not outlive the exec
    options = given["uvicorn"]
    assert (options["workers"], options["port"], options["access_log"]) == (2, 8000, False)
    assert options["log_config"]["formatters"]["json"] == {"()": "service.http.observability.JsonFormatter"}


def test_the_supervisor_runs_the_workers_app_with_the_one_write_protocol_and_cleans_up(monkeypatch, tmp_path):
    import uvicorn

    from service.http import supervise
    from service.http.protocol import HttpProtocol

    metrics = tmp_path / "vae-metrics-x"
    metrics.mkdir()
    (metrics / "counter_1.db").write_bytes(b"")
    calls = FakeUvicorn()
    monkeypatch.setattr(uvicorn, "run", calls.run)
    supervise.main([json.dumps({"uvicorn": {"workers": 2, "port": 8123}, "remove_after": str(metrics)})])
    assert calls.calls == [("service.http.main:app", {"http": HttpProtocol, "workers": 2, "port": 8123})]
    assert not metrics.exists()


def test_the_supervisor_process_holds_no_numpy_nor_the_service():
    """What the exec buys: the supervisor imports uvicorn and the protocol, not numpy, pydantic or the core."""
    probe = (
        "import sys, runpy; import uvicorn; uvicorn.run = lambda *a, **k: None; "
        "runpy.run_module('service.http.supervise', run_name='__main__'); "
        "print(sorted(m for m in ('numpy', 'pydantic', 'onnxruntime', 'service.core', 'service.http.app') "
        "if m in sys.modules))"
    )
    given = json.dumps({"uvicorn": {}, "remove_after": None})  # the module's argv, after -c's
    result = subprocess.run([sys.executable, "-c", probe, given], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_one_worker_is_served_with_the_one_write_protocol(monkeypatch, digits_model_dir):
    from service.http.protocol import HttpProtocol
    from service.http.settings import Settings
    from vae_cli.main import _run_uvicorn

    monkeypatch.setenv("VAE_WORKERS", "1")
    uvicorn = FakeUvicorn()
    assert _run_uvicorn(uvicorn, Settings(model_dir=digits_model_dir, workers=1), {"workers": 1}) == 0
    [(_, options)] = uvicorn.calls
    assert options["http"] is HttpProtocol


def test_a_supervisor_of_several_workers_still_refuses_a_bad_model_directory(capsys, tmp_path):
    from service.http.settings import Settings
    from vae_cli.main import _run_uvicorn

    uvicorn = FakeUvicorn()
    assert _run_uvicorn(uvicorn, Settings(model_dir=tmp_path / "nope", workers=2), {}) == 2
    assert capsys.readouterr().err == f"vae serve: model directory {tmp_path / 'nope'} does not exist\n"
    assert uvicorn.calls == []

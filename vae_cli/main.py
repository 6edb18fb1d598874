"""The `vae` command. Subcommands import what they need when they run: `vae serve` never imports torch."""

from __future__ import annotations

import argparse
import os
import sys

from training.train_args import (  # no torch
    DefaultsHelpFormatter,
    add_train_arguments,
    column_names,
    integer,
    number,
    positive_int,
)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a VAE and write a model directory",
        formatter_class=DefaultsHelpFormatter,
    )
    add_train_arguments(p)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a model directory again from a checkpoint.pt")
    p.add_argument("checkpoint", help="a checkpoint.pt written by vae train")
    p.add_argument("--out", required=True, help="model directory to write")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model directory over HTTP",
        description="Serve a model directory. Flags override the VAE_* environment variables.",
    )
    p.add_argument("model_dir", nargs="?", default=None, help="model directory (default: $VAE_MODEL_DIR)")
    p.add_argument("--host", default=None, help="bind address (default: $VAE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=integer, default=None, help="port (default: $VAE_PORT or 8000)")
    p.add_argument(
        "--runtime",
        choices=["onnx", "torchscript"],
        default=None,
        help="network runtime (default: $VAE_RUNTIME or onnx)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="server processes (default: $VAE_WORKERS or 1); threads per worker default to cores / workers",
    )
    p.add_argument(
        "--keep-alive-s",
        type=number,
        default=None,
        help="close a keep-alive connection idle this long (default: $VAE_KEEP_ALIVE_S or 5)",
    )
    p.add_argument(
        "--limit-concurrency",
        type=integer,
        default=None,
        help="connections and requests at once per worker; more get 503 at once "
        "(default: $VAE_LIMIT_CONCURRENCY or 1024)",
    )
    p.add_argument(
        "--backlog",
        type=integer,
        default=None,
        help="connections queued before they are accepted (default: $VAE_BACKLOG or 2048)",
    )


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a data set with a model directory and print metrics as JSON",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("model_dir", help="a model directory")
    p.add_argument("--data", required=True, help="'digits', or a .npy, .npz, .csv or .parquet file")
    p.add_argument(
        "--iw-samples",
        type=positive_int,
        default=None,
        help="K of L_K (default: the K the threshold was calibrated with)",
    )
    p.add_argument(
        "--columns",
        type=column_names,
        default=None,
        help="a table's feature columns, comma-separated, in order (default: the model's feature_names, "
        "else every numeric column but --label-column)",
    )
    p.add_argument("--label-column", default=None, help="a table's column holding labels (name or 0-based index)")
    p.add_argument("--normal-label", default=None, help="the label value that means normal; others are anomalies")
    p.add_argument("--seed", type=integer, default=0, help="seed of the Monte Carlo draws")
    p.add_argument("--runtime", choices=["onnx", "torchscript"], default="onnx", help="network runtime")
    p.add_argument("--plot", default=None, help="write a PNG histogram of the scores here")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a .npy, .csv or .parquet file of any size, chunk by chunk, into a .csv, .npy or .parquet file "
        "of /elbo's fields",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("model_dir", help="a model directory")
    p.add_argument("--data", required=True, help="a .npy (memory-mapped), .csv or .parquet file of raw rows")
    p.add_argument(
        "--out", required=True, help="the file to write, by suffix: .csv, .npy (a structured array) or .parquet"
    )
    p.add_argument(
        "--columns",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=None,
        help="a Parquet input's feature columns by name, comma-separated, in the model's order; without it, all",
    )
    p.add_argument(
        "--iw-samples",
        type=positive_int,
        default=None,
        help="K of L_K (default: the K the threshold was calibrated with)",
    )
    p.add_argument(
        "--n-samples",
        type=positive_int,
        default=None,
        help="L, draws of the ELBO (default: the L the threshold was calibrated with; 1 for models scored by L_K)",
    )
    p.add_argument("--seed", type=integer, default=0, help="chunk i uses seed + i, as an /elbo request would")
    # service.core.bulk.DEFAULT_CHUNK_ROWS, written out so that parsing imports nothing (a test pins the two).
    p.add_argument("--chunk-rows", type=positive_int, default=4096, help="rows scored at a time (bounds memory)")
    p.add_argument("--runtime", choices=["onnx", "torchscript"], default="onnx", help="network runtime")
    p.add_argument(
        "--engine",
        choices=["local", "spark"],
        default="local",
        help="local: this process; spark: Parquet in, a directory of Parquet part files out, on the Spark master "
        "that spark-submit or PYSPARK_SUBMIT_ARGS names (else local[*]); the same numbers",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a model directory's pictures and an HTML page into DIR/report/")
    p.add_argument("model_dir", help="a model directory")


def package_version() -> str:
    """The installed vae-service distribution's version (pyproject.toml's, once installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vae-service")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae", description="Variational autoencoder anomaly scoring.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_export(sub)
    _add_serve(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_score(sub)
    return parser


def _train(args: argparse.Namespace) -> int:
    from training.train import run

    return run(args)


def _export(args: argparse.Namespace) -> int:
    from training.export import ExportError, export_model_dir, load_checkpoint

    try:
        artifact = export_model_dir(load_checkpoint(args.checkpoint), args.out)
    except ExportError as exc:
        print(f"vae export: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {artifact.dir}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    import uvicorn
    from pydantic import ValidationError

    from service.http.settings import Settings, describe_settings_error

    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"vae serve: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    # Several workers share their metrics through files in a fresh directory (prometheus_client's multiprocess
    # mode), named before prometheus_client is first imported here or in any worker; one worker keeps them in
    # memory, whatever the environment says.
    metrics_dir = tempfile.mkdtemp(prefix="vae-metrics-") if settings.workers > 1 else None
    if metrics_dir is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _run_uvicorn(uvicorn, settings, overrides, metrics_dir)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_uvicorn(uvicorn, settings, overrides: dict, metrics_dir: str | None = None) -> int:
    from service.core.artifact import load_artifact
    from service.core.errors import ArtifactError
    from service.http.observability import uvicorn_log_config
    from service.http.protocol import HttpProtocol
    from service.http.supervise import exec_supervisor

    app = None
    try:
        if settings.workers == 1:
            from service.http.app import create_app

            app = create_app(settings)
        else:  # each worker builds its own app; the supervisor only checks the model directory, as create_app would
            load_artifact(settings.model_dir, runtime=settings.runtime)
    except ArtifactError as exc:
        print(f"vae serve: {exc}", file=sys.stderr)
        return 2
    common = dict(
        log_config=uvicorn_log_config(settings.log_level),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.request_timeout_s + 5,
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.limit_concurrency,
        backlog=settings.backlog,
    )
    if app is not None:  # uvicorn's httptools protocol, each response head and body in one write
        uvicorn.run(app, http=HttpProtocol, **common)
        return 0
    # Each worker process imports service.http.main, which reads the same settings from the environment; the
    # supervisor runs in this process, exec'd afresh without the libraries loaded so far (service/http/supervise.py).
    for name, value in overrides.items():
        os.environ[f"VAE_{name.upper()}"] = str(value)
    exec_supervisor(dict(common, workers=settings.workers), remove_after=metrics_dir)
    return 0  # not reached: the process is the supervisor now


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from service.core.errors import ArtifactError
    from training.data import DataError
    from training.evaluate import evaluate

    options = {k: v for k, v in vars(args).items() if k not in ("command", "model_dir", "data")}
    try:
        report = evaluate(args.model_dir, args.data, **options)
    except (ArtifactError, DataError) as exc:
        print(f"vae evaluate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    from service.core.errors import ArtifactError
    from training.report import write_report

    try:
        out = write_report(args.model_dir)
    except ArtifactError as exc:
        print(f"vae report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'index.html'}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from service.core.bulk import BulkError, score_file
    from service.core.errors import ArtifactError

    options = {k: v for k, v in vars(args).items() if k not in ("command", "model_dir", "data", "out", "engine")}
    if args.engine == "spark":
        from service.core.spark_scoring import SparkScoringError, score_parquet

        score_file, BulkError = score_parquet, SparkScoringError  # noqa: N806 (the same call, on Spark)
    try:
        rows = score_file(args.model_dir, args.data, args.out, **options)
    except (ArtifactError, BulkError) as exc:
        print(f"vae score: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {rows} rows")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "train": _train,
        "export": _export,
        "serve": _serve,
        "evaluate": _evaluate,
        "report": _report,
        "score": _score,
    }
    handler = handlers[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())

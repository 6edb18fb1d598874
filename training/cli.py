"""The `vae` command. Subcommands import what they need when they run: `vae serve` never imports torch."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict


def _hidden(text: str) -> list[int]:
    if text.strip().lower() == "linear":
        return []
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,128, got {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive layer sizes like 256,128, got {text!r}")
    return sizes


def _image_size(text: str) -> list[int]:
    sizes = _hidden(text)
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected H or H,W like 28 or 32,48, got {text!r}")
    return sizes * 2 if len(sizes) == 1 else sizes


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _add_train(sub: argparse._SubParsersAction) -> None:
    from training.train_config import TrainConfig  # no torch: only the defaults

    defaults = asdict(TrainConfig())
    p = sub.add_parser(
        "train",
        help="train a VAE and write a model directory",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", default=defaults["data"], help="'digits', a .npy, .npz or .csv file, or a folder of PNG/JPEG images"
    )
    p.add_argument("--out", default=defaults["out"], help="model directory to write (replaced atomically)")
    p.add_argument(
        "--likelihood",
        choices=["bernoulli", "gaussian"],
        default=argparse.SUPPRESS,
        help="p(x|z) (default: bernoulli for digits, gaussian for files)",
    )
    p.add_argument(
        "--noise",
        choices=["shared", "feature"],
        default=argparse.SUPPRESS,
        help="gaussian p(x|z): one variance shared by all features (probabilistic PCA's form), or one "
        "per feature (default: shared)",
    )
    p.add_argument(
        "--scaling",
        choices=["range", "standard"],
        default=argparse.SUPPRESS,
        help="range: one offset and scale for all features; standard: per-feature mean and std "
        "(default: range for pixels, C x H x W, standard for tables)",
    )
    p.add_argument(
        "--latent-dim",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help="size of z (default: chosen from 1, 2, 4, ... 32 by held-out L_K)",
    )
    p.add_argument(
        "--arch",
        choices=["mlp", "conv"],
        default=defaults["arch"],
        help="mlp, or conv for data shaped C x H x W (digits, image folders)",
    )
    p.add_argument(
        "--hidden",
        type=_hidden,
        default=argparse.SUPPRESS,
        help="mlp layer widths, 'linear' for none, or conv channels per stride-2 block; the decoder "
        "mirrors them (default: a linear model and an MLP sized from the features are both "
        "fitted and the better by held-out L_K kept; 32,64 for conv)",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=argparse.SUPPRESS,
        help="image folders: 1 (grayscale) or 3 (RGB) (default: 3 if any image has colour)",
    )
    p.add_argument(
        "--image-size",
        type=_image_size,
        default=argparse.SUPPRESS,
        help="image folders: resize every image to H[,W] (default: images must share one size)",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help="maximum epochs (default: about 8000 gradient steps' worth, 50 to 3000)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help="rows per gradient step (default: training rows / 8, within 16 to 128)",
    )
    p.add_argument("--lr", type=float, default=defaults["lr"], help="Adam learning rate")
    p.add_argument("--beta", type=_non_negative_float, default=defaults["beta"], help="KL weight in the loss")
    p.add_argument("--seed", type=int, default=defaults["seed"], help="same seed, same weights and numbers")
    p.add_argument(
        "--val-fraction",
        type=_fraction,
        default=defaults["val_fraction"],
        help="share of rows held out for early stopping",
    )
    p.add_argument(
        "--calibration-fraction",
        type=_fraction,
        default=argparse.SUPPRESS,
        help="share of rows held out from training and early stopping to calibrate the threshold "
        "(default: 0.1, grown up to 0.25 when that is too few rows for the false-alarm rate)",
    )
    p.add_argument(
        "--score-iw-samples",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help="K of the importance-weighted log-likelihood used to calibrate, and served by default "
        "(default: the smallest K in 1, 2, 4, ... 256 whose Monte Carlo noise is at most 10%% of "
        "the calibration scores' interquartile range)",
    )
    p.add_argument(
        "--fpr",
        type=_fraction,
        default=argparse.SUPPRESS,
        help="target false-alarm rate of the default threshold (default: 0.01, or the smallest rate "
        "the calibration split supports when it is too small; an explicit rate it cannot "
        "support is an error)",
    )
    p.add_argument(
        "--patience",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help="epochs without a better validation ELBO before stopping (default: about 300 steps' worth)",
    )
    p.add_argument(
        "--kl-warmup",
        type=_non_negative_int,
        default=defaults["kl_warmup"],
        help="epochs over which beta ramps linearly from 0 (0: off)",
    )
    p.add_argument(
        "--free-bits",
        type=_non_negative_float,
        default=defaults["free_bits"],
        help="per-dimension KL floor in nats against posterior collapse (0: off)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=defaults["device"],
        help="auto uses CUDA when present; exported graphs always load on the CPU",
    )
    p.add_argument(
        "--threads",
        type=_non_negative_int,
        default=defaults["threads"],
        help="torch's CPU threads per process; 0: torch's default (one per core, one under torchrun). "
        "On small VMs 1 can be much faster: see docs/benchmark-distributed.md",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


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
    p.add_argument("--port", type=int, default=None, help="port (default: $VAE_PORT or 8000)")
    p.add_argument(
        "--runtime",
        choices=["onnx", "torchscript"],
        default=None,
        help="network runtime (default: $VAE_RUNTIME or onnx)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="server processes (default: $VAE_WORKERS or 1); threads per worker default to cores / workers",
    )
    p.add_argument(
        "--keep-alive-s",
        type=float,
        default=None,
        help="close a keep-alive connection idle this long (default: $VAE_KEEP_ALIVE_S or 5)",
    )
    p.add_argument(
        "--limit-concurrency",
        type=int,
        default=None,
        help="connections and requests at once per worker; more get 503 at once "
        "(default: $VAE_LIMIT_CONCURRENCY or 1024)",
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=None,
        help="connections queued before they are accepted (default: $VAE_BACKLOG or 2048)",
    )


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a data set with a model directory and print metrics as JSON",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model_dir", help="a model directory")
    p.add_argument("--data", required=True, help="'digits', or a .npy, .npz or .csv file")
    p.add_argument(
        "--iw-samples",
        type=_positive_int,
        default=None,
        help="K of L_K (default: the K the threshold was calibrated with)",
    )
    p.add_argument("--label-column", default=None, help="CSV column holding labels (name or 0-based index)")
    p.add_argument("--normal-label", default=None, help="the label value that means normal; others are anomalies")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws")
    p.add_argument("--runtime", choices=["onnx", "torchscript"], default="onnx", help="network runtime")
    p.add_argument("--plot", default=None, help="write a PNG histogram of the scores here")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a .npy or .csv file of any size, chunk by chunk, into a CSV of /elbo's fields",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model_dir", help="a model directory")
    p.add_argument("--data", required=True, help="a .npy (memory-mapped) or .csv file of raw rows")
    p.add_argument("--out", required=True, help="the CSV to write")
    p.add_argument(
        "--iw-samples",
        type=_positive_int,
        default=None,
        help="K of L_K (default: the K the threshold was calibrated with)",
    )
    p.add_argument("--n-samples", type=_positive_int, default=1, help="draws of the ELBO")
    p.add_argument("--seed", type=int, default=0, help="chunk i uses seed + i, as an /elbo request would")
    p.add_argument("--chunk-rows", type=_positive_int, default=1024, help="rows scored at a time (bounds memory)")
    p.add_argument("--runtime", choices=["onnx", "torchscript"], default="onnx", help="network runtime")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a model directory's pictures and an HTML page into DIR/report/")
    p.add_argument("model_dir", help="a model directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae", description="Variational autoencoder anomaly scoring.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_export(sub)
    _add_serve(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_score(sub)
    return parser


def _train(args: argparse.Namespace) -> int:
    from training.data import DataError
    from training.distributed import DeviceError
    from training.export import ExportError
    from training.train import ConfigError, TrainConfig, train

    config = TrainConfig(**{k: v for k, v in vars(args).items() if k != "command"})
    try:
        artifact = train(config)
    except (DataError, ExportError, ConfigError, DeviceError) as exc:
        print(f"vae train: {exc}", file=sys.stderr)
        return 2
    if artifact is None:  # a torchrun process other than the main one
        return 0
    summary, scoring = artifact.manifest.training, artifact.manifest.scoring
    calibration = scoring.calibration
    print(
        f"wrote {artifact.dir}: best validation ELBO {summary.best_val_elbo:.3f} nats "
        f"at epoch {summary.best_epoch} of {summary.epochs}; threshold {calibration.threshold:.3f} "
        f"at fpr {calibration.fpr:.4g} from {calibration.n} calibration rows, K = {scoring.iw_samples}"
    )
    return 0


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
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.errors import ArtifactError
    from service.settings import Settings, describe_settings_error

    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        settings = Settings(**overrides)
        app = create_app(settings)
    except ValidationError as exc:
        print(f"vae serve: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    except ArtifactError as exc:
        print(f"vae serve: {exc}", file=sys.stderr)
        return 2
    common = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.request_timeout_s + 5,
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.limit_concurrency,
        backlog=settings.backlog,
    )
    if settings.workers == 1:
        uvicorn.run(app, **common)
    else:  # each worker process imports service.main, which reads the same settings from the environment
        for name, value in overrides.items():
            os.environ[f"VAE_{name.upper()}"] = str(value)
        uvicorn.run("service.main:app", workers=settings.workers, **common)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from service.errors import ArtifactError
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
    from service.errors import ArtifactError
    from training.report import write_report

    try:
        out = write_report(args.model_dir)
    except ArtifactError as exc:
        print(f"vae report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'index.html'}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from service.bulk import BulkError, score_file
    from service.errors import ArtifactError

    options = {k: v for k, v in vars(args).items() if k not in ("command", "model_dir", "data", "out")}
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

"""`vae train`'s flags and the argument types the `vae` command shares, without torch.

Both the `vae` command (vae_cli/main.py) and `torchrun -m training.train` parse `vae train`'s flags with
add_train_arguments, so training never imports the command.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from training.train_config import TrainConfig


def hidden(text: str) -> list[int]:
    if text.strip().lower() == "linear":
        return []
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,128, got {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive layer sizes like 256,128, got {text!r}")
    return sizes


def image_size(text: str) -> list[int]:
    sizes = hidden(text)
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected H or H,W like 28 or 32,48, got {text!r}")
    return sizes * 2 if len(sizes) == 1 else sizes


# argparse names a type function in its error ("invalid positive_int value: 'x'") when the function raises
# ValueError; each type below raises ArgumentTypeError instead, whose message argparse prints as it is:
# "argument --epochs: expected a positive integer, got 'x'".


def column_names(text: str) -> list[str]:
    """--columns a,b,c: a table's column names (or 0-based indices), in order."""
    names = [name.strip() for name in text.split(",")]
    if not names or any(not name for name in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names like a,b,c, got {text!r}")
    return names


def _parse(text: str, parse: type[int] | type[float], expected: str) -> int | float:
    try:
        return parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def integer(text: str) -> int:
    return int(_parse(text, int, "an integer"))


def positive_int(text: str) -> int:
    value = int(_parse(text, int, "a positive integer"))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(_parse(text, int, "an integer >= 0"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def number(text: str) -> float:
    return float(_parse(text, float, "a number"))


def fraction(text: str) -> float:
    value = float(_parse(text, float, "a fraction strictly between 0 and 1"))
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = float(_parse(text, float, "a number >= 0"))
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help where it says something: not to on/off switches such as
    --no-progress (whose stored default, True, reads backwards), not where the help already gives the
    default, and not for a default of None."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.nargs == 0 or action.default is None or "(default" in text:
            return text
        return super()._get_help_string(action)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """`vae train`'s flags, with TrainConfig's defaults (shown in --help)."""
    defaults = asdict(TrainConfig())
    p.add_argument(
        "--data",
        default=defaults["data"],
        help="'digits', a .npy, .npz, .csv or .parquet file, or a folder of PNG/JPEG images",
    )
    p.add_argument(
        "--columns",
        type=column_names,
        default=None,
        help="a table's feature columns, comma-separated, in order; kept in the manifest "
        "(default: every numeric column but --label-column)",
    )
    p.add_argument(
        "--label-column",
        default=None,
        help="a table's label column (name or 0-based index): never a feature; labels colour the pictures",
    )
    p.add_argument(
        "--out",
        default=None,
        help="model directory to write (replaced atomically) (default: models/ and the data's name: models/digits "
        "for digits, models/sensors for sensors.csv)",
    )
    p.add_argument(
        "--likelihood",
        choices=["bernoulli", "gaussian"],
        default=argparse.SUPPRESS,
        help="p(x|z) (default: bernoulli for digits, gaussian for files)",
    )
    p.add_argument(
        "--noise",
        choices=["shared", "diagonal", "feature"],
        default=argparse.SUPPRESS,
        help="gaussian p(x|z): shared, one variance for all features (probabilistic PCA's form); diagonal, "
        "one learned variance per feature; feature, one per feature computed from z (default: shared for "
        "linear models and pixels, diagonal for non-linear models of standardised tables)",
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
        type=positive_int,
        default=argparse.SUPPRESS,
        help="size of z (default: chosen from 1, 2, 3, 4, 8, 16, 32 by held-out L_K)",
    )
    p.add_argument(
        "--arch",
        choices=["mlp", "conv"],
        default=defaults["arch"],
        help="mlp, or conv for data shaped C x H x W (digits, image folders)",
    )
    p.add_argument(
        "--hidden",
        type=hidden,
        default=argparse.SUPPRESS,
        help="mlp layer widths, 'linear' for none, or conv channels per stride-2 block; the decoder "
        "mirrors them (default: a linear model and an MLP of four layers for tables, two for pixels, "
        "128 wide up to 64 features and 256 beyond, are both fitted and the better by held-out L_K kept; "
        "32,64 for conv)",
    )
    p.add_argument(
        "--channels",
        type=integer,
        choices=[1, 3],
        default=argparse.SUPPRESS,
        help="image folders: 1 (grayscale) or 3 (RGB) (default: 3 if any image has colour)",
    )
    p.add_argument(
        "--image-size",
        type=image_size,
        default=argparse.SUPPRESS,
        help="image folders: resize every image to H[,W] (default: images must share one size)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=argparse.SUPPRESS,
        help="maximum epochs (default: about 8000 gradient steps' worth, 50 to 3000)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=argparse.SUPPRESS,
        help="rows per gradient step (default: training rows / 8, within 16 to 128)",
    )
    p.add_argument(
        "--selection-rule",
        choices=["one-se", "best"],
        default=defaults["selection_rule"],
        help="how held-out L_K picks the capacity when it is unset: one-se, the smallest latent within one "
        "standard error of the best; best, the highest",
    )
    p.add_argument("--lr", type=number, default=defaults["lr"], help="Adam learning rate")
    p.add_argument("--beta", type=non_negative_float, default=defaults["beta"], help="KL weight in the loss")
    p.add_argument("--seed", type=integer, default=defaults["seed"], help="same seed, same weights and numbers")
    p.add_argument(
        "--val-fraction",
        type=fraction,
        default=defaults["val_fraction"],
        help="share of rows held out for early stopping",
    )
    p.add_argument(
        "--calibration-fraction",
        type=fraction,
        default=argparse.SUPPRESS,
        help="share of rows held out from training and early stopping to calibrate the threshold "
        "(default: 0.1, grown up to 0.25 when that is too few rows for the false-alarm rate)",
    )
    p.add_argument(
        "--score-iw-samples",
        type=positive_int,
        default=argparse.SUPPRESS,
        help="K of the importance-weighted log-likelihood used to calibrate, and served by default "
        "(default: the smallest K in 1, 2, 4, ... 256 whose Monte Carlo noise is at most 10%% of "
        "the calibration scores' interquartile range)",
    )
    p.add_argument(
        "--fpr",
        type=fraction,
        default=argparse.SUPPRESS,
        help="target false-alarm rate of the default threshold (default: 0.01, or the smallest rate "
        "the calibration split supports when it is too small; an explicit rate it cannot "
        "support is an error)",
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        default=argparse.SUPPRESS,
        help="epochs without a better validation ELBO before stopping (default: about 300 steps' worth)",
    )
    p.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="keep a linear model as fitted on the training rows, instead of fitting it again on the training "
        "and validation rows for the epochs early stopping chose",
    )
    p.add_argument(
        "--kl-warmup",
        type=non_negative_int,
        default=defaults["kl_warmup"],
        help="epochs over which beta ramps linearly from 0 (0: off)",
    )
    p.add_argument(
        "--free-bits",
        type=non_negative_float,
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
        type=non_negative_int,
        default=defaults["threads"],
        help="torch's CPU threads per process; 0: torch's default (one per core, one under torchrun). "
        "On small VMs 1 can be much faster: see docs/benchmark-distributed.md",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def train_parser() -> argparse.ArgumentParser:
    """The parser of `torchrun -m training.train [vae train's flags]`."""
    parser = argparse.ArgumentParser(
        prog="vae train",
        description="train a VAE and write a model directory",
        formatter_class=DefaultsHelpFormatter,
    )
    add_train_arguments(parser)
    return parser

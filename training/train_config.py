"""`vae train`'s options, in a module without torch so that `vae --help` starts fast."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainConfig:
    """Every `vae train` flag; the CLI shows these defaults in --help."""

    data: str = "digits"  # "digits", a .npy / .npz / .csv / .parquet file, or a folder of PNG / JPEG images
    columns: list[str] | None = None  # a table's feature columns, in order; None: every numeric one but the label
    label_column: str | None = None  # a table's label column: never a feature; labels colour the report's pictures
    out: str | None = None  # the model directory to write; None: default_out(data), models/digits for digits
    likelihood: str | None = None  # bernoulli | gaussian; None: bernoulli for digits, gaussian for files
    # gaussian: "shared" (one variance for all features), "diagonal" (one learned per feature) or "feature" (one per
    # feature computed from z); None: training.plan.default_noise
    noise: str | None = None
    scaling: str | None = None  # "range" or "standard"; None: range for pixels (C x H x W), standard for tables
    latent_dim: int | None = None  # size of z; None: chosen from 1, 2, 3, 4, 8, 16, 32 by held-out L_K
    arch: str = "mlp"  # mlp, or conv for C x H x W data
    # mlp widths / conv channels, decoder mirrored ([] is linear); None: a linear model and an MLP sized from
    # the features are both tried and the better one by held-out L_K kept (conv: 32,64)
    hidden: list[int] | None = None
    channels: int | None = None  # image folders: 1 or 3; None: 3 if any image has colour
    image_size: list[int] | None = None  # image folders: resize to [H, W]; None: images must share one size
    epochs: int | None = None  # upper bound; None: from the rows (about 8000 steps); early stopping ends sooner
    batch_size: int | None = None  # rows per gradient step, per process under torchrun; None: rows / 8 in [16, 128]
    lr: float = 3e-3  # Adam learning rate (3e-3 converges several times faster than 1e-3 on small tables)
    # how held-out L_K picks a capacity: "one-se" (the smallest latent within one standard error of the best)
    # or "best" (the highest)
    selection_rule: str = "one-se"
    beta: float = 1.0  # weight of the KL term in the loss (reported ELBOs always use 1)
    seed: int = 0  # fixes the split, the initial weights, the batch order and the noise
    val_fraction: float = 0.1  # held out for early stopping and reported validation metrics
    # held out from training and early stopping, scored to set the threshold; None: 0.1, grown up to 0.25 when
    # that is too few rows for the false-alarm rate
    calibration_fraction: float | None = None
    # K of the calibration's L_K and the service's default K; None: the smallest K in 1, 2, 4, ... 256 whose
    # Monte Carlo noise is small against the spread of the calibration scores
    score_iw_samples: int | None = None
    # target false-alarm rate of the default threshold; None: 0.01, or the smallest rate the calibration
    # split supports when it is too small for 0.01 (an explicit rate it cannot support is an error)
    fpr: float | None = None
    patience: int | None = None  # epochs without a better validation ELBO before stopping; None: about 300 steps
    # a chosen linear model is fitted again on the training and validation rows together, for as many epochs as
    # early stopping chose (training/train.py refit_linear)
    refit: bool = True
    kl_warmup: int = 0  # epochs over which beta ramps linearly from 0 (0: no warm-up)
    free_bits: float = 0.0  # per-dimension KL floor in nats against posterior collapse (0: off)
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    # torch's CPU threads in this process; 0: torch's default. One is several times faster for the small models
    # this trains on 2-core machines (docs/benchmark-distributed.md), and leaves a core to the rest
    threads: int = 1
    progress: bool = True  # show a progress bar


def default_out(data: str) -> str:
    """The model directory `vae train` writes when --out is not given: models/ and the data's name (models/digits
    for the built-in digits, models/sensors for sensors.csv or a folder sensors/), so that a model of one data set
    does not replace another's, nor the digits model `make run` serves."""
    return "models/digits" if data == "digits" else f"models/{Path(data).stem or 'model'}"

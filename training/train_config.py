"""`vae train`'s options, in a module without torch so that `vae --help` starts fast."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Every `vae train` flag; the CLI shows these defaults in --help."""

    data: str = "digits"  # "digits", a .npy / .npz / .csv file, or a folder of PNG / JPEG images
    out: str = "models/digits"  # the model directory to write
    likelihood: str | None = None  # bernoulli | gaussian; None: bernoulli for digits, gaussian for files
    latent_dim: int = 8  # size of z
    arch: str = "mlp"  # mlp, or conv for C x H x W data
    hidden: list[int] | None = None  # mlp widths / conv channels, decoder mirrored; None: 256,128 (mlp), 32,64 (conv)
    channels: int | None = None  # image folders: 1 or 3; None: 3 if any image has colour
    image_size: list[int] | None = None  # image folders: resize to [H, W]; None: images must share one size
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 128  # rows per gradient step, per process under torchrun
    lr: float = 1e-3  # Adam learning rate
    beta: float = 1.0  # weight of the KL term in the loss (reported ELBOs always use 1)
    seed: int = 0  # fixes the split, the initial weights, the batch order and the noise
    val_fraction: float = 0.1  # held out for early stopping and reported validation metrics
    calibration_fraction: float = 0.1  # held out from training and early stopping, scored to set the threshold
    score_iw_samples: int = 100  # K of the calibration's L_K, and the service's default K
    fpr: float = 0.01  # target false-alarm rate of the default threshold
    patience: int = 15  # epochs without a better validation ELBO before stopping
    kl_warmup: int = 0  # epochs over which beta ramps linearly from 0 (0: no warm-up)
    free_bits: float = 0.0  # per-dimension KL floor in nats against posterior collapse (0: off)
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    threads: int = 0  # torch's CPU threads in this process; 0: torch's default (docs/benchmark-distributed.md)
    progress: bool = True  # show a progress bar

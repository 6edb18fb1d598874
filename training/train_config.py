"""`vae train`'s options, in a module without torch so that `vae --help` starts fast."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """Every `vae train` flag; the CLI shows these defaults in --help."""

    data: str = "digits"  # "digits", or a .npy / .npz / .csv file
    out: str = "models/digits"  # the model directory to write
    likelihood: str | None = None  # bernoulli | gaussian; None: bernoulli for digits, gaussian for files
    latent_dim: int = 8  # size of z
    hidden: list[int] = field(default_factory=lambda: [256, 128])  # encoder widths, decoder mirrored
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 128
    lr: float = 1e-3  # Adam learning rate
    beta: float = 1.0  # weight of the KL term in the loss (reported ELBOs always use 1)
    seed: int = 0  # fixes the split, the initial weights, the batch order and the noise
    val_fraction: float = 0.1  # held out for early stopping and reported validation metrics
    patience: int = 15  # epochs without a better validation ELBO before stopping
    progress: bool = True  # show a progress bar

"""A model-agnostic training loop: step, log, stop early, keep the best weights.

It knows nothing of VAEs: the caller supplies a step function and a validation function.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

StepFn = Callable[[torch.Tensor, int], dict[str, float]]  # (batch, epoch) -> metrics incl. "loss"; steps the optimizer
ValidateFn = Callable[[], dict[str, float]]  # () -> validation metrics incl. the monitored one


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int  # 0: the initial weights were never bettered
    best_value: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)  # one row per epoch trained
    initial: dict[str, float] = field(default_factory=dict)  # the validation metrics before any step


def fit(
    model: torch.nn.Module,
    batches: Callable[[int], Iterable[torch.Tensor]],
    step: StepFn,
    validate: ValidateFn,
    *,
    epochs: int,
    patience: int,
    monitor: str,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    keep_last: bool = False,
) -> FitResult:
    """Train for up to `epochs`, stopping when `monitor` (higher is better) has not improved for `patience` epochs.

    The initial weights are validated too and count as epoch 0, so a model that starts at a good solution (a
    closed-form fit) keeps it when every later epoch is worse on the held-out rows. With `keep_last`, every
    epoch runs and the last weights are kept: a refit for a number of epochs that early stopping chose before.
    """
    model.eval()
    with torch.inference_mode():
        initial = validate()
    # A non-finite start (a diverged initialisation) must not block every later epoch from counting as better.
    start = initial[monitor] if math.isfinite(initial[monitor]) else -math.inf
    best_value, best_epoch, best_state = start, 0, copy.deepcopy(model.state_dict())
    history: list[dict] = []
    bar = tqdm(range(1, epochs + 1), desc="train", unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        started = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        n = 0
        for batch in batches(epoch):
            metrics = step(batch, epoch)
            size = len(batch)
            n += size
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * size
            bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", refresh=False)
        model.eval()
        with torch.inference_mode():
            val = validate()
        row = {"epoch": epoch, **{f"train_{k}": v / n for k, v in sums.items()}, **val}
        row["seconds"] = round(time.perf_counter() - started, 4)
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", **{monitor: f"{row[monitor]:.3f}"})
        if keep_last:
            continue
        if row[monitor] > best_value:
            best_value, best_epoch, best_state = row[monitor], epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    bar.close()
    if keep_last and history:
        best_value, best_epoch, best_state = history[-1][monitor], len(history), copy.deepcopy(model.state_dict())
    return FitResult(best_state, best_epoch, best_value, len(history), history, initial)

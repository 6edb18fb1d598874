"""The training loop: early stopping, where the initial weights are a candidate like every epoch's, and keep_last."""

from __future__ import annotations

import math

import pytest
import torch

from training.loop import fit


class Counter(torch.nn.Module):
    def __init__(self, start: float) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(start))


def run(model: Counter, change: float, score, epochs: int = 20, patience: int = 3, keep_last: bool = False):
    """Each epoch is one batch whose step adds `change` to the value; validation reports score(value)."""

    def step(batch: torch.Tensor, epoch: int) -> dict[str, float]:
        with torch.no_grad():
            model.value += change
        return {"loss": 0.0}

    return fit(
        model,
        lambda epoch: [torch.zeros(1)],
        step,
        lambda: {"score": score(model.value.item())},
        epochs=epochs,
        patience=patience,
        monitor="score",
        progress=False,
        keep_last=keep_last,
    )


def test_the_initial_weights_are_kept_when_every_epoch_is_worse():
    model = Counter(0.0)
    result = run(model, change=1.0, score=lambda v: -v)
    assert result.initial == {"score": 0.0}
    assert (result.best_epoch, result.best_value, result.epochs_run) == (0, 0.0, 3)
    assert float(result.best_state["value"]) == 0.0
    assert model.value.item() == 3.0  # the caller loads best_state; fit leaves the last weights in place


def test_an_epoch_that_improves_on_the_initial_weights_replaces_them():
    result = run(Counter(0.0), change=1.0, score=lambda v: -abs(v - 2.0))
    assert result.initial == {"score": -2.0}
    assert (result.best_epoch, result.best_value, result.epochs_run) == (2, 0.0, 5)
    assert float(result.best_state["value"]) == 2.0


def test_a_non_finite_initial_score_never_blocks_later_epochs():
    result = run(Counter(0.0), change=1.0, score=lambda v: math.nan if v == 0.0 else -v)
    assert math.isnan(result.initial["score"])
    assert (result.best_epoch, result.best_value) == (1, pytest.approx(-1.0))


def test_keep_last_runs_every_epoch_and_keeps_the_last_weights_whatever_the_score():
    model = Counter(0.0)

    def step(batch: torch.Tensor, epoch: int) -> dict[str, float]:
        with torch.no_grad():
            model.value += 1.0
        return {"loss": 0.0}

    result = fit(
        model,
        lambda epoch: [torch.zeros(1)],
        step,
        lambda: {"score": -model.value.item()},  # every epoch worse than the start: early stopping would keep 0
        epochs=5,
        patience=1,
        monitor="score",
        progress=False,
        keep_last=True,
    )
    assert (result.best_epoch, result.best_value, result.epochs_run) == (5, -5.0, 5)
    assert float(result.best_state["value"]) == 5.0


def test_keep_last_with_no_epochs_keeps_the_initial_weights():
    result = run(Counter(1.5), change=1.0, score=lambda v: -v, epochs=0, keep_last=True)
    assert (result.best_epoch, result.best_value, result.epochs_run) == (0, -1.5, 0)
    assert float(result.best_state["value"]) == 1.5

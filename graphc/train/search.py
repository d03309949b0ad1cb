"""Random search over the learning rate and the L2 strength (deck 002, "hyperparameter optimization").

The course's advice: search on a log scale, at random rather than on a grid, with a few epochs per
trial, and judge on the validation set. Every trial here runs on ONE compiled training step: the
learning rate and the L2 strength are inputs of the step (not constants folded into it), so a trial
costs its epochs and nothing more; the parameters and the optimizer state start each trial from the
same initial values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir.errors import NonFiniteError
from ..nn.layers import Module
from ..optim import Optimizer
from ..optim.hyperparams import HyperparameterError, check_count, user_line_text
from .loop import History, Trainer, fit
from .schedules import constant


@dataclass
class Trial:
    """One point of the search: its rates, its History, and its final validation loss."""

    lr: float
    l2: float
    history: History
    val_loss: float
    state: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


@dataclass
class SearchResult:
    """The trials, best first (lowest final validation loss), and the Trainer they shared."""

    trials: list[Trial]
    trainer: Trainer

    @property
    def best(self) -> Trial:
        return self.trials[0]

    def table(self) -> str:
        lines = [f"{'lr':>10} {'l2':>10} {'val_loss':>10} {'val_acc':>8}"]
        for t in self.trials:
            acc = t.history.metrics.get("val_acc")
            lines.append(f"{t.lr:10.3g} {t.l2:10.3g} {t.val_loss:10.4f} {acc[-1] if acc else float('nan'):8.4f}")
        return "\n".join(lines)


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float], name: str) -> float:
    lo, hi = _bounds(bounds, name)
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if lo > 0 else float(rng.uniform(lo, hi))


def _bounds(bounds: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise HyperparameterError(f"random_search: {name} must be a (low, high) pair, got {bounds!r}"
                                  f"{user_line_text()}") from None
    if not (0 <= lo <= hi and math.isfinite(hi)) or (name == "lr" and lo <= 0):
        need = "0 < low <= high" if name == "lr" else "0 <= low <= high"
        raise HyperparameterError(f"random_search: {name} range ({lo!r}, {hi!r}) must have {need}, finite"
                                  f"{user_line_text()}")
    return lo, hi


def random_search(model: Module, train_data: tuple, validation_data: tuple, trials: int = 8,
                  lr: tuple[float, float] = (1e-3, 1e-1), l2: tuple[float, float] = (1e-6, 1e-2), epochs: int = 3,
                  batch_size: int = 128, optimizer: Optimizer | None = None, loss: Any = "softmax_cross_entropy",
                  backend: str | None = None, seed: int = 0) -> SearchResult:
    """Train ``model`` ``trials`` times for ``epochs`` epochs, each with a learning rate and an L2 strength
    drawn log-uniformly from ``lr`` and ``l2`` (an ``l2`` range starting at 0 is drawn uniformly), all
    on one compiled step; returns the trials best first. The model is left with the best trial's values.

    >>> import graphc, numpy as np
    >>> from graphc.nn import Sequential, Dense
    >>> x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)
    >>> model = Sequential([Dense(8, "tanh"), Dense(2)], input_shape=(2,))
    >>> result = graphc.train.random_search(model, (x[:48], y[:48]), (x[48:], y[48:]), trials=3,
    ...                                     epochs=2, batch_size=16, backend="reference")
    >>> len(result.trials), result.best.val_loss == min(t.val_loss for t in result.trials)
    (3, True)
    """
    trials = check_count("random_search", "trials", trials, minimum=1)
    lr_range, l2_range = _bounds(lr, "lr"), _bounds(l2, "l2")
    rng = np.random.default_rng(seed)
    trainer = Trainer(model, optimizer, loss, backend=backend, l2_input=True)
    trainer.step_executable(batch_size)
    initial = {k: v.copy() for k, v in trainer.state.items()}
    done: list[Trial] = []
    for _ in range(trials):
        rate, strength = log_uniform(rng, lr_range, "lr"), log_uniform(rng, l2_range, "l2")
        for k, v in trainer.state.items():
            v[...] = initial[k]
        trainer.step_count, trainer.l2 = 0, strength
        try:
            history = fit(model, train_data, epochs, batch_size, schedule=constant(rate),
                          validation_data=validation_data, seed=seed, trainer=trainer, verbose=False)
            val_loss = history["val_loss"][-1]
        except NonFiniteError:  # the rate diverged: a result of the search, not a failure of it
            history, val_loss = History(), math.inf
        done.append(Trial(rate, strength, history, val_loss if math.isfinite(val_loss) else math.inf,
                          {k: v.copy() for k, v in trainer.state.items()}))
    done.sort(key=lambda t: t.val_loss)
    for k, v in trainer.state.items():
        v[...] = done[0].state[k]
    trainer.sync_model()
    return SearchResult(done, trainer)

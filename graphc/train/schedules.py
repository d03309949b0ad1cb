"""Learning-rate schedules: functions of the step (or epoch) count t = 0, 1, 2, ...

Each schedule is ``lr = schedule(t)``; ``per`` says whether t counts optimizer steps or epochs.
The learning rate is a graph input, so changing it never recompiles the step. Every argument is
checked when the schedule is made (a rate > 0, periods of at least one step or epoch, ...): a bad
one raises :class:`~graphc.optim.HyperparameterError` naming the schedule, the argument and its range.

>>> linear(0.1, T=100)(50)
0.05

:func:`warmup` puts a linear warm-up in front of any of them: ``warmup(5, then=cosine(0.1, T=95))``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..optim.hyperparams import (
    NON_NEGATIVE,
    POSITIVE,
    HyperparameterError,
    Range,
    check_choice,
    check_count,
    user_line_text,
)

PER = ("epoch", "step")


@dataclass
class Schedule:
    """A learning-rate schedule; call it with t (steps or epochs, see ``per``)."""

    name: str
    lr0: float
    per: str = "epoch"

    def _check(self) -> None:
        """Check lr0 and per (subclasses call it from their __init__: not from __post_init__, whose
        caller, the dataclass's generated __init__, would hide the user's line)."""
        self.lr0 = POSITIVE.check(self.name, "lr0", self.lr0)
        check_choice(self.name, "per", self.per, PER)

    def __call__(self, t: int) -> float:
        raise NotImplementedError

    def state(self) -> dict:
        """What a checkpoint must save to resume the schedule exactly (stateless ones: nothing)."""
        return {}

    def load_state(self, state: dict) -> None:
        pass


class _Formula(Schedule):
    def __init__(self, name, lr0, fn, per):
        super().__init__(name, lr0, per)
        self._check()
        self._fn = fn

    def __call__(self, t: int) -> float:
        return float(self._fn(t))

    def __repr__(self):
        return f"{self.name}(lr0={self.lr0}, per={self.per!r})"


def constant(lr: float, per: str = "epoch") -> Schedule:
    """lr"""
    return _Formula("constant", lr, lambda t: lr, per)


def step(lr0: float, drop: float = 0.1, every: int = 10, per: str = "epoch") -> Schedule:
    """lr0 * drop ** floor(t / every)"""
    Range(0.0, 1.0, low_open=True).check("step", "drop", drop)
    every = check_count("step", "every", every)
    return _Formula("step", lr0, lambda t: lr0 * drop ** (t // every), per)


def linear(lr0: float, T: int, final: float = 0.0, per: str = "epoch") -> Schedule:
    """The course's linear decay alpha = alpha0 (1 - t/T) (+ final * t/T), held at ``final`` after T."""
    T = check_count("linear", "T", T)
    NON_NEGATIVE.check("linear", "final", final)
    return _Formula("linear", lr0, lambda t: lr0 * (1 - min(t, T) / T) + final * min(t, T) / T, per)


def exponential(lr0: float, k: float, per: str = "epoch") -> Schedule:
    """lr0 * exp(-k t)"""
    NON_NEGATIVE.check("exponential", "k", k)
    return _Formula("exponential", lr0, lambda t: lr0 * math.exp(-k * t), per)


def cosine(lr0: float, T: int, final: float = 0.0, per: str = "epoch") -> Schedule:
    """final + (lr0 - final) (1 + cos(pi min(t, T) / T)) / 2"""
    T = check_count("cosine", "T", T)
    NON_NEGATIVE.check("cosine", "final", final)
    return _Formula("cosine", lr0, lambda t: final + (lr0 - final) * (1 + math.cos(math.pi * min(t, T) / T)) / 2, per)


def inverse_sqrt(lr0: float, warmup: int = 1, per: str = "step") -> Schedule:
    """lr0 * sqrt(warmup / max(t + 1, warmup)): constant for ``warmup`` steps, then ~ 1/sqrt(t)."""
    warmup = check_count("inverse_sqrt", "warmup", warmup)
    return _Formula("inverse_sqrt", lr0, lambda t: lr0 * math.sqrt(warmup / max(t + 1, warmup)), per)


class ReduceOnPlateau(Schedule):
    """Divide the learning rate by ``factor`` (10, as in the course) when the validation loss has not
    improved by more than ``min_delta`` for ``patience`` epochs. Call :meth:`observe` after each epoch
    (``fit`` does, with the validation loss: it refuses this schedule without ``validation_data``)."""

    def __init__(self, lr0: float, factor: float = 10.0, patience: int = 3, min_delta: float = 0.0,
                 min_lr: float = 0.0):
        super().__init__("reduce_on_plateau", lr0, "epoch")
        self._check()
        owner = self.name
        self.factor = Range(1.0, low_open=True).check(owner, "factor", factor)  # the rate is divided by it
        self.patience = check_count(owner, "patience", patience)
        self.min_delta = NON_NEGATIVE.check(owner, "min_delta", min_delta)
        self.min_lr = Range(0.0, self.lr0).check(owner, "min_lr", min_lr)
        self.lr, self.best, self.bad_epochs = float(lr0), math.inf, 0

    def __call__(self, t: int) -> float:
        return self.lr

    def observe(self, val_loss: float) -> None:
        if val_loss < self.best - self.min_delta:
            self.best, self.bad_epochs = val_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.lr, self.bad_epochs = max(self.lr / self.factor, self.min_lr), 0

    def state(self) -> dict:
        return {"lr": self.lr, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state(self, state: dict) -> None:
        self.lr, self.best, self.bad_epochs = float(state["lr"]), float(state["best"]), int(state["bad_epochs"])

    def __repr__(self):
        return f"ReduceOnPlateau(lr={self.lr}, factor={self.factor}, patience={self.patience})"


def reduce_on_plateau(lr0: float, factor: float = 10.0, patience: int = 3, min_delta: float = 0.0,
                      min_lr: float = 0.0) -> ReduceOnPlateau:
    return ReduceOnPlateau(lr0, factor, patience, min_delta, min_lr)


class Warmup(Schedule):
    """A linear warm-up in front of schedule ``then``: for t < ``steps`` the rate grows linearly from
    ``start_factor * then(0)`` (at t = 0) to ``then(0)`` (reached at t = ``steps``); afterwards it is
    ``then(t - steps)``, so ``then`` starts from its beginning when the warm-up ends. t counts ``then``'s
    unit (steps or epochs)."""

    def __init__(self, steps: int, then: Schedule, start_factor: float = 0.1):
        super().__init__("warmup", then.lr0, then.per)
        self._check()
        self.steps = check_count(self.name, "steps", steps)
        self.start_factor = Range(0.0, 1.0, low_open=True).check(self.name, "start_factor", start_factor)
        self.then = then

    def __call__(self, t: int) -> float:
        if t >= self.steps:
            return self.then(t - self.steps)
        return self.then(0) * (self.start_factor + (1.0 - self.start_factor) * t / self.steps)

    def state(self) -> dict:
        return self.then.state()

    def load_state(self, state: dict) -> None:
        self.then.load_state(state)

    def __repr__(self):
        return f"warmup({self.steps}, then={self.then!r}, start_factor={self.start_factor})"


def warmup(steps: int, then: Schedule | float, start_factor: float = 0.1, per: str | None = None) -> Warmup:
    """Linear warm-up over ``steps`` steps (or epochs) from ``start_factor`` times the rate, then ``then``
    (a schedule, or a rate held constant). ``per`` defaults to ``then``'s unit ("step" for a number).

    >>> s = warmup(4, then=constant(0.1, per="step"), start_factor=0.2)
    >>> [round(s(t), 4) for t in range(6)]
    [0.02, 0.04, 0.06, 0.08, 0.1, 0.1]
    """
    then = _then_schedule(then, per)
    if per is not None and per != then.per:
        raise HyperparameterError(f"warmup: per={per!r} but then={then!r} counts {then.per}s; a warm-up counts "
                                  f"in the unit of the schedule it precedes{user_line_text()}")
    return Warmup(steps, then, start_factor)


def _then_schedule(then: Any, per: str | None) -> Schedule:
    """The schedule after a warm-up: ``then`` itself, or a constant rate when it is a number."""
    if isinstance(then, ReduceOnPlateau):
        raise HyperparameterError(f"warmup: then={then!r} is not supported: fit feeds the validation loss only to "
                                  f"a reduce_on_plateau schedule given as fit's schedule itself{user_line_text()}")
    if isinstance(then, Schedule):
        return then
    if isinstance(then, str) or not isinstance(then, (int, float)):
        raise HyperparameterError(f"warmup: then={then!r} must be a schedule or a rate{user_line_text()}")
    return constant(then, per or "step")


class BatchSizeSchedule:
    """The batch size as a function of the epoch t = 0, 1, 2, ... (the course's "Don't decay the learning
    rate, increase the batch size", Smith et al. 2018): ``fit(..., batch_size=BatchSizeSchedule(...))``.

    ``sizes`` maps the epoch at which a size starts to that size, e.g. ``{0: 32, 5: 64, 10: 128}``: epochs
    0-4 train with 32 rows a step, 5-9 with 64, 10 and later with 128. It must say where epoch 0 starts.
    Each distinct size is one static training graph, compiled once and kept by the Trainer; the
    parameters and optimizer state carry over from one size to the next. :meth:`increase` builds the
    multiplicative rule. The schedule is stateless (a checkpoint resumes it from the epoch alone).

    >>> BatchSizeSchedule({0: 32, 5: 64})(7)
    64
    >>> BatchSizeSchedule.increase(32, factor=2, every=5, max_batch_size=128).sizes
    {0: 32, 5: 64, 10: 128}
    """

    def __init__(self, sizes: dict[int, int]):
        owner = "BatchSizeSchedule"
        if not isinstance(sizes, dict) or not sizes:
            raise HyperparameterError(f"{owner}: sizes={sizes!r} must be a non-empty dict {{first epoch: batch size}}, "
                                      f"e.g. {{0: 32, 5: 64}}{user_line_text()}")
        checked = {check_count(owner, "a first epoch", e, minimum=0): check_count(owner, f"the batch size of epoch {e}", b)
                   for e, b in sizes.items()}
        if 0 not in checked:
            raise HyperparameterError(f"{owner}: sizes={sizes!r} does not say the batch size of epoch 0 (the first "
                                      f"epoch is 0, as for the learning-rate schedules){user_line_text()}")
        self.sizes = dict(sorted(checked.items()))

    @classmethod
    def increase(cls, batch_size: int, factor: int = 2, every: int = 5, max_batch_size: int | None = None
                 ) -> "BatchSizeSchedule":
        """batch_size * factor ** floor(t / every), held at ``max_batch_size`` once it reaches it (without a
        maximum, the sizes stop at batch_size * factor ** 16: each size is one compile)."""
        owner = "BatchSizeSchedule.increase"
        size = check_count(owner, "batch_size", batch_size)
        factor = check_count(owner, "factor", factor, minimum=2)
        every = check_count(owner, "every", every)
        cap = size * factor ** 16 if max_batch_size is None else check_count(owner, "max_batch_size", max_batch_size,
                                                                            minimum=size)
        sizes, epoch = {0: size}, 0
        while size < cap:
            size, epoch = min(size * factor, cap), epoch + every
            sizes[epoch] = size
        return cls(sizes)

    def __call__(self, t: int) -> int:
        """The batch size of epoch ``t`` (0-based)."""
        return next(b for e, b in reversed(self.sizes.items()) if e <= t)

    def __repr__(self) -> str:
        return f"BatchSizeSchedule({self.sizes})"

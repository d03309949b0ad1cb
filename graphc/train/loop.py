"""fit / evaluate / predict: compile the model's training step once, then run epochs.

The training step (forward, loss, gradients, optimizer update) is one compiled graph; on the CPU
backend a whole epoch (shuffled minibatches, the partial last batch included) is one native call
when the executable offers ``run_epoch``. The learning rate and the dropout key are graph inputs,
so schedules and fresh dropout masks never recompile anything.
"""
from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import dsl
from ..backends import compile as compile_graph
from ..backends import finite
from ..backends import threads as thread_policy
from ..ir import Graph, InputError
from ..ir.errors import NonFiniteError
from ..nn.layers import Context, Module, RandomLayer
from ..ops import collective
from ..ops import elementwise as ew
from ..ops import nn as nn_ops
from ..ops.interpret import evaluate as evaluate_graph
from ..optim import SGD, Optimizer
from ..optim.hyperparams import NON_NEGATIVE, HyperparameterError, check_count, user_line_text
from . import inputs, plots
from . import losses as loss_defs
from . import monitor as monitors
from .checkpoint import CheckpointError, check_arrays, load_checkpoint, save_checkpoint
from .distributed import SINGLE, World, world_of
from .schedules import BatchSizeSchedule, ReduceOnPlateau, Schedule, constant

BEST_PREFIX = "__best__."  # checkpoint arrays holding early stopping's best weights

#: The metrics EarlyStopping may watch: the losses fit reports, where lower is better.
MONITORS = ("val_loss", "loss")


@dataclass(init=False)  # its own __init__: errors then point at the user's line, not at generated code
class EarlyStopping:
    """Stop when ``monitor`` has not decreased by more than ``min_delta`` for ``patience`` epochs;
    with ``restore_best``, the model ends with the best epoch's weights. ``monitor`` is "val_loss"
    (fit then needs ``validation_data``) or "loss", the training loss, chosen explicitly."""

    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "val_loss"
    restore_best: bool = True

    def __init__(self, patience: int = 5, min_delta: float = 0.0, monitor: str = "val_loss",
                 restore_best: bool = True):
        self.patience, self.min_delta, self.monitor, self.restore_best = patience, min_delta, monitor, restore_best
        self.validate()

    def validate(self) -> None:
        """Check every field (fit calls it again: they may have been changed since construction)."""
        self.patience = check_count("EarlyStopping", "patience", self.patience)
        self.min_delta = NON_NEGATIVE.check("EarlyStopping", "min_delta", self.min_delta)
        if self.monitor not in MONITORS:
            raise HyperparameterError(f"EarlyStopping: monitor={self.monitor!r} must be one of {list(MONITORS)}: "
                                      f"it stops when a loss stops decreasing (accuracies are not watched)"
                                      f"{user_line_text()}")


@dataclass
class History:
    """Per-epoch metrics: loss, the chosen metrics (acc, mae), val_loss and val_<metric> with validation data,
    lr (the rate of the epoch's first step), seconds."""

    epochs: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_early: bool = False
    #: With ``fit(..., monitor=True)``: per layer, per statistic (mean, std, dead_fraction, update_ratio),
    #: one value per epoch, e.g. ``history.monitor["dense_1"]["dead_fraction"]``; see graphc.train.monitor.
    monitor: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: Why fit stopped before its last epoch (early stopping: the epoch, the monitored value, the best epoch);
    #: None when it ran every epoch. fit also prints it (unless verbose=False).
    stop_message: str | None = None
    #: The compiled training step fit ran (for the first epoch's batch size): ``history.executable.source`` is
    #: its generated code on the cpu backend, ``history.executable.stats`` its compile times and cache entry.
    #: Not saved in checkpoints.
    executable: Any = field(default=None, repr=False, compare=False)
    #: The :class:`Trainer` fit used, holding every compiled step (``trainer.step_executable(batch_size)``).
    trainer: Any = field(default=None, repr=False, compare=False)
    #: The thread count each epoch ran with (backend "cpu"; see ``fit``'s ``threads``). Not saved in checkpoints.
    threads: list[int] = field(default_factory=list, repr=False, compare=False)

    def append(self, epoch: int, **values: float) -> None:
        self.epochs.append(epoch)
        for k, v in values.items():
            self.metrics.setdefault(k, []).append(float(v))

    def __getitem__(self, key: str) -> list[float]:
        return self.metrics[key]

    def append_monitors(self, summary: dict[str, dict[str, float]]) -> None:
        """Keep an epoch's monitors (:meth:`graphc.train.monitor.StepMonitors.summary`)."""
        for layer, stats in summary.items():
            for stat, value in stats.items():
                self.monitor.setdefault(layer, {}).setdefault(stat, []).append(float(value))

    def plot_monitors(self, path: str) -> str:
        """Save the monitored layers' dead-unit fractions and update ratios over the epochs as a PNG, the
        course's band marked (needs matplotlib); see :func:`graphc.train.monitor.plot`."""
        return monitors.plot(self, path)

    def figure(self) -> Any:
        """The matplotlib figure ``plot`` saves (needs matplotlib); see :func:`graphc.train.plots.history_figure`."""
        return plots.history_figure(self)

    def plot(self, path: str) -> str:
        """Save the curves as a PNG (needs matplotlib: ``pip install 'graphc[plot]'``): a panel per score (the
        loss, then each metric; training and validation), axes labelled, the best epoch marked (early stopping's,
        else the lowest validation loss's), and the learning rate per epoch in a panel of its own."""
        fig = self.figure()
        try:
            fig.savefig(path)
        finally:
            plots.pyplot("History.plot").close(fig)
        return path

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "metrics": self.metrics, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "monitor": self.monitor}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(list(d["epochs"]), {k: list(v) for k, v in d["metrics"].items()}, d.get("best_epoch"),
                   d.get("stopped_early", False),
                   {layer: {k: list(v) for k, v in stats.items()} for layer, stats in d.get("monitor", {}).items()})


def _needs_key(model: Module) -> bool:
    """Whether the training step draws random numbers (dropout, augmentation): then it takes a key."""
    return any(isinstance(m, RandomLayer) and m.active for m in model.modules())


def build_train_step(model: Module, batch_size: int, optimizer: Optimizer, loss: Any = "softmax_cross_entropy",
                     l2: float = 0.0, name: str = "train_step", metrics: tuple[str, ...] | None = None,
                     target: loss_defs.Target | None = None, monitor: bool = False, l2_input: bool = False,
                     distributed: bool = False, row_offset: int = 0) -> Graph:
    """The training-step graph: inputs x, y, lr (and key with dropout); outputs the loss, then each
    metric's batch total (``metrics``, default the loss's: the number of correct predictions for the
    classification losses); updates every parameter and optimizer/normalization state in place.
    With ``monitor``, the layers' monitors follow as further outputs (see :mod:`graphc.train.monitor`).
    With ``l2_input``, the L2 strength is an input ``l2`` fed each step (one compiled step serves any
    strength: :func:`graphc.train.search.random_search`), instead of the constant ``l2``.
    With ``distributed``, the step is one rank's of a data-parallel job (:mod:`graphc.train.distributed`):
    ``batch_size`` is its local share, starting ``row_offset`` rows into the global minibatch; every gradient
    and every normalization state update is averaged over the ranks (``allreduce``) before it is applied.

    ``loss`` is a built-in loss's name or a function (model output, target) -> scalar Tensor; ``target``
    says what y is (default: what the loss takes, see :func:`graphc.train.losses.target_of`)."""
    dtype = model.dtype if hasattr(model, "dtype") else np.float32
    spec = loss_defs.loss_of(loss)
    metrics = loss_defs.metrics_of(metrics, spec)
    target = target or loss_defs.target_of(spec, model)
    with Graph(name) as g:
        x = dsl.input("x", (batch_size,) + model.in_shape, dtype)
        y = dsl.input("y", (batch_size,) + target.row_shape, target.dtype)
        lr = dsl.input("lr", (), dtype)
        key = dsl.input("key", (), "int64") if _needs_key(model) else None
        strength = dsl.input("l2", (), dtype) if l2_input else None
        ctx = Context(training=True, key=key, outputs=[] if monitor else None, row_offset=row_offset)
        output = model(x, ctx)
        objective = loss_defs.objective(spec, output, y)
        params = [t for t in ctx._params.values() if t.node.attrs.get("trainable", True)]
        if not params and model.frozen_names():
            raise HyperparameterError(f"fit: every parameter of {model.name} is frozen, so a training step would "
                                      f"change nothing; unfreeze the layers to train (e.g. model.layers[-1]"
                                      f".unfreeze()){user_line_text()}")
        if strength is not None or l2:
            weights = [p for p in params if p.name.endswith(".W")]
            if strength is not None:
                objective = objective + strength * nn_ops.sum_of_squares(weights, "l2_penalty")
            else:
                objective = objective + nn_ops.l2_penalty(weights, l2)
        totals = [loss_defs.metric_total(m, spec, output, y) for m in metrics]
        optimizer.minimize(objective, params, lr, reduce_gradients=distributed)
        for state, new_value in ctx.updates:
            if distributed:  # per-rank batch statistics; the running ones averaged, so replicas stay equal
                new_value = collective.allreduce(new_value, "mean")
            g.update(state, ew.cast(new_value, state.dtype))
        g.output(objective, *totals)
        if monitor:
            monitors.add_monitor_outputs(g, ctx.outputs)
    return g


def build_scores(loss: loss_defs.Loss, metrics: tuple[str, ...], out_shape: tuple[int, ...],
                 target: loss_defs.Target, name: str = "scores") -> Graph:
    """The loss and each metric's total of given model outputs against targets, in float64: inputs
    out [*out_shape] and y; evaluated with NumPy (the reference interpreter) on the predictions."""
    target_dtype = "int64" if target.dtype == "int64" else "float64"
    with Graph(name) as g:
        out = dsl.input("out", out_shape, "float64")
        y = dsl.input("y", out_shape[:1] + target.row_shape, target_dtype)
        g.output(loss_defs.objective(loss, out, y), *(loss_defs.metric_total(m, loss, out, y) for m in metrics))
    return g


def build_eval(model: Module, batch_size: int, name: str = "predict") -> Graph:
    """The inference graph: input x, output the logits (evaluation-mode layers)."""
    with Graph(name) as g:
        x = dsl.input("x", (batch_size,) + model.in_shape, getattr(model, "dtype", np.float32))
        g.output(model(x, Context(training=False)))
    return g


def _check_driver(driver: str | None, backend: str, world: World) -> str | None:
    """fit's ``driver``: for backend "cpu" only, and not "llvm" in a data-parallel job (its steps'
    collective calls need the Numba driver)."""
    if driver is None:
        return None
    if backend != "cpu":
        raise HyperparameterError(f"fit: driver={driver!r} applies to backend 'cpu', not {backend!r}"
                                  f"{user_line_text()}")
    if driver == "llvm" and world.distributed:
        raise HyperparameterError("fit: driver='llvm' does not run data-parallel steps (their allreduce calls need "
                                  f"driver='numba'){user_line_text()}")
    return driver


def _default_backend() -> str:
    from .. import backends

    return "cpu" if "cpu" in backends.BACKENDS else "reference"


class Trainer:
    """Owns the compiled executables of one model: the step for a batch size (and its remainder),
    and inference. ``fit`` creates one; keep it to resume or continue training."""

    def __init__(self, model: Module, optimizer: Optimizer | None = None, loss: Any = "softmax_cross_entropy",
                 l2: float = 0.0, backend: str | None = None, optimize: int | None = None,
                 metrics: tuple[str, ...] | None = None, monitor: bool = False, l2_input: bool = False,
                 world: World = SINGLE, driver: str | None = None):
        self.loss = loss_defs.loss_of(loss)
        self.metrics = loss_defs.metrics_of(metrics, self.loss)
        #: what the step's y is; fit sets it from the data for a custom loss (y's rows as given)
        self.target = loss_defs.target_of(self.loss, model)
        l2 = NON_NEGATIVE.check("fit", "l2", l2)
        self.model, self.optimizer, self.l2 = model, optimizer or SGD(0.01), l2
        #: the step takes the L2 strength as an input, fed from ``self.l2`` (which may then change between runs)
        self.l2_input = l2_input
        self.backend = backend or _default_backend()
        self.optimize = optimize
        #: backend "cpu": how the steps' kernels are compiled (graphc.compile's ``driver``; None: its default)
        self.driver = _check_driver(driver, self.backend, world)
        self._steps: dict[tuple[int, str], Any] = {}
        self._eval: dict[int, Any] = {}
        self.state: dict[str, np.ndarray] | None = None  # parameters + optimizer state, by name
        self.step_count = 0
        self._frozen = model.frozen_names()  # the frozen set the compiled steps were built for
        self._set_aside: dict[str, np.ndarray] = {}  # state no compiled step holds: frozen parameters' slots
        #: With ``monitor``: the steps' monitor outputs over the current epoch (graphc.train.monitor)
        self.monitors = monitors.StepMonitors() if monitor else None
        #: The processes training together (graphc.train.distributed); batch sizes given to the trainer are global
        self.world = world
        #: Called during every epoch as ``progress(epoch, steps_done, steps, rows_done, loss_sum)`` (loss_sum:
        #: the loss summed over the rows done), about ``progress_pieces`` times: the ``graphc train`` progress
        #: bar. A native epoch then runs as that many native calls, which visit the same rows in the same
        #: order with the same per-step rates and keys as one call, so the numbers do not change.
        self.progress: Callable[[int | None, int, int, int, float], None] | None = None
        self.progress_pieces = 20

    def _compile(self, graph: Graph, backend: str | None = None):
        outs = [dsl.Tensor(o, graph) for o in graph.outputs]
        backend = backend or self.backend
        options = {"driver": self.driver} if self.driver is not None and backend == "cpu" else {}
        return compile_graph(outs, backend=backend, optimize=self.optimize, **options)

    def step_executable(self, batch_size: int, backend: str | None = None):
        """The compiled training step for a (global) minibatch of ``batch_size`` rows: in a data-parallel job,
        this rank's share of it. The first one compiled holds the trainer's state (``self.state`` is its
        parameter store); the others run on it through :meth:`_on_state`."""
        if self.model.frozen_names() != self._frozen:
            self._follow_frozen_set()
        key = (batch_size, backend or self.backend)
        if key not in self._steps:
            local = self.world.local_batch(batch_size)
            graph = build_train_step(self.model, local, self.optimizer, self.loss, self.l2,
                                     name=f"train_step_b{local}", metrics=self.metrics, target=self.target,
                                     monitor=self.monitors is not None, l2_input=self.l2_input,
                                     distributed=self.world.distributed, row_offset=self.world.rank * local)
            exe = self._compile(graph, backend)
            if self.monitors is not None:
                exe = self.monitors.wrap(exe, graph)
            if self.state is None:
                self.state = self._take_over(exe.params)
            self._steps[key] = exe
        return self._steps[key]

    def _follow_frozen_set(self) -> None:
        """The model was frozen or unfrozen since its steps were compiled: they differentiate the old set,
        so they are dropped; the next step compiled takes the state over (see :meth:`_take_over`)."""
        self._frozen = self.model.frozen_names()
        self._steps.clear()
        if self.state is not None:
            self._set_aside.update(self.state)
            self.state = None

    def _take_over(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A newly compiled step's store, holding the trained values of the step it replaces: parameters and
        optimizer slots (a slot of a parameter that was frozen meanwhile resumes where it stopped). What the
        new step lacks (the slots of newly frozen parameters) is set aside for when they are unfrozen."""
        for k, v in params.items():
            if k in self._set_aside:
                v[...] = self._set_aside.pop(k)
        return params

    def run_step(self, exe, feeds: dict):
        """One call of a step executable on the trainer's state (copied in and back out when the
        executable keeps its own store, as the partial last batch's does)."""
        with self._on_state(exe):
            return _as_tuple(exe(**{k: feeds[k] for k in exe.input_names}))

    @contextmanager
    def _on_state(self, exe):
        """Run ``exe`` on the trainer's state. Only the first step compiled holds it; another (the partial
        batch's, another size of a BatchSizeSchedule) gets it copied in before and back out after. On an
        error nothing is copied back: the state stays as it was before the call."""
        shared = exe.params is self.state
        if not shared:
            exe.set_params(self.state)
        yield
        if not shared:
            for k, v in exe.params.items():
                self.state[k][...] = v

    def eval_executable(self, batch_size: int):
        if batch_size not in self._eval:
            self._eval[batch_size] = self._compile(build_eval(self.model, batch_size, name=f"predict_b{batch_size}"))
        exe = self._eval[batch_size]
        if self.state is not None:
            exe.set_params({k: self.state[k] for k in exe.params})
        else:
            exe.set_params(self.model.named_values())
        return exe

    def sync_model(self) -> None:
        """Copy the trained values back into the model's layers."""
        if self.state is not None:
            self.model.load_values(self.state)

    # -- one epoch -------------------------------------------------------------------------------------------
    def train_epoch(self, x: np.ndarray, y: np.ndarray, batch_size: int, lr_of_step: Callable[[int], float],
                    rng: np.random.Generator, seed: int, last_batch: str = "partial",
                    epoch: int | None = None) -> dict[str, float]:
        """One shuffled pass over (x, y); returns the mean training loss and each metric over the rows
        trained on, by name ("loss", then the trainer's metrics). ``last_batch``: see :func:`fit`.

        Afterwards the loss and the state (parameters, optimizer state) must be finite; otherwise the
        epoch is re-run from its saved start one step at a time to find the failing step, which is
        replayed on the reference backend, and a NonFiniteError names the node the NaN or Inf came from
        (``epoch``, 1-based, only labels the message). The state is then left as it was before that step.
        """
        n = len(x)
        perm = rng.permutation(n)
        steps = steps_per_epoch(n, batch_size, last_batch)
        lrs = np.array([lr_of_step(self.step_count + s) for s in range(steps)], np.float64)
        keys = (seed * 1_000_000_007 + self.step_count + np.arange(steps)).astype(np.int64)
        full = self.step_executable(batch_size)
        native = hasattr(full, "run_epoch")
        first_step = self.step_count
        start = self._save_epoch_start()
        report = self._progress_reporter(epoch, steps) if self.world.is_root else None
        if native:
            totals, rows = self._native_epoch(full, x, y, perm, lrs, keys, batch_size, last_batch, report)
        else:
            totals, rows = self._stepwise_epoch(x, y, perm, lrs, keys, batch_size, last_batch, report)
        *totals, rows = self.world.sum(np.array([*totals, rows]))  # every rank's rows (one process: as they are)
        loss = totals[0] / rows
        if self.world.any(not (math.isfinite(loss) and finite.all_finite(self.state.values()))):
            finite.restore(self.state, start)
            self.step_count = first_step
            self._find_nonfinite_step(x, y, perm, lrs, keys, batch_size, last_batch, native, epoch)
        return {"loss": loss, **self._metric_means(totals[1:], rows)}

    def _metric_means(self, totals, rows: int) -> dict[str, float]:
        """Each metric's mean over ``rows`` rows from its total (per output element where it counts them)."""
        out_row_shape = tuple(self.model.out_shape)
        return {m: float(total) / (rows * loss_defs.elements_per_row(m, self.loss, out_row_shape))
                for m, total in zip(self.metrics, totals)}

    def _save_epoch_start(self) -> dict[str, np.ndarray]:
        """The state at the start of an epoch, copied into buffers kept between epochs (no allocation)."""
        saved = getattr(self, "_epoch_start", None)
        if saved is None or saved.keys() != self.state.keys():
            saved = self._epoch_start = {k: np.empty_like(v) for k, v in self.state.items()}
        for k, v in self.state.items():
            np.copyto(saved[k], v)
        return saved

    def _feeds(self, x, y, lr, key) -> dict:
        """A step's inputs by name (a step takes those it has); ``lr`` and ``key`` are one value, or one per
        step of a native epoch, and so is the L2 strength when the step takes it as an input."""
        feeds = {"x": x, "y": y, "lr": lr, "key": key}
        if self.l2_input:
            feeds["l2"] = np.full(np.shape(lr), self.l2)
        return feeds

    def _progress_reporter(self, epoch: int | None, steps: int) -> Callable[[int, int, float], None] | None:
        """``report(steps_done, rows_done, loss_sum)`` for this epoch when :attr:`progress` is set, else None."""
        if self.progress is None:
            return None
        progress = self.progress
        return lambda done, rows, loss_sum: progress(epoch, done, steps, rows, loss_sum)

    def _report_every(self, steps: int) -> int:
        """Steps between two progress reports: the epoch in about :attr:`progress_pieces` pieces."""
        return max(1, math.ceil(steps / max(1, self.progress_pieces)))

    def _stepwise_epoch(self, x, y, perm, lrs, keys, batch_size, last_batch, report=None) -> tuple[np.ndarray, int]:
        """An epoch one step executable call per minibatch (backends without a native epoch); returns the
        totals (loss summed over rows, then each metric's total) and the rows trained on."""
        totals, rows = np.zeros(1 + len(self.metrics)), 0
        every = self._report_every(len(lrs))
        for s, batch in enumerate(finite.minibatches(perm, len(lrs), batch_size, last_batch)):
            exe = self.step_executable(len(batch))
            idx = self.world.share(batch)
            outs = self.run_step(exe, self._feeds(x[idx], y[idx], lrs[s], keys[s]))
            totals += _step_totals(outs, len(idx))
            rows += len(idx)
            if report is not None and ((s + 1) % every == 0 or s + 1 == len(lrs)):
                report(s + 1, rows, totals[0])
        self.step_count += len(lrs)
        return totals, rows

    def _native_epoch(self, full, x, y, perm, lrs, keys, batch_size, last_batch, report=None) -> tuple[np.ndarray, int]:
        """The full minibatches in one native call (per-step learning rates and keys), or, with a progress
        ``report``, in one native call per piece of the epoch; with ``last_batch="partial"``, the partial
        last batch then runs through a reference-backend step on the same state."""
        n = len(x)
        full_steps, rest = divmod(n, batch_size)
        native_steps = len(lrs) if last_batch == "wrap" else full_steps
        totals = np.zeros(1 + len(self.metrics))
        local = self.world.local_batch(batch_size)
        if native_steps and report is None:
            feeds = self._feeds(x, y, lrs[:native_steps], keys[:native_steps])
            order = np.resize(perm, native_steps * batch_size) if last_batch == "wrap" else perm
            rows_visited = self.world.epoch_rows(order, batch_size) if self.world.distributed else perm
            with self._on_state(full):  # a BatchSizeSchedule's later sizes do not hold the state
                per_step = _as_tuple(full.run_epoch(*(feeds[k] for k in full.input_names), perm=rows_visited,
                                                    last_batch="wrap" if last_batch == "wrap" else "drop"))
            totals += _step_totals([np.sum(o, dtype=np.float64) for o in per_step], local)
        elif native_steps:
            totals += self._native_pieces(full, x, y, perm, lrs[:native_steps], keys[:native_steps], batch_size, report)
        rows = native_steps * local
        if rest and last_batch == "partial":
            # One step an epoch: NumPy runs it, rather than a second native compile of the whole step.
            idx = self.world.share(perm[full_steps * batch_size:])
            outs = self.run_step(self.step_executable(rest, backend="reference"),
                                 self._feeds(x[idx], y[idx], lrs[-1], keys[-1]))
            totals += _step_totals(outs, len(idx))
            rows += len(idx)
            if report is not None:
                report(len(lrs), rows, totals[0])
        self.step_count += len(lrs)
        return totals, rows

    def _native_pieces(self, full, x, y, perm, lrs, keys, batch_size, report) -> np.ndarray:
        """The native epoch's ``len(lrs)`` full steps as several native calls, reporting after each: each call
        gets its steps' rows (in ``perm`` order, wrapping to its start as ``last_batch="wrap"`` does) and their
        rates and keys, so every step sees what it sees in one call. Returns the totals (see _step_totals)."""
        steps = len(lrs)
        order = np.resize(perm, steps * batch_size)  # perm, then its start again for a wrapped last batch
        every = self._report_every(steps)
        local = self.world.local_batch(batch_size)
        totals = np.zeros(1 + len(self.metrics))
        with self._on_state(full):
            for first in range(0, steps, every):
                last = min(first + every, steps)
                idx = order[first * batch_size:last * batch_size]
                if self.world.distributed:  # this rank's share of each of the piece's minibatches
                    idx = self.world.epoch_rows(idx, batch_size)
                feeds = self._feeds(x[idx], y[idx], lrs[first:last], keys[first:last])
                per_step = _as_tuple(full.run_epoch(*(feeds[k] for k in full.input_names),
                                                    perm=np.arange(len(idx)), last_batch="drop"))
                totals += _step_totals([np.sum(o, dtype=np.float64) for o in per_step], local)
                report(last, last * local, totals[0])
        return totals

    def _find_nonfinite_step(self, x, y, perm, lrs, keys, batch_size, last_batch, native, epoch) -> None:
        """Re-run an epoch that ended non-finite one step at a time, from its start (same permutation, rates
        and keys); at the first step whose loss or state is not finite, put the state back to before that
        step, replay the step on the reference backend and raise the NonFiniteError naming the origin."""
        batches = finite.minibatches(perm, len(lrs), batch_size, last_batch)
        label = f"epoch {epoch}, " if epoch is not None else ""
        for s, batch in enumerate(batches):
            before = finite.snapshot(self.state)
            on_reference = native and len(batch) != batch_size  # the native epoch's partial batch runs on NumPy
            exe = self.step_executable(len(batch), backend="reference" if on_reference else None)
            idx = self.world.share(batch)  # this rank's rows (all of them on one process)
            feeds = self._feeds(x[idx], y[idx], lrs[s], keys[s])
            loss = self.run_step(exe, feeds)[0]
            self.step_count += 1
            problem = _nonfinite_step_result(loss, self.state)
            if not self.world.any(problem is not None):  # the ranks stop at the same step (collectives)
                continue
            problem = problem or "another MPI rank's loss is not finite"
            finite.restore(self.state, before)
            self.step_count -= 1
            origin = finite.find_origin(exe.source_graph, feeds, before)
            where = f"fit: {label}step {s + 1} of {len(batches)} (minibatch rows {finite.rows_text(idx)} of the training data)"
            note = (f"The model's parameters are left at their values before {label}step {s + 1}. "
                    f"Inspect them with model.named_values().")
            if isinstance(origin, finite.Origin) and origin.node.op == "input" and origin.node.name in ("x", "y") and origin.index:
                note = (f"Row {origin.index[0]} of this minibatch is row {int(idx[origin.index[0]])} of the training "
                        f"data: {origin.node.name}[{int(idx[origin.index[0]])}] is not finite.\n  " + note)
            raise finite.nonfinite_error(f"{where}: {problem}", origin, note, epoch=epoch, step=s + 1)
        finite.restore(self.state, self._epoch_start)
        self.step_count -= len(batches)
        raise NonFiniteError(f"fit: {label}ended with a non-finite loss or state, but re-running its steps one at a "
                             f"time stayed finite (non-deterministic native code?); the parameters are left at their "
                             f"values before the epoch", epoch=epoch)

    def predict_logits(self, x: np.ndarray, batch_size: int = 1000, where: str = "predict") -> np.ndarray:
        """The model's outputs [N, C] for ``x`` (checked: see :mod:`graphc.train.inputs`); no rows give none."""
        x = inputs.features(x, self.model, where)
        batch_size = inputs.batch_size(batch_size, where)
        if len(x) == 0:  # the predictions for no rows: an empty array, nothing compiled
            return np.zeros((0,) + tuple(self.model.out_shape), x.dtype)
        batch_size = min(batch_size, len(x))
        exe = self.eval_executable(batch_size)
        outs = []
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            if len(chunk) < batch_size:  # pad the last chunk: rows are independent in inference
                chunk = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            outs.append(exe(chunk)[: min(batch_size, len(x) - start)])
        return np.concatenate(outs)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000,
                 where: str = "evaluate") -> tuple[float, float]:
        """(loss, accuracy) on (x, y) for a loss with an accuracy (softmax cross-entropy, the default, and
        the binary cross-entropies); refuses an empty set (its mean is undefined). See :meth:`scores`."""
        if self.loss.decide is None:
            raise HyperparameterError(f"{where}: returns (loss, accuracy), and accuracy means nothing for "
                                      f"loss={self.loss.name!r}: use Trainer.scores(x, y), which returns the loss and "
                                      f"the chosen metrics{user_line_text()}")
        values = self.scores(x, y, batch_size, where, metrics=("acc",))
        return values["loss"], values["acc"]

    def scores(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000, where: str = "evaluate",
               metrics: tuple[str, ...] | None = None) -> dict[str, float]:
        """The loss and each metric (default: the trainer's) of the model on (x, y), by name: the loss
        graph evaluated in float64 by NumPy on the model's outputs (the validation scores of fit)."""
        metrics = self.metrics if metrics is None else metrics
        why = "the loss and accuracy of no examples are undefined" if "acc" in metrics else \
            "the loss of no examples is undefined"
        x, y = _checked_xy(self.model, self.loss, x, y, where, "", why)
        # A data-parallel job predicts each rank's share of the rows and gathers them: the scores of one process.
        out = self.world.gather_rows(lambda rows: self.predict_logits(x[rows], batch_size, where), len(x))
        out = out.astype(np.float64)
        target = loss_defs.target_of(self.loss, self.model, y)
        graph = build_scores(self.loss, metrics, out.shape, target)
        y = y if y.dtype.kind in "iu" else y.astype(np.float64)
        loss, *totals = evaluate_graph(graph, {"out": out, "y": y})
        values = {"loss": float(loss)}
        for m, total in zip(metrics, totals):
            values[m] = float(total) / (len(x) * loss_defs.elements_per_row(m, self.loss, out.shape[1:]))
        return values


LAST_BATCH = ("partial", "drop", "wrap")


def _check_last_batch(last_batch: str) -> None:
    if last_batch not in LAST_BATCH:
        raise HyperparameterError(f"fit: last_batch must be one of {LAST_BATCH}, got {last_batch!r}")


def _nonfinite_step_result(loss: Any, state) -> str | None:
    """What a step left non-finite: its loss, else the first parameter or optimizer state; None if nothing."""
    if not np.isfinite(loss):
        return f"the loss is {float(loss)}"
    for name, value in state.items():
        if finite.first_bad(value) is not None:
            return f"parameter {name!r} became non-finite, {finite.bad_text(value)}"
    return None


def _as_tuple(outs: Any) -> tuple:
    """An executable's outputs as a tuple (one output comes back bare)."""
    return tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)


def _step_totals(outs, rows: int) -> np.ndarray:
    """A step's (or summed steps') outputs as epoch totals: the mean loss times its rows, then the metrics'
    totals as they are."""
    loss, *metric_totals = (float(o) for o in outs)
    return np.array([loss * rows, *metric_totals])


def steps_per_epoch(n: int, batch_size: int, last_batch: str = "partial") -> int:
    """Minibatches in an epoch of ``n`` rows (see :func:`fit` for ``last_batch``)."""
    _check_last_batch(last_batch)
    if last_batch == "drop" and n < batch_size:
        raise HyperparameterError(f"fit: last_batch='drop' with {n} rows and batch_size {batch_size} leaves no batch")
    return n // batch_size if last_batch == "drop" else math.ceil(n / batch_size)


def fit(model: Module, train_data: tuple[np.ndarray, np.ndarray], epochs: int,
        batch_size: int | BatchSizeSchedule = 128,
        optimizer: Optimizer | None = None, schedule: Schedule | None = None,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None, early_stopping: EarlyStopping | None = None,
        loss: Any = "softmax_cross_entropy", l2: float = 0.0, seed: int = 0, backend: str | None = None,
        checkpoint: str | None = None, resume: bool = False, verbose: bool = True,
        trainer: Trainer | None = None, last_batch: str = "partial",
        metrics: tuple[str, ...] | None = None, monitor: bool = False, distributed: Any = None,
        threads: int | None = None, driver: str | None = None) -> History:
    """Train ``model`` on ``train_data`` = (x, y) and return its :class:`History`.

    ``loss``: ``"softmax_cross_entropy"`` (the default: logits [N, C], integer labels y [N]), ``"mse"``,
    ``"binary_cross_entropy"`` (probabilities in (0, 1)) or ``"binary_cross_entropy_with_logits"``
    (float targets y shaped like the outputs, 0/1 for the cross-entropies), or a function
    ``loss(model_output, target) -> scalar Tensor`` built from graphc ops (y's rows as given).
    ``metrics``: names from ``("acc", "mae")`` reported besides the loss (default: ``("acc",)`` for
    the cross-entropies, none for mse and custom losses); see :mod:`graphc.train.losses`.

    ``last_batch`` says what happens to the rows left over when ``batch_size`` does not divide the
    training set: ``"partial"`` trains on them as one smaller batch (PyTorch's DataLoader default),
    ``"drop"`` skips them (``drop_last=True``), ``"wrap"`` fills the last batch from the start of the
    epoch's permutation, so every step is a full batch and the whole epoch is one native call.

    ``monitor=True`` computes, inside the compiled step, each layer's activation mean and standard
    deviation, its fraction of dead ReLU units and its update-to-weight ratio ||dW||/||W||; they are kept
    per epoch in ``history.monitor[layer][stat]`` and flagged in the progress line when a ratio leaves the
    course's 1e-3..1e-2 band or more than half of a layer's units are dead (see :mod:`graphc.train.monitor`).

    ``batch_size`` is a number, or a :class:`~graphc.train.schedules.BatchSizeSchedule` giving each
    epoch's (then each distinct size is compiled once, ``last_batch`` applies to each epoch at its own
    size, and the History gains a ``batch_size`` series).

    ``distributed``: data-parallel training over MPI (:mod:`graphc.train.distributed`). None (the default)
    detects ``mpiexec -n N`` with N > 1; ``"mpi"`` asks for it; ``"none"`` trains one model per process even
    under mpiexec. Each rank trains on ``batch_size / N`` rows of every minibatch and all of them end with
    the same parameters (those of one process training on the whole minibatches); rank 0 alone prints and
    writes the checkpoint.

    ``threads`` (backend "cpu"): the threads of the compiled step's parallel loops and of BLAS. None (the
    default): the cores of the process's affinity mask, less each core other processes keep busy, measured
    from /proc/stat before the first epoch (at least 50 ms: the compile, or a wait) and again over each
    epoch, so that a machine shared with a busy process trains on 1 thread instead of collapsing; an int
    fixes the count. ``history.threads`` holds each epoch's (graphc.backends.threads).

    ``driver`` (backend "cpu"): how the steps' kernels are compiled, as ``graphc.compile(driver=)``: ``"auto"``
    (None: compile's default: the llvm driver for steps of 2M element operations and more, else Numba),
    ``"numba"`` or ``"llvm"`` (graphc's llvm target: a cold compile several times faster; not with
    ``distributed``). See docs/performance.md, "The llvm driver".

    >>> import graphc, numpy as np
    >>> from graphc.nn import Sequential, Dense
    >>> x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)
    >>> model = Sequential([Dense(8, "tanh"), Dense(2)], input_shape=(2,))
    >>> h = graphc.fit(model, (x, y), epochs=30, batch_size=16, optimizer=graphc.optim.SGD(0.5),
    ...                backend="reference", verbose=False)
    >>> h["acc"][-1] > 0.9
    True
    """
    epochs = check_count("fit", "epochs", epochs, minimum=0)
    threads = thread_policy.check_threads(threads, "fit")
    batch_size_of = _batch_size_of(batch_size)
    _check_last_batch(last_batch)
    world = world_of(distributed) if trainer is None or distributed is not None else trainer.world
    trainer = trainer or Trainer(model, optimizer, loss, l2, backend, metrics=metrics, monitor=monitor, world=world,
                                 driver=driver)
    if trainer.world != world:
        raise HyperparameterError(f"fit: the trainer given trains on {trainer.world.size} process(es) "
                                  f"({'data-parallel' if trainer.world.distributed else 'alone'}), distributed="
                                  f"{distributed!r} asks otherwise: build the Trainer with world=...{user_line_text()}")
    _check_monitor(monitor, trainer)
    with world.aborting():  # an error on one rank ends the job: the others may wait for it in a collective
        return _fit(model, trainer, world, train_data, epochs, batch_size_of, schedule, validation_data,
                    early_stopping, seed, checkpoint, resume, verbose, last_batch, threads)


def _use_threads(trainer: Trainer, policy: thread_policy.ThreadPolicy) -> int | None:
    """Every compiled step and evaluation of ``trainer`` that runs native threads (backend "cpu") runs
    with ``policy``'s count, decided now; returns it (None when there is no such executable)."""
    count = None
    for exe in [*trainer._steps.values(), *trainer._eval.values()]:
        if hasattr(exe, "use_threads"):
            count = exe.use_threads(policy)
    return count


def _fit(model: Module, trainer: Trainer, world: World, train_data, epochs: int, batch_size_of, schedule,
         validation_data, early_stopping, seed: int, checkpoint: str | None, resume: bool, verbose: bool,
         last_batch: str, threads: int | None = None) -> History:
    """fit's epochs, on a trainer whose arguments are checked (see :func:`fit`)."""
    # measures other processes' load from here on; the other ranks of a data-parallel fit are this job's own,
    # busy with the same GEMMs at the same moments: no helper thread on their cores
    policy = thread_policy.ThreadPolicy(threads, may_share=not world.distributed)
    (x, y), validation_data = _fit_data(model, trainer.loss, train_data, validation_data)
    trainer.target = loss_defs.target_of(trainer.loss, model, y)
    loss_defs.check_metric_targets(trainer.metrics, trainer.loss, trainer.target, tuple(model.out_shape))
    for size in dict.fromkeys(map(batch_size_of, range(epochs))):  # each size's 'drop' check, before compiling
        steps_per_epoch(len(x), size, last_batch)
        _check_shares(world, len(x), size, last_batch)
    optimizer = trainer.optimizer
    schedule = schedule or constant(optimizer.lr)
    _check_monitoring(early_stopping, schedule, validation_data)
    rng = np.random.default_rng(seed)
    history, start_epoch = History(), 0
    best: tuple[float, dict[str, np.ndarray]] | None = None
    bad_epochs = 0
    first_step = trainer.step_executable(batch_size_of(0))
    policy.settle()  # a first decision from a window of at least 50 ms (the compile, else a short wait)
    if resume and checkpoint and world.from_root(lambda: os.path.exists(checkpoint)):  # nothing saved yet: start
        start_epoch, history, best, bad_epochs = _restore(trainer, schedule, rng, checkpoint, world)
    history.executable, history.trainer = first_step, trainer
    bar = _progress(epochs, verbose and world.is_root)
    bar.update(start_epoch)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        batch_size = batch_size_of(epoch)
        steps = steps_per_epoch(len(x), batch_size, last_batch)
        if schedule.per == "step":
            lr_of_step = schedule
        else:
            lr_of_step = (lambda e: lambda s: schedule(e))(epoch)
        if trainer.monitors is not None:
            trainer.monitors.reset()
        trainer.step_executable(batch_size)  # compiled before the decision, so that it runs with it
        count = _use_threads(trainer, policy)  # re-decided from the load over the last epoch
        if count is not None:
            history.threads.append(count)
        try:
            train_scores = trainer.train_epoch(x, y, batch_size, lr_of_step, rng, seed, last_batch, epoch=epoch + 1)
        except NonFiniteError:
            # the state is at the failing step's start: hand it to the model for inspection
            bar.close()
            trainer.sync_model()
            model._trainer = trainer
            raise
        seconds = time.perf_counter() - t0
        values = {**train_scores, "lr": lr_of_step(trainer.step_count - steps), "seconds": seconds}
        if isinstance(batch_size_of, BatchSizeSchedule):
            values["batch_size"] = batch_size
        if validation_data is not None:
            val_scores = trainer.scores(*validation_data, where="fit")
            values.update({"val_" + k: v for k, v in val_scores.items()})
            if isinstance(schedule, ReduceOnPlateau):
                schedule.observe(values["val_loss"])
        history.append(epoch + 1, **values)
        bar.report(epoch + 1, values, _monitor_flags(trainer, history))
        if early_stopping is not None:
            value = values[early_stopping.monitor]
            if best is None or value < best[0] - early_stopping.min_delta:
                best, bad_epochs = (value, {k: v.copy() for k, v in trainer.state.items()}), 0
                history.best_epoch = epoch + 1
            else:
                bad_epochs += 1
        if checkpoint and world.is_root:
            meta = {"epoch": epoch + 1, "step_count": trainer.step_count, "schedule": schedule.state(),
                    "rng": rng.bit_generator.state, "history": history.to_dict(),
                    "best_loss": None if best is None else best[0], "bad_epochs": bad_epochs}
            # early stopping's best weights travel too, so a resumed run restores the same ones
            best_arrays = {} if best is None else {BEST_PREFIX + k: v for k, v in best[1].items()}
            save_checkpoint(checkpoint, {**trainer.state, **best_arrays}, meta)
        if early_stopping is not None and bad_epochs >= early_stopping.patience:
            history.stopped_early = True
            history.stop_message = _early_stop_text(early_stopping, epoch + 1, epochs, values, history.best_epoch,
                                                    best[0])
            break
    bar.close()
    policy.recheck()  # the last epoch's load: the next fit in this process settles on it (threads.RECENT_S)
    if history.stop_message and verbose:
        print(history.stop_message, file=sys.stderr, flush=True)
    if early_stopping is not None and early_stopping.restore_best and best is not None:
        for k, v in best[1].items():
            trainer.state[k][...] = v
    trainer.sync_model()
    model._trainer = trainer
    return history


def _early_stop_text(early_stopping: EarlyStopping, epoch: int, epochs: int, values: dict[str, float],
                     best_epoch: int | None, best_value: float) -> str:
    """What fit says when early stopping ends it: the epoch, the monitored value, the best epoch and what the
    model ends with."""
    monitor, patience = early_stopping.monitor, early_stopping.patience
    by = f" by more than min_delta={early_stopping.min_delta:g}" if early_stopping.min_delta else ""
    ends = (f"the model has epoch {best_epoch}'s weights (restore_best=True)" if early_stopping.restore_best
            else f"the model keeps epoch {epoch}'s weights (restore_best=False)")
    return (f"fit: early stopping after epoch {epoch} of {epochs}: {monitor} {values[monitor]:.4f} has not improved"
            f"{by} for {patience} epoch{'s' if patience != 1 else ''}; best epoch {best_epoch} ({monitor} "
            f"{best_value:.4f}); {ends}")


# -- checking fit's arguments (before anything compiles) ----------------------------------------------------------

def _batch_size_of(batch_size: int | BatchSizeSchedule) -> Callable[[int], int]:
    """The batch size of each epoch (0-based): a BatchSizeSchedule, or a checked constant."""
    if isinstance(batch_size, BatchSizeSchedule):
        return batch_size
    size = inputs.batch_size(batch_size, "fit")
    return lambda epoch: size


def _checked_xy(model: Module, loss: loss_defs.Loss, x: Any, y: Any, where: str, arg: str,
                why_rows: str) -> tuple[np.ndarray, np.ndarray]:
    """x and y checked against the model, the loss's targets and each other (``arg``: the argument they
    came in, if any)."""
    of = f" of {arg}" if arg else ""
    x = inputs.features(x, model, where, "x" + of)
    inputs.require_rows(x, where, "x" + of, why_rows)
    y = loss_defs.checked_targets(loss, model, y, len(x), where, "y" + of, "x" + of)
    return x, y


def _fit_data(model: Module, loss: loss_defs.Loss, train_data: Any, validation_data: Any):
    """fit's (x, y) and validation (x, y), checked and converted (array-likes become arrays)."""
    train = _checked_xy(model, loss, *inputs.data_pair(train_data, "fit", "train_data"), "fit", "train_data",
                        "there is nothing to train on")
    if validation_data is not None:
        validation_data = _checked_xy(model, loss, *inputs.data_pair(validation_data, "fit", "validation_data"),
                                      "fit", "validation_data", "the validation loss of no examples is undefined")
        train_target = loss_defs.target_of(loss, model, train[1])
        val_target = loss_defs.target_of(loss, model, validation_data[1])
        if val_target != train_target:  # a custom loss takes y as given: both must give it alike
            raise InputError(f"fit: y of validation_data has rows of {list(val_target.row_shape)} {val_target.dtype}; "
                             f"y of train_data has rows of {list(train_target.row_shape)} {train_target.dtype}: "
                             f"loss={loss.name!r} needs the same kind of target for both{user_line_text()}")
    return train, validation_data


def _check_monitoring(early_stopping: EarlyStopping | None, schedule: Schedule, validation_data) -> None:
    """What watches the validation loss needs validation data: refused here rather than a KeyError
    after the first epoch (EarlyStopping) or a rate that silently never drops (reduce_on_plateau)."""
    if early_stopping is not None:
        early_stopping.validate()
        if validation_data is None and early_stopping.monitor.startswith("val_"):
            raise HyperparameterError(f"fit: EarlyStopping(monitor={early_stopping.monitor!r}) needs validation_data="
                                      f"(x_val, y_val); to watch the training loss, say EarlyStopping(monitor='loss')"
                                      f"{user_line_text()}")
    if validation_data is None and isinstance(schedule, ReduceOnPlateau):
        raise HyperparameterError(f"fit: {schedule!r} lowers the rate when the validation loss stops improving: it "
                                  f"needs validation_data=(x_val, y_val) (without it, it would never lower the rate)"
                                  f"{user_line_text()}")


def _check_shares(world: World, n: int, batch_size: int, last_batch: str) -> None:
    """In a data-parallel job, every minibatch must split evenly across the ranks (each rank's gradient is the
    mean over its rows, and the ranks' gradients are averaged with equal weights)."""
    if not world.distributed:
        return
    world.local_batch(batch_size)
    rest = n % batch_size
    if last_batch == "partial" and rest % world.size:
        raise HyperparameterError(f"fit: the last minibatch of an epoch has {rest} rows ({n} rows, batch_size "
                                  f"{batch_size}), which do not split across {world.size} MPI ranks: use "
                                  f"last_batch='drop' or 'wrap', or a batch size whose remainder {world.size} "
                                  f"divides{user_line_text()}")


def _check_monitor(monitor: bool, trainer: Trainer) -> None:
    """fit(monitor=True) with a trainer built without monitors would silently monitor nothing."""
    if monitor and trainer.monitors is None:
        raise HyperparameterError(f"fit: monitor=True, but the trainer given was built without monitors (its "
                                  f"compiled steps have no monitor outputs): pass Trainer(..., monitor=True)"
                                  f"{user_line_text()}")


def _monitor_flags(trainer: Trainer, history: History) -> list[str]:
    """The epoch's monitors, kept in the history; returns what the progress line should flag."""
    if trainer.monitors is None:
        return []
    summary = trainer.monitors.summary()
    history.append_monitors(summary)
    return monitors.flags(summary)


# -- resuming from a checkpoint ------------------------------------------------------------------------------------

def _restore(trainer: Trainer, schedule: Schedule, rng: np.random.Generator, path: str, world: World = SINGLE):
    """Load ``path`` into the trainer, the schedule and the shuffling RNG, after checking every array and
    every field fit wrote: nothing changes unless all of it is valid. In a data-parallel job rank 0 reads the
    file and every rank gets its contents (the same checks then fail on every rank alike)."""
    params, meta = world.from_root(lambda: load_checkpoint(path))
    check_arrays(path, params, trainer.state)
    fields = _resume_fields(path, meta)
    best = None
    if fields["best_loss"] is not None:  # early stopping's best weights travel with it: all of them
        best_arrays = {BEST_PREFIX + k: v for k, v in trainer.state.items()}
        check_arrays(path, params, best_arrays)
        best = (fields["best_loss"], {k: params[BEST_PREFIX + k].copy() for k in trainer.state})
    _check_rng_state(path, meta["rng"], rng)
    try:  # the last check, and the first change: load_state assigns all of its fields at once or none
        schedule.load_state(meta["schedule"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: meta field 'schedule' does not fit {schedule!r} "
                              f"({type(err).__name__}: {err})") from None
    for k in trainer.state:
        trainer.state[k][...] = params[k]
    rng.bit_generator.state = meta["rng"]
    trainer.step_count = fields["step_count"]
    return fields["epoch"], fields["history"], best, fields["bad_epochs"]


_MISSING = object()


def _field_error(path: str, field: str, value: Any, expected: str) -> CheckpointError:
    got = "it is missing" if value is _MISSING else f"got {value!r}"
    return CheckpointError(f"checkpoint {path}: meta field {field!r} must be {expected}; {got}")


def _count_field(path: str, meta: dict, field: str, default: Any = _MISSING) -> int:
    value = meta.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _field_error(path, field, value, "a whole number >= 0")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _resume_fields(path: str, meta: dict) -> dict[str, Any]:
    """The fields fit wrote (see fit's ``meta``), each checked for its type and range and named when
    wrong: never a KeyError, an int("2") that happens to work, or a history that disagrees with the epoch."""
    epoch = _count_field(path, meta, "epoch")
    fields: dict[str, Any] = {"epoch": epoch, "step_count": _count_field(path, meta, "step_count"),
                              "bad_epochs": _count_field(path, meta, "bad_epochs", 0)}
    for name, what in (("schedule", "the schedule's state"), ("rng", "the shuffling RNG's state"),
                       ("history", "the history of the epochs trained")):
        if not isinstance(meta.get(name), dict):
            raise _field_error(path, name, meta.get(name, _MISSING), f"{what} (a JSON object)")
    best_loss = meta.get("best_loss")
    if best_loss is not None and not (_is_number(best_loss) and math.isfinite(best_loss)):
        raise _field_error(path, "best_loss", best_loss, "a finite number or null")
    fields["best_loss"] = best_loss
    fields["history"] = _history_field(path, meta["history"], epoch)
    return fields


def _history_field(path: str, value: dict, epoch: int) -> History:
    """The saved History, which must cover epochs 1..epoch with one number per epoch in each metric."""
    expected = f"a history of epochs 1..{epoch} with one number per epoch and metric"
    try:
        history = History.from_dict(value)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _field_error(path, "history", value, expected) from None
    series_ok = all(len(v) == epoch and all(map(_is_number, v)) for v in history.metrics.values())
    if history.epochs != list(range(1, epoch + 1)) or not series_ok:
        raise _field_error(path, "history", value, expected)
    return history


def _check_rng_state(path: str, state: dict, rng: np.random.Generator) -> None:
    """The saved state must be one the shuffling RNG's bit generator accepts (tried on a scratch one)."""
    scratch = type(rng.bit_generator)()
    try:
        scratch.state = state
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: meta field 'rng' is not a {type(rng.bit_generator).__name__} "
                              f"state ({type(err).__name__}: {err})") from None


def evaluate(model: Module, data: tuple[np.ndarray, np.ndarray], batch_size: int = 1000,
             backend: str | None = None) -> tuple[float, float]:
    """(loss, accuracy) of ``model`` on ``data`` = (x, y): x [N, *input_shape] floats, y the targets of the
    model's loss in fit (softmax cross-entropy's [N] integer class indices in [0, classes) for a model never
    fitted). A loss without an accuracy (mse, a custom loss) is refused: see :meth:`Trainer.scores`.
    Array-likes are converted; anything else is refused with a graphc error."""
    x, y = inputs.data_pair(data, "evaluate", "data")
    return _trainer_of(model, backend).evaluate(x, y, batch_size=batch_size)


def predict(model: Module, x: np.ndarray, batch_size: int = 1000, backend: str | None = None) -> np.ndarray:
    """The model's class predictions (argmax of its outputs) for ``x`` [N, *input_shape]; 0 rows give an
    empty array. For a regression model's values, see :func:`predict_outputs`."""
    return _trainer_of(model, backend).predict_logits(x, batch_size).argmax(axis=1)


def predict_outputs(model: Module, x: np.ndarray, batch_size: int = 1000, backend: str | None = None) -> np.ndarray:
    """The model's outputs [N, *output_shape] for ``x`` [N, *input_shape] (evaluation mode): a regression
    model's values, a classifier's logits; 0 rows give an empty array."""
    return _trainer_of(model, backend).predict_logits(x, batch_size, where="predict_outputs")


def _trainer_of(model: Module, backend: str | None) -> Trainer:
    """The model's trainer (compiled executables kept from fit), holding the model's current values."""
    trainer = getattr(model, "_trainer", None)
    if trainer is None or (backend is not None and trainer.backend != backend):
        trainer = Trainer(model, backend=backend)
        model._trainer = trainer
    if trainer.state is not None:  # the layers' values win: the user may have changed them since fit
        for k, v in model.named_values().items():
            trainer.state[k][...] = v
    return trainer


# -- the course's sanity checks ----------------------------------------------------------------------------------

def initial_loss_check(model: Module, x: np.ndarray, y: np.ndarray, classes: int, tolerance: float = 0.25,
                       backend: str | None = None) -> float:
    """With regularization off, a fresh classifier's loss should be about log(C). Returns the loss;
    raises AssertionError when it is further than ``tolerance`` from log(C)."""
    loss, _ = Trainer(model, backend=backend).evaluate(x, y)
    expected = math.log(classes)
    if abs(loss - expected) > tolerance:
        raise AssertionError(f"initial loss {loss:.4f} is not near log({classes}) = {expected:.4f}: "
                             f"check the initialization scale and the loss")
    return loss


def overfit_check(model: Module, x: np.ndarray, y: np.ndarray, epochs: int = 200, optimizer: Optimizer | None = None,
                  backend: str | None = None) -> float:
    """Train on a tiny dataset until it is memorized: the course's check that the model can learn.
    Returns the final training accuracy; raises AssertionError if it is not 100%."""
    history = fit(model, (x, y), epochs=epochs, batch_size=len(x), optimizer=optimizer, backend=backend, verbose=False)
    acc = Trainer(model, backend=backend).evaluate(x, y)[1]
    if acc < 1.0:
        raise AssertionError(f"could not overfit {len(x)} samples: accuracy {acc:.3f} after {epochs} epochs "
                             f"(final training loss {history['loss'][-1]:.4f})")
    return acc


# -- progress -------------------------------------------------------------------------------------------------------

def _score_text(name: str, value: float) -> str:
    """A progress-line value: scores to 4 decimals, a batch size (a count) as a whole number."""
    return str(int(value)) if name == "batch_size" else f"{value:.4f}"


class _Plain:
    def __init__(self, total, verbose):
        self.total, self.verbose = total, verbose

    def update(self, n):
        pass

    def report(self, epoch, m, flags=()):
        if self.verbose:
            scores = "  ".join(f"{k} {_score_text(k, v)}" for k, v in m.items() if k not in ("lr", "seconds"))
            print(f"epoch {epoch}/{self.total}  {scores}  lr {m['lr']:.3g}  {m['seconds']:.2f}s{_flags_text(flags)}",
                  file=sys.stderr, flush=True)

    def close(self):
        pass


class _Tqdm(_Plain):
    def __init__(self, total, verbose):
        super().__init__(total, verbose)
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="epoch", file=sys.stderr)

    def update(self, n):
        self.bar.update(n)

    def report(self, epoch, m, flags=()):
        postfix = {k: _score_text(k, v) for k, v in m.items() if k not in ("lr", "seconds")}
        if flags:
            postfix["monitor"] = _flags_text(flags).strip()
        self.bar.set_postfix(postfix)
        self.bar.update(1)

    def close(self):
        self.bar.close()


def _flags_text(flags) -> str:
    """The monitors' flags as the end of a progress line ("" when nothing is flagged)."""
    return "  ! " + "; ".join(flags) if flags else ""


def _progress(total: int, verbose: bool):
    if verbose:
        try:
            import tqdm  # noqa: F401

            return _Tqdm(total, verbose)
        except ImportError:
            pass
    return _Plain(total, verbose)

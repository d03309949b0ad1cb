"""Training monitors compiled into the step: the course's "More training tips" (deck 002) as numbers.

    "Monitor activations distributions: useful to spot problems with initializations, too many dead
    activations"; "Monitor update scales (gradients/weights ratio) should be ~0.001 - 0.01 of weights".

With ``fit(..., monitor=True)`` the training-step graph gets extra outputs, ordinary graph nodes that
every backend computes inside the step (a few reductions over values the step has anyway, not a second
pass over the data). For each monitored layer (see :func:`monitored_layers`):

* ``mean`` and ``mean_sq``: the mean of the layer's outputs and of their squares over the batch (float64);
* ``active`` (layers ending in a ReLU): per unit (axis 1 of the output: a Dense unit, a Conv2D channel),
  1 if the unit's output was nonzero anywhere in the batch, else 0 (a max of the indicator);
* ``update_ratio`` (layers whose weights W the step updates): ||W_after - W_before|| / ||W_before||,
  computed in float64 from the parameter and its new value.

The outputs come after the step's own outputs and are named ``monitor/<layer>/<stat>``, so the printed
step shows them. :class:`StepMonitors` accumulates them over an epoch (rows-weighted means, the OR of
the per-unit activity, the mean of the per-step ratios) and says what leaves the course's ranges.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..dsl import Tensor
from ..ir import Graph, Node
from ..nn.layers import Activation, Module
from ..ops import elementwise as ew
from ..ops import reduce
from .plots import pyplot

#: Output names of the monitors: ``monitor/<layer>/<stat>``.
PREFIX = "monitor/"
#: The course's band for ||dW|| / ||W|| (deck 002): a ratio outside it is flagged.
RATIO_BAND = (1e-3, 1e-2)
#: A layer with more than this fraction of dead units is flagged.
DEAD_LIMIT = 0.5
#: Activations whose outputs are exactly 0 on a half-line, so that a unit can die (the ReLU family).
DEAD_PRONE = ("relu",)


# -- the graph side: extra outputs of the training step ------------------------------------------------------

def monitored_layers(outputs: Sequence[tuple[Module, Tensor]]) -> list[tuple[Module, Tensor]]:
    """The layers whose activations are monitored, with their outputs in this forward pass: each layer with
    weights W (Dense, Conv2D, Maxout) and each Activation layer; containers and reshaping, pooling,
    dropout and normalization layers are skipped (their outputs are other layers' activations rearranged)."""
    return [(m, out) for m, out in outputs if "W" in m.values or isinstance(m, Activation)]


def _final_activation(layer: Module) -> str | None:
    fn = layer.fn if isinstance(layer, Activation) else getattr(layer, "activation", None)
    return getattr(fn, "__name__", None)


def _output(graph: Graph, layer: Module, stat: str, value: Tensor) -> None:
    value.node.name = f"{PREFIX}{layer.name}/{stat}"
    graph.output(value)


def add_monitor_outputs(graph: Graph, outputs: Sequence[tuple[Module, Tensor]]) -> None:
    """Append the monitors of the layers in ``outputs`` (a training Context's ``outputs``) to ``graph``'s
    outputs; call it after the optimizer has added its updates (the ratios read them)."""
    updates = {p.name: (p, v) for p, v in graph.updates}
    for layer, act in monitored_layers(outputs):
        wide = ew.cast(act, "float64")  # float64 sums: the epoch's mean and std are not float32 round-off
        _output(graph, layer, "mean", reduce.mean(wide))
        _output(graph, layer, "mean_sq", reduce.mean(ew.square(wide)))
        if _final_activation(layer) in DEAD_PRONE and act.ndim >= 2:
            others = tuple(a for a in range(act.ndim) if a != 1)
            _output(graph, layer, "active", reduce.max(ew.cast(ew.not_equal(act, 0.0), "float32"), others))
        if f"{layer.name}.W" in updates:
            _output(graph, layer, "update_ratio", _update_ratio(graph, *updates[f"{layer.name}.W"]))


def _update_ratio(graph: Graph, param: Node, new_value: Node) -> Tensor:
    """||new - param|| / ||param|| in float64 (the difference of two float32 values is exact there)."""
    before, after = (ew.cast(Tensor(n, graph), "float64") for n in (param, new_value))
    return ew.sqrt(reduce.sum(ew.square(after - before))) / ew.sqrt(reduce.sum(ew.square(before)))


@dataclass(frozen=True)
class Probe:
    """One monitor output of a step graph: the layer it watches and the statistic."""

    layer: str
    stat: str


def probes_of(graph: Graph) -> list[Probe]:
    """The monitor outputs of a step graph, in output order (they are its last outputs)."""
    return [Probe(*o.name[len(PREFIX):].rsplit("/", 1)) for o in graph.outputs
            if o.name is not None and o.name.startswith(PREFIX)]


# -- the Python side: accumulating an epoch -------------------------------------------------------------------

class MonitoredStep:
    """A compiled training step whose last outputs are monitors. Calls and ``run_epoch`` return the step's
    own outputs, as the executable alone would, and hand the monitors to the epoch's accumulator; every
    other attribute is the executable's."""

    def __init__(self, exe: Any, probes: list[Probe], rows: int, epoch: "StepMonitors"):
        self._exe, self._probes, self._rows, self._epoch = exe, probes, rows, epoch

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._exe, name)  # AttributeError when the executable has none (no run_epoch)
        return self._run_epoch if name == "run_epoch" else value

    def _split(self, outs: Any, stacked: bool) -> Any:
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        own, monitors = outs[:-len(self._probes)], outs[-len(self._probes):]
        steps = [np.array(m, np.float64) if stacked else np.array(m, np.float64)[None] for m in monitors]
        self._epoch.add(self._probes, steps, self._rows)
        return own[0] if len(own) == 1 else tuple(own)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._split(self._exe(*args, **kwargs), stacked=False)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        return self._split(self._exe.run_epoch(*args, **kwargs), stacked=True)


class StepMonitors:
    """The monitors of one Trainer's steps over the current epoch: :meth:`wrap` a compiled step,
    :meth:`reset` at an epoch's start, :meth:`summary` at its end."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the steps seen so far (an epoch starts)."""
        #: (layer, stat) -> per call in step order: (rows of each of its steps, its values [steps, *shape])
        self._calls: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}

    def wrap(self, exe: Any, graph: Graph) -> Any:
        """``exe``, compiled from ``graph``, with its monitor outputs routed here (``exe`` itself when the
        graph has none)."""
        probes = probes_of(graph)
        if not probes:
            return exe
        return MonitoredStep(exe, probes, graph.find("x").shape[0], self)

    def add(self, probes: list[Probe], values: list[np.ndarray], rows: int) -> None:
        """One call's monitor values, each [steps, *shape], every step of ``rows`` rows."""
        for probe, value in zip(probes, values):
            self._calls.setdefault((probe.layer, probe.stat), []).append((rows, value))

    def step_values(self, layer: str, stat: str) -> np.ndarray:
        """This epoch's per-step values of one monitor output, [steps, *shape] (e.g. each step's update ratio)."""
        return np.concatenate([values for _, values in self._calls[(layer, stat)]])

    def _step_rows(self, layer: str, stat: str) -> np.ndarray:
        """The rows of each of this epoch's steps."""
        return np.concatenate([np.full(len(values), rows) for rows, values in self._calls[(layer, stat)]])

    def summary(self) -> dict[str, dict[str, float]]:
        """Per layer, the epoch's ``mean`` and ``std`` of its outputs (over every element of every row trained
        on), ``dead_fraction`` (ReLU layers: the fraction of units that were 0 for every row of the epoch)
        and ``update_ratio`` (layers with updated weights: the mean over the epoch's steps of ||dW||/||W||)."""
        layers: dict[str, dict[str, float]] = {}
        for layer, stat in self._calls:
            values = self.step_values(layer, stat)
            out = layers.setdefault(layer, {})
            if stat == "mean":
                rows = self._step_rows(layer, stat)
                mean = float(np.dot(rows, values) / rows.sum())
                mean_sq = float(np.dot(rows, self.step_values(layer, "mean_sq")) / rows.sum())
                out["mean"], out["std"] = mean, math.sqrt(max(mean_sq - mean * mean, 0.0))
            elif stat == "active":
                out["dead_fraction"] = float(np.mean(values.max(axis=0) == 0))
            elif stat == "update_ratio":
                out["update_ratio"] = float(np.mean(values))
        return layers


def flags(summary: dict[str, dict[str, float]]) -> list[str]:
    """What the course would flag in an epoch's monitors: update ratios outside :data:`RATIO_BAND`,
    layers with more than :data:`DEAD_LIMIT` of their units dead."""
    low, high = RATIO_BAND
    found = []
    for layer, stats in summary.items():
        ratio = stats.get("update_ratio")
        if ratio is not None and not low <= ratio <= high:
            side = f"< {low:g}" if ratio < low else f"> {high:g}"
            found.append(f"{layer} update ratio {ratio:.2g} {side}")
        dead = stats.get("dead_fraction")
        if dead is not None and dead > DEAD_LIMIT:
            found.append(f"{layer} {dead:.0%} dead")
    return found


def plot(history: Any, path: str) -> str:
    """Save, as a PNG, each monitored layer's dead-unit fraction and update ratio over the epochs of
    ``history`` (a History of ``fit(..., monitor=True)``), with the course's band and the dead limit marked.
    Needs matplotlib (``pip install 'graphc[plot]'``)."""
    plt = pyplot("monitor plots")
    fig, (dead_ax, ratio_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for layer, stats in history.monitor.items():
        if "dead_fraction" in stats:
            dead_ax.plot(history.epochs, stats["dead_fraction"], marker="o", label=layer)
        if "update_ratio" in stats:
            ratio_ax.plot(history.epochs, stats["update_ratio"], marker="o", label=layer)
    dead_ax.axhline(DEAD_LIMIT, color="red", linestyle="--", label=f"flagged above {DEAD_LIMIT:g}")
    dead_ax.set(xlabel="epoch", ylabel="fraction of units", title="dead units (ReLU outputs 0 all epoch)",
                ylim=(-0.02, 1.02))
    ratio_ax.axhspan(*RATIO_BAND, color="green", alpha=0.15, label="course's band 1e-3..1e-2")
    ratio_ax.set(xlabel="epoch", ylabel="||dW|| / ||W||", title="update-to-weight ratio (epoch mean)", yscale="log")
    for ax in (dead_ax, ratio_ax):
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

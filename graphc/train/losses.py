"""The losses fit trains with and the metrics it reports: graph nodes built from existing ops.

A loss is a function ``(model output, target) -> scalar Tensor``; fit builds it into the training
step, so every backend runs it and autodiff differentiates it. The built-in ones are
:func:`graphc.softmax_cross_entropy`, :func:`graphc.mse`, :func:`graphc.binary_cross_entropy` and
:func:`graphc.binary_cross_entropy_with_logits`, by name; any other callable is a custom loss.

A metric is a per-batch *total* computed inside the step too (one more reduction, not a second
pass over the data), averaged over the epoch's rows by fit:

- ``"acc"``: the fraction of correct decisions, where a loss defines a decision: the argmax class
  for softmax cross-entropy; output > 0.5 (probabilities) or > 0 (logits) against target > 0.5 for
  the binary cross-entropies, counted per output element;
- ``"mae"``: the mean absolute error over every output element, for float targets shaped like the
  model's outputs.

By default fit reports accuracy for the classification losses and no metric for mse and custom
losses; the History always has the loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..ir import DTypeError, InputError, ShapeError
from ..ops import elementwise as ew
from ..ops import nn as nn_ops
from ..ops import reduce
from ..ops.tensor import Tensor
from ..optim.hyperparams import HyperparameterError, user_line_text
from . import inputs

LossFn = Callable[[Tensor, Tensor], Tensor]

LABELS, VALUES, AS_GIVEN = "labels", "values", "as given"  # what a loss takes as targets


@dataclass(frozen=True)
class Loss:
    """A loss fit trains with: its function, the targets it takes and how it decides (for accuracy)."""

    name: str
    fn: LossFn
    #: LABELS: integer class indices [N]; VALUES: floats shaped like the outputs; AS_GIVEN: y's rows as they are
    targets: str
    #: the predicted decision from the outputs, for accuracy (None: accuracy means nothing for this loss)
    decide: Callable[[Tensor], Tensor] | None = None
    #: the targets' decision, comparable with ``decide``'s
    truth: Callable[[Tensor], Tensor] | None = None
    #: what a target value must be, checked on the data (None: any finite float)
    target_range: tuple[float, float] | None = None

    @property
    def default_metrics(self) -> tuple[str, ...]:
        return ("acc",) if self.decide is not None else ()


def _argmax(out: Tensor) -> Tensor:
    return reduce.argmax(out, -1)


def _above(threshold: float) -> Callable[[Tensor], Tensor]:
    return lambda t: ew.greater(t, threshold)


#: The losses fit knows by name.
LOSSES: dict[str, Loss] = {loss.name: loss for loss in (
    Loss("softmax_cross_entropy", nn_ops.softmax_cross_entropy, LABELS, _argmax, lambda y: y),
    Loss("mse", nn_ops.mse, VALUES),
    Loss("binary_cross_entropy", nn_ops.binary_cross_entropy, VALUES, _above(0.5), _above(0.5), (0.0, 1.0)),
    Loss("binary_cross_entropy_with_logits", nn_ops.binary_cross_entropy_with_logits, VALUES, _above(0.0),
         _above(0.5), (0.0, 1.0)),
)}

#: The metrics fit can report (see the module's docstring).
METRICS = ("acc", "mae")


def loss_of(loss: Any) -> Loss:
    """fit's ``loss`` argument as a :class:`Loss`: a built-in one by name, or a custom callable."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise HyperparameterError(f"fit: unknown loss={loss!r}; the built-in losses are {sorted(LOSSES)}, or pass "
                                      f"a function loss(model_output, target) -> scalar Tensor{user_line_text()}")
        return LOSSES[loss]
    if isinstance(loss, Loss):
        return loss
    if callable(loss):
        return Loss(getattr(loss, "__name__", repr(loss)), loss, AS_GIVEN)
    raise HyperparameterError(f"fit: loss must be a loss name {sorted(LOSSES)} or a function "
                              f"loss(model_output, target) -> scalar Tensor; got {type(loss).__name__}"
                              f"{user_line_text()}")


def metrics_of(metrics: Any, loss: Loss) -> tuple[str, ...]:
    """fit's ``metrics`` argument checked against the loss (None: the loss's default metrics)."""
    if metrics is None:
        return loss.default_metrics
    if not isinstance(metrics, (tuple, list)) or not all(isinstance(m, str) for m in metrics):
        raise HyperparameterError(f"fit: metrics must be a tuple of metric names from {list(METRICS)}, e.g. "
                                  f"metrics=('acc',); got {metrics!r}{user_line_text()}")
    for m in metrics:
        if m not in METRICS:
            raise HyperparameterError(f"fit: unknown metric {m!r}; the metrics are {list(METRICS)}{user_line_text()}")
        if m == "acc" and loss.decide is None:
            raise HyperparameterError(f"fit: metric 'acc' means nothing for loss={loss.name!r}: accuracy needs a "
                                      f"decision rule (softmax_cross_entropy's argmax, the binary cross-entropies' "
                                      f"threshold){user_line_text()}")
        if m == "mae" and loss.targets == LABELS:
            raise HyperparameterError(f"fit: metric 'mae' needs float targets shaped like the outputs; "
                                      f"loss={loss.name!r} takes class labels{user_line_text()}")
    return tuple(dict.fromkeys(metrics))  # each once, in the user's order


@dataclass(frozen=True)
class Target:
    """What the step's input ``y`` is: the shape of one row and the dtype."""

    row_shape: tuple[int, ...]
    dtype: str


def target_of(loss: Loss, model: Any, y: np.ndarray | None = None) -> Target:
    """The step's target for ``loss`` on ``model``: labels, values shaped like the outputs, or (custom
    loss) y's rows as given, integer arrays as int64 and float arrays in the model's dtype."""
    dtype = np.dtype(getattr(model, "dtype", np.float32)).name
    if loss.targets == LABELS:
        return Target((), "int64")
    if loss.targets == VALUES or y is None:
        return Target(tuple(model.out_shape), dtype)
    return Target(tuple(y.shape[1:]), "int64" if y.dtype.kind in "iu" else dtype)


def checked_targets(loss: Loss, model: Any, y: Any, rows: int, where: str, arg: str, x_arg: str) -> np.ndarray:
    """``y`` checked for ``loss`` on ``model`` and converted to the step's target dtype (see :func:`target_of`)."""
    if loss.targets == LABELS:
        return inputs.labels(y, rows, inputs.classes_of(model, where), where, arg, x_arg)
    if loss.targets == VALUES:
        return inputs.values(y, rows, tuple(model.out_shape), np.dtype(model.dtype), where, arg, x_arg,
                             f"loss={loss.name!r}", loss.target_range)
    arr = inputs.as_array(y, where, arg)
    if arr.dtype.kind not in "iuf" or arr.ndim < 1 or len(arr) != rows:
        raise InputError(f"{where}: {arg} has shape {list(arr.shape)} and dtype {arr.dtype}; loss={loss.name!r} "
                         f"takes targets of {rows} rows (one per row of {x_arg}), integers or floats"
                         f"{user_line_text()}")
    return np.ascontiguousarray(arr, dtype=target_of(loss, model, arr).dtype)


def objective(loss: Loss, output: Tensor, target: Tensor) -> Tensor:
    """The loss node of ``output`` against ``target``; a custom loss must give a float scalar Tensor."""
    value = loss.fn(output, target)
    if loss.targets != AS_GIVEN:
        return value
    source = _source_of(loss.fn)
    if not isinstance(value, Tensor):
        raise ShapeError(f"fit: loss={loss.name!r}{source} returned a {type(value).__name__}, not a Tensor: build "
                         f"it from graphc ops on its arguments (model output {output.node.type_str}, target "
                         f"{target.node.type_str}){user_line_text()}")
    if value.shape != ():
        raise ShapeError(f"fit: loss={loss.name!r}{source} returned shape {list(value.shape)} "
                         f"({value.node.type_str}); a loss must be a scalar: reduce it, e.g. graphc.mean(...) "
                         f"(model output {output.node.type_str}, target {target.node.type_str})"
                         f"{_at(value)}")
    if not value.dtype.is_float:
        raise DTypeError(f"fit: loss={loss.name!r}{source} returned {value.node.type_str}; a loss must be a float "
                         f"scalar to be differentiated{_at(value)}")
    return value


def _source_of(fn: Callable) -> str:
    code = getattr(fn, "__code__", None)
    return f" (defined at {code.co_filename}:{code.co_firstlineno})" if code is not None else ""


def _at(t: Tensor) -> str:
    return f"\n  at {t.node.loc}" if t.node.loc is not None else user_line_text()


def metric_total(metric: str, loss: Loss, output: Tensor, target: Tensor) -> Tensor:
    """The batch's total of ``metric`` (correct decisions, absolute errors): fit divides by the elements."""
    if metric == "acc":
        right = ew.equal(loss.decide(output), loss.truth(target))
        return reduce.sum(ew.cast(right, "float32"))
    if metric == "mae":
        return reduce.sum(ew.abs(output - target))
    raise HyperparameterError(f"fit: unknown metric {metric!r}")


def elements_per_row(metric: str, loss: Loss, out_row_shape: tuple[int, ...]) -> int:
    """How many values a row adds to ``metric``'s total: one decision per row for softmax cross-entropy,
    one per output element otherwise."""
    if metric == "acc" and loss.targets == LABELS:
        return 1
    return math.prod(out_row_shape)


def check_metric_targets(metrics: tuple[str, ...], loss: Loss, target: Target, out_row_shape: tuple[int, ...],
                         where: str = "fit") -> None:
    """A custom loss's targets must be float values shaped like the outputs for 'mae' (no silent broadcast)."""
    if "mae" in metrics and (target.row_shape != tuple(out_row_shape) or target.dtype == "int64"):
        raise InputError(f"{where}: metric 'mae' compares outputs [N, {', '.join(map(str, out_row_shape))}] with "
                         f"float targets of that shape; loss={loss.name!r} got {target.dtype} targets "
                         f"[N{''.join(', ' + str(d) for d in target.row_shape)}]{user_line_text()}")

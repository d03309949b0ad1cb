"""Neural-network ops: softmax, log_softmax, batch norm, losses, maxout.

softmax, log_softmax, softmax_cross_entropy, one_hot and batch_norm are ops with their own
rules; mse, the binary cross-entropies, l2_penalty and maxout are compositions of other ops,
so their gradients and fusion come from the ops they are built of.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ir import Attrs, DTypeError, InputError, Node, ShapeError, as_dtype
from . import checks
from . import elementwise as ew
from .linalg import matmul
from .reduce import max, mean, sum
from .registry import OpDef, no_gradient, register
from .shape import reshape
from .tensor import Tensor, apply


def _axis_rule(inputs: Sequence[Node], attrs: Attrs):
    (x,) = inputs
    if not 0 <= attrs["axis"] < x.ndim:
        raise ShapeError(f"axis {attrs['axis']} is out of range for {x.type_str}")
    if not x.dtype.is_float:
        raise DTypeError(f"needs a float input, got {x.dtype.name}")
    return x.shape, x.dtype


def softmax_reference(arrays, attrs):
    x = arrays[0]
    e = np.exp(x - np.max(x, axis=attrs["axis"], keepdims=True))
    return e / np.sum(e, axis=attrs["axis"], keepdims=True)


def log_softmax_reference(arrays, attrs):
    x = arrays[0]
    shifted = x - np.max(x, axis=attrs["axis"], keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=attrs["axis"], keepdims=True))


def _softmax_vjp(node, g, inputs):
    y = Tensor(node, g.graph)
    axis = node.attrs["axis"]
    return [y * (g - sum(g * y, axis, keepdims=True))]


def _log_softmax_vjp(node, g, inputs):
    y = Tensor(node, g.graph)
    axis = node.attrs["axis"]
    return [g - ew.exp(y) * sum(g, axis, keepdims=True)]


register(OpDef("softmax", "nn", "exp(x) / sum(exp(x)) along an axis (computed stably)", _axis_rule,
               softmax_reference, _softmax_vjp))
register(OpDef("log_softmax", "nn", "x - logsumexp(x) along an axis (computed stably)", _axis_rule,
               log_softmax_reference, _log_softmax_vjp))


def _axis(op: str, x: Tensor, axis: int) -> int:
    with checks.located(op, [x]):
        return checks.axis(axis, x.ndim)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """Softmax along ``axis``."""
    return apply("softmax", [x], {"axis": _axis("softmax", x, axis)})


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """log(softmax(x)) along ``axis``, computed without overflow."""
    return apply("log_softmax", [x], {"axis": _axis("log_softmax", x, axis)})


# -- one_hot and softmax cross-entropy ---------------------------------------------------------------------

def _one_hot_rule(inputs: Sequence[Node], attrs: Attrs):
    (labels,) = inputs
    if not labels.dtype.is_int:
        raise DTypeError(f"labels must be integers, got {labels.dtype.name}")
    return labels.shape + (checks.positive_int("classes", attrs["classes"]),), as_dtype(attrs["dtype"])


def check_labels(labels: np.ndarray, classes: int, op: str) -> None:
    """Out-of-range labels are an error, never an out-of-bounds read."""
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)]
        raise InputError(f"{op}: label {int(bad.flat[0])} is out of range [0, {classes}) "
                         f"({bad.size} of {labels.size} labels are)")


def one_hot_reference(arrays, attrs):
    (labels,) = arrays
    check_labels(labels, attrs["classes"], "one_hot")
    return (labels[..., None] == np.arange(attrs["classes"])).astype(attrs["dtype"])


def _one_hot_labels(node: Node) -> tuple[int, int]:
    return 0, int(node.attrs["classes"])


register(OpDef("one_hot", "nn", "integer labels -> one-hot rows of length `classes`", _one_hot_rule,
               one_hot_reference, no_gradient, notes="not differentiable", labels=_one_hot_labels))


def one_hot(labels: Tensor, classes: int, dtype="float32") -> Tensor:
    """One-hot encoding of integer ``labels`` (an out-of-range label is a run-time error)."""
    with checks.located("one_hot", [labels]):
        classes = checks.positive_int("classes", classes)
    return apply("one_hot", [labels], {"classes": classes, "dtype": as_dtype(dtype).name})


def _sce_rule(inputs: Sequence[Node], attrs: Attrs):
    logits, labels = inputs
    if logits.ndim != 2:
        raise ShapeError(f"logits must be [batch, classes], got {logits.type_str}")
    if not logits.dtype.is_float:
        raise DTypeError(f"logits must be float, got {logits.dtype.name}")
    if labels.shape == logits.shape:
        if not labels.dtype.is_float:
            raise DTypeError(f"one-hot labels must be float, got {labels.type_str}")
    elif labels.shape == logits.shape[:1]:
        if not labels.dtype.is_int:
            raise DTypeError(f"labels {labels.type_str} must be integer class indices (int32/int64); "
                             f"for one-hot or soft labels pass a float tensor shaped like the logits "
                             f"{list(logits.shape)}")
    else:
        raise ShapeError(f"labels must be integer indices [{logits.shape[0]}] or one-hot "
                         f"{list(logits.shape)}, got {labels.type_str}")
    return (), logits.dtype


def sce_reference(arrays, attrs):
    logits, labels = arrays
    logp = log_softmax_reference([logits], Attrs({"axis": 1}))
    if labels.ndim == 1:
        check_labels(labels, logits.shape[1], "softmax_cross_entropy")
        return -np.mean(logp[np.arange(len(labels)), labels])
    return -np.sum(labels * logp) / logits.shape[0]


def _sce_vjp(node, g, inputs):
    logits, labels = inputs
    n = logits.shape[0]
    target = labels if labels.shape == logits.shape else one_hot(labels, logits.shape[1], logits.dtype)
    d_logits = (softmax(logits, 1) - target) * (g * (1.0 / n))
    d_labels = None
    if labels.shape == logits.shape:
        d_labels = log_softmax(logits, 1) * (g * (-1.0 / n))
    return [d_logits, d_labels]


def _sce_labels(node: Node) -> tuple[int, int] | None:
    """Integer labels index the logits' classes (axis 1); one-hot rows are floats and hold no index."""
    logits, labels = node.inputs
    return (1, logits.shape[1]) if labels.dtype.is_int else None


register(OpDef("softmax_cross_entropy", "nn",
               "mean over the batch of -log softmax(logits)[label]; labels are int indices or one-hot rows",
               _sce_rule, sce_reference, _sce_vjp, notes="gradient (softmax(logits) - onehot) / N",
               labels=_sce_labels))


def softmax_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean softmax cross-entropy of ``logits`` [N, C] against integer labels [N] or one-hot [N, C]."""
    return apply("softmax_cross_entropy", [logits, labels])


# -- batch norm -------------------------------------------------------------------------------------------------

def _bn_rule(inputs: Sequence[Node], attrs: Attrs):
    x, gamma, beta = inputs
    if x.ndim < 2:
        raise ShapeError(f"input must be [N, C] or [N, C, H, W], got {x.type_str}")
    c = x.shape[1]
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t.shape != (c,):
            raise ShapeError(f"{name} must have shape [{c}] (one per channel of {x.type_str}), got {t.type_str}")
    if not x.dtype.is_float:
        raise DTypeError(f"needs a float input, got {x.dtype.name}")
    return x.shape, x.dtype


def _channel_shape(x_ndim: int, c: int) -> tuple[int, ...]:
    return (1, c) + (1,) * (x_ndim - 2)


def batch_norm_reference(arrays, attrs):
    x, gamma, beta = arrays
    axes = (0,) + tuple(range(2, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = _channel_shape(x.ndim, x.shape[1])
    return (x - mu) / np.sqrt(var + attrs["eps"]) * gamma.reshape(shape) + beta.reshape(shape)


def _batch_norm_vjp(node, g, inputs):
    # With xhat = (x - mean) / sqrt(var + eps), the batch statistics make dx the projection
    # inv_std * (gx - mean(gx) - xhat * mean(gx * xhat)), where gx = g * gamma (means per channel).
    x, gamma, beta = inputs
    axes = (0,) + tuple(range(2, x.ndim))
    centered = x - mean(x, axes, keepdims=True)
    inv_std = 1.0 / ew.sqrt(mean(ew.square(centered), axes, keepdims=True) + node.attrs["eps"])
    xhat = centered * inv_std
    gx = g * reshape(gamma, _channel_shape(x.ndim, x.shape[1]))
    dx = inv_std * (gx - mean(gx, axes, keepdims=True) - xhat * mean(gx * xhat, axes, keepdims=True))
    return [dx, sum(g * xhat, axes), sum(g, axes)]


register(OpDef("batch_norm", "nn",
               "training-form batch norm: normalize with the batch's per-channel mean and (biased) variance, "
               "then scale by gamma and shift by beta; channels on axis 1",
               _bn_rule, batch_norm_reference, _batch_norm_vjp,
               notes="the gradient flows through the batch mean and variance too (training form)"))


def batch_norm(x: Tensor, gamma: Tensor, beta: Tensor, running_mean: Tensor | None = None,
               running_var: Tensor | None = None, eps: float = 1e-5, training: bool = True) -> Tensor:
    """Batch normalization over axis 1 (channels) of [N, C] or [N, C, H, W] input.

    ``training=True`` uses the batch statistics (one op); ``training=False`` uses the given
    running statistics, built from elementwise ops with broadcasting.
    """
    if training:
        return apply("batch_norm", [x, gamma, beta], {"eps": float(eps)})
    if running_mean is None or running_var is None:
        raise ShapeError("batch_norm(training=False) needs running_mean and running_var")
    shape = _channel_shape(x.ndim, x.shape[1])
    mu, var = reshape(running_mean, shape), reshape(running_var, shape)
    return (x - mu) / ew.sqrt(var + eps) * reshape(gamma, shape) + reshape(beta, shape)


# -- composite losses and layers ---------------------------------------------------------------------------------

def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error, mean over every element."""
    return mean(ew.square(pred - target))


def binary_cross_entropy(p: Tensor, y: Tensor) -> Tensor:
    """-mean(y log p + (1 - y) log(1 - p)) on probabilities ``p`` (the course's cross entropy)."""
    return -mean(y * ew.log(p) + (1.0 - y) * ew.log(1.0 - p))


def binary_cross_entropy_with_logits(z: Tensor, y: Tensor) -> Tensor:
    """Binary cross-entropy on logits: mean(softplus(z) - y z), stable for any |z|."""
    return mean(ew.softplus(z) - y * z)


def sum_of_squares(tensors: Sequence[Tensor], what: str = "sum_of_squares") -> Tensor:
    """sum over ``tensors`` of sum(t^2): the L2 penalty's sum and the squared global gradient norm."""
    total = None
    for t in tensors:
        term = sum(ew.square(t))
        total = term if total is None else total + term
    if total is None:
        raise ShapeError(f"{what} needs at least one tensor")
    return total


def l2_penalty(params: Sequence[Tensor], lam: float) -> Tensor:
    """The course's regularizer: lam * sum over parameters of sum(theta^2)."""
    return sum_of_squares(params, "l2_penalty") * float(lam)


def maxout(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Maxout unit: max over k affine pieces, max_k (x @ W[k] + b[k]) for W [k, in, out], b [k, out]."""
    if w.ndim != 3 or b.shape != (w.shape[0], w.shape[2]):
        raise ShapeError(f"maxout: W must be [k, in, out] and b [k, out]; got W {w.node.type_str}, b {b.node.type_str}")
    pieces = matmul(x, w) + reshape(b, (w.shape[0],) + (1,) * (x.ndim - 1) + (w.shape[2],))
    return max(pieces, axis=0)



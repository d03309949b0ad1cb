"""Reductions over axes: sum, mean, max, min, argmax, with keepdims."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..ir import Attrs, Node, ShapeError, int64, to_float
from . import checks
from .registry import OpDef, no_gradient, register
from .tensor import Tensor, apply


def normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """``axis`` (None, an int or a sequence, negatives allowed) as sorted non-negative axes."""
    return checks.axes(axis, ndim)


def reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if k in axes else d for k, d in enumerate(shape))
    return tuple(d for k, d in enumerate(shape) if k not in axes)


def _rule(dtype_of):
    def shape_rule(inputs: Sequence[Node], attrs: Attrs):
        (x,) = inputs
        for a in attrs["axes"]:
            if not 0 <= a < x.ndim:
                raise ShapeError(f"axis {a} is out of range for {x.type_str}")
        if attrs.get("nonempty") and any(x.shape[a] == 0 for a in attrs["axes"]):
            raise ShapeError(f"cannot reduce an empty axis of {x.type_str}")
        return reduced_shape(x.shape, attrs["axes"], attrs["keepdims"]), dtype_of(x)
    return shape_rule


def _sum_vjp(node, g, inputs):
    (x,) = inputs
    return [broadcast_to(_keep(g, node), x.shape)]


def _mean_vjp(node, g, inputs):
    (x,) = inputs
    count = int(np.prod([x.shape[a] for a in node.attrs["axes"]], dtype=np.int64))
    return [broadcast_to(_keep(g, node), x.shape) * (1.0 / count if count else 0.0)]


def _extremum_vjp(node, g, inputs):
    """The gradient goes to the positions equal to the extremum, split evenly between ties."""
    from .elementwise import cast, equal

    (x,) = inputs
    y = Tensor(node, g.graph)
    hit = cast(equal(x, broadcast_to(_keep(y, node), x.shape)), x.dtype)
    count = broadcast_to(sum(hit, node.attrs["axes"], keepdims=True), x.shape)
    return [hit / count * broadcast_to(_keep(g, node), x.shape)]


def _keep(t: Tensor, node: Node) -> Tensor:
    """``t`` (shaped like the reduction's output) with the reduced axes back as size-1 axes."""
    from .shape import reshape

    if node.attrs["keepdims"]:
        return t
    x_shape = node.inputs[0].shape
    return reshape(t, reduced_shape(x_shape, node.attrs["axes"], True))


register(OpDef("sum", "reduce", "sum over axes", _rule(lambda x: x.dtype),
               lambda a, at: np.sum(a[0], axis=at["axes"], keepdims=at["keepdims"]), _sum_vjp))
register(OpDef("mean", "reduce", "mean over axes", _rule(lambda x: to_float(x.dtype)),
               lambda a, at: np.mean(a[0], axis=at["axes"], keepdims=at["keepdims"]), _mean_vjp))
register(OpDef("max", "reduce", "maximum over axes", _rule(lambda x: x.dtype),
               lambda a, at: np.max(a[0], axis=at["axes"], keepdims=at["keepdims"]), _extremum_vjp,
               notes="ties share the gradient equally"))
register(OpDef("min", "reduce", "minimum over axes", _rule(lambda x: x.dtype),
               lambda a, at: np.min(a[0], axis=at["axes"], keepdims=at["keepdims"]), _extremum_vjp,
               notes="ties share the gradient equally"))
register(OpDef("argmax", "reduce", "index of the maximum along one axis (int64)", _rule(lambda x: int64),
               lambda a, at: _argmax(a[0], at), no_gradient, notes="not differentiable"))


def _argmax(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    axes = attrs["axes"]
    if len(axes) == 1:
        return np.argmax(x, axis=axes[0], keepdims=attrs["keepdims"])
    # Every axis (axis=None): the index into the flattened tensor, as numpy.argmax.
    flat = np.argmax(x.reshape(-1)) if x.size else 0
    return np.reshape(flat, reduced_shape(x.shape, axes, attrs["keepdims"]))


def broadcast_shape_rule(inputs: Sequence[Node], attrs: Attrs):
    (x,) = inputs
    shape = attrs["shape"]
    if len(shape) < x.ndim or any(d not in (1, t) for d, t in zip(x.shape[::-1], shape[::-1])):
        raise ShapeError(f"cannot broadcast {x.type_str} to shape {list(shape)}")
    return shape, x.dtype


def _broadcast_vjp(node, g, inputs):
    return [sum_to_shape(g, inputs[0].shape)]


register(OpDef("broadcast_to", "reduce", "broadcast to a larger shape (numpy.broadcast_to)", broadcast_shape_rule,
               lambda a, at: np.broadcast_to(a[0], at["shape"]), _broadcast_vjp))


# -- builders ---------------------------------------------------------------------------------------------

def _reduce(op: str, x: Tensor, axis: Any, keepdims: bool) -> Tensor:
    from .tensor import _as_node, _graph_of

    graph = _graph_of([x])
    t = x if isinstance(x, Tensor) else Tensor(_as_node(x, graph, None), graph)
    with checks.located(op, [t]):
        axes = normalize_axes(axis, t.ndim)
    return apply(op, [t], {"axes": axes, "keepdims": bool(keepdims), "nonempty": op in ("max", "min", "argmax")})


def sum(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Sum over ``axis`` (all axes when None), like numpy.sum."""
    return _reduce("sum", x, axis, keepdims)


def mean(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (all axes when None), like numpy.mean."""
    return _reduce("mean", x, axis, keepdims)


def max(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Maximum over ``axis``; ties share the gradient."""
    return _reduce("max", x, axis, keepdims)


def min(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Minimum over ``axis``; ties share the gradient."""
    return _reduce("min", x, axis, keepdims)


def argmax(x: Tensor, axis: int | None = -1, keepdims: bool = False) -> Tensor:
    """Index (int64) of the maximum along one axis; with ``axis=None``, into the flattened tensor."""
    if axis is not None and isinstance(axis, (tuple, list, np.ndarray)):
        with checks.located("argmax", [x]):
            raise ShapeError(f"takes one axis or None, got {axis!r}")
    return _reduce("argmax", x, axis, keepdims)


def broadcast_to(x: Tensor, shape: Sequence[int]) -> Tensor:
    """``x`` broadcast to ``shape`` (returns ``x`` itself when the shape already matches)."""
    with checks.located("broadcast_to", [x]):
        shape = checks.dims("shape", shape)
    if isinstance(x, Tensor) and x.shape == shape:
        return x
    return apply("broadcast_to", [x], {"shape": shape})


def sum_to_shape(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum a broadcast result back down to ``shape``: the adjoint of broadcasting."""
    from .shape import reshape

    shape = tuple(shape)
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + k for k, d in enumerate(shape) if d == 1 and x.shape[lead + k] != 1)
    return reshape(sum(x, axes, keepdims=False), shape)

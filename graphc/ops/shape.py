"""Shape ops: reshape, transpose, slicing (basic indexing), concatenate."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..ir import Attrs, GraphcError, Node, ShapeError
from . import checks
from .registry import OpDef, register
from .tensor import Tensor, apply


def _located(err: GraphcError, x: Tensor, op: str = "slice") -> GraphcError:
    """``err`` naming the op, the operand's type and the user's line (for checks done before apply())."""
    return checks.at_user_line(err, op, [x])


# -- reshape -----------------------------------------------------------------------------------------------

def _reshape_rule(inputs: Sequence[Node], attrs: Attrs):
    (x,) = inputs
    shape = attrs["shape"]
    if int(np.prod(shape, dtype=np.int64)) != x.size:
        raise ShapeError(f"cannot reshape {x.type_str} ({x.size} elements) to {list(shape)}")
    return shape, x.dtype


def _reshape_vjp(node, g, inputs):
    return [reshape(g, inputs[0].shape)]


register(OpDef("reshape", "shape", "reshape (numpy.reshape, C order)", _reshape_rule,
               lambda a, at: np.reshape(a[0], at["shape"]), _reshape_vjp, view=True))


def _resolve_shape(size: int, shape: Sequence[int], type_str: str) -> tuple[int, ...]:
    shape = list(checks.dims(f"reshape of {type_str} to", shape, low=None))
    if any(d < -1 for d in shape):
        raise ShapeError(f"reshape of {type_str} to {shape}: dimensions must be >= 0, or -1 for the one inferred")
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape of {type_str} to {shape}: only one dimension may be -1")
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
        if known == 0 or size % known:
            raise ShapeError(f"cannot reshape {type_str} ({size} elements) to {shape}")
        shape[shape.index(-1)] = size // known
    return tuple(shape)


def reshape(x: Tensor, shape: Sequence[int]) -> Tensor:
    """``x`` with a new shape of the same size; one dimension may be -1 (inferred)."""
    try:
        shape = _resolve_shape(x.size, shape, x.node.type_str)
    except ShapeError as err:
        raise _located(err, x, "reshape") from None
    if shape == x.shape:
        return x
    return apply("reshape", [x], {"shape": shape})


# -- transpose ---------------------------------------------------------------------------------------------

def _transpose_rule(inputs: Sequence[Node], attrs: Attrs):
    (x,) = inputs
    perm = attrs["perm"]
    if sorted(perm) != list(range(x.ndim)):
        raise ShapeError(f"transpose of {x.type_str}: {list(perm)} is not a permutation of its {x.ndim} axes")
    return tuple(x.shape[p] for p in perm), x.dtype


def _transpose_vjp(node, g, inputs):
    return [transpose(g, tuple(int(k) for k in np.argsort(node.attrs["perm"])))]


register(OpDef("transpose", "shape", "permute axes (numpy.transpose)", _transpose_rule,
               lambda a, at: np.transpose(a[0], at["perm"]), _transpose_vjp))


def transpose(x: Tensor, perm: Sequence[int] | None = None) -> Tensor:
    """Permute axes; with no ``perm``, reverse them (``x.T``)."""
    if perm is None:
        perm = tuple(range(x.ndim))[::-1]
    else:
        with checks.located("transpose", [x]):
            perm = tuple(checks.axis(p, x.ndim) for p in perm)
    return apply("transpose", [x], {"perm": perm})


# -- slicing ------------------------------------------------------------------------------------------------

def _slice_rule(inputs: Sequence[Node], attrs: Attrs):
    (x,) = inputs
    return _sliced_shape(x.shape, attrs), x.dtype


def _sliced_shape(shape, attrs):
    return tuple(len(range(b, e, s)) for b, e, s in zip(attrs["starts"], attrs["stops"], attrs["steps"]))


def _index(attrs: Attrs) -> tuple[slice, ...]:
    return tuple(slice(b, e, s) for b, e, s in zip(attrs["starts"], attrs["stops"], attrs["steps"]))


def _slice_vjp(node, g, inputs):
    return [apply("unslice", [g], dict(node.attrs) | {"shape": inputs[0].shape})]


def _unslice_rule(inputs: Sequence[Node], attrs: Attrs):
    (g,) = inputs
    return attrs["shape"], g.dtype


def _unslice_reference(arrays, attrs):
    out = np.zeros(attrs["shape"], arrays[0].dtype)
    out[_index(attrs)] = arrays[0]
    return out


def _unslice_vjp(node, g, inputs):
    a = node.attrs
    return [apply("slice", [g], {"starts": a["starts"], "stops": a["stops"], "steps": a["steps"]})]


register(OpDef("slice", "shape", "basic slicing x[b:e:s, ...] on every axis (positive steps)", _slice_rule,
               lambda a, at: a[0][_index(at)], _slice_vjp))
register(OpDef("unslice", "shape", "the adjoint of slice: g placed at the sliced positions of zeros of `shape`",
               _unslice_rule, _unslice_reference, _unslice_vjp))


def getitem(x: Tensor, index: Any) -> Tensor:
    """Basic NumPy indexing: integers, slices with positive steps, ``...`` and ``None``."""
    index = index if isinstance(index, tuple) else (index,)
    def basic(i: Any) -> bool:
        integer = isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))
        return i is None or i is Ellipsis or isinstance(i, slice) or integer

    if not all(basic(i) for i in index):
        raise _located(ShapeError(f"indexing {x.node.type_str}: only integers, slices, ... and None are supported "
                                  f"(advanced indexing is not); got {index!r}"), x)
    for i in index:
        if isinstance(i, slice) and not all(v is None or checks.is_integer(v) for v in (i.start, i.stop, i.step)):
            raise _located(ShapeError(f"indexing {x.node.type_str}: slice bounds and steps must be integers or None, "
                                      f"got {i!r}"), x)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    if index.count(Ellipsis) > 1:
        raise _located(ShapeError(f"indexing {x.node.type_str}: only one ... is allowed"), x)
    if n_real > x.ndim:
        raise _located(ShapeError(f"too many indices ({n_real}) for {x.node.type_str}"), x)
    # `...` stands for the axes not indexed explicitly; without one, they are at the end.
    k = index.index(Ellipsis) if Ellipsis in index else len(index)
    index = index[:k] + (slice(None),) * (x.ndim - n_real) + index[k + 1:]
    starts, stops, steps, out_shape = [], [], [], []
    axis = 0
    for i in index:
        if i is None:
            out_shape.append(1)
            continue
        dim = x.shape[axis]
        if isinstance(i, (int, np.integer)):
            if not -dim <= i < dim:
                raise _located(ShapeError(f"index {i} is out of bounds for axis {axis} of {x.node.type_str}"), x)
            i = int(i) % dim
            starts.append(i), stops.append(i + 1), steps.append(1)
        else:
            b, e, s = i.indices(dim)
            if s <= 0:
                raise _located(ShapeError(f"indexing {x.node.type_str}: negative slice steps are not supported"), x)
            starts.append(b), stops.append(max(e, b)), steps.append(s)
            out_shape.append(len(range(b, e, s)))
        axis += 1
    y = x
    if (tuple(starts), tuple(stops), tuple(steps)) != ((0,) * x.ndim, x.shape, (1,) * x.ndim):
        y = apply("slice", [x], {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)})
    return reshape(y, tuple(out_shape))


# -- concatenate ------------------------------------------------------------------------------------------

def _concat_rule(inputs: Sequence[Node], attrs: Attrs):
    axis = attrs["axis"]
    first = inputs[0]
    for other in inputs[1:]:
        if other.ndim != first.ndim or any(a != b for k, (a, b) in enumerate(zip(first.shape, other.shape)) if k != axis):
            shown = ", ".join(i.type_str for i in inputs)
            raise ShapeError(f"shapes differ outside axis {axis}: {shown}")
    from ..ir import promote
    shape = list(first.shape)
    shape[axis] = sum(i.shape[axis] for i in inputs)
    return tuple(shape), promote(*(i.dtype for i in inputs))


def _concat_vjp(node, g, inputs):
    axis, out, offset = node.attrs["axis"], [], 0
    for x in inputs:
        index = [slice(None)] * g.ndim
        index[axis] = slice(offset, offset + x.shape[axis])
        out.append(getitem(g, tuple(index)))
        offset += x.shape[axis]
    return out


register(OpDef("concatenate", "shape", "join tensors along an existing axis", _concat_rule,
               lambda a, at: np.concatenate(a, axis=at["axis"]), _concat_vjp))


def concatenate(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors along ``axis`` (numpy.concatenate)."""
    tensors = list(tensors)
    if not tensors:
        raise ShapeError("concatenate needs at least one tensor")
    with checks.located("concatenate", tensors):
        axis = checks.axis(axis, tensors[0].ndim)
    return apply("concatenate", tensors, {"axis": axis})

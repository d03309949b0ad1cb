"""Shape ops: transpose, slice, unslice, concatenate (copies with index arithmetic)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import sympy as sp

from ...ir import Node
from .context import Lowering, rule
from .ir import index_var, linear, nest, strides


def _copy(lw: Lowering, dst: Node, dst_index: sp.Expr, src: Node, src_index: sp.Expr) -> list:
    """``dst[dst_index] = src[src_index]``: a load and a store, converting when the dtypes differ."""
    v = lw.var("v")
    return [lw.load(v, src, src_index), lw.store(dst, dst_index, v, exact=src.dtype == dst.dtype)]


@rule("transpose")
def lower_transpose(lw: Lowering, node: Node) -> None:
    """A copy in output order. Input axes that stay adjacent and in order (the H, W of an NCHW
    channel/batch swap) are one loop: the inner loop is then a contiguous, vectorized copy."""
    (x,) = node.inputs
    groups: list[list[int]] = []
    for p in node.attrs["perm"]:
        if groups and groups[-1][-1] + 1 == p:
            groups[-1].append(p)
        else:
            groups.append([p])
    sizes = [int(np.prod([x.shape[a] for a in g], dtype=np.int64)) for g in groups]
    in_strides = strides(x.shape)
    kept = [(size, in_strides[g[-1]]) for size, g in zip(sizes, groups) if size != 1]
    names = [f"i{d}" for d in range(len(kept))]
    src = sum((index_var(nm) * st for nm, (_, st) in zip(names, kept)), sp.Integer(0))
    out_sizes = [size for size, _ in kept]
    lw.emit(nest(out_sizes, names, _copy(lw, node, linear(names, out_sizes), x, src)))


def _slice_index(names: Sequence[str], starts: Sequence[int], steps: Sequence[int],
                 shape_strides: Sequence[int]) -> sp.Expr:
    """The flat index of element (start + i * step) along every axis."""
    return sum(((b + index_var(nm) * s) * st for nm, b, s, st in zip(names, starts, steps, shape_strides)),
               sp.Integer(0))


@rule("slice")
def lower_slice(lw: Lowering, node: Node) -> None:
    (x,) = node.inputs
    names = [f"i{d}" for d in range(node.ndim)]
    src = _slice_index(names, node.attrs["starts"], node.attrs["steps"], strides(x.shape))
    lw.emit(nest(node.shape, names, _copy(lw, node, linear(names, node.shape), x, src)))


@rule("unslice")
def lower_unslice(lw: Lowering, node: Node) -> None:
    """The adjoint of slice: zeros, then g written at the sliced positions."""
    (g,) = node.inputs
    names = [f"i{d}" for d in range(g.ndim)]
    dst = _slice_index(names, node.attrs["starts"], node.attrs["steps"], strides(node.shape))
    scatter = nest(g.shape, names, _copy(lw, node, dst, g, linear(names, g.shape))) if g.size else []
    lw.emit(lw.fill(node, 0) + scatter)


@rule("concatenate")
def lower_concatenate(lw: Lowering, node: Node) -> None:
    """One copy loop per input into its block of every outer row (the axis and the axes after it)."""
    axis = node.attrs["axis"]
    outer = int(np.prod(node.shape[:axis], dtype=np.int64))
    after = int(np.prod(node.shape[axis + 1:], dtype=np.int64))
    total = node.shape[axis] * after
    o, c = index_var("o"), index_var("c")
    body: list = []
    offset = 0
    for x in node.inputs:
        inner = x.shape[axis] * after
        if inner:
            body += nest([outer, inner], ["o", "c"], _copy(lw, node, o * total + offset + c, x, o * inner + c))
        offset += inner
    lw.emit(body)

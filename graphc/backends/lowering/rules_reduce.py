"""Reductions: sum, mean, max, min (a scalar accumulator per output when the reduced axes trail, else
one sweep of the input accumulating into the outputs) and argmax."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import sympy as sp

from ...ir import Node
from ...ops.elementwise import IsNaN
from .context import Lowering, assign, rule
from .ir import Loop, divided, index_var, linear, nest

#: The Store reduction of each reduce op's general sweep.
STORE_REDUCE = {"sum": "add", "mean": "add", "max": "max", "min": "min"}


def reduce_blocks(shape: Sequence[int], axes: Sequence[int]) -> list[list]:
    """Input axes merged into [size, reduced?] blocks (size-1 axes dropped)."""
    blocks: list[list] = []
    for a, d in enumerate(shape):
        if d == 1:
            continue
        red = a in axes
        if blocks and blocks[-1][1] == red:
            blocks[-1][0] *= d
        else:
            blocks.append([d, red])
    return blocks


def reduce_init(kind: str, dtype) -> sp.Expr:
    """The identity of reduction ``kind`` in ``dtype``: 0, -inf/+inf, False/True, the integer limits."""
    if kind in ("sum", "mean"):
        return sp.Integer(0)
    if dtype.is_float:
        return -sp.oo if kind == "max" else sp.oo
    if dtype.kind == "b":
        return sp.false if kind == "max" else sp.true
    info = np.iinfo(dtype.np)
    return sp.Integer(int(info.min if kind == "max" else info.max))


def combined(kind: str, acc: sp.Symbol, value: sp.Symbol) -> sp.Expr:
    """``acc`` combined with ``value``: their sum, or the larger/smaller where a NaN wins (as NumPy)."""
    if kind in ("sum", "mean"):
        return acc + value
    better = value > acc if kind == "max" else value < acc
    return sp.Piecewise((value, better | IsNaN(value)), (acc, True))


@rule("sum", "mean", "max", "min")
def lower_reduce(lw: Lowering, node: Node) -> None:
    (x,) = node.inputs
    if x.size == 0:
        lw.emit(lw.fill(node, sp.nan if node.op == "mean" else reduce_init(node.op, node.dtype)))
        return
    blocks = reduce_blocks(x.shape, node.attrs["axes"])
    if blocks and blocks[-1][1] and not any(b[1] for b in blocks[:-1]):
        lw.emit(trailing_reduction(lw, node, x, blocks))
    else:
        lw.emit(sweep_reduction(lw, node, x, blocks))


def trailing_reduction(lw: Lowering, node: Node, x: Node, blocks: list[list]) -> list:
    """The common case, the reduced axes are the trailing block: a scalar accumulator per output
    (float sums accumulate in float64)."""
    kind = node.op
    n = blocks[-1][0]
    names = [f"i{d}" for d in range(len(blocks) - 1)]
    sizes = [b[0] for b in blocks[:-1]]
    base = linear(names, sizes)
    r = index_var("r")
    if kind in ("sum", "mean") and node.dtype.is_float:
        dtype, init = "float64", sp.Float(0.0)
    else:
        dtype = (x.dtype if kind in ("max", "min") else node.dtype).name
        init = reduce_init(kind, x.dtype if kind in ("max", "min") else node.dtype)
    acc, v = lw.var("acc"), lw.var("v")
    body = [assign(acc, init, dtype),
            Loop(r, n, [lw.load(v, x, base * n + r), assign(acc, combined(kind, acc, v), dtype)], parallel=False)]
    result = acc
    if kind == "mean":
        result = lw.var("mean")
        body.append(assign(result, divided(acc, n), dtype))
    body.append(lw.store(node, base, result, exact=dtype == node.dtype.name))
    return nest(sizes, names, body)


def sweep_reduction(lw: Lowering, node: Node, x: Node, blocks: list[list]) -> list:
    """General axes: sweep the input once in memory order, accumulating into the outputs in their dtype
    (a float64 scratch accumulator would cost two more loops; float32 bias gradients stay well within
    float32's tolerance); a mean divides at the end."""
    kind = node.op
    names = [f"i{d}" for d in range(len(blocks))]
    kept = [(nm, b[0]) for nm, b in zip(names, blocks) if not b[1]]
    out_index = linear([k[0] for k in kept], [k[1] for k in kept])
    v = lw.var("v")
    exact = node.dtype == x.dtype and node.dtype.is_float
    body: list = [lw.load(v, x, linear(names, [b[0] for b in blocks])),
                  lw.store(node, out_index, v, reduce=STORE_REDUCE[kind], exact=exact)]
    # Iterations along a reduced block accumulate into the same outputs: not independent.
    for name, (size, reduced) in reversed(list(zip(names, blocks))):
        body = [Loop(index_var(name), int(size), body, parallel=not reduced)]
    statements = lw.fill(node, reduce_init(kind, node.dtype)) + body
    if kind == "mean":
        count = x.size // max(node.size, 1)
        j, total, mean = index_var("j"), lw.var("total"), lw.var("mean")
        statements += nest([node.size], ["j"], [lw.load(total, node, j), assign(mean, divided(total, count), "float64"),
                                                lw.store(node, j, mean, exact=node.dtype.name == "float64")])
    return statements


def axis_layout(shape: Sequence[int], axis: int) -> tuple[int, int, int]:
    """(outer, n, inner): the sizes before ``axis``, along it, and after it."""
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


@rule("argmax")
def lower_argmax(lw: Lowering, node: Node) -> None:
    """The first position of the largest value along the axis; the first NaN wins, as in NumPy."""
    (x,) = node.inputs
    (axis,) = node.attrs["axes"]
    outer, n, inner = axis_layout(x.shape, axis)
    o, i, r = index_var("o"), index_var("i"), index_var("r")
    best, val = lw.var("best"), lw.var("val")
    at = lw.integer_var("at")
    dtype = x.dtype.name
    later = r + 1  # the loop runs over positions 1 .. n-1
    better = (val > best) | (IsNaN(val) & ~IsNaN(best))
    # `at` first: both updates test the best value before this position.
    scan = [lw.load(val, x, (o * n + later) * inner + i),
            assign(at, sp.Piecewise((later, better), (at, True)), "int64"),
            assign(best, sp.Piecewise((val, better), (best, True)), dtype)]
    body = [lw.load(best, x, o * (n * inner) + i), assign(at, 0, "int64"),
            Loop(r, n - 1, scan, parallel=False),
            lw.store(node, o * inner + i, at, exact=node.dtype.name == "int64")]
    lw.emit(nest([outer, inner], ["o", "i"], body))

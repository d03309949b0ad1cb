"""Neural-network ops: softmax, log_softmax, softmax_cross_entropy, one_hot, batch_norm.

Each keeps the old numba_cpu loops: a row's maximum, then its sum of exponentials, then the outputs;
sums over rows and batch statistics accumulate in float64. A variable is assigned in the dtype its
value was computed in there (``math.log`` of a float32 sum is a float64), so a renderer reproduces the
same roundings.
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from ...ir import Node
from .context import Lowering, assign, rule
from .ir import Loop, divided, index_var, nest
from .rules_reduce import axis_layout


def row_max(lw: Lowering, x: Node, at: sp.Expr, r: sp.Symbol, n: int, dtype: str) -> tuple[list, sp.Symbol]:
    """(statements, m): m = the maximum of x[at] over r in range(n), in ``dtype``. NaN order does not
    matter here: a NaN in the row makes every result of the row NaN either way."""
    m, v = lw.var("m"), lw.var("x")
    return [assign(m, -sp.oo, dtype), Loop(r, n, [lw.load(v, x, at), assign(m, sp.Max(m, v, evaluate=False), dtype)],
                                           parallel=False)], m


def exp_sum(lw: Lowering, x: Node, at: sp.Expr, r: sp.Symbol, n: int, m: sp.Symbol,
            dtype: str) -> tuple[list, sp.Symbol]:
    """(statements, s): s = the sum of exp(x[at] - m) over r in range(n), in ``dtype``."""
    s, v = lw.var("s"), lw.var("x")
    return [assign(s, 0.0, dtype), Loop(r, n, [lw.load(v, x, at), assign(s, s + sp.exp(v - m), dtype)],
                                        parallel=False)], s


def softmax_kernel(lw: Lowering, node: Node, log: bool) -> list:
    (x,) = node.inputs
    outer, n, inner = axis_layout(x.shape, node.attrs["axis"])
    o, r, i = index_var("o"), index_var("r"), index_var("i")
    at = (o * n + r) * inner + i if inner != 1 else o * n + r
    dtype = node.dtype.name
    body, m = row_max(lw, x, at, r, n, dtype)
    v, y = lw.var("x"), lw.var("y")
    if log:
        sums, s = exp_sum(lw, x, at, r, n, m, dtype)
        ls, d = lw.var("ls"), lw.var("d")
        body += sums + [assign(ls, sp.log(s), "float64"),  # math.log: a float64 whatever s is
                        Loop(r, n, [lw.load(v, x, at), assign(d, v - m, dtype), assign(y, d - ls, "float64"),
                                    lw.store(node, at, y, exact=dtype == "float64")])]
    else:
        s, e, inv = lw.var("s"), lw.var("e"), lw.var("inv")
        body += [assign(s, 0.0, dtype),
                 Loop(r, n, [lw.load(v, x, at), assign(e, sp.exp(v - m), dtype), lw.store(node, at, e, exact=True),
                             assign(s, s + e, dtype)], parallel=False),
                 assign(inv, 1 / s, dtype),
                 Loop(r, n, [lw.load(y, node, at), lw.store(node, at, y * inv, exact=True)])]
    return nest([outer, inner] if inner != 1 else [outer], ["o", "i"] if inner != 1 else ["o"], body)


@rule("softmax")
def lower_softmax(lw: Lowering, node: Node) -> None:
    lw.emit(softmax_kernel(lw, node, log=False))


@rule("log_softmax")
def lower_log_softmax(lw: Lowering, node: Node) -> None:
    lw.emit(softmax_kernel(lw, node, log=True))


@rule("softmax_cross_entropy")
def lower_softmax_cross_entropy(lw: Lowering, node: Node) -> None:
    """mean over rows of logsumexp(row) - row[label] (integer labels) or -sum(p * log_softmax(row))
    (probabilities), summed in float64."""
    logits, labels = node.inputs
    rows, classes = logits.shape
    dtype = node.dtype.name
    r, c = index_var("r"), index_var("c")
    at = r * classes + c
    body, m = row_max(lw, logits, at, c, classes, dtype)
    sums, s = exp_sum(lw, logits, at, c, classes, m, dtype)
    total, lse, v, d = lw.var("total"), lw.var("lse"), lw.var("x"), lw.var("d")
    body += sums + [assign(lse, m + sp.log(s), "float64")]
    if labels.dtype.is_int:
        y = lw.integer_var("y")
        body.append(lw.load(y, labels, r))
        if not lw.labels_checked(labels, classes):
            body.append(lw.label_check(node, y, r, classes, lw.root[id(labels)]))
        body += [lw.load(v, logits, r * classes + y), assign(d, lse - v, "float64"),
                 assign(total, total + d, "float64")]
    else:
        p, term = lw.var("p"), lw.var("term")
        body.append(Loop(c, classes, [lw.load(p, labels, at), lw.load(v, logits, at), assign(d, v - lse, "float64"),
                                      assign(term, p * d, "float64"), assign(total, total - term, "float64")],
                         parallel=False))
    mean = lw.var("mean")
    lw.emit([assign(total, 0.0, "float64"), Loop(r, rows, body, parallel=False),
             assign(mean, divided(total, rows), "float64"), lw.store(node, 0, mean, exact=dtype == "float64")])


@rule("one_hot")
def lower_one_hot(lw: Lowering, node: Node) -> None:
    """Zeros, then a one at each label's column (labels checked unless an input check did it)."""
    (labels,) = node.inputs
    classes = node.attrs["classes"]
    r, y = index_var("r"), lw.integer_var("y")
    body: list = [lw.load(y, labels, r)]
    if not lw.labels_checked(labels, classes):
        body.append(lw.label_check(node, y, r, classes, lw.root[id(labels)]))
    body.append(lw.store(node, r * classes + y, 1, exact=True))
    lw.emit(lw.fill(node, 0) + nest([labels.size], ["r"], body))


@rule("batch_norm")
def lower_batch_norm(lw: Lowering, node: Node) -> None:
    """Per channel: mean and variance over the batch and spatial axes (float64), then x * scale + shift."""
    x, gamma, beta = node.inputs
    n, c = x.shape[:2]
    spatial = int(np.prod(x.shape[2:], dtype=np.int64))
    count = n * spatial
    ch, k, q = index_var("ch"), index_var("k"), index_var("q")
    at = (k * c + ch) * spatial + q
    f64 = "float64"
    s, mu, var, v, d = lw.var("s"), lw.var("mu"), lw.var("var"), lw.var("x"), lw.var("d")
    g, b, scale, shift, y = lw.var("gamma"), lw.var("beta"), lw.var("scale"), lw.var("shift"), lw.var("y")
    body = [assign(s, 0.0, f64)]
    body += nest([n, spatial], ["k", "q"], [lw.load(v, x, at), assign(s, s + v, f64)], parallel=False)
    body += [assign(mu, divided(s, count), f64), assign(var, 0.0, f64)]
    body += nest([n, spatial], ["k", "q"], [lw.load(v, x, at), assign(d, v - mu, f64), assign(var, var + d * d, f64)],
                 parallel=False)
    body += [lw.load(g, gamma, ch), lw.load(b, beta, ch),
             assign(scale, divided(g, sp.sqrt(divided(var, count) + sp.Float(node.attrs["eps"]))), f64),
             assign(shift, b - mu * scale, f64)]
    body += nest([n, spatial], ["k", "q"], [lw.load(v, x, at), assign(y, v * scale + shift, f64),
                                            lw.store(node, at, y, exact=node.dtype.name == f64)])
    lw.emit(nest([c], ["ch"], body))

"""Algebraic simplification: identities that remove nodes without changing any value.

x*1, 1*x, x/1, x+0, 0+x, x-0 -> x;  x*-1, x/-1, 0-x -> -x;  x-x -> 0;  neg(neg x) -> x;
exp(log x) -> x;  log(exp x) -> x;  x**1 -> x;  transpose(transpose x) -> one transpose (or x);
reshape(reshape x) -> one reshape (or x);  broadcast_to chains -> one;  a broadcast feeding an
elementwise op whose other operands already have the full shape -> dropped (``x * broadcast_to(2, S)``
is ``x * 2``);  cast to the same dtype, sum/mean over no axes -> x.

Every replacement has the replaced node's shape and dtype (a smaller result is broadcast up;
a rewrite that would change the dtype is not done). Two identities hold only where the original
is defined: ``exp(log x) -> x`` (x > 0) and ``x - x -> 0`` (finite x); the rewritten graph then
gives the mathematically intended value where the original gave nan.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from .core import Rewriter, conform, is_elementwise_op, make, make_constant, rewrite, uniform_value


def simplify(graph: Graph) -> Graph:
    """Apply the algebraic identities above once over the graph (inputs first, so chains collapse).

    >>> import graphc
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (3,))
    ...     y = g.output(-(-(x * 1.0)) + 0.0)
    >>> [n.op for n in simplify(g).nodes]
    ['input']
    """
    return rewrite(graph, _visit)


def _visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
    rule = _RULES.get(old.op)
    out = rule(old, inputs) if rule is not None else None
    if out is None and is_elementwise_op(old) and old.op != "fused":
        out = _drop_broadcasts(old, inputs)
    if out is None:
        return None
    return conform(out, old)


def _is(value: float | None, target: float) -> bool:
    return value is not None and value == target


def _add(old, ins):
    x, y = ins
    if _is(uniform_value(y), 0.0):
        return x
    if _is(uniform_value(x), 0.0):
        return y
    return None


def _sub(old, ins):
    x, y = ins
    if x is y:
        return _zeros(old)
    if _is(uniform_value(y), 0.0):
        return x
    if _is(uniform_value(x), 0.0) and y.shape == old.shape:
        return make("neg", [y], like=old)
    return None


def _mul(old, ins):
    x, y = ins
    for a, b in ((x, y), (y, x)):
        v = uniform_value(b)
        if _is(v, 1.0):
            return a
        if _is(v, -1.0) and a.shape == old.shape and a.dtype == old.dtype:
            return make("neg", [a], like=old)
    return None


def _div(old, ins):
    x, y = ins
    v = uniform_value(y)
    if _is(v, 1.0):
        return x
    if _is(v, -1.0) and x.shape == old.shape and x.dtype == old.dtype:
        return make("neg", [x], like=old)
    return None


def _pow(old, ins):
    return ins[0] if _is(uniform_value(ins[1]), 1.0) else None


def _neg(old, ins):
    (x,) = ins
    return x.inputs[0] if x.op == "neg" else None


def _exp(old, ins):
    (x,) = ins
    return x.inputs[0] if x.op == "log" else None


def _log(old, ins):
    (x,) = ins
    return x.inputs[0] if x.op == "exp" else None


def _transpose(old, ins):
    (x,) = ins
    perm = tuple(old.attrs["perm"])
    if x.op == "transpose":
        inner = tuple(x.attrs["perm"])
        perm = tuple(inner[p] for p in perm)
        x = x.inputs[0]
    if perm == tuple(range(len(perm))):
        return x
    if x is ins[0]:
        return None
    return make("transpose", [x], {"perm": perm}, like=old)


def _collapse_chain(old, ins):
    """reshape(reshape(x)) and broadcast_to(broadcast_to(x)): one op from x, or x itself when the shapes match."""
    (x,) = ins
    while x.op == old.op:
        x = x.inputs[0]
    if x.shape == old.shape:
        return x
    if x is ins[0]:
        return None
    return make(old.op, [x], {"shape": old.shape}, like=old)


def _cast(old, ins):
    (x,) = ins
    return x if x.dtype == old.dtype else None


def _reduce(old, ins):
    return ins[0] if not old.attrs["axes"] and ins[0].dtype == old.dtype else None


def _zeros(old: Node) -> Node:
    zero = make_constant(0, old.dtype, like=old)
    return zero if not old.shape else make("broadcast_to", [zero], {"shape": old.shape}, like=old)


def _drop_broadcasts(old: Node, ins: tuple) -> Node | None:
    """``op(..., broadcast_to(y, S), ...)`` -> ``op(..., y, ...)`` when the result keeps its shape."""
    if not any(i.op == "broadcast_to" for i in ins):
        return None
    new = list(ins)
    for k, i in enumerate(ins):
        if i.op != "broadcast_to":
            continue
        trial = new[:k] + [i.inputs[0]] + new[k + 1:]
        if np.broadcast_shapes(*(t.shape for t in trial)) == old.shape:
            new = trial
    if all(a is b for a, b in zip(new, ins)):
        return None
    return make(old.op, new, old.attrs, like=old)


_RULES = {
    "add": _add, "sub": _sub, "mul": _mul, "div": _div, "pow": _pow, "neg": _neg, "exp": _exp, "log": _log,
    "transpose": _transpose, "reshape": _collapse_chain, "broadcast_to": _collapse_chain, "cast": _cast,
    "sum": _reduce, "mean": _reduce,
}

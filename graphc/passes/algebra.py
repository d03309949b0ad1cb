"""Algebraic simplification: identities that remove nodes without changing any value.

x*1, 1*x, x/1, x+0, 0+x, x-0 -> x;  x*-1, x/-1, 0-x -> -x;  neg(neg x) -> x;
x**1 -> x;  transpose(transpose x) -> one transpose (or x);
reshape(reshape x) -> one reshape (or x);  broadcast_to chains -> one;  a broadcast feeding an
elementwise op whose other operands already have the full shape -> dropped (``x * broadcast_to(2, S)``
is ``x * 2``);  cast to the same dtype, sum/mean over no axes -> x.

Every replacement has the replaced node's shape and dtype (a smaller result is broadcast up;
a rewrite that would change the dtype is not done). These keep IEEE values, NaN and infinities
included (``x + 0 -> x`` may turn a -0 result into +0: the sign of a zero is not kept).

Only with ``fast_math=True`` (identities of real numbers that are false for NaN, infinities or
overflow, as a C compiler's -ffast-math): ``x - x -> 0`` (inf - inf is NaN), ``x * 0``, ``0 * x -> 0``
(inf * 0 is NaN), ``x / x -> 1`` (0/0 is NaN), ``exp(log x) -> x`` (NaN for x < 0), ``log(exp x) -> x``
(inf for x > 709).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..ops import registry
from .core import Rewriter, conform, make, make_constant, rewrite, uniform_value


def simplify(graph: Graph, fast_math: bool = False) -> Graph:
    """Apply the algebraic identities above once over the graph (inputs first, so chains collapse);
    the fast-math ones too when ``fast_math``.

    >>> import graphc
    >>> with graphc.Graph() as g:
    ...     x = graphc.input("x", (3,))
    ...     y = g.output(-(-(x * 1.0)) + 0.0)
    >>> [n.op for n in simplify(g).nodes]
    ['input']
    """
    rules = _FAST_MATH_RULES if fast_math else _RULES

    def visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
        return _visit(rules, old, inputs)

    return rewrite(graph, visit)


def _visit(rules: dict, old: Node, inputs: tuple) -> Node | None:
    rule = rules.get(old.op)
    out = rule(old, inputs) if rule is not None else None
    if out is None and registry.get(old.op).is_elementwise:  # an op defined by its expression (not a fused node)
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


def _fast_sub(old, ins):
    return _zeros(old) if ins[0] is ins[1] else _sub(old, ins)


def _fast_mul(old, ins):
    if _is(uniform_value(ins[0]), 0.0) or _is(uniform_value(ins[1]), 0.0):
        return _zeros(old)
    return _mul(old, ins)


def _fast_div(old, ins):
    x, y = ins
    if x is y:
        one = make_constant(1, old.dtype, like=old)
        return one if not old.shape else make("broadcast_to", [one], {"shape": old.shape}, like=old)
    return _div(old, ins)


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
    "add": _add, "sub": _sub, "mul": _mul, "div": _div, "pow": _pow, "neg": _neg,
    "transpose": _transpose, "reshape": _collapse_chain, "broadcast_to": _collapse_chain, "cast": _cast,
    "sum": _reduce, "mean": _reduce,
}
#: The rules under fast_math: identities of real numbers that NaN, infinities or overflow break.
_FAST_MATH_RULES = dict(_RULES, sub=_fast_sub, mul=_fast_mul, div=_fast_div, exp=_exp, log=_log)

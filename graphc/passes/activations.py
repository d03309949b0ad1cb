"""Activation derivatives from the activation's output.

autodiff computes relu'(z) from the pre-activation z, which keeps z alive until the backward
pass and gives z a second reader, so the activation cannot be fused into the GEMM that produces
z. For activations whose derivative is a function of their output, rewrite

  drelu_dx(z) -> (h <= 0 ? 0 : 1)   dsigmoid_dx(z) -> h (1 - h)      dtanh_dx(z) -> 1 - h^2
  dexp_dx(z)  -> h             dleaky_relu_dx(z) -> (h > 0 ? 1 : alpha)   delu_dx(z) -> (h >= 0 ? 1 : h + alpha)

where h = act(z) is already in the graph. Each identity is the activation's ``from_output`` fact
(its registry entry, :class:`graphc.ops.OpDef`); each is checked numerically (grid including
0, +-1000, +-inf and NaN, where the derivative's NaN must stay NaN; the op's parameters
substituted) before it is used, so a parameter value for which it fails (leaky_relu with
alpha < 0) leaves the node alone.
"""
from __future__ import annotations

import functools

import numpy as np
import sympy as sp

from ..ir import Attrs, Graph, Node
from ..ops import registry
from ..ops.elementwise import derivative_name, derivative_op, fused_symbols, numpy_function
from .core import Rewriter, copy_node, make, rewrite

_y = fused_symbols(1)[0]

_GRID = np.array([-1000.0, -30.0, -2.5, -1.0, -0.3, -1e-3, 0.0, 1e-3, 0.3, 1.0, 2.5, 30.0, 1000.0,
                  np.inf, -np.inf, np.nan])


@functools.lru_cache(maxsize=None)
def from_output_expr(act: str, attrs: Attrs) -> sp.Expr | None:
    """The derivative of ``act`` as an expression of x0 = act(x), or None when no checked identity exists."""
    if not registry.is_registered(act) or registry.get(act).from_output is None:
        return None
    op = registry.get(act)
    rule = op.from_output
    params = [float(attrs[p]) for p in op.params]
    candidate = sp.sympify(rule(_y, *params))
    dname = derivative_op(act, 0)
    if dname is None:
        return None
    deriv = registry.get(dname)
    values = {sp.Symbol(p, real=True): float(attrs[p]) for p in op.params}
    x = op.symbols[0]
    with np.errstate(all="ignore"):
        f = numpy_function([x], op.expr.subs(values))
        d = numpy_function([x], deriv.expr.subs(values))
        c = numpy_function([_y], candidate)
        expected = np.broadcast_to(np.asarray(d(_GRID), dtype=np.float64), _GRID.shape)
        got = np.broadcast_to(np.asarray(c(np.asarray(f(_GRID), dtype=np.float64)), dtype=np.float64), _GRID.shape)
    ok = np.isfinite(expected)
    if not np.all(np.isfinite(got[ok])) or not np.allclose(got[ok], expected[ok], rtol=1e-7, atol=1e-12):
        return None
    if np.any(np.isnan(got) != np.isnan(expected)):  # a NaN input's derivative stays what the op's own gives
        return None
    return candidate


def _activations_by_derivative() -> dict[str, str]:
    """derivative op name -> the activation whose entry says how to compute it from its output."""
    return {derivative_name(op.name, 0): op.name for op in registry.all_ops() if op.from_output is not None}


def derivatives_from_outputs(graph: Graph) -> Graph:
    """Rewrite activation-derivative nodes to read the activation's output (see the module docstring).

    >>> import graphc
    >>> from graphc.ops.elementwise import derivative_op
    >>> with graphc.Graph() as g:
    ...     z = graphc.input("z", (4,))
    ...     h = graphc.relu(z)
    ...     d = graphc.apply(derivative_op("relu", 0), [z])
    ...     _ = g.output(h, d)
    >>> [n.op for n in derivatives_from_outputs(g).nodes]
    ['input', 'relu', 'fused']
    """
    forward: dict = {}  # (activation, attrs, id(new input)) -> the new activation node
    activation_of = _activations_by_derivative()

    def visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
        if registry.get(old.op).from_output is not None and len(inputs) == 1:
            node = copy_node(old, inputs)
            forward.setdefault((old.op, old.attrs, id(inputs[0])), node)
            return node
        act = activation_of.get(old.op)
        if act is None:
            return None
        h = forward.get((act, old.attrs, id(inputs[0])))
        expr = from_output_expr(act, old.attrs)
        if h is None or expr is None:
            return None
        return make("fused", [h], {"expr": expr, "dtype": old.dtype.name}, like=old, absorbed=(old,))

    return rewrite(graph, visit)

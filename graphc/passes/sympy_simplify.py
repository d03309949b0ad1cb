"""SymPy simplification of fused scalar expressions, under a time budget; only with ``fast_math``.

SymPy's rewrites are identities of real numbers (``cancel`` turns ``x0*(x1/x0 - 1)`` into
``x1 - x0``, which is not NaN at x0 = 0), so by default (IEEE semantics) this pass changes nothing.

For each ``fused`` / epilogue expression with at most ``max_ops`` operations, a few SymPy
rewrites are tried (``factor_terms``, ``powsimp``, ``cancel``, ``expand``; the full
``sympy.simplify`` only on small expressions, where it is quick). A candidate replaces the
expression only if it has fewer operations and agrees with it numerically at test points
spanning +-1000 (finite wherever the original is, equal there), so a "simpler" form that
overflows earlier is never taken. Results are cached per expression; once ``budget_s`` seconds
have been spent in one call, the remaining expressions are left as they are.
"""
from __future__ import annotations

import functools
import time

import numpy as np
import sympy as sp

from ..ir import Graph, Node
from .core import Rewriter, copy_node, rewrite

#: Expressions with more operations than this are not touched (simplify's cost grows fast).
MAX_OPS = 40
#: ``sympy.simplify`` itself only below this size.
FULL_SIMPLIFY_OPS = 12
#: The cheap rewrites tried on every expression (``sympy.simplify`` is added for small ones).
TRANSFORMS = (sp.factor_terms, sp.powsimp, sp.cancel, sp.expand)
#: Default time budget for one call of the pass, in seconds.
BUDGET_S = 0.3

_VALUES = np.array([-1000.0, -30.0, -2.5, -1.0, -0.3, -1e-3, 0.0, 1e-3, 0.3, 1.0, 2.5, 30.0, 1000.0])


def _points(n: int) -> np.ndarray:
    """[n, k] test points: every value for each symbol, the others drawn from the same set."""
    rng = np.random.default_rng(1234 + n)
    k = max(64, len(_VALUES) * 4)
    pts = rng.choice(_VALUES, size=(n, k))
    for i in range(n):
        pts[i, : len(_VALUES)] = _VALUES
    return pts


def _evaluate(expr: sp.Expr, symbols: list, pts: np.ndarray) -> np.ndarray | None:
    try:
        fn = sp.lambdify(symbols, expr, modules="numpy")
        with np.errstate(all="ignore"):
            out = np.asarray(fn(*pts), dtype=np.float64)
        return np.broadcast_to(out, pts.shape[1:]).copy()
    except Exception:  # not evaluable numerically: the candidate cannot be checked, so it is not used
        return None


@functools.lru_cache(maxsize=4096)
def simplest_equivalent(expr: sp.Expr) -> sp.Expr:
    """The shortest of a few SymPy rewrites of ``expr`` that is numerically as good; ``expr`` if none."""
    ops = sp.count_ops(expr)
    if ops > MAX_OPS or expr.is_number:
        return expr
    transforms = list(TRANSFORMS)
    if ops <= FULL_SIMPLIFY_OPS:
        transforms.append(sp.simplify)
    symbols = sorted(expr.free_symbols, key=lambda s: s.name)
    pts = _points(len(symbols))
    reference = _evaluate(expr, symbols, pts)
    if reference is None:
        return expr
    finite = np.isfinite(reference)
    best, best_ops = expr, ops
    for transform in transforms:
        try:
            candidate = transform(expr)
        except Exception:  # a failed rewrite is one candidate fewer
            continue
        c_ops = sp.count_ops(candidate)
        if c_ops >= best_ops or candidate.free_symbols - expr.free_symbols:
            continue
        values = _evaluate(candidate, symbols, pts)
        if values is None or not np.all(np.isfinite(values[finite])):
            continue
        if not np.allclose(values[finite], reference[finite], rtol=1e-9, atol=1e-12):
            continue
        best, best_ops = candidate, c_ops
    return best


def simplify_expressions(graph: Graph, budget_s: float = BUDGET_S, max_ops: int = MAX_OPS,
                         fast_math: bool = False) -> Graph:
    """Simplify the expression of every fused and epilogue node, within ``budget_s`` seconds, when
    ``fast_math`` (otherwise ``graph`` is returned as it is: see the module docstring).

    >>> import graphc, sympy
    >>> from graphc.ops.elementwise import fused_symbols
    >>> x0, x1 = fused_symbols(2)
    >>> with graphc.Graph() as g:
    ...     p, q = graphc.input("p", (3,)), graphc.input("q", (3,))
    ...     y = g.output(graphc.ops.elementwise.fused(x0 * (x1 / x0 - 1), [p, q], "float32"))
    >>> simplify_expressions(g, fast_math=True).nodes[-1].attrs["expr"]
    -x0 + x1
    >>> simplify_expressions(g).nodes[-1].attrs["expr"]
    x0*(-1 + x1/x0)
    """
    if not fast_math:
        return graph
    start = time.perf_counter()

    def visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
        if "expr" not in old.attrs or not isinstance(old.attrs["expr"], sp.Basic):
            return None
        expr = old.attrs["expr"]
        if sp.count_ops(expr) > max_ops or time.perf_counter() - start > budget_s:
            return None
        better = simplest_equivalent(expr)
        if better is expr:
            return None
        return copy_node(old, inputs, attrs=type(old.attrs)(dict(old.attrs, expr=better)))

    return rewrite(graph, visit)

"""Numerical-stability rewrites: forms that overflow or divide by an underflowed zero become
forms that do not, in the forward graph and in the backward graph autodiff built from it.

Forward:
  log(softmax(x))                            -> log_softmax(x)
  -mean(sum(one_hot(l) * log_softmax(z), 1))  -> softmax_cross_entropy(z, l)   (any chain of sum/mean/neg/
                                                scaling that totals -1/N; labels must be a one_hot node,
                                                whose rows sum to 1, as the op's gradient (p - y)/N assumes)
  log(sigmoid(x))                            -> -softplus(-x)
  log(1 - sigmoid(x))                        -> -softplus(x)
  y log(sigmoid(z)) + (1 - y) log(1 - sigmoid(z)) -> y z - softplus(z)   (binary cross-entropy, with logits)

Backward (the gradient graph of the forms above, as the registered VJP rules build it):
  softmax-VJP(log-VJP(g)) = p * (g/p - sum(g/p * p))  -> g - p * sum(g)        (log_softmax's VJP)
  (sum of g_k / s and -g_k / (1 - s) terms) * sigmoid'(x) -> sum of g_k sigmoid(-x) and -g_k sigmoid(x)

The backward patterns follow the VJP rules in graphc/ops (elementwise_vjp, softmax's rule), so
a gradient built by graphc.grad from the unstable form comes out finite for |logits| ~ 1e4.
"""
from __future__ import annotations

from ..ir import Graph, Node
from ..ops.elementwise import derivative_name
from .core import Rewriter, conform, make, make_constant, rewrite, uniform_value

#: Relative tolerance when matching a scale factor (float32 constants like 1/128).
_FACTOR_RTOL = 1e-6


def stabilize(graph: Graph) -> Graph:
    """Rewrite the unstable patterns listed in this module's docstring.

    >>> import graphc
    >>> with graphc.Graph() as g:
    ...     z = graphc.input("z", (2, 3))
    ...     y = g.output(graphc.log(graphc.softmax(z, axis=1)))
    >>> [n.op for n in stabilize(g).nodes]
    ['input', 'log_softmax']
    """
    return rewrite(graph, _visit)


def _visit(rw: Rewriter, old: Node, inputs: tuple) -> Node | None:
    for rule in _RULES:
        out = rule(rw, old)
        if out is not None:
            fitted = conform(out, old)
            if fitted is not None:
                return fitted
    return None


# -- small matchers on the old graph ----------------------------------------------------------------

def _op(node: Node, name: str) -> bool:
    return node.op == name


def _pair(node: Node, first, second):
    """For a commutative binary node: (a, b) with first(a) and second(b) true, in either order."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if first(a) and second(b):
        return a, b
    if first(b) and second(a):
        return b, a
    return None


def _one_minus(node: Node) -> Node | None:
    """``v`` when ``node`` is ``1 - v``."""
    if node.op == "sub" and uniform_value(node.inputs[0]) == 1.0:
        return node.inputs[1]
    return None


def _is_deriv(node: Node, op: str) -> bool:
    return node.op == derivative_name(op, 0)


# -- forward rules ------------------------------------------------------------------------------------

def _log_softmax(rw: Rewriter, old: Node):
    if old.op == "log" and old.inputs[0].op == "softmax":
        sm = old.inputs[0]
        return make("log_softmax", [rw.new(sm.inputs[0])], {"axis": sm.attrs["axis"]}, like=old)
    return None


def _log_sigmoid(rw: Rewriter, old: Node):
    if old.op != "log":
        return None
    arg = old.inputs[0]
    if arg.op == "sigmoid":
        x = rw.new(arg.inputs[0])
        return make("neg", [make("softplus", [make("neg", [x], like=old)], like=old)], like=old)
    inner = _one_minus(arg)
    if inner is not None and inner.op == "sigmoid":
        x = rw.new(inner.inputs[0])
        return make("neg", [make("softplus", [x], like=old)], like=old)
    return None


def _binary_ce(rw: Rewriter, old: Node):
    """y log(sigmoid(z)) + (1 - y) log(1 - sigmoid(z)) -> y z - softplus(z)."""
    if old.op != "add":
        return None

    def pos_term(n):  # y * log(sigmoid(z))
        m = n.op == "mul" and _pair(n, lambda a: True, lambda b: b.op == "log" and b.inputs[0].op == "sigmoid")
        return m or None

    def neg_term(n):  # (1 - y) * log(1 - sigmoid(z))
        if n.op != "mul":
            return None
        return _pair(n, lambda a: _one_minus(a) is not None,
                     lambda b: b.op == "log" and (_one_minus(b.inputs[0]) or b).op == "sigmoid")

    a, b = old.inputs
    for first, second in ((a, b), (b, a)):
        p, q = pos_term(first), neg_term(second)
        if not p or not q:
            continue
        y, log_s = p
        one_minus_y, log_1ms = q
        s1, s2 = log_s.inputs[0], _one_minus(log_1ms.inputs[0])
        if _one_minus(one_minus_y) is not y or s2 is None or s1.inputs[0] is not s2.inputs[0]:
            continue
        y_new, z = rw.new(y), rw.new(s1.inputs[0])
        return make("sub", [make("mul", [y_new, z], like=old), make("softplus", [z], like=old)], like=old)
    return None


def _softmax_ce(rw: Rewriter, old: Node):
    """A scalar equal to -1/N * sum(one_hot(labels) * log_softmax(z, axis=1)) -> softmax_cross_entropy."""
    if old.shape != () or not old.dtype.is_float:
        return None
    factor, node, reduced = 1.0, old, False
    while True:
        if node.op == "neg":
            factor, node = -factor, node.inputs[0]
        elif node.op in ("mul", "div") and uniform_value(node.inputs[1]) is not None \
                and node.inputs[0].shape == node.shape:
            v = uniform_value(node.inputs[1])
            if v == 0.0:
                return None
            factor, node = (factor * v if node.op == "mul" else factor / v), node.inputs[0]
        elif node.op == "mul" and uniform_value(node.inputs[0]) is not None and node.inputs[1].shape == node.shape:
            factor, node = factor * uniform_value(node.inputs[0]), node.inputs[1]
        elif node.op in ("sum", "mean"):
            if node.op == "mean":
                count = node.inputs[0].size // max(node.size, 1)
                if count == 0:  # the mean of no elements is NaN: nothing to stabilize
                    return None
                factor /= count
            node, reduced = node.inputs[0], True
        elif node.op == "reshape":
            node = node.inputs[0]
        else:
            break
    if not reduced or node.op != "mul":
        return None
    m = _pair(node, lambda a: a.op == "one_hot", lambda b: _log_softmax_of(b) is not None)
    if m is None:
        return None
    onehot, logp = m
    z, axis = _log_softmax_of(logp)
    if axis != 1 or z.ndim != 2 or onehot.shape != z.shape or not onehot.dtype.is_float:
        return None
    n = z.shape[0]
    if abs(factor * n + 1.0) > _FACTOR_RTOL:
        return None
    return make("softmax_cross_entropy", [rw.new(z), rw.new(onehot.inputs[0])], like=old)


def _log_softmax_of(node: Node):
    """(z, axis) when ``node`` is log_softmax(z) or log(softmax(z))."""
    if node.op == "log_softmax":
        return node.inputs[0], node.attrs["axis"]
    if node.op == "log" and node.inputs[0].op == "softmax":
        return node.inputs[0].inputs[0], node.inputs[0].attrs["axis"]
    return None


# -- backward rules -----------------------------------------------------------------------------------

def _log_softmax_backward(rw: Rewriter, old: Node):
    """p * (u - sum(u * p, axis, keepdims)) with u = g * dlog_dx(p), p = softmax(z) -> g - p * sum(g)."""
    if old.op != "mul":
        return None
    m = _pair(old, lambda a: a.op == "softmax", lambda b: b.op == "sub")
    if m is None:
        return None
    p, d = m
    u, s = d.inputs
    axis = p.attrs["axis"]
    if s.op != "sum" or s.attrs["axes"] != (axis,) or not s.attrs["keepdims"]:
        return None
    if s.inputs[0].op != "mul" or _pair(s.inputs[0], lambda a: a is u, lambda b: b is p) is None:
        return None
    g_old, dlog = _times_dlog(u)
    if dlog is None or dlog.inputs[0] is not p:
        return None
    g = rw.new(g_old) if g_old is not None else make_constant(1, p.dtype, like=old)
    if g.shape != p.shape:
        g = make("broadcast_to", [g], {"shape": p.shape}, like=old)
    p_new = rw.new(p)
    total = make("sum", [g], {"axes": (axis,), "keepdims": True}, like=old)
    return make("sub", [g, make("mul", [p_new, total], like=old)], like=old)


def _times_dlog(term: Node) -> tuple[Node | None, Node | None]:
    """(g, dlog_dx(q)) when ``term`` is g * dlog_dx(q), (None, dlog_dx(q)) when it is dlog_dx(q) alone
    (the cotangent 1 was simplified away); else (None, None)."""
    if _is_deriv(term, "log"):
        return None, term
    if term.op == "mul":
        gm = _pair(term, lambda a: True, lambda b: _is_deriv(b, "log"))
        if gm is not None:
            return gm
    return None, None


def _signed_terms(node: Node, shape, sign: int = 1, depth: int = 0) -> list[tuple[int, Node]]:
    """``node`` as a signed sum of terms, looking through add, sub and neg of its own shape."""
    if depth < 8 and node.shape == shape:
        if node.op == "add":
            return _signed_terms(node.inputs[0], shape, sign, depth + 1) + _signed_terms(node.inputs[1], shape, sign, depth + 1)
        if node.op == "sub":
            return _signed_terms(node.inputs[0], shape, sign, depth + 1) + _signed_terms(node.inputs[1], shape, -sign, depth + 1)
        if node.op == "neg":
            return _signed_terms(node.inputs[0], shape, -sign, depth + 1)
    return [(sign, node)]


def _sigmoid_log_backward(rw: Rewriter, old: Node):
    """c * dsigmoid_dx(x), c a sum of g/sigmoid(x) and -g/(1 - sigmoid(x)) terms -> finite terms."""
    if old.op != "mul":
        return None
    m = _pair(old, lambda a: True, lambda b: _is_deriv(b, "sigmoid"))
    if m is None:
        return None
    cot, dsig = m
    x = dsig.inputs[0]
    terms, matched = [], False
    for sign, term in _signed_terms(cot, cot.shape):
        g, dlog = _times_dlog(term)
        if dlog is not None:
            q = dlog.inputs[0]
            inner = _one_minus(q)
            factor = None
            if q.op == "sigmoid" and q.inputs[0] is x:
                # g/s * s(1-s) = g (1-s) = g sigmoid(-x)
                factor = make("sigmoid", [make("neg", [rw.new(x)], like=old)], like=old)
            elif inner is not None and inner.op == "sigmoid" and inner.inputs[0] is x:
                # g/(1-s) * s(1-s) = g s; the sign from the 1 - s subtraction is already in `sign`
                factor = make("sigmoid", [rw.new(x)], like=old)
            if factor is not None:
                terms.append((sign, factor if g is None else make("mul", [rw.new(g), factor], like=old)))
                matched = True
                continue
        terms.append((sign, make("mul", [rw.new(term), rw.new(dsig)], like=old)))
    if not matched:
        return None
    total = None
    for sign, t in terms:
        if total is None:
            total = t if sign > 0 else make("neg", [t], like=old)
        else:
            total = make("add" if sign > 0 else "sub", [total, t], like=old)
    return total


# Forward rules that look at a whole expression come before the local ones they would pre-empt.
_RULES = (_binary_ce, _softmax_ce, _log_softmax, _log_sigmoid, _log_softmax_backward, _sigmoid_log_backward)

"""Semantic preservation on random graphs: for hypothesis-generated graphs (elementwise chains with
broadcasting, reductions, matmuls, convolutions, softmax and hand-written losses, their gradients
from graphc.grad and SGD updates), ``optimize(g, level)`` evaluated by the reference backend
equals ``g`` evaluated by the reference backend, at every level 0..3, within float64 tolerance.

The generator keeps values finite (exp and log only on bounded or positive arguments), so the
comparison is exact up to rounding everywhere.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_passes_support import run_with_plan, values

import graphc
from graphc import passes

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RTOL, ATOL = 1e-8, 1e-10


def _unary(draw, t):
    """A unary elementwise function of t that stays finite for finite t."""
    choice = draw(st.sampled_from([
        "neg", "tanh", "sigmoid", "relu", "abs", "softplus", "leaky_relu", "square_tanh", "exp_tanh",
        "log_sigmoid", "log_softplus", "sqrt", "x*1", "x+0", "negneg", "exp_log", "times_c",
    ]))
    if choice == "neg":
        return -t
    if choice == "square_tanh":
        return graphc.square(graphc.tanh(t))
    if choice == "exp_tanh":
        return graphc.exp(graphc.tanh(t))
    if choice == "log_sigmoid":
        return graphc.log(graphc.sigmoid(t))
    if choice == "log_softplus":
        return graphc.log(graphc.softplus(t) + 0.5)
    if choice == "sqrt":
        return graphc.sqrt(graphc.square(t) + 1.0)
    if choice == "x*1":
        return t * 1.0
    if choice == "x+0":
        return 0.0 + t
    if choice == "negneg":
        return graphc.neg(graphc.neg(t))
    if choice == "exp_log":
        return graphc.exp(graphc.log(graphc.sigmoid(t)))
    if choice == "times_c":
        return t * draw(st.sampled_from([0.5, -2.0, 3.0]))
    if choice == "leaky_relu":
        return graphc.leaky_relu(t, alpha=0.1)
    return getattr(graphc, choice)(t)


def _binary(draw, a, b):
    choice = draw(st.sampled_from(["add", "sub", "mul", "maximum", "minimum", "safe_div", "where", "same_sub"]))
    if choice == "safe_div":
        return a / (graphc.abs(b) + 1.0)
    if choice == "where":
        return graphc.where(a > b, a, b * 0.5)
    if choice == "same_sub":
        return a - a + b
    return getattr(graphc, choice)(a, b)


def _broadcasts(a, b):
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


@st.composite
def dense_programs(draw):
    """A random graph over [B, F] data with broadcasting inputs, params, reductions and matmuls."""
    B, F, H = draw(st.integers(1, 3)), draw(st.integers(2, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    with graphc.Graph("random") as g:
        feeds = {"x": rng.standard_normal((B, F))}
        x = graphc.input("x", (B, F), "float64")
        pool = [x]
        for name, shape in (("row", (F,)), ("col", (B, 1)), ("s", ())):
            if draw(st.booleans()):
                feeds[name] = rng.standard_normal(shape)
                pool.append(graphc.input(name, shape, "float64"))
        W = graphc.param("W", rng.standard_normal((F, H)) * 0.5)
        b = graphc.param("b", rng.standard_normal(H) * 0.1)
        V = graphc.param("V", rng.standard_normal((H, F)) * 0.5)
        params = [W, b, V]
        for _ in range(draw(st.integers(2, 9))):
            kind = draw(st.sampled_from(["unary", "unary", "binary", "binary", "reduce", "matmul", "dense",
                                         "softmax", "shape", "broadcast"]))
            t = draw(st.sampled_from(pool))
            if kind == "unary":
                pool.append(_unary(draw, t))
            elif kind == "binary":
                other = draw(st.sampled_from([p for p in pool if _broadcasts(p.shape, t.shape)]))
                pool.append(_binary(draw, t, other))
            elif kind == "reduce" and t.ndim >= 1:
                op = draw(st.sampled_from([graphc.sum, graphc.mean, graphc.max]))
                pool.append(op(t, axis=draw(st.integers(0, t.ndim - 1)), keepdims=draw(st.booleans())))
            elif kind in ("matmul", "dense"):
                full = graphc.broadcast_to(t, (B, F)) if _broadcasts(t.shape, (B, F)) and \
                    np.broadcast_shapes(t.shape, (B, F)) == (B, F) else x
                h = graphc.dense(full, W, b) if kind == "dense" else graphc.matmul(full, W)
                pool.append(graphc.matmul(graphc.relu(h), V))
            elif kind == "softmax" and t.ndim == 2:
                form = draw(st.sampled_from(["op", "log_op", "by_hand", "log_softmax_by_hand"]))
                if form == "op":
                    pool.append(graphc.softmax(t, axis=1))
                elif form == "log_op":
                    pool.append(graphc.log(graphc.softmax(t, axis=1)))
                elif form == "by_hand":
                    e = graphc.exp(t - graphc.max(t, axis=1, keepdims=True))
                    pool.append(e / graphc.sum(e, axis=1, keepdims=True))
                else:
                    s = t - graphc.max(t, axis=1, keepdims=True)
                    pool.append(s - graphc.log(graphc.sum(graphc.exp(s), axis=1, keepdims=True)))
            elif kind == "shape" and t.ndim == 2:
                if draw(st.booleans()):
                    pool.append(graphc.transpose(graphc.transpose(t) * 2.0))
                else:
                    pool.append(graphc.reshape(graphc.reshape(t, (-1,)), t.shape) + 1.0)
            elif kind == "broadcast" and _broadcasts(t.shape, (B, F)) and np.broadcast_shapes(t.shape, (B, F)) == (B, F):
                pool.append(graphc.broadcast_to(t, (B, F)) * graphc.broadcast_to(graphc.constant(np.array(2.0)), (B, F)))
        picked = draw(st.lists(st.sampled_from(pool[1:] or pool), min_size=1, max_size=3))
        loss = None
        for t in picked:
            term = graphc.sum(t * t) if draw(st.booleans()) else graphc.mean(graphc.tanh(t))
            loss = term if loss is None else loss + term
        g.output(loss)
        g.output(*picked[:2])
        if draw(st.booleans()):
            wrt = params + [x]
            grads = graphc.grad(loss, wrt)
            g.output(grads[-1])
            for p, d in zip(params, grads):
                g.update(p, p - d * 0.1)
    return g, feeds


@st.composite
def conv_programs(draw):
    """conv2d (+ bias, activation, pooling) with a hand-written softmax cross-entropy head, and gradients."""
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    k, pad, stride = draw(st.integers(1, 3)), draw(st.integers(0, 1)), draw(st.integers(1, 2))
    size = draw(st.integers(k + 1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    with graphc.Graph("random_conv") as g:
        x = graphc.input("x", (n, c, size, size), "float64")
        w = graphc.param("w", rng.standard_normal((o, c, k, k)) * 0.5)
        b = graphc.param("b", rng.standard_normal(o) * 0.1)
        h = graphc.conv2d(x, w, stride=stride, padding=pad) + graphc.reshape(b, (1, o, 1, 1))
        h = _unary(draw, h)
        if draw(st.booleans()) and h.shape[2] >= 2 and h.shape[3] >= 2:
            h = graphc.max_pool2d(h, 2) if draw(st.booleans()) else graphc.avg_pool2d(h, 2)
        flat = graphc.reshape(h, (n, -1))
        z = graphc.matmul(flat, graphc.param("V", rng.standard_normal((flat.shape[1], 3)) * 0.3))
        labels = graphc.input("labels", (n,), "int64")
        y = graphc.one_hot(labels, 3, "float64")
        loss = -graphc.mean(graphc.sum(y * graphc.log(graphc.softmax(z, axis=1)), axis=1))
        params = [w, b]
        grads = graphc.grad(loss, params)
        g.output(loss, *grads)
        for p, d in zip(params, grads):
            g.update(p, p - d * 0.05)
    feeds = {"x": rng.standard_normal((n, c, size, size)), "labels": rng.integers(0, 3, n)}
    return g, feeds


def check_every_level(g, feeds):
    want = values(g, feeds)
    assert all(np.all(np.isfinite(w)) for w in want)
    for level in range(4):
        result = graphc.optimize(g, level=level)
        got = values(result.graph, feeds)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"level {level}")
    # the final plan runs the optimized graph in the memory it assigns
    outputs, params = run_with_plan(result.graph, result.buffer_plan, feeds)
    for a, b in zip(outputs, want):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    for (p, _), new in zip(g.updates, want[len(g.outputs):]):
        np.testing.assert_allclose(params[p.name], new, rtol=RTOL, atol=ATOL)


@settings(max_examples=40, **SETTINGS)
@given(dense_programs())
def test_random_graphs_are_preserved_at_every_level(program):
    g, feeds = program
    check_every_level(g, feeds)


@settings(max_examples=12, **SETTINGS)
@given(conv_programs())
def test_random_conv_graphs_are_preserved_at_every_level(program):
    g, feeds = program
    check_every_level(g, feeds)


@settings(max_examples=25, **SETTINGS)
@given(dense_programs())
def test_each_pass_alone_preserves_values(program):
    """Every pass on its own (not only the pipelines), on the unoptimized graph."""
    g, feeds = program
    want = values(g, feeds)
    for name, fn in {name: fn for level in passes.LEVELS.values() for name, fn in level}.items():
        got = values(fn(g), feeds)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=name)

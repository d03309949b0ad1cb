"""graphc.grad on whole networks, higher order, provenance, the printed gradient graph, check_grad.

Oracles: fourth-order central finite differences written here (float64), the course's
backpropagation equations in plain NumPy, and closed-form derivatives.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

import graphc
from graphc.autodiff import gradient_text

STEP = 1e-4
FLOOR = 1e-4


# The golden file tests/golden/sigmoid_mlp_grad.txt holds this function's line numbers: it comes first in
# the file so that edits below it do not move them.
def build_sigmoid_mlp():
    """2-3-2 sigmoid network with squared loss E = 1/2 sum (t - o)^2 (kept stable: pinned by a golden file)."""
    rng = np.random.default_rng(2024)
    with graphc.Graph("sigmoid_mlp") as g:
        x = graphc.input("x", (4, 2), "float64")
        t = graphc.input("t", (4, 2), "float64")
        W1 = graphc.param("W1", rng.normal(size=(2, 3)))
        b1 = graphc.param("b1", rng.normal(size=3) * 0.1)
        W2 = graphc.param("W2", rng.normal(size=(3, 2)))
        b2 = graphc.param("b2", rng.normal(size=2) * 0.1)
        o_h = graphc.sigmoid(graphc.dense(x, W1, b1))
        o_k = graphc.sigmoid(graphc.dense(o_h, W2, b2))
        loss = 0.5 * graphc.sum(graphc.square(t - o_k))
        grads = graphc.grad(loss, [W1, b1, W2, b2])
        g.output(loss, *grads)
    return g, (x, t), (W1, b1, W2, b2), (o_h, o_k), loss, grads


def numeric_gradient(f, x: np.ndarray) -> np.ndarray:
    """d f / dx by fourth-order central differences; ``f`` maps an array like ``x`` to a float or array."""
    out = None
    for index in np.ndindex(*x.shape):
        def at(step, index=index):
            moved = x.copy()
            moved[index] += step
            return np.asarray(f(moved), np.float64)
        d = (8 * (at(STEP) - at(-STEP)) - (at(2 * STEP) - at(-2 * STEP))) / (12 * STEP)
        if out is None:
            out = np.zeros(x.shape + d.shape)
        out[index] = d
    return out


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), FLOOR)
    return float(np.max(np.abs(a - b) / scale))


def assert_network_gradients(loss, params, feeds, tol=1e-6):
    grads = graphc.grad(loss, params)
    values = graphc.evaluate(grads, feeds)
    for p, sym in zip(params, values):
        start = np.asarray(p.node.value, np.float64)
        numeric = numeric_gradient(lambda v, p=p: graphc.evaluate(loss, feeds, params={p: v}), start)
        err = relative_error(sym, numeric)
        assert err < tol, f"gradient of {p.name}: relative error {err:.3g}\n{sym}\n{numeric}"
    return values


def margin_from(values: np.ndarray, kinks) -> float:
    """How far ``values`` stay from the points where an activation is not differentiable."""
    return min(float(np.min(np.abs(values - k))) for k in kinks)


# -- whole networks ------------------------------------------------------------------------------------------

ACTIVATIONS = {
    # name: (build(z), non-differentiable points of the activation)
    "sigmoid": (graphc.sigmoid, ()),
    "tanh": (graphc.tanh, ()),
    "relu": (graphc.relu, (0.0,)),
    "leaky_relu": (lambda z: graphc.leaky_relu(z, alpha=0.1), (0.0,)),
    "elu": (graphc.elu, (0.0,)),
    "selu": (graphc.selu, (0.0,)),
    "softplus": (graphc.softplus, ()),
    "softsign": (graphc.softsign, ()),
    "gaussian": (graphc.gaussian, ()),
    "ramp": (lambda z: graphc.ramp(z, a=-1.0, b=1.0, c=-1.0, d=1.0), (-1.0, 1.0)),
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS) + ["maxout"])
def test_mlp_gradients_equal_finite_differences(activation):
    rng = np.random.default_rng(sum(map(ord, activation)))
    x = rng.normal(size=(6, 4)) * 1.5
    labels = rng.integers(0, 3, size=6)
    with graphc.Graph(f"mlp_{activation}"):
        xs = graphc.input("x", x.shape, "float64")
        ys = graphc.input("y", labels.shape, "int64")
        if activation == "maxout":  # maxout's own weights: k = 3 affine pieces
            W1 = graphc.param("W1", rng.normal(size=(3, 4, 5)))
            b1 = graphc.param("b1", rng.normal(size=(3, 5)) * 0.5)
            z = graphc.matmul(xs, W1) + graphc.reshape(b1, (3, 1, 5))  # the pieces, to check for ties
            h = graphc.maxout(xs, W1, b1)
        else:
            W1 = graphc.param("W1", rng.normal(size=(4, 5)))
            b1 = graphc.param("b1", rng.normal(size=5) * 0.5)
            z = graphc.dense(xs, W1, b1)
            h = ACTIVATIONS[activation][0](z)
        W2 = graphc.param("W2", rng.normal(size=(5, 3)))
        b2 = graphc.param("b2", rng.normal(size=3) * 0.5)
        loss = graphc.softmax_cross_entropy(graphc.dense(h, W2, b2), ys)
    feeds = {"x": x, "y": labels}
    z_value = graphc.evaluate(z, feeds)
    if activation == "maxout":  # no near-ties between the best two pieces
        top2 = np.sort(z_value, axis=0)[-2:]
        assert float(np.min(top2[1] - top2[0])) > 1e-3
    else:
        kinks = ACTIVATIONS[activation][1]
        assert not kinks or margin_from(z_value, kinks) > 1e-3
    assert_network_gradients(loss, [W1, b1, W2, b2], feeds)


def test_cnn_conv_pool_conv_pool_dense_gradients_equal_finite_differences():
    rng = np.random.default_rng(7)
    images = rng.normal(size=(2, 1, 8, 8))
    labels = np.array([1, 0])
    with graphc.Graph("cnn"):
        x = graphc.input("x", images.shape, "float64")
        y = graphc.input("y", (2,), "int64")
        k1 = graphc.param("k1", rng.normal(size=(3, 1, 3, 3)) * 0.5)
        k2 = graphc.param("k2", rng.normal(size=(4, 3, 3, 3)) * 0.3)
        W = graphc.param("W", rng.normal(size=(16, 2)) * 0.3)
        b = graphc.param("b", np.zeros(2))
        c1 = graphc.conv2d(x, k1, padding=1)
        p1 = graphc.max_pool2d(graphc.tanh(c1), 2)                 # [2, 3, 4, 4]
        c2 = graphc.conv2d(p1, k2, padding=1)
        p2 = graphc.avg_pool2d(graphc.relu(c2), 2)                 # [2, 4, 2, 2]
        logits = graphc.dense(graphc.reshape(p2, (2, 16)), W, b)
        loss = graphc.softmax_cross_entropy(logits, y)
    feeds = {"x": images, "y": labels}
    t1, c2v = graphc.evaluate([graphc.tanh(c1), c2], feeds)
    windows = np.sort(t1.reshape(2, 3, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 4, 4, 4), axis=-1)
    assert float(np.min(windows[..., -1] - windows[..., -2])) > 1e-3   # no near-ties in the max pool
    assert margin_from(c2v, (0.0,)) > 1e-3                             # no relu input near 0
    assert_network_gradients(loss, [k1, k2, W, b], feeds)


def test_residual_block_with_batch_norm_gradients_equal_finite_differences():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(3, 2, 4, 4))
    with graphc.Graph("resblock"):
        x = graphc.input("x", images.shape, "float64")
        target = graphc.input("t", (3, 2), "float64")
        k1 = graphc.param("k1", rng.normal(size=(2, 2, 3, 3)) * 0.4)
        g1 = graphc.param("g1", 1.0 + 0.1 * rng.normal(size=2))
        b1 = graphc.param("b1", 0.1 * rng.normal(size=2))
        k2 = graphc.param("k2", rng.normal(size=(2, 2, 3, 3)) * 0.4)
        g2 = graphc.param("g2", 1.0 + 0.1 * rng.normal(size=2))
        b2 = graphc.param("b2", 0.1 * rng.normal(size=2))
        h = graphc.tanh(graphc.batch_norm(graphc.conv2d(x, k1, padding=1), g1, b1))
        h = graphc.batch_norm(graphc.conv2d(h, k2, padding=1), g2, b2)
        out = graphc.softplus(h + x)                                 # the skip connection
        loss = graphc.mse(graphc.mean(out, axis=(2, 3)), target)
    feeds = {"x": images, "t": rng.normal(size=(3, 2))}
    assert_network_gradients(loss, [k1, g1, b1, k2, g2, b2], feeds)
    # The input gradient flows through both branches of the block.
    (dx,) = graphc.grad(loss, [x])
    numeric = numeric_gradient(lambda v: graphc.evaluate(loss, {"x": v, "t": feeds["t"]}), images)
    assert relative_error(graphc.evaluate(dx, feeds), numeric) < 1e-6


def test_user_defined_sympy_activation_gets_its_gradient():
    swish = graphc.elementwise("swish_autodiff_test", lambda v: v * graphc.sympy_sigmoid(v))
    rng = np.random.default_rng(11)
    x = rng.normal(size=(5, 3))
    with graphc.Graph("swish_net"):
        xs = graphc.input("x", x.shape, "float64")
        t = graphc.input("t", (5, 2), "float64")
        W1 = graphc.param("W1", rng.normal(size=(3, 4)))
        b1 = graphc.param("b1", np.zeros(4))
        W2 = graphc.param("W2", rng.normal(size=(4, 2)))
        z = graphc.dense(xs, W1, b1)
        loss = graphc.mse(swish(z) @ W2, t)
        (dz,) = graphc.grad(graphc.sum(swish(z)), [z])
    feeds = {"x": x, "t": rng.normal(size=(5, 2))}
    assert_network_gradients(loss, [W1, b1, W2], feeds)
    # The derivative SymPy produced is swish'(z) = s(z) (1 + z (1 - s(z))), s the logistic function.
    zv = graphc.evaluate(z, feeds)
    s = 1 / (1 + np.exp(-zv))
    np.testing.assert_allclose(graphc.evaluate(dz, feeds), s * (1 + zv * (1 - s)), rtol=1e-12)


# -- higher order ------------------------------------------------------------------------------------------------

def _mlp_loss(rng):
    x = rng.normal(size=(4, 3))
    with graphc.Graph("hvp_mlp") as g:
        xs = graphc.input("x", x.shape, "float64")
        t = graphc.input("t", (4, 2), "float64")
        W1 = graphc.param("W1", rng.normal(size=(3, 4)))
        b1 = graphc.param("b1", rng.normal(size=4) * 0.1)
        W2 = graphc.param("W2", rng.normal(size=(4, 2)))
        loss = graphc.mse(graphc.tanh(graphc.dense(xs, W1, b1)) @ W2, t)
    return g, loss, [W1, b1, W2], {"x": x, "t": rng.normal(size=(4, 2))}


def test_hessian_vector_product_equals_finite_differences_of_the_gradient():
    rng = np.random.default_rng(5)
    g, loss, params, feeds = _mlp_loss(rng)
    vs = [rng.normal(size=p.shape) for p in params]
    us = [rng.normal(size=p.shape) for p in params]
    with g:
        grads = graphc.grad(loss, params)
        hv = graphc.hvp(loss, params, vs)
        hu = graphc.hvp(loss, params, us)
    start = [np.asarray(p.node.value) for p in params]

    def gradient_along(s):
        moved = {p: v0 + s * v for p, v0, v in zip(params, start, vs)}
        return np.concatenate([a.ravel() for a in graphc.evaluate(grads, feeds, params=moved)])
    numeric = numeric_gradient(lambda s: gradient_along(float(s[0])), np.zeros(1))[0]
    symbolic = np.concatenate([a.ravel() for a in graphc.evaluate(hv, feeds)])
    assert relative_error(symbolic, numeric) < 1e-6
    assert np.abs(symbolic).max() > 1e-3
    # The Hessian is symmetric: <u, H v> = <v, H u>.
    u_hv = sum(float(np.sum(u * a)) for u, a in zip(us, graphc.evaluate(hv, feeds)))
    v_hu = sum(float(np.sum(v * a)) for v, a in zip(vs, graphc.evaluate(hu, feeds)))
    assert u_hv == pytest.approx(v_hu, rel=1e-12)


def test_second_and_third_derivatives_match_closed_forms():
    xs = np.array([-3.0, -0.5, 0.2, 1.7])
    with graphc.Graph("higher"):
        x = graphc.param("x", xs)
        (d1,) = graphc.grad(graphc.sum(graphc.sigmoid(x)), [x])
        (d2,) = graphc.grad(graphc.sum(d1), [x])
        (t1,) = graphc.grad(graphc.sum(graphc.tanh(x)), [x])
        (t2,) = graphc.grad(graphc.sum(t1), [x])
        (t3,) = graphc.grad(graphc.sum(t2), [x])
    s = 1 / (1 + np.exp(-xs))
    th = np.tanh(xs)
    np.testing.assert_allclose(graphc.evaluate(d1), s * (1 - s), rtol=1e-12)
    np.testing.assert_allclose(graphc.evaluate(d2), s * (1 - s) * (1 - 2 * s), rtol=1e-10)
    np.testing.assert_allclose(graphc.evaluate(t2), -2 * th * (1 - th ** 2), rtol=1e-10)
    np.testing.assert_allclose(graphc.evaluate(t3), (1 - th ** 2) * (6 * th ** 2 - 2), rtol=1e-10)


def test_jvp_equals_finite_differences_of_the_output():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3, 2))
    with graphc.Graph("jvp"):
        xs = graphc.input("x", x.shape, "float64")
        W = graphc.param("W", rng.normal(size=(2, 4)))
        b = graphc.param("b", rng.normal(size=4))
        out = graphc.softmax(graphc.tanh(graphc.dense(xs, W, b)) * 2.0)
        vW, vb = rng.normal(size=(2, 4)), rng.normal(size=4)
        tangent = graphc.jvp(out, [W, b], [vW, vb])
    assert tangent.shape == out.shape
    W0, b0 = W.node.value, b.node.value
    numeric = numeric_gradient(
        lambda s: graphc.evaluate(out, {"x": x}, params={W: W0 + s[0] * vW, b: b0 + s[0] * vb}), np.zeros(1))[0]
    assert relative_error(graphc.evaluate(tangent, {"x": x}), numeric) < 1e-6


# -- the course's backpropagation, and the printed gradient graph --------------------------------------------------

def test_sigmoid_mlp_gradient_graph_is_pinned(golden):
    g, _, _, _, _, (dW1, db1, dW2, db2) = build_sigmoid_mlp()
    text = str(g) + "\n# graphc.autodiff.gradient_text(dW1)\n" + gradient_text(dW1)
    golden("sigmoid_mlp_grad.txt", text)


def test_sigmoid_mlp_gradient_graph_is_the_course_backpropagation():
    g, (x, t), (W1, b1, W2, b2), (o_h_t, o_k_t), loss, (dW1, db1, dW2, db2) = build_sigmoid_mlp()
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(4, 2)), "t": rng.uniform(size=(4, 2))}
    xv, tv = feeds["x"], feeds["t"]
    w1, w2 = W1.node.value, W2.node.value
    # The course, in plain NumPy: forward pass, then the deltas of each unit (one row per example).
    o_h = 1 / (1 + np.exp(-(xv @ w1 + b1.node.value)))
    o_k = 1 / (1 + np.exp(-(o_h @ w2 + b2.node.value)))
    delta_k = o_k * (1 - o_k) * (tv - o_k)
    delta_h = o_h * (1 - o_h) * (delta_k @ w2.T)      # sum_k w_kh delta_k, with w_kh = W2[h, k]
    # Delta w_ji = eta delta_j x_ji is the negative gradient (times eta) of E = 1/2 sum (t - o)^2.
    gw1, gb1, gw2, gb2 = graphc.evaluate([dW1, db1, dW2, db2], feeds)
    np.testing.assert_allclose(-gw2, o_h.T @ delta_k, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(-gb2, delta_k.sum(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(-gw1, xv.T @ delta_h, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(-gb1, delta_h.sum(axis=0), rtol=1e-12, atol=1e-15)
    # The deltas themselves are nodes of the gradient graph: the cotangents of the pre-activations,
    # produced by the sigmoid rule of each layer.
    deltas = {}
    for node in g.nodes:
        p = node.provenance
        if p is not None and p.rule == "sigmoid-vjp" and node.op == "mul":
            deltas[id(p.forward)] = graphc.Tensor(node, g)
    assert set(deltas) == {id(o_h_t.node), id(o_k_t.node)}
    got_k, got_h = graphc.evaluate([deltas[id(o_k_t.node)], deltas[id(o_h_t.node)]], feeds)
    np.testing.assert_allclose(-got_k, delta_k, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(-got_h, delta_h, rtol=1e-12, atol=1e-15)


def test_gradient_nodes_record_their_forward_node_rule_and_parameter():
    g, _, (W1, b1, W2, b2), _, loss, grads = build_sigmoid_mlp()
    forward = set(id(n) for n in g.ancestors([loss.node]))
    backward = [n for n in g.nodes if id(n) not in forward]
    assert backward and all(n.provenance is not None for n in backward)
    for n in backward:
        p = n.provenance
        assert id(p.forward) in forward
        assert p.rule.endswith("-vjp") or p.rule in ("grad-seed", "sum-over-uses"), p.rule
    for param, d in zip((W1, b1, W2, b2), grads):
        assert d.node.provenance.wrt is param.node
    # The line of dW2 reads like the example: `= matmul %a, %b  # dL/dW2 via matmul-vjp of %k (file:line)`.
    number = {id(n): k for k, n in enumerate(g.nodes)}
    line = next(ln for ln in str(g).splitlines() if ln.startswith(f"%{number[id(grads[2].node)]}:"))
    dense2 = grads[2].node.provenance.forward
    assert f"# dL/dW2 via dense-vjp of %{number[id(dense2)]} (test_autodiff.py:" in line
    assert "= matmul " in line and "f64[3,2]" in line


def test_gradient_text_shows_only_the_backward_nodes_one_gradient_needs():
    g, _, _, _, _, (dW1, db1, dW2, db2) = build_sigmoid_mlp()
    text = gradient_text(dW2)
    lines = text.splitlines()[1:-1]  # without the header and the return line
    needed = {id(n) for n in g.ancestors([dW2.node]) if n.provenance is not None}
    assert len(lines) == len(needed)
    assert all("via" in ln for ln in lines)
    assert "dL/dW2" in lines[-1] and "dL/dW1" not in text     # dW1's nodes come after dW2's and are not needed
    full = gradient_text(dW2, forward=True)
    assert "sigmoid" in full and "input" in full


# -- the grad API --------------------------------------------------------------------------------------------------

def test_unused_parameter_gets_zero_gradient_and_input_used_directly_gets_the_seed():
    with graphc.Graph("api") as g:
        w = graphc.param("w", np.array([1.0, 2.0]))
        unused = graphc.param("unused", np.ones((2, 3)))
        s = graphc.param("s", np.array(3.0))
        loss = graphc.sum(w * w)
        n_before = len(g.nodes)
        dw, du = graphc.grad(loss, [w, unused])
        ds = graphc.grad(s, s)
        n_after = len(g.nodes)
    np.testing.assert_array_equal(graphc.evaluate(dw), [2.0, 4.0])
    np.testing.assert_array_equal(graphc.evaluate(du), np.zeros((2, 3)))
    assert du.node.provenance.rule == "zero-gradient" and du.node.provenance.wrt is unused.node
    assert float(graphc.evaluate(ds)) == 1.0 and ds.op == "constant"
    # grad adds no dead nodes: every new node is needed by one of the returned gradients
    needed = {id(n) for n in g.ancestors([dw.node, du.node, ds.node])}
    assert all(id(n) in needed for n in g.nodes[n_before:n_after])


def test_a_value_used_several_times_sums_its_cotangents():
    with graphc.Graph():
        x = graphc.param("x", np.array([0.5, -1.0, 2.0]))
        y = x * x + x * 3.0 + graphc.exp(x)
        (dx,) = graphc.grad(graphc.sum(y), [x])
    xv = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(graphc.evaluate(dx), 2 * xv + 3 + np.exp(xv), rtol=1e-14)
    rules = {n.provenance.rule for n in dx.graph.ancestors([dx.node]) if n.provenance is not None}
    assert "sum-over-uses" in rules


def test_cotangent_gives_the_vector_jacobian_product():
    a = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    u = np.array([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]])
    with graphc.Graph():
        A = graphc.param("A", a)
        y = graphc.exp(A) * 2.0
        (vjp,) = graphc.grad(y, [A], cotangent=u)
    np.testing.assert_allclose(graphc.evaluate(vjp), u * 2.0 * np.exp(a), rtol=1e-14)


def test_grad_errors_name_the_problem():
    with graphc.Graph("errors"):
        w = graphc.param("w", np.ones((2, 2)))
        k = graphc.param("k", np.array([1, 2]))
        with pytest.raises(graphc.GraphcError, match=r"loss must be a scalar, got f64\[2,2\] from mul at .*test_autodiff.py"):
            graphc.grad(w * 2.0, [w])
        with pytest.raises(graphc.GraphcError, match=r"only float tensors have gradients"):
            graphc.grad(graphc.sum(w), [k])
        with pytest.raises(graphc.GraphcError, match=r"cotangent .* must have the loss's shape"):
            graphc.grad(w * 2.0, [w], cotangent=np.ones(3))
    with graphc.Graph("other"):
        other = graphc.param("v", np.ones(2))
    with pytest.raises(graphc.GraphcError, match="not a node of graph 'errors'"):
        graphc.grad(graphc.sum(w), [other])


def test_gradient_graph_is_an_ordinary_graph():
    g, _, _, _, _, grads = build_sigmoid_mlp()
    feeds = {"x": np.ones((4, 2)), "t": np.zeros((4, 2))}
    exe = graphc.compile(list(grads))
    for a, b in zip(exe(feeds["x"], feeds["t"]), graphc.evaluate(list(grads), feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-14)
    dot = g.to_dot()
    assert "dL/dW2 via dense-vjp" in dot
    g2, *_ = build_sigmoid_mlp()
    assert g2.structural_hash() == g.structural_hash()  # the gradient is built deterministically


# -- conventions at the non-differentiable points ------------------------------------------------------------------

def test_derivative_conventions_at_kinks():
    with graphc.Graph():
        x = graphc.param("x", np.array([-1.0, 0.0, 2.0]))
        y = graphc.param("y", np.array([0.0, 0.0, 1.0]))
        d = {name: graphc.grad(graphc.sum(fn(x)), x) for name, fn in {
            "relu": graphc.relu, "step": graphc.step, "abs": graphc.abs, "sign": graphc.sign,
            "leaky_relu": lambda v: graphc.leaky_relu(v, alpha=0.1), "elu": graphc.elu}.items()}
        dmax = graphc.grad(graphc.sum(graphc.maximum(x, y)), [x, y])
    np.testing.assert_array_equal(graphc.evaluate(d["relu"]), [0.0, 0.0, 1.0])    # relu'(0) = 0
    np.testing.assert_array_equal(graphc.evaluate(d["step"]), [0.0, 0.0, 0.0])    # step' = 0
    np.testing.assert_array_equal(graphc.evaluate(d["sign"]), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(graphc.evaluate(d["abs"]), [-1.0, 0.0, 1.0])    # |x|'(0) = 0
    np.testing.assert_allclose(graphc.evaluate(d["leaky_relu"]), [0.1, 0.1, 1.0])  # the negative slope at 0
    np.testing.assert_allclose(graphc.evaluate(d["elu"]), [math.exp(-1.0), 1.0, 1.0])  # elu: x >= 0 branch
    dx, dy = graphc.evaluate(dmax)
    np.testing.assert_array_equal(dx, [0.0, 1.0, 1.0])   # a tie passes the gradient to the first input
    np.testing.assert_array_equal(dy, [1.0, 0.0, 0.0])


def test_user_expression_with_max_and_sign_follows_the_conventions():
    relu_max = graphc.elementwise("relu_by_max_autodiff_test", lambda v: sp.Max(v, 0) + sp.sign(v))
    with graphc.Graph():
        x = graphc.param("x", np.array([-1.0, 0.0, 2.0]))
        (dx,) = graphc.grad(graphc.sum(relu_max(x)), [x])
    np.testing.assert_array_equal(graphc.evaluate(dx), [0.0, 0.0, 1.0])  # Heaviside(0) -> 0, sign' -> 0


def test_max_pool_routes_the_gradient_to_the_first_maximum_of_each_window():
    image = np.array([[[[1.0, 3.0, 2.0, 2.0],
                        [3.0, 0.0, 1.0, 0.0],
                        [5.0, 5.0, 0.0, 4.0],
                        [5.0, 1.0, 4.0, 4.0]]]])
    with graphc.Graph():
        x = graphc.param("x", image)
        (dx,) = graphc.grad(graphc.sum(graphc.max_pool2d(x, 2) * np.array([[[[1.0, 2.0], [3.0, 4.0]]]])), [x])
    expected = np.zeros((4, 4))
    expected[0, 1] = 1.0   # window (0,0): 3 at (0,1) comes first in row-major order, before (1,0)
    expected[0, 2] = 2.0   # window (0,1): 2 at (0,2) before (0,3)
    expected[2, 0] = 3.0   # window (1,0): four... three 5s, the first
    expected[2, 3] = 4.0   # window (1,1): 4 at (2,3) before (3,2), (3,3)
    np.testing.assert_array_equal(graphc.evaluate(dx)[0, 0], expected)


def test_stable_derivatives_at_extreme_inputs():
    xs = np.array([-1000.0, -50.0, -1.0, 0.0, 1.0, 50.0, 1000.0])
    with graphc.Graph():
        x = graphc.param("x", xs)
        d = {name: graphc.grad(graphc.sum(getattr(graphc, name)(x)), x)
             for name in ("sigmoid", "softplus", "tanh", "elu", "selu", "softsign", "gaussian")}
    e = np.exp(-np.abs(xs))                       # never overflows
    s = np.where(xs >= 0, 1 / (1 + e), e / (1 + e))
    negative_exp = np.exp(np.minimum(xs, 0.0))
    expected = {
        "sigmoid": e / (1 + e) ** 2, "softplus": s, "tanh": 4 * e ** 2 / (1 + e ** 2) ** 2,
        "elu": np.where(xs >= 0, 1.0, negative_exp), "softsign": 1 / (1 + np.abs(xs)) ** 2,
        "selu": np.where(xs > 0, 1.0507009873554805, 1.0507009873554805 * 1.6732632423543772 * negative_exp),
        "gaussian": -xs * np.exp(-xs ** 2 / 2) / math.sqrt(2 * math.pi),
    }
    for name, t in d.items():
        value = graphc.evaluate(t)
        assert np.all(np.isfinite(value)), (name, value)
        # tanh' is SymPy's 1 - tanh(x)^2: exact to 1e-16 absolute, 0 beyond |x| ~ 19 (true value < 1e-16)
        np.testing.assert_allclose(value, expected[name], rtol=1e-12, atol=1e-16 if name == "tanh" else 1e-300,
                                   err_msg=name)


def test_derivative_expressions_are_the_readable_textbook_forms():
    from graphc.ops.elementwise import _derivative_expr, derivative_op

    v = sp.Symbol("x", real=True)
    assert sp.simplify(_derivative_expr("tanh", 0) - (1 - sp.tanh(v) ** 2)) == 0
    assert _derivative_expr("softsign", 0) == 1 / (1 + sp.Abs(v)) ** 2
    assert _derivative_expr("relu", 0) == sp.Piecewise((0, v <= 0), (1, True))  # relu'(0) = 0, relu'(NaN) = 1
    assert derivative_op("step", 0) is None and derivative_op("sign", 0) is None   # zero: no node at all
    assert _derivative_expr("sigmoid", 0).has(sp.Piecewise)  # both overflow-free branches kept


# -- check_grad ---------------------------------------------------------------------------------------------------

def test_check_grad_passes_correct_gradients_of_a_float32_network_in_float64():
    rng = np.random.default_rng(4)
    with graphc.Graph("f32"):
        x = graphc.input("x", (5, 3))   # float32
        y = graphc.input("y", (5,), "int64")
        W = graphc.param("W", rng.normal(size=(3, 4)).astype(np.float32))
        b = graphc.param("b", np.zeros(4, np.float32))
        loss = graphc.softmax_cross_entropy(graphc.tanh(graphc.dense(x, W, b)), y)
    n_nodes = len(loss.graph.nodes)
    result = graphc.check_grad(loss, [W, b], {"x": rng.normal(size=(5, 3)), "y": rng.integers(0, 4, 5)})
    assert result.ok and result.max_rel_error < 1e-7, str(result)
    assert [t.name for t in result.tensors] == ["W", "b"] and result.tensors[0].checked == 12
    assert len(loss.graph.nodes) == n_nodes   # the check works on a float64 copy; the graph is untouched


def test_check_grad_catches_a_wrong_gradient_and_reports_the_worst_entry():
    rng = np.random.default_rng(8)
    with graphc.Graph("wrong"):
        W = graphc.param("W", rng.normal(size=(3, 4)))
        loss = graphc.sum(graphc.sigmoid(W) * np.arange(12.0).reshape(3, 4))
        (right,) = graphc.grad(loss, [W])
        bump = np.zeros((3, 4))
        bump[1, 2] = 1e-3
        wrong = right + bump                       # one entry off by 1e-3
        forgot_chain_rule = graphc.sigmoid(W) * np.arange(12.0).reshape(3, 4)
    assert graphc.check_grad(loss, [W], grads=[right]).ok
    result = graphc.check_grad(loss, [W], grads=[wrong])
    assert not result.ok and not bool(result)
    assert result.tensors[0].worst[0].index == (1, 2)
    assert result.tensors[0].worst[0].symbolic - result.tensors[0].worst[0].numeric == pytest.approx(1e-3, rel=1e-6)
    assert "FAILED" in str(result) and "[1,2]" in str(result)
    assert not graphc.check_grad(loss, [W], grads=[forgot_chain_rule]).ok


def test_check_grad_catches_an_op_with_a_wrong_vjp_rule():
    from graphc.ops import registry

    def shape_rule(inputs, attrs):
        return inputs[0].shape, inputs[0].dtype

    def wrong_vjp(node, g, inputs):  # d/dx x^3 is 3x^2, not 3x
        return [g * inputs[0] * 3.0]
    registry.register(registry.OpDef("cube_wrong_vjp_test", "test", "x^3 with a wrong derivative", shape_rule,
                                     lambda a, at: a[0] ** 3, wrong_vjp))
    try:
        with graphc.Graph():
            x = graphc.input("x", (4,), "float64")
            loss = graphc.sum(graphc.apply("cube_wrong_vjp_test", [x]))
        result = graphc.check_grad(loss, [x], {"x": np.array([0.5, 1.5, -2.0, 3.0])})
        assert not result.ok and result.max_rel_error > 0.1
    finally:
        registry._REGISTRY.pop("cube_wrong_vjp_test")


def test_check_grad_rejects_what_it_cannot_perturb():
    with graphc.Graph():
        w = graphc.param("w", np.ones(3))
        h = w * 2.0
        loss = graphc.sum(h)
    with pytest.raises(graphc.GraphcError, match="not an input or a parameter"):
        graphc.check_grad(loss, [h])

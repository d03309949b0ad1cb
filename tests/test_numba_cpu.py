"""The numba_cpu backend against the reference backend: every op, forward and gradient, in float64
(tight) and float32 (loose); random graphs; a training step and a whole epoch in one native call;
the golden generated source of a small MLP training step.

Compiles dominate the run time, so each test graph batches many ops, compiled executables are
shared through module-scoped fixtures, and the compile cache persists in .pytest_cache.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc
from graphc.backends import numba_cpu
from graphc.ir.rewrite import clone
from graphc.ops import registry
from graphc.ops.elementwise import derivative_op, fused, fused_symbols
from graphc.ops.random import random_flip2d, random_shift2d, random_uniform
from graphc.passes import optimize

TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-4, atol=2e-5)}
DTYPES = ["float64", "float32"]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def compile_both(outputs, inputs, cache_dir, optimize=0, **options):
    """The graph compiled by the numba_cpu backend (as written, or optimized at ``optimize``) and by the
    reference backend (always as written: the oracle)."""
    exe = graphc.compile(outputs, inputs=inputs, backend="cpu", cache_dir=cache_dir, optimize=optimize, **options)
    ref = graphc.compile(outputs, inputs=inputs)
    return exe, ref


def assert_same(got, want, names, dtype):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"output {k} ({names[k]}): {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        if g.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=f"output {k} ({names[k]})")
        else:
            np.testing.assert_allclose(g, w, **TOL[dtype], err_msg=f"output {k} ({names[k]})")


def weighted_loss(outputs, seed=1):
    """sum_k sum(out_k * W_k) with fixed random weights: every output's gradient differs per element."""
    r = rng(seed)
    total = None
    for o in outputs:
        if not o.dtype.is_float:
            continue
        w = graphc.constant(r.uniform(0.5, 1.5, o.shape).astype(o.dtype.np))
        term = graphc.sum(o * w)
        total = term if total is None else total + term
    return total


# -- graphs covering every op ---------------------------------------------------------------------------------

ELEMENTWISE_SKIP = {"fused"}


def elementwise_graph(dtype):
    """Every registered elementwise op (forward), each applied to broadcasting operands, plus its gradient."""
    r = rng(1)
    ops = [op for op in registry.all_ops()
           if op.is_elementwise and op.name not in ELEMENTWISE_SKIP and op.derivative_of is None]
    with graphc.Graph(f"elementwise_{dtype}") as g:
        x = graphc.input("x", (3, 4), dtype)      # any sign
        y = graphc.input("y", (4,), dtype)        # broadcast along rows
        z = graphc.input("z", (3, 1), dtype)      # broadcast along columns
        p = graphc.input("p", (3, 4), dtype)      # positive: log, sqrt, pow's base
        outs, names = [], []
        for op in ops:
            arity = len(op.symbols)
            if op.name in ("log", "sqrt"):
                args = [p]
            elif op.name == "pow":
                args = [p, z]
            elif op.name == "div":
                args = [x, p]
            elif op.name == "where":
                args = [graphc.less(x, z), x, y]
            elif op.name == "cast":
                for target in ("int32", "bool", "float64" if dtype == "float32" else "float32"):
                    outs.append(graphc.cast(x * 3.0, target))
                    names.append(f"cast->{target}")
                continue
            elif arity == 1:
                args = [x]
            elif arity == 2:
                args = [x, y] if len(outs) % 2 else [z, x]
            else:
                args = [x, y, z]
            outs.append(graphc.apply(op.name, args, {k: float(v) for k, v in op.params.items()}))
            names.append(op.name)
        swish = graphc.elementwise("swish_numba_test", lambda v: v * graphc.sympy_sigmoid(v))
        outs.append(swish(x))
        names.append("swish (user-defined)")
        s0, s1, s2 = fused_symbols(3)
        outs.append(fused(s0 * 2 - s1 ** 2 + sympy.exp(s2) * s0, [x, y, z], dtype))
        names.append("fused")
        loss = weighted_loss(outs)
        grads = graphc.grad(loss, [x, y, z, p])
        g.output(*outs, *grads)
    feeds = [r.uniform(-2, 2, (3, 4)), r.uniform(-2, 2, (4,)), r.uniform(-2, 2, (3, 1)), r.uniform(0.5, 2, (3, 4))]
    return outs + grads, [x, y, z, p], [f.astype(dtype) for f in feeds], names + ["dx", "dy", "dz", "dp"]


def shapes_graph(dtype):
    """Reductions, shape ops and linear algebra, with broadcasting and transposed operands, plus gradients."""
    r = rng(2)
    s0, s1, _ = fused_symbols(3)
    with graphc.Graph(f"shapes_{dtype}") as g:
        x = graphc.input("x", (2, 3, 4, 5), dtype)
        a = graphc.input("a", (5, 6), dtype)
        b = graphc.input("b", (3, 5, 2), dtype)
        c = graphc.input("c", (2, 1, 4, 5), dtype)
        outs = [
            graphc.sum(x, (1, 3), keepdims=True), graphc.mean(x, 2), graphc.max(x, (0, 2)), graphc.min(x, -1),
            graphc.sum(x), graphc.mean(x, (0, 3)),
            graphc.argmax(x, 1), graphc.argmax(x, 3, keepdims=True),
            graphc.transpose(x, (2, 0, 3, 1)), x[:, 1:3, ::2, 1], x[1, ..., 2:],
            graphc.concatenate([x, c * 2.0], axis=1), graphc.broadcast_to(c, (2, 3, 4, 5)) * x,
            graphc.reshape(x, (6, 20)) * 3.0,
            x @ a, c @ b, graphc.matmul(graphc.transpose(a), graphc.transpose(graphc.reshape(x, (24, 5)))),
            graphc.dense(x, a, graphc.reshape(a, (30,))[:6]),
            # the epilogue ops of the passes: transposed operands by flag, an expression over the product
            # x0 and extra operands broadcast against it
            graphc.apply("matmul_epilogue", [b, graphc.reshape(x, (24, 5))[:6], graphc.reshape(a, (30,))[:6]],
                         {"transpose_a": True, "transpose_b": True, "dtype": dtype,
                          "expr": sympy.tanh(s0 + s1) * s0}),
            graphc.apply("matmul_epilogue", [c, a], {"transpose_a": False, "transpose_b": False, "dtype": dtype,
                                                      "expr": s0}),
        ]
        loss = weighted_loss(outs)
        grads = graphc.grad(loss, [x, a, b, c])
        g.output(*outs, *grads)
    feeds = [r.standard_normal((2, 3, 4, 5)), r.standard_normal((5, 6)), r.standard_normal((3, 5, 2)),
             r.standard_normal((2, 1, 4, 5))]
    names = [f"out{k}" for k in range(len(outs))] + ["dx", "da", "db", "dc"]
    return outs + grads, [x, a, b, c], [f.astype(dtype) for f in feeds], names


def nn_graph(dtype):
    """softmax, log_softmax, both cross-entropies, one_hot, batch_norm (2-D and 4-D), plus gradients."""
    r = rng(3)
    with graphc.Graph(f"nn_{dtype}") as g:
        logits = graphc.input("logits", (6, 5), dtype)
        labels = graphc.input("labels", (6,), "int64")
        soft = graphc.input("soft", (6, 5), dtype)
        x3 = graphc.input("x3", (2, 3, 4), dtype)
        img = graphc.input("img", (3, 2, 3, 3), dtype)
        gamma = graphc.input("gamma", (2,), dtype)
        beta = graphc.input("beta", (2,), dtype)
        outs = [
            graphc.softmax(logits, 0), graphc.softmax(logits), graphc.log_softmax(x3, 1), graphc.log_softmax(logits),
            graphc.softmax_cross_entropy(logits, labels), graphc.softmax_cross_entropy(logits * 0.5, soft),
            graphc.one_hot(labels, 7, dtype) * 2.0,
            graphc.batch_norm(img, gamma, beta), graphc.batch_norm(logits, graphc.reshape(soft, (30,))[:5],
                                                                   graphc.reshape(soft, (30,))[5:10]),
        ]
        loss = weighted_loss(outs)
        grads = graphc.grad(loss, [logits, soft, x3, img, gamma, beta])
        g.output(*outs, *grads)
    soft_labels = r.uniform(0, 1, (6, 5))
    feeds = [r.standard_normal((6, 5)).astype(dtype), r.integers(0, 5, 6), (soft_labels / soft_labels.sum(1, keepdims=True)).astype(dtype),
             r.standard_normal((2, 3, 4)).astype(dtype), r.standard_normal((3, 2, 3, 3)).astype(dtype),
             r.uniform(0.5, 1.5, 2).astype(dtype), r.standard_normal(2).astype(dtype)]
    names = [f"out{k}" for k in range(len(outs))] + ["dlogits", "dsoft", "dx3", "dimg", "dgamma", "dbeta"]
    return outs + grads, [logits, labels, soft, x3, img, gamma, beta], feeds, names


def conv_graph(dtype):
    """conv2d (stride, padding, dilation), conv_transpose2d, max/avg pooling with padding, the pooling
    helper ops, random_uniform; plus gradients (conv_transpose2d, max_pool2d_backward...)."""
    r = rng(4)
    pool = {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)}
    s0, s1 = fused_symbols(2)
    with graphc.Graph(f"conv_{dtype}") as g:
        x = graphc.input("x", (2, 3, 7, 6), dtype)
        w = graphc.input("w", (4, 3, 3, 2), dtype)
        wt = graphc.input("wt", (3, 2, 2, 3), dtype)
        key = graphc.input("key", (), "int64")
        outs = [
            graphc.conv2d(x, w, stride=2, padding=1), graphc.conv2d(x, w, dilation=(2, 1), padding=(0, 1)),
            graphc.conv2d(x, graphc.reshape(w, (4, 3, 1, 6))[:, :, :, :1]),
            graphc.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1),
            graphc.max_pool2d(x, 3, 2, 1), graphc.avg_pool2d(x, 2), graphc.avg_pool2d(x, (3, 2), (2, 1), (1, 1)),
            graphc.max_pool2d(x, 2) * 1.5,
            graphc.apply("max_pool2d_gather", [x, x * 2.0 + 1.0], pool),
            graphc.apply("max_pool2d_backward", [x, graphc.max_pool2d(x, 3, 2, 1) * 3.0], pool),
            graphc.apply("conv2d_epilogue", [x, w, graphc.reshape(w, (72,))[:4].reshape((1, 4, 1, 1))],
                         {"stride": (1, 2), "padding": (1, 0), "dilation": (1, 1), "dtype": dtype,
                          "expr": sympy.Piecewise((s0 + s1, s0 + s1 > 0), (0, True))}),
        ]
        random = [random_uniform(key, (3, 4), salt=5, dtype=dtype), random_shift2d(x, key, 2, salt=1),
                  random_flip2d(x, key, salt=2)]
        loss = weighted_loss(outs)
        grads = graphc.grad(loss, [x, w, wt])
        g.output(*outs, *random, *grads)
    feeds = [r.standard_normal((2, 3, 7, 6)).astype(dtype), r.standard_normal((4, 3, 3, 2)).astype(dtype),
             r.standard_normal((3, 2, 2, 3)).astype(dtype), np.array(12345, np.int64)]
    names = [f"out{k}" for k in range(len(outs))] + ["random_uniform", "random_shift2d", "random_flip2d",
                                                     "dx", "dw", "dwt"]
    return outs + random + grads, [x, w, wt, key], feeds, names


GRAPHS = {"elementwise": elementwise_graph, "shapes": shapes_graph, "nn": nn_graph, "conv": conv_graph}


@pytest.fixture(scope="module", params=[(name, dtype, conv) for name in GRAPHS for dtype in DTYPES
                                        for conv in (("im2col", "direct") if name == "conv" else ("auto",))],
                ids=lambda p: "-".join(p[:2] if p[2] == "auto" else p))
def op_case(request, graphc_cache_dir):
    """float64: the graph as written (every op through its own lowering rule), tight tolerance;
    float32: the graph optimized at level 2 (fused nodes, GEMM/conv epilogues), loose tolerance.
    The conv graph is built with each conv2d method (im2col + GEMM, the direct loop nest)."""
    name, dtype, conv = request.param
    outputs, inputs, feeds, names = GRAPHS[name](dtype)
    exe, ref = compile_both(outputs, inputs, graphc_cache_dir, optimize=0 if dtype == "float64" else 2, conv=conv)
    if name == "conv":
        assert ("conv2d_direct(" in exe.source.split("def step", 1)[1]) == (conv == "direct")
    return exe, ref, feeds, names, dtype


def test_ops_and_gradients_match_reference(op_case):
    exe, ref, feeds, names, dtype = op_case
    assert_same(exe(*feeds), ref(*feeds), names, dtype)


def test_every_registered_op_has_a_lowering():
    # Derivative ops are registered on first use; make sure every elementwise op's are there too.
    for op in list(registry.all_ops()):
        if op.is_elementwise and op.name != "fused" and op.derivative_of is None:
            for i in range(len(op.symbols)):
                derivative_op(op.name, i)
    missing = [op.name for op in registry.all_ops() if not op.source and not numba_cpu.has_lowering(op.name)]
    assert not missing, f"ops without a numba_cpu lowering: {missing}"
    # ...and the graphs above really exercise the non-elementwise lowerings.
    from graphc.backends.lowering import RULES

    non_elementwise = {name for name in RULES if not name.startswith("<")}
    covered = set()
    for build in GRAPHS.values():
        outputs, *_ = build("float64")
        covered |= {n.op for n in outputs[0].graph.nodes}
    # allreduce is a collective: tests/test_distributed.py runs its lowering on one process and on two ranks.
    assert non_elementwise - covered - {"fused", "allreduce"} == set(), non_elementwise - covered


# -- random graphs ------------------------------------------------------------------------------------------

UNARY = ["relu", "tanh", "sigmoid", "exp_small", "square", "softplus", "neg", "abs"]
BINARY = ["add", "sub", "mul", "maximum"]


@st.composite
def random_graph(draw):
    """A small random DAG of elementwise ops, reductions, transposes, reshapes and matmuls (shape-correct)."""
    n, m = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    steps = draw(st.lists(st.tuples(st.sampled_from(["unary", "binary", "reduce", "transpose", "matmul", "reshape"]),
                                    st.sampled_from(UNARY), st.sampled_from(BINARY), st.integers(0, 10 ** 6)),
                          min_size=2, max_size=7))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2 ** 16))
    optimize = draw(st.sampled_from([0, 2]))  # as written, and after the passes (fused nodes, epilogues)
    return n, m, steps, dtype, seed, optimize


def build_random(n, m, steps, dtype):
    with graphc.Graph("random") as g:
        a = graphc.input("a", (n, m), dtype)
        b = graphc.input("b", (m,), dtype)
        values = [a, b, a * b]
        for kind, unary, binary, pick in steps:
            x = values[pick % len(values)]
            y = values[(pick // 7) % len(values)]
            if kind == "unary":
                v = graphc.exp(x * 0.3) if unary == "exp_small" else graphc.apply(unary, [x])
            elif kind == "binary":
                try:
                    v = graphc.apply(binary, [x, y])
                except graphc.ShapeError:
                    v = graphc.apply(binary, [x, graphc.sum(y)])
            elif kind == "reduce":
                v = graphc.sum(x, pick % x.ndim, keepdims=bool(pick % 2)) if x.ndim else x * 2.0
            elif kind == "transpose":
                v = graphc.transpose(x) if x.ndim == 2 else x + 1.0
            elif kind == "reshape":
                v = graphc.reshape(x, (-1,)) if x.ndim else x - 1.0
            else:
                v = x @ graphc.transpose(x) if x.ndim == 2 else x * x
            values.append(v)
        out = graphc.tanh(values[-1]) + graphc.sum(values[-2])
        loss = graphc.sum(out * out)
        da, db = graphc.grad(loss, [a, b])
        g.output(out, loss, da, db)
    return [out, loss, da, db], [a, b]


@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(random_graph())
def test_random_graphs_match_reference(graphc_cache_dir, case):
    n, m, steps, dtype, seed, optimize = case
    outputs, inputs = build_random(n, m, steps, dtype)
    exe, ref = compile_both(outputs, None, graphc_cache_dir, optimize=optimize)
    r = rng(seed)
    feeds = {"a": r.uniform(-1, 1, (n, m)).astype(dtype), "b": r.uniform(-1, 1, (m,)).astype(dtype)}
    feeds = {k: v for k, v in feeds.items() if k in exe.input_names}  # a random graph may not use b
    assert_same(exe(**feeds), ref(**feeds), ["out", "loss", "da", "db"], dtype)


# -- a training step and an epoch ----------------------------------------------------------------------------

def mlp_step(batch=8, sizes=(4, 6, 3), lr=0.1, dtype="float32", seed=0, name="mlp_step"):
    """A small MLP training step: dense-relu-dense, softmax cross-entropy, SGD updates."""
    r = rng(seed)
    with graphc.Graph(name) as g:
        x = graphc.input("x", (batch, sizes[0]), dtype)
        y = graphc.input("y", (batch,), "int64")
        params = []
        h = x
        for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            W = graphc.param(f"W{k}", (r.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(dtype))
            b = graphc.param(f"b{k}", np.zeros(fan_out, dtype))
            params += [W, b]
            h = graphc.dense(h, W, b)
            if k < len(sizes) - 2:
                h = graphc.relu(h)
        loss = g.output(graphc.softmax_cross_entropy(h, y))
        for p, d in zip(params, graphc.grad(loss, params)):
            g.update(p, p - lr * d)
    return loss, [x, y]


@pytest.fixture(scope="module")
def train_step(graphc_cache_dir):
    loss, inputs = mlp_step(dtype="float64")
    exe, ref = compile_both(loss, inputs, graphc_cache_dir)
    return exe, ref


def test_training_step_updates_parameters_in_place(train_step):
    exe, ref = train_step
    r = rng(5)
    before = {k: v.copy() for k, v in exe.params.items()}
    views = {k: v for k, v in exe.params.items()}
    for _ in range(4):
        x, y = r.standard_normal((8, 4)), r.integers(0, 3, 8)
        np.testing.assert_allclose(exe(x, y), ref(x, y), **TOL["float64"])
    for k in exe.params:
        assert exe.params[k] is views[k]  # same arrays, written in place by native code
        assert not np.allclose(exe.params[k], before[k])
        np.testing.assert_allclose(exe.params[k], ref.params[k], **TOL["float64"])
    # The SGD updates are elementwise and nothing reads the old value later: computed in place.
    assert [mode for *_, mode in exe.program.updates] == ["inplace"] * 4


def assert_steps_match(exe, ref, r, steps, rates=None):
    """``steps`` random minibatches (x [8, 4], labels 0..2, a learning rate per step if ``rates``)
    through both executables: the outputs of every step, then the parameters agree (float64).
    Returns the last minibatch."""
    for s in range(steps):
        x, y = r.standard_normal((8, 4)), r.integers(0, 3, 8)
        extra = () if rates is None else (rates[s],)
        np.testing.assert_allclose(exe(x, y, *extra), ref(x, y, *extra), **TOL["float64"])
    for k in exe.params:
        np.testing.assert_allclose(exe.params[k], ref.params[k], **TOL["float64"])
    return x, y


def test_optimized_training_step_accumulates_the_first_layer_update_into_its_weights(graphc_cache_dir):
    # Level 2: fused SGD updates; W0's gradient GEMM is read by nothing but W0's update (no input gradient
    # is needed), so BLAS adds -lr * x^T @ g straight into W0 (alpha = -lr, beta = 1).
    loss, inputs = mlp_step(dtype="float64", name="mlp_step_opt", sizes=(4, 6, 5, 3))
    exe, ref = compile_both(loss, inputs, graphc_cache_dir, optimize=2)
    assert "accumulated into the parameter" in exe.source and re.search(r"gemm\(1, 0, 4, 6, 8, -0\.1, ", exe.source)
    assert_steps_match(exe, ref, rng(8), 3)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_every_weight_update_is_accumulated_with_a_learning_rate_input(graphc_cache_dir, weight_decay):
    # The learning rate is a graph input (as in graphc.fit) and weight decay scales p itself: every
    # layer's weight-gradient GEMM runs after the last reader of its weight (sink_update_products)
    # and computes p <- beta * p + alpha * op(A) @ op(B) with alpha = -lr, beta = 1 - lr * wd.
    with graphc.Graph(f"mlp_lr_input_wd{weight_decay}") as g:
        x, y = graphc.input("x", (8, 4), "float64"), graphc.input("y", (8,), "int64")
        lr = graphc.input("lr", (), "float64")
        r = rng(3)
        ws = [graphc.param(f"W{k}", r.standard_normal(s) * 0.5) for k, s in enumerate([(4, 6), (6, 5), (5, 3)])]
        bs = [graphc.param(f"b{k}", np.zeros(s[1])) for k, s in enumerate([(4, 6), (6, 5), (5, 3)])]
        h = x
        for k in range(3):
            h = graphc.dense(h, ws[k], bs[k])
            h = graphc.relu(h) if k < 2 else h
        loss = g.output(graphc.softmax_cross_entropy(h, y))
        graphc.optim.SGD(weight_decay=weight_decay).minimize(loss, ws + bs, lr=lr)  # registers the updates
    exe, ref = compile_both(loss, [x, y, lr], graphc_cache_dir, optimize=2)
    assert len(re.findall(r"gemm\(1, 0, \d+, \d+, 8, alpha\d+, ", exe.source)) == 3, exe.source
    assert exe.source.count("accumulated into the parameter") == 3
    assert_steps_match(exe, ref, r, 3, rates=[0.1 / (1 + step) for step in range(3)])


def test_momentum_velocity_update_is_accumulated_into_the_velocity(graphc_cache_dir):
    # v <- 0.9 v + dW is also "p <- beta p + alpha product" (p the velocity, beta 0.9, alpha 1).
    with graphc.Graph("mlp_momentum") as g:
        x, y = graphc.input("x", (8, 4), "float64"), graphc.input("y", (8,), "int64")
        r = rng(4)
        w0, w1 = graphc.param("W0", r.standard_normal((4, 6))), graphc.param("W1", r.standard_normal((6, 3)))
        loss = g.output(graphc.softmax_cross_entropy(graphc.tanh(x @ w0) @ w1, y))
        graphc.optim.Momentum(0.1, 0.9).minimize(loss, [w0, w1])
    exe, ref = compile_both(loss, [x, y], graphc_cache_dir, optimize=2)
    assert exe.source.count("accumulated into the parameter") == 2, exe.source
    assert_steps_match(exe, ref, r, 3)


def test_driver_split_into_parts_computes_the_same(graphc_cache_dir):
    # Very large drivers are split into step_part0..k (part_lines); force it on a small step.
    loss, inputs = mlp_step(dtype="float64", name="mlp_step_parts")
    exe, ref = compile_both(loss, inputs, graphc_cache_dir, optimize=2, part_lines=12)
    assert "def step_part2(" in exe.source and "if step_part0(" in exe.source
    x, y = assert_steps_match(exe, ref, rng(9), 2)
    before = {k: v.copy() for k, v in exe.params.items()}
    with pytest.raises(graphc.InputError, match="label 7 at index 0 is out of range"):
        exe(x, np.r_[7, y[1:]])  # the check in the driver's prologue stops everything
    for k in exe.params:
        np.testing.assert_array_equal(exe.params[k], before[k])


def test_source_and_native_code_are_inspectable(train_step):
    exe, _ = train_step
    assert "def step(" in exe.source and "def epoch(" in exe.source
    # Each kernel of the Program is headed once by a comment naming its node (and the user's line); the
    # driver's statements all belong to a kernel, after the declarations of its arrays.
    functions = re.findall(r"def step\w*\(.*?\):\n    \"\"\".*?\"\"\"\n(.*?)(?=\n\n)", exe.source, re.S)
    assert functions
    headings = 0
    for body in functions:
        lines = [line for line in body.splitlines() if line.strip()]
        declarations = [line for line in lines if re.match(r"    \w+ = (as_shape\(in_\w+|view_as|empty_flat)\(?", line)]
        rest = lines[len(declarations):]
        assert rest[0].startswith("    # "), rest[0]
        headings += sum(1 for line in rest if re.match(r"    # (%\d+ \w+|labels of|output|update|snapshot)", line))
    kernels = exe.program.checks + exe.program.kernels
    assert headings == len(kernels) and all(re.search(rf"%{k.node} ", exe.source) for k in kernels)
    assert max(len(line) for line in exe.source.splitlines()) <= 120
    assert "define" in exe.llvm_ir and "numba_xxgemm" in exe.llvm_ir  # BLAS, called from the driver
    assert re.search(r"\bcall\w*\s", exe.asm)
    for stage in ("codegen_s", "numba_compile_s", "cache"):
        assert stage in exe.stats


def test_epoch_in_one_native_call_matches_step_by_step(graphc_cache_dir):
    loss, inputs = mlp_step(dtype="float64", name="mlp_epoch")
    exe, ref = compile_both(loss, inputs, graphc_cache_dir)
    r = rng(6)
    X, Y = r.standard_normal((29, 4)), r.integers(0, 3, 29)
    start = {k: v.copy() for k, v in exe.params.items()}
    for last_batch, steps in (("wrap", 4), ("drop", 3)):
        exe.set_params(start)
        ref.set_params(start)
        losses = exe.run_epoch(X, Y, seed=3, last_batch=last_batch)
        perm = np.random.default_rng(3).permutation(29)
        order = np.concatenate([perm, perm])[:steps * 8].reshape(steps, 8)  # "wrap": the last batch wraps around
        expected = [ref(X[rows], Y[rows]) for rows in order]
        assert losses.shape == (steps,)
        np.testing.assert_allclose(losses, expected, **TOL["float64"])
        for k in exe.params:
            np.testing.assert_allclose(exe.params[k], ref.params[k], **TOL["float64"])


# -- the golden generated source -------------------------------------------------------------------------------

def test_generated_source_of_mlp_training_step_is_pinned(golden):
    loss, inputs = mlp_step(batch=4, sizes=(3, 5, 2), name="golden_mlp")
    graph, _ = clone(loss.graph, [loss.node])
    graph = optimize(graph, 2).graph  # what graphc.compile(..., backend="cpu") lowers
    program = numba_cpu.lower(graph, graph.inputs, {"fastmath": numba_cpu.DEFAULT_FASTMATH})
    # Locations are this file's lines: keep only the file name so the golden file survives edits above.
    source = re.sub(r"test_numba_cpu\.py:\d+", "test_numba_cpu.py:N", numba_cpu.render(program, "0.1.0"))
    golden("mlp_step_numba.py.txt", source)


# -- the inline float32 math the float32 kernels use ---------------------------------------------------------------

def test_float32_exp_and_tanh_are_within_a_few_ulp():
    import numba

    from graphc.backends.numba_cpu.runtime import exp_f32, tanh_f32

    @numba.njit
    def apply(x, out_exp, out_tanh):
        for i in range(x.size):
            out_exp[i] = exp_f32(x[i])
            out_tanh[i] = tanh_f32(x[i])

    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 88.72, 88.73, -87.33, -103.9, -104.0, 1e-30, -1e-30, 7.9, 9.0]
    x = np.concatenate([np.linspace(-110, 90, 200001), special]).astype(np.float32)
    e, t = np.empty_like(x), np.empty_like(x)
    apply(x, e, t)
    with np.errstate(all="ignore"):
        exact_e = np.exp(x.astype(np.float64)).astype(np.float32)  # correctly rounded, or nearly
    exact_t = np.tanh(x.astype(np.float64)).astype(np.float32)
    normal = np.isfinite(exact_e) & (exact_e >= np.finfo(np.float32).tiny)
    assert np.max(np.abs(e[normal] - exact_e[normal]) / np.spacing(exact_e[normal])) <= 2
    subnormal = (exact_e > 0) & (exact_e < np.finfo(np.float32).tiny)
    assert np.max(np.abs(e[subnormal] - exact_e[subnormal])) <= 2 * np.finfo(np.float32).smallest_subnormal
    finite = np.isfinite(x)
    assert np.max(np.abs(t[finite] - exact_t[finite]) / np.spacing(np.abs(exact_t[finite]))) <= 4
    # Infinities, NaN and signed zeros behave like NumPy's.
    tail_e, tail_t = e[-len(special):], t[-len(special):]
    assert tail_e[2] == np.inf and tail_e[3] == 0.0 and np.isnan(tail_e[4]) and tail_e[6] == np.inf
    assert np.isnan(tail_t[4]) and abs(tail_t[2] - 1) < 3e-7 and abs(tail_t[3] + 1) < 3e-7
    assert tail_t[1] == 0.0 and np.signbit(tail_t[1])


def test_mixed_dtype_products_convert_their_operands(graphc_cache_dir):
    # float64 activations against float32 weights: the products run in float64 (NumPy's promotion) on
    # converted copies, a transposed float32 operand included.
    r = rng(10)
    with graphc.Graph("mixed_dtypes") as g:
        x = graphc.input("x", (3, 4), "float64")
        w = graphc.input("w", (5, 4), "float32")
        b = graphc.input("b", (5,), "float32")
        outs = [graphc.matmul(x, graphc.transpose(w)) * 2.0, graphc.dense(x, graphc.transpose(w), b)]
        g.output(*outs)
    exe, ref = compile_both(outs, [x, w, b], graphc_cache_dir)
    feeds = [r.standard_normal((3, 4)), r.standard_normal((5, 4)).astype(np.float32),
             r.standard_normal(5).astype(np.float32)]
    X, W, B = (f.astype(np.float64) for f in feeds)
    got = exe(*feeds)
    np.testing.assert_allclose(got[0], 2 * X @ W.T, **TOL["float64"])
    np.testing.assert_allclose(got[1], X @ W.T + B, **TOL["float64"])
    assert_same(got, ref(*feeds), ["matmul", "dense"], "float64")

"""Each pass of graphc.passes on small graphs: what it rewrites, what it must leave alone, and that
the values do not change (oracle: NumPy written here, and the reference backend on the input graph).
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from test_passes_support import values

import graphc
from graphc import passes
from graphc.ops import is_elementwise
from graphc.ops.elementwise import derivative_op, fused, fused_symbols
from graphc.passes.core import count_kernels

RNG = np.random.default_rng(7)


def ops(graph):
    return [n.op for n in graph.nodes]


def f64(*shape):
    return RNG.standard_normal(shape)


# -- dead code, CSE, folding ----------------------------------------------------------------------------

def test_dce_drops_what_no_output_or_update_needs():
    with graphc.Graph() as g:
        x = graphc.input("x", (3,), "float64")
        p = graphc.param("p", np.zeros(3))
        graphc.exp(x)                      # dead
        q = graphc.sqrt(x * x)             # only the update needs it
        g.output(x + 1.0)
        g.update(p, q)
    out = passes.dce(g)
    assert ops(out) == ["input", "param", "mul", "sqrt", "constant", "add"]
    assert len(g.nodes) == 7 and g.nodes[2].op == "exp"  # the input graph is untouched


def test_cse_merges_equal_nodes_and_equal_constants_but_never_inputs():
    with graphc.Graph() as g:
        x = graphc.input("x", (3,), "float64")
        x2 = graphc.input("x2", (3,), "float64")   # same type as x, still a different input
        a = graphc.exp(x) * 2.0
        b = graphc.exp(x) * 2.0
        g.output(a + b + graphc.exp(x2))
    out = passes.cse(g)
    assert ops(out).count("exp") == 2 and ops(out).count("mul") == 1 and ops(out).count("constant") == 1
    assert ops(out).count("input") == 2
    xv, x2v = f64(3), f64(3)
    np.testing.assert_allclose(values(out, {"x": xv, "x2": x2v})[0], 4 * np.exp(xv) + np.exp(x2v), rtol=1e-14)


def test_fold_constants_evaluates_small_results_and_keeps_large_ones():
    big = np.arange(2000, dtype=np.float64)
    with graphc.Graph() as g:
        x = graphc.input("x", (2000,), "float64")
        small = graphc.constant(np.array([1.0, 2.0])) * 3.0 + 1.0            # folded: [4, 7]
        large = graphc.exp(graphc.constant(big) / 1000.0)                     # 2000 elements: kept
        g.output(graphc.sum(small) + x * large)
    out = passes.fold_constants(g)
    consts = [n for n in out.nodes if n.op == "constant"]
    assert any(c.value.tolist() == 11.0 for c in consts)   # sum([1, 2] * 3 + 1), folded all the way
    assert "exp" in ops(out) and all(c.size <= 2000 for c in consts)
    assert not any(n.op == "mul" and n.shape == (2,) for n in out.nodes)
    xv = f64(2000)
    np.testing.assert_allclose(values(out, {"x": xv})[0], 11.0 + xv * np.exp(big / 1000.0), rtol=1e-13)


def test_fold_constants_writes_uniform_results_as_one_number_broadcast():
    with graphc.Graph() as g:
        x = graphc.input("x", (128, 784), "float64")
        ones = graphc.broadcast_to(graphc.constant(np.array(1.0)), (128, 784))
        g.output(x * (ones * 0.5 + 0.25))          # 100352 elements, uniform: folded anyway
    out = passes.fold_constants(g)
    assert [n.op for n in out.nodes if n.op != "constant"] == ["input", "broadcast_to", "mul"]
    assert [float(c.value) for c in out.nodes if c.op == "constant"] == [0.75]
    xv = f64(128, 784)
    np.testing.assert_allclose(values(out, {"x": xv})[0], 0.75 * xv, rtol=1e-15)


def test_fold_constants_leaves_an_op_that_fails_to_fail_at_run_time():
    with graphc.Graph() as g:
        labels = graphc.constant(np.array([0, 5]), "int64")
        g.output(graphc.one_hot(labels, 3, "float64"))
    out = passes.fold_constants(g)
    assert "one_hot" in ops(out)
    with pytest.raises(graphc.InputError, match="label 5 is out of range"):
        values(out, {})


# -- algebraic simplification ------------------------------------------------------------------------------

SIMPLIFY_CASES = {
    "x*1": (lambda x: x * 1.0, lambda v: v, []),
    "1*x": (lambda x: 1.0 * x, lambda v: v, []),
    "x/1": (lambda x: x / 1.0, lambda v: v, []),
    "x+0": (lambda x: x + 0.0, lambda v: v, []),
    "0+x": (lambda x: 0.0 + x, lambda v: v, []),
    "x-0": (lambda x: x - 0.0, lambda v: v, []),
    "x*-1": (lambda x: x * -1.0, lambda v: -v, ["neg"]),
    "0-x": (lambda x: 0.0 - x, lambda v: -v, ["neg"]),
    "x**1": (lambda x: x ** 1.0, lambda v: v, []),
    "neg(neg x)": (lambda x: graphc.neg(graphc.neg(x)), lambda v: v, []),
    "exp(log x)": (lambda x: graphc.exp(graphc.log(x)), lambda v: v, []),
    "log(exp x)": (lambda x: graphc.log(graphc.exp(x)), lambda v: v, []),
    "transpose twice": (lambda x: graphc.transpose(graphc.transpose(x, (1, 2, 0)), (2, 0, 1)), lambda v: v, []),
    "transposes compose": (lambda x: graphc.transpose(graphc.transpose(x, (1, 0, 2)), (0, 2, 1)),
                           lambda v: np.transpose(np.transpose(v, (1, 0, 2)), (0, 2, 1)), ["transpose"]),
    "reshape chain": (lambda x: graphc.reshape(graphc.reshape(graphc.reshape(x, (6, 4)), (24,)), (4, 6)),
                      lambda v: v.reshape(4, 6), ["reshape"]),
    "reshape back": (lambda x: graphc.reshape(graphc.reshape(x, (24,)), (2, 3, 4)), lambda v: v, []),
    "x*broadcast(2)": (lambda x: x * graphc.broadcast_to(graphc.constant(np.array(2.0)), (2, 3, 4)),
                       lambda v: 2 * v, ["constant", "mul"]),
    "x-x": (lambda x: x - x, lambda v: np.zeros_like(v), ["constant", "broadcast_to"]),
    "sum over no axes": (lambda x: graphc.sum(x, ()), lambda v: v, []),
}


#: Identities false for NaN, infinities or overflow: made only under fast_math (tests/test_ieee_semantics.py
#: checks the default keeps them).
FAST_MATH_ONLY = {"exp(log x)", "log(exp x)", "x-x"}


@pytest.mark.parametrize("case", SIMPLIFY_CASES)
def test_simplify_identities(case):
    build, expected, left = SIMPLIFY_CASES[case]
    with graphc.Graph() as g:
        x = graphc.input("x", (2, 3, 4), "float64")
        g.output(build(x))
    out = passes.simplify(g, fast_math=case in FAST_MATH_ONLY)
    assert [o for o in ops(out) if o != "input"] == left, ops(out)
    xv = np.abs(f64(2, 3, 4)) + 0.1   # positive: exp(log x) is x only there
    got = values(out, {"x": xv})[0]
    assert got.shape == expected(xv).shape
    np.testing.assert_allclose(got, expected(xv), rtol=1e-15)


def test_simplify_keeps_shape_and_dtype():
    with graphc.Graph() as g:
        x = graphc.input("x", (3,), "float64")
        i = graphc.input("i", (3,), "int64")
        grown = x * graphc.constant(np.ones((2, 3)))   # x*1 but the result is [2, 3]
        promoted = i + graphc.constant(np.zeros(3))      # int64 + float64: the result is float64
        g.output(grown, promoted)
    out = passes.simplify(g)
    assert [n.op for n in out.nodes if n.op not in ("input", "constant")] == ["broadcast_to", "add"]
    xv, iv = f64(3), np.array([1, -2, 3])
    got = values(out, {"x": xv, "i": iv})
    np.testing.assert_array_equal(got[0], np.broadcast_to(xv, (2, 3)))
    assert got[1].dtype == np.float64 and got[1].tolist() == [1.0, -2.0, 3.0]


# -- reduction fusion --------------------------------------------------------------------------------------

def test_fuse_reductions_recognizes_softmax_and_log_softmax_written_by_hand():
    with graphc.Graph() as g:
        x = graphc.input("x", (3, 5), "float64")
        e = graphc.exp(x - graphc.max(x, axis=1, keepdims=True))
        shifted = e / graphc.sum(e, axis=1, keepdims=True)
        u = graphc.exp(x)
        unshifted = u / graphc.sum(u, axis=1, keepdims=True)
        t = x - graphc.max(x, axis=1, keepdims=True)
        log_sm = t - graphc.log(graphc.sum(graphc.exp(t), axis=1, keepdims=True))
        g.output(shifted, unshifted, log_sm)
    out = passes.fuse_reductions(g)
    assert ops(out) == ["input", "softmax", "softmax", "log_softmax"]
    xv = f64(3, 5) * 1000.0  # exp overflows: the hand-written unshifted form gives nan
    with np.errstate(all="ignore"):
        assert not np.isfinite(values(g, {"x": xv})[1]).all()
    m = xv.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(xv - m).sum(axis=1, keepdims=True))
    got = values(out, {"x": xv})
    np.testing.assert_allclose(got[0], np.exp(xv - lse), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got[1], np.exp(xv - lse), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got[2], xv - lse, rtol=1e-12)


def test_fuse_reductions_only_rewrites_a_normalization_over_one_axis_of_the_same_exponential():
    with graphc.Graph() as g:
        x = graphc.input("x", (3, 5), "float64")
        e = graphc.exp(x)
        g.output(e / graphc.sum(e, axis=0, keepdims=True))                       # softmax along axis 0
        g.output(e / graphc.sum(graphc.exp(x * 2.0), axis=1, keepdims=True))     # another exponential
        g.output(e / graphc.sum(e, axis=(0, 1), keepdims=True))                  # two axes at once
    out = passes.fuse_reductions(g)
    assert [(n.op, n.attrs.get("axis")) for n in out.nodes if n.op == "softmax"] == [("softmax", 0)]
    assert [n.op for n in out.nodes].count("div") == 2
    xv = f64(3, 5)
    ev = np.exp(xv)
    want = [ev / ev.sum(0, keepdims=True), ev / np.exp(2 * xv).sum(1, keepdims=True), ev / ev.sum()]
    for got, w in zip(values(out, {"x": xv}), want):
        np.testing.assert_allclose(got, w, rtol=1e-13)


# -- activation derivatives from outputs --------------------------------------------------------------------

@pytest.mark.parametrize("act,kwargs", [("relu", {}), ("sigmoid", {}), ("tanh", {}), ("exp", {}),
                                        ("leaky_relu", {"alpha": 0.1}), ("elu", {"alpha": 0.7})])
def test_derivatives_from_outputs_read_the_activation_not_its_input(act, kwargs):
    with graphc.Graph() as g:
        z = graphc.input("z", (13,), "float64")
        h = getattr(graphc, act)(z, **kwargs)
        d = graphc.apply(derivative_op(act, 0), [z], kwargs)
        g.output(h, d)
    out = passes.derivatives_from_outputs(g)
    deriv = out.outputs[1]
    assert deriv.op == "fused" and deriv.inputs == (out.outputs[0],)
    zv = np.array([-30.0, -5.0, -2.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0, 5.0, 30.0])
    want = {
        "relu": (zv > 0).astype(float), "sigmoid": np.exp(-zv) / (1 + np.exp(-zv)) ** 2,
        "tanh": 1 - np.tanh(zv) ** 2, "exp": np.exp(zv), "leaky_relu": np.where(zv > 0, 1.0, 0.1),
        "elu": np.where(zv >= 0, 1.0, 0.7 * np.exp(zv)),
    }[act]
    np.testing.assert_allclose(values(out, {"z": zv})[1], want, rtol=1e-7, atol=1e-12)


def test_derivatives_from_outputs_refuses_an_identity_that_fails_for_the_parameters():
    with graphc.Graph() as g:
        z = graphc.input("z", (4,), "float64")
        h = graphc.leaky_relu(z, alpha=-0.5)   # h > 0 also for z < 0: the output does not tell the sign of z
        g.output(h, graphc.apply(derivative_op("leaky_relu", 0), [z], {"alpha": -0.5}))
    assert ops(passes.derivatives_from_outputs(g)).count("fused") == 0


# -- elementwise fusion ------------------------------------------------------------------------------------

def test_fuse_elementwise_makes_one_node_with_broadcasting_inputs_and_provenance():
    with graphc.Graph() as g:
        x = graphc.input("x", (4, 3), "float64")
        b = graphc.input("b", (3,), "float64")
        s = graphc.input("s", (4, 1), "float64")
        y = g.output(graphc.tanh(x * 2.0 + b) * graphc.sigmoid(s) - 1.0)
    out = passes.fuse_elementwise(g)
    (node,) = [n for n in out.nodes if n.op == "fused"]
    assert [i.name for i in node.inputs] == ["x", "b", "s"]
    assert [a.op for a in node.absorbed] == ["mul", "add", "tanh", "sigmoid", "mul", "sub"]
    assert all(a.loc is not None and a.loc.file.endswith("test_passes.py") for a in node.absorbed)
    xv, bv, sv = f64(4, 3), f64(3), f64(4, 1)
    want = np.tanh(xv * 2 + bv) / (1 + np.exp(-sv)) - 1
    np.testing.assert_allclose(values(out, {"x": xv, "b": bv, "s": sv})[0], want, rtol=1e-13)
    assert "%3 fused <- mul@test_passes.py" in passes.fused_provenance(out)
    assert y.shape == node.shape


def test_fuse_elementwise_cuts_at_values_other_kernels_read_and_computes_nothing_twice():
    with graphc.Graph() as g:
        x = graphc.input("x", (3, 3), "float64")
        h = graphc.relu(x + 1.0)          # read by the matmul and by the elementwise tail
        m = h @ x
        g.output(m * 2.0 + graphc.exp(h))
    out = passes.fuse_elementwise(g)
    fused_nodes = [n for n in out.nodes if n.op == "fused"]
    assert len(fused_nodes) == 2
    first, second = fused_nodes
    assert second.inputs.count(first) == 1 and out.nodes[out.nodes.index(first) + 1].op == "matmul"
    assert [a.op for a in first.absorbed] == ["add", "relu"] and [a.op for a in second.absorbed] == ["mul", "exp", "add"]
    xv = f64(3, 3)
    hv = np.maximum(xv + 1, 0)
    np.testing.assert_allclose(values(out, {"x": xv})[0], hv @ xv * 2 + np.exp(hv), rtol=1e-13)


def test_fuse_elementwise_bounds_expressions_that_reuse_values():
    """x <- tanh(x*x + x), 25 times: inlined as a tree it would have ~2^25 nodes; values get materialized."""
    from graphc.passes.fusion import MAX_TREE

    with graphc.Graph() as g:
        x = graphc.input("x", (5,), "float64")
        t = x
        for _ in range(25):
            t = graphc.tanh(t * t + t)
        g.output(t)
    out = passes.fuse_elementwise(g)
    fused_nodes = [n for n in out.nodes if n.op == "fused"]
    assert 2 <= len(fused_nodes) <= 25
    assert all(len(n.absorbed) <= MAX_TREE for n in fused_nodes)
    assert sum(len(n.absorbed) for n in fused_nodes) == 75        # every op absorbed exactly once
    xv = np.linspace(-1.0, 1.0, 5)
    want = xv.copy()
    for _ in range(25):
        want = np.tanh(want * want + want)
    np.testing.assert_allclose(values(out, {"x": xv})[0], want, rtol=1e-12)


def test_fuse_elementwise_absorbs_derivative_ops_and_earlier_fused_nodes():
    x0, x1 = fused_symbols(2)
    with graphc.Graph() as g:
        z = graphc.input("z", (5,), "float64")
        gr = graphc.input("g", (5,), "float64")
        d = graphc.apply(derivative_op("tanh", 0), [z])
        pre = fused(x0 * x1, [gr, d], "float64")
        g.output(pre + 1.0)
    out = passes.fuse_elementwise(g)
    assert ops(out) == ["input", "input", "fused"]
    zv, gv = f64(5), f64(5)
    np.testing.assert_allclose(values(out, {"z": zv, "g": gv})[0], gv * (1 - np.tanh(zv) ** 2) + 1, rtol=1e-13)


def test_fused_cse_shares_subexpressions():
    x0, x1 = fused_symbols(2)
    expr = sp.exp(x0 + x1) * x0 + sp.tanh(x0 + x1)
    temps, result = passes.fused_cse(expr)
    assert len(temps) >= 1
    value = result.subs({t: e for t, e in reversed(temps)}) if temps else result
    for t, e in reversed(temps):
        value = value.subs(t, e)
    assert sp.simplify(value - expr) == 0


# -- epilogue fusion -------------------------------------------------------------------------------------

def test_fuse_epilogue_dense_bias_relu_and_transposed_operands():
    rng = np.random.default_rng(1)
    with graphc.Graph() as g:
        x = graphc.input("x", (4, 3), "float64")
        W = graphc.param("W", rng.standard_normal((3, 5)))
        b = graphc.param("b", rng.standard_normal(5))
        h = graphc.relu(graphc.dense(x, W, b))
        gt = graphc.matmul(graphc.transpose(x), h)          # x^T @ h: transpose folded into a flag
        g.output(h, gt)
    out = passes.fuse_epilogue(passes.fuse_elementwise(g))
    assert ops(out) == ["input", "param", "param", "matmul_epilogue", "matmul_epilogue"]
    first, second = out.nodes[3:]
    assert first.inputs[2].name == "b" and not first.attrs["transpose_a"]
    assert second.attrs["transpose_a"] and second.inputs[0].name == "x" and second.attrs["expr"] == fused_symbols(1)[0]
    assert [a.op for a in first.absorbed] == ["dense", "relu"]
    xv = rng.standard_normal((4, 3))
    hv = np.maximum(xv @ W.node.value + b.node.value, 0)
    got = values(out, {"x": xv})
    np.testing.assert_allclose(got[0], hv, rtol=1e-13)
    np.testing.assert_allclose(got[1], xv.T @ hv, rtol=1e-13)


def test_fuse_epilogue_conv_bias_relu():
    rng = np.random.default_rng(2)
    with graphc.Graph() as g:
        x = graphc.input("x", (2, 2, 5, 5), "float64")
        w = graphc.param("w", rng.standard_normal((3, 2, 3, 3)))
        b = graphc.param("b", rng.standard_normal(3))
        g.output(graphc.relu(graphc.conv2d(x, w, padding=1) + graphc.reshape(b, (1, 3, 1, 1))))
    out = passes.fuse_epilogue(passes.fuse_elementwise(g))
    assert [n.op for n in out.nodes if n.op not in ("input", "param", "reshape")] == ["conv2d_epilogue"]
    xv = rng.standard_normal((2, 2, 5, 5))
    # the convolution by loops
    xp = np.pad(xv, ((0, 0), (0, 0), (1, 1), (1, 1)))
    wv, bv = w.node.value, b.node.value
    want = np.zeros((2, 3, 5, 5))
    for n in range(2):
        for o in range(3):
            for i in range(5):
                for j in range(5):
                    want[n, o, i, j] = np.sum(xp[n, :, i:i + 3, j:j + 3] * wv[o]) + bv[o]
    np.testing.assert_allclose(values(out, {"x": xv})[0], np.maximum(want, 0), rtol=1e-12)


def test_fuse_epilogue_leaves_update_values_to_run_in_place():
    with graphc.Graph() as g:
        x = graphc.input("x", (4, 3), "float64")
        W = graphc.param("W", np.ones((3, 2)))
        gW = graphc.matmul(graphc.transpose(x), graphc.constant(np.ones((4, 2))))
        g.output(graphc.sum(W))
        g.update(W, W - gW * 0.1)
    out = passes.fuse_epilogue(passes.fuse_elementwise(g))
    upd = out.updates[0][1]
    assert upd.op == "fused" and upd.inputs[1].op == "matmul_epilogue"


# -- SymPy simplification -----------------------------------------------------------------------------------

def test_simplify_expressions_shortens_and_stays_equal():
    x0, x1 = fused_symbols(2)
    with graphc.Graph() as g:
        p, q = graphc.input("p", (6,), "float64"), graphc.input("q", (6,), "float64")
        g.output(fused(x0 * (x1 / x0 - 1) + sp.log(sp.exp(x1)) * 0, [p, q], "float64"))
    assert passes.simplify_expressions(g) is g  # IEEE semantics by default: x0*(x1/x0 - 1) is NaN at x0 = 0
    out = passes.simplify_expressions(g, fast_math=True)
    assert out.nodes[-1].attrs["expr"] == x1 - x0
    pv, qv = f64(6), f64(6)
    np.testing.assert_allclose(values(out, {"p": pv, "q": qv})[0], qv - pv, rtol=1e-13, atol=1e-15)
    # with no time budget nothing is touched
    assert passes.simplify_expressions(g, budget_s=0.0, fast_math=True).nodes[-1].attrs["expr"] == g.nodes[-1].attrs["expr"]


def test_simplest_equivalent_takes_a_shorter_form_only_if_it_is_as_finite(monkeypatch):
    from graphc.passes import sympy_simplify

    x0 = fused_symbols(1)[0]
    stable = sp.Piecewise((1 / (1 + sp.exp(-x0)), x0 >= 0), (sp.exp(x0) / (1 + sp.exp(x0)), True))
    overflowing = sp.exp(x0) / (sp.exp(x0) + 1)      # shorter, equal, but inf/inf = nan at x = 1000
    fine = 1 / (1 + sp.exp(-x0))                     # shorter and finite at +-1000
    monkeypatch.setattr(sympy_simplify, "FULL_SIMPLIFY_OPS", -1)
    for candidates, expected in (([overflowing], stable), ([overflowing, fine], fine), ([fine * 2], stable)):
        sympy_simplify.simplest_equivalent.cache_clear()
        monkeypatch.setattr(sympy_simplify, "TRANSFORMS", tuple((lambda e, c=c: c) for c in candidates))
        assert sympy_simplify.simplest_equivalent(stable) == expected
    sympy_simplify.simplest_equivalent.cache_clear()


# -- the MLP training step: nothing elementwise is left unfused --------------------------------------------

def test_optimized_mlp_step_has_no_elementwise_node_outside_fused_nodes_and_epilogues():
    from test_passes_support import load_bench

    g = load_bench().mlp_step()   # 784-512-256-10, batch 128
    out = graphc.optimize(g, level=2).graph
    loose = [n.op for n in out.nodes if is_elementwise(n) and n.op != "fused"]
    assert loose == []
    assert {"fused", "matmul_epilogue"} <= set(ops(out))
    relu_epilogues = [n for n in out.nodes if n.op == "matmul_epilogue" and any(a.op == "relu" for a in n.absorbed)]
    assert len(relu_epilogues) == 2
    mask_epilogues = [n for n in out.nodes if n.op == "matmul_epilogue"
                      and any(a.op == "drelu_dx" for a in n.absorbed)]
    assert len(mask_epilogues) == 2   # the ReLU derivative rides on the backward GEMM
    assert count_kernels(out) < count_kernels(g)

"""The lowering rules of the shape, reduction, nn, conv and random ops (graphc/backends/lowering/rules_*.py).

Each graph is lowered to a Program and run by the kernel-IR interpreter (NumPy, statement by statement,
races and reads of unwritten memory caught), then compared with the reference backend or a closed form;
no renderer is involved. Structural tests pin what renderers rely on: float64 accumulators, sequential
loops around random draws, labels range-checked once.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy
from test_numba_cpu import TOL, assert_same

import graphc
from graphc.backends.lowering import has_rule, lower
from graphc.backends.lowering.interpret import interpret
from graphc.backends.lowering.ir import Call, Check, Draw, Gemm, Loop
from graphc.ops.elementwise import fused_symbols
from graphc.ops.random import random_flip2d, random_shift2d, random_uniform

DTYPES = ["float64", "float32"]

PORTED = ["transpose", "slice", "unslice", "concatenate", "sum", "mean", "max", "min", "argmax", "softmax",
          "log_softmax", "softmax_cross_entropy", "one_hot", "batch_norm", "conv2d", "conv2d_epilogue",
          "conv_transpose2d", "max_pool2d", "avg_pool2d", "max_pool2d_backward", "max_pool2d_gather",
          "random_uniform", "random_shift2d", "random_flip2d"]


def interpreted(graph: graphc.Graph, feeds, conv: str = "im2col"):
    """(program, outputs): ``graph`` lowered (convolutions by ``conv``) and run by the interpreter."""
    program = lower(graph, choose_conv=lambda node, geometry: conv)
    outputs, _ = interpret(program, *feeds)
    return program, outputs


def assert_matches_reference(graph: graphc.Graph, outputs, inputs, feeds, dtype: str, conv: str = "im2col"):
    """The interpreted Program of ``graph`` equals the reference backend on ``feeds``, output by output."""
    program, got = interpreted(graph, feeds, conv)
    want = graphc.compile(outputs, inputs=inputs)(*feeds)
    assert_same(got, want, [str(k) for k in range(len(want))], dtype)
    return program


def statements(body):
    """Every statement of ``body``, loops included, depth first, with the loops around it."""
    for s in body:
        yield s
        if isinstance(s, Loop):
            yield from statements(s.body)


def loss_of(outputs, dtype):
    """sum_k (k + 1) * sum(out_k) over the float outputs: every output's gradient differs."""
    total = graphc.constant(np.array(0.0, dtype))
    for k, o in enumerate(outputs):
        if o.dtype.name == dtype:
            total = total + graphc.sum(o * float(k + 1))
    return total


def test_every_ported_op_has_a_lowering_rule():
    assert [op for op in PORTED if not has_rule(op)] == []


@pytest.mark.parametrize("dtype", DTYPES)
def test_shape_ops_and_their_gradients_match_reference(dtype):
    r = np.random.default_rng(0)
    with graphc.Graph(f"shape_{dtype}") as g:
        x = graphc.input("x", (2, 3, 4, 5), dtype)
        c = graphc.input("c", (2, 1, 4, 5), "float64")
        outs = [graphc.transpose(x, (2, 0, 3, 1)), graphc.transpose(x, (1, 0, 2, 3)), x[:, 1:3, ::2, 1],
                x[1, ..., 2:], graphc.concatenate([x, graphc.cast(c, dtype) * 2.0, x[:, :2]], axis=1)]
        grads = graphc.grad(loss_of(outs, dtype), [x])
        g.output(*outs, *grads)
    feeds = [r.standard_normal((2, 3, 4, 5)).astype(dtype), r.standard_normal((2, 1, 4, 5))]
    program = assert_matches_reference(g, outs + grads, [x, c], feeds, dtype)
    assert {"transpose", "slice", "unslice", "concatenate"} <= {k.rule for k in program.kernels}


@pytest.mark.parametrize("dtype", DTYPES)
def test_reductions_match_reference_with_nans_bools_and_integers(dtype):
    r = np.random.default_rng(1)
    with graphc.Graph(f"reduce_{dtype}") as g:
        x = graphc.input("x", (2, 3, 4, 5), dtype)
        b = graphc.input("b", (3, 4), "bool")
        i = graphc.input("i", (3, 4), "int64")
        outs = [graphc.sum(x, (1, 3), keepdims=True), graphc.mean(x, 2), graphc.max(x, (0, 2)), graphc.min(x, -1),
                graphc.sum(x), graphc.mean(x, (0, 3)), graphc.max(x, 3), graphc.min(x, (0, 1)),
                graphc.argmax(x, 1), graphc.argmax(x, 3, keepdims=True),
                graphc.max(b, 1), graphc.min(b, 0), graphc.sum(i, 0), graphc.max(i, 1), graphc.min(i, 0),
                graphc.mean(i, 1)]
        grads = graphc.grad(loss_of(outs, dtype), [x])
        g.output(*outs, *grads)
    xv = r.standard_normal((2, 3, 4, 5)).astype(dtype)
    xv[0, 1, 2, 3] = xv[1, 2, 0, 0] = np.nan  # NaN propagates through max/min and wins argmax, as in NumPy
    feeds = [xv, r.integers(0, 2, (3, 4)).astype(bool), r.integers(-9, 9, (3, 4))]
    assert_matches_reference(g, outs + grads, [x, b, i], feeds, dtype)


def test_float32_sums_and_means_accumulate_in_float64():
    """2**24 + 1 is not a float32: a float32 accumulator would stay at 2**24 after each + 1."""
    n = 64
    row = np.array([2.0 ** 24] + [1.0] * n, np.float32)
    with graphc.Graph("wide") as g:
        x = graphc.input("x", (2, n + 1), "float32")
        g.output(graphc.sum(x, 1), graphc.mean(x, 1))
    _, (total, mean) = interpreted(g, [np.stack([row, row])])
    np.testing.assert_array_equal(total, np.float32(2.0 ** 24 + n))
    np.testing.assert_array_equal(mean, np.float32((2.0 ** 24 + n) / (n + 1)))


def test_argmax_is_the_first_nan_or_else_the_first_maximum():
    with graphc.Graph("argmax") as g:
        x = graphc.input("x", (3, 5), "float64")
        g.output(graphc.argmax(x, 1), graphc.argmax(x, 0))
    xv = np.array([[1.0, 7.0, 7.0, np.nan, np.nan], [np.nan, 2.0, 9.0, 9.0, 1.0], [3.0, 8.0, 8.0, 2.0, 0.0]])
    _, (rows, cols) = interpreted(g, [xv])
    np.testing.assert_array_equal(rows, [3, 0, 1])
    np.testing.assert_array_equal(cols, [1, 2, 1, 0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_and_one_hot_of_labels_computed_in_the_step_match_reference(dtype):
    # The nn ops on input labels, with their gradients, run in tests/test_lowering.py (test_numba_cpu's
    # nn_graph); labels computed in the step are range-checked by the kernels that read them.
    r = np.random.default_rng(3)
    with graphc.Graph(f"computed_labels_{dtype}") as g:
        logits = graphc.input("logits", (6, 5), dtype)
        picked = graphc.argmax(logits, 1)
        outs = [graphc.softmax_cross_entropy(logits, picked), graphc.one_hot(picked, 5, dtype) * 2.0]
        grads = graphc.grad(loss_of(outs, dtype), [logits])
        g.output(*outs, *grads)
    feeds = [r.standard_normal((6, 5)).astype(dtype)]
    assert_matches_reference(g, outs + grads, [logits], feeds, dtype)


def test_labels_from_an_input_are_checked_once_before_the_kernels():
    with graphc.Graph("input_labels") as g:
        logits = graphc.input("logits", (4, 5), "float32")
        labels = graphc.input("labels", (4,), "int64")
        g.output(graphc.softmax_cross_entropy(logits, labels), graphc.one_hot(labels, 5, "float32"))
    program = lower(g)
    assert len(program.checks) == 1
    assert not [s for k in program.kernels for s in statements(k.body) if isinstance(s, Check)]
    with pytest.raises(graphc.InputError,
                       match=r"input 'labels': label 7 at index 2 is out of range \[0, 5\) for softmax_cross_entropy "
                             r"\(%\d+ at test_lowering_rules\.py:\d+\)"):
        interpret(program, np.zeros((4, 5), np.float32), np.array([0, 1, 7, 2]))


def test_computed_labels_are_checked_in_the_kernel_that_reads_them():
    with graphc.Graph("computed_labels") as g:
        codes = graphc.input("codes", (3,), "float64")
        g.output(graphc.one_hot(graphc.cast(codes, "int64"), 4, "float32"))
    program = lower(g)
    assert program.checks == []
    checks = [s for k in program.kernels if k.op == "one_hot" for s in statements(k.body) if isinstance(s, Check)]
    assert len(checks) == 1
    (ok,), _ = interpret(program, np.array([3.0, 0.0, 1.0]))
    np.testing.assert_array_equal(ok, np.eye(4, dtype=np.float32)[[3, 0, 1]])
    with pytest.raises(graphc.InputError, match=r"the labels of %\d+: label 5 at index 1 is out of range \[0, 4\) "
                                                r"for one_hot \(%\d+ at test_lowering_rules\.py:\d+\)"):
        interpret(program, np.array([0.0, 5.0, 1.0]))


@pytest.mark.parametrize("conv", ["im2col", "direct"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_and_pool_ops_and_their_gradients_match_reference(dtype, conv):
    r = np.random.default_rng(4)
    pool = {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)}
    s0, s1 = fused_symbols(2)
    other = "float64" if dtype == "float32" else "float32"
    with graphc.Graph(f"conv_{dtype}") as g:
        x = graphc.input("x", (2, 3, 7, 6), dtype)
        w = graphc.input("w", (4, 3, 3, 2), dtype)
        wt = graphc.input("wt", (3, 2, 2, 3), dtype)
        outs = [graphc.conv2d(x, w, stride=2, padding=1), graphc.conv2d(x, w, dilation=(2, 1), padding=(0, 1)),
                graphc.conv2d(x, graphc.reshape(w, (4, 3, 1, 6))[:, :, :, :1]),
                graphc.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1),
                graphc.max_pool2d(x, 3, 2, 1), graphc.avg_pool2d(x, 2), graphc.avg_pool2d(x, (3, 2), (2, 1), (1, 1)),
                graphc.apply("max_pool2d_gather", [x, x * 2.0 + 1.0], pool),
                graphc.apply("max_pool2d_backward", [x, graphc.max_pool2d(x, 3, 2, 1) * 3.0], pool),
                graphc.apply("conv2d_epilogue", [x, w, graphc.reshape(w, (72,))[:4].reshape((1, 4, 1, 1))],
                             {"stride": (1, 2), "padding": (1, 0), "dilation": (1, 1), "dtype": dtype,
                              "expr": sympy.Piecewise((s0 + s1, s0 + s1 > 0), (0, True))}),
                graphc.conv2d(graphc.cast(x, other), w),  # the weights converted to the node's dtype first
                graphc.max_pool2d(graphc.cast(x, other), 2)]
        grads = graphc.grad(loss_of(outs, dtype), [x, w, wt])
        g.output(*outs, *grads)
    feeds = [r.standard_normal((2, 3, 7, 6)).astype(dtype), r.standard_normal((4, 3, 3, 2)).astype(dtype),
             r.standard_normal((3, 2, 2, 3)).astype(dtype)]
    program = assert_matches_reference(g, outs + grads, [x, w, wt], feeds, dtype, conv)
    calls = {s.name for k in program.kernels for s in statements(k.body) if isinstance(s, Call)}
    assert f"conv2d_{conv}" in calls and f"conv2d_{'direct' if conv == 'im2col' else 'im2col'}" not in calls
    assert set(program.options["conv_methods"]) == {conv}


def test_pointwise_conv_is_one_gemm_per_image_whatever_the_choice():
    with graphc.Graph("pointwise") as g:
        x = graphc.input("x", (2, 3, 4, 5), "float64")
        w = graphc.input("w", (6, 3, 1, 1), "float64")
        y = g.output(graphc.conv2d(x, w))
    r = np.random.default_rng(5)
    xv, wv = r.standard_normal((2, 3, 4, 5)), r.standard_normal((6, 3, 1, 1))
    program, (got,) = interpreted(g, [xv, wv], conv="direct")
    (kernel,) = [k for k in program.kernels if k.op == "conv2d"]
    assert [type(s) for s in statements(kernel.body)] == [Loop, Gemm]
    assert program.options["conv_methods"] == ("direct",)
    np.testing.assert_allclose(got, np.einsum("nchw,oc->nohw", xv, wv[:, :, 0, 0]), **TOL["float64"])
    assert y.shape == got.shape


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_ops_draw_the_reference_numbers_in_sequential_loops(dtype):
    with graphc.Graph(f"random_{dtype}") as g:
        x = graphc.input("x", (3, 2, 5, 4), dtype)
        key = graphc.input("key", (), "int64")
        outs = [random_uniform(key, (3, 4), salt=5, dtype=dtype), random_shift2d(x, key, 2, salt=1),
                random_flip2d(x, key, salt=2), random_shift2d(x * 2.0, key * 3, 1, salt=7)]
        g.output(*outs)
    xv = np.random.default_rng(6).standard_normal((3, 2, 5, 4)).astype(dtype)
    want = graphc.compile(outs, inputs=[x, key])
    program = lower(g)
    for k in (12345, 2 ** 40 + 3, -7):
        got, _ = interpret(program, xv, np.array(k, np.int64))
        for a, b in zip(got, want(xv, np.array(k, np.int64))):
            np.testing.assert_array_equal(a, b)
    for kernel in program.kernels:
        for loop in (s for s in statements(kernel.body) if isinstance(s, Loop)):
            if any(isinstance(s, Draw) for s in statements(loop.body)):
                assert not loop.parallel, f"{kernel.title}: a loop that draws must run in order"


def test_conv_geometry_is_target_independent_and_shared_with_autotune():
    """Regression guard: the lowering owns ConvGeometry; numba_cpu's autotune reads the same class."""
    from graphc.backends.lowering.geometry import ConvGeometry
    from graphc.backends.numba_cpu import autotune

    assert autotune.ConvGeometry is ConvGeometry
    assert ConvGeometry(1, 3, 5, 5, 4, 1, 1, 1, 1, 0, 0, 1, 1, 5, 5).is_pointwise
    assert not ConvGeometry(1, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5).is_pointwise

"""The DSL: operators, broadcasting, indexing, shape ops and reductions evaluated against NumPy;
building under a Graph context and by tracing give the same IR; sources; weak scalar typing."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import graphc
from graphc import GraphcError

RNG = np.random.default_rng(0)
A = RNG.uniform(0.5, 2.0, (2, 3, 4))
B = RNG.uniform(0.5, 2.0, (3, 1))
M = RNG.standard_normal((4, 5))


def ev(fn, **arrays):
    """Build ``fn`` over inputs named and shaped like ``arrays``; evaluate it."""
    with graphc.Graph():
        tensors = {k: graphc.input(k, v.shape, v.dtype) for k, v in arrays.items()}
        out = fn(**tensors)
    return graphc.evaluate(out, arrays)


# -- operators ---------------------------------------------------------------------------------------------------

OPERATORS = [
    ("a + b", lambda a, b: a + b),
    ("a - b", lambda a, b: a - b),
    ("a * b", lambda a, b: a * b),
    ("a / b", lambda a, b: a / b),
    ("a ** b", lambda a, b: a ** b),
    ("-a", lambda a, b: -a),
    ("+a", lambda a, b: +a),
    ("abs(-a)", lambda a, b: abs(-a)),
    ("a @ m", None),
    ("a < b", lambda a, b: a < b),
    ("a <= b", lambda a, b: a <= b),
    ("a > b", lambda a, b: a > b),
    ("a >= b", lambda a, b: a >= b),
    ("a == a", lambda a, b: a == a),
    ("a != b", lambda a, b: a != b),
    ("(a - b) * (a + 2.0) / 3.0 - a ** 2", lambda a, b: (a - b) * (a + 2.0) / 3.0 - a ** 2),
]


@pytest.mark.parametrize("expr, _", OPERATORS, ids=[o[0] for o in OPERATORS])
def test_operators_match_numpy(expr, _):
    got = ev(lambda a, b, m: eval(expr), a=A, b=B, m=M)
    want = eval(expr, {}, {"a": A, "b": B, "m": M})
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("expr", [
    "2.0 + a", "2.0 - a", "2.0 * a", "2.0 / a", "2.0 ** a", "3 - a", "a - 3", "a ** 2", "a / 2",
    "c + a", "c - a", "c * a", "c / a", "c ** a", "c < a", "c == a", "c >= a", "n @ a", "a @ n2",
    "a > 1.0", "1.0 > a", "1 <= a",
])
def test_reversed_operators_with_scalars_and_numpy_arrays(expr):
    a = RNG.uniform(0.5, 2.0, (3, 4))
    env = {"c": RNG.uniform(0.5, 2.0, (4,)), "n": RNG.standard_normal((2, 3)), "n2": RNG.standard_normal((4, 2))}
    got = ev(lambda a: eval(expr, {}, {"a": a} | env), a=a)
    want = eval(expr, {}, {"a": a} | env)
    assert isinstance(got, np.ndarray) and got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3),
       seed=st.integers(0, 2**31 - 1))
def test_broadcasting_matches_numpy(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.uniform(0.5, 2.0, s) for s in shapes.input_shapes)
    got = ev(lambda a, b: a * b - b / a + (a > b), a=a, b=b)
    want = a * b - b / a + (a > b)
    assert got.shape == shapes.result_shape
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_tensor_has_no_truth_value():
    with graphc.Graph():
        x = graphc.input("x", (3,))
        with pytest.raises(TypeError, match="graphc.where"):
            if x > 0:
                pass


# -- indexing, shapes, where, reductions --------------------------------------------------------------------------

@pytest.mark.parametrize("index", [
    (0,), (-1, 2), (slice(None), slice(1, 3)), (Ellipsis, 0), (Ellipsis, slice(None, None, 2)),
    (1, None, slice(0, 4, 3)), (None, Ellipsis, None), (slice(None), -1, slice(-2, None)), (np.int64(1),),
], ids=repr)
def test_indexing_and_slicing(index):
    got = ev(lambda a: a[index], a=A)
    np.testing.assert_array_equal(got, A[index])
    assert got.shape == A[index].shape


def test_reshape_and_transpose_spellings():
    outs = ev(lambda a: [a.reshape(6, 4), a.reshape((4, -1)), a.reshape(-1), a.T, a.transpose(1, 0, 2),
                         a.transpose((2, 0, 1)), a.transpose(-1, 0, 1), graphc.reshape(a, [2, 12])], a=A)
    wants = [A.reshape(6, 4), A.reshape(4, -1), A.reshape(-1), A.T, A.transpose(1, 0, 2), A.transpose(2, 0, 1),
             A.transpose(-1, 0, 1), A.reshape(2, 12)]
    for got, want in zip(outs, wants):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_concatenate_and_where():
    c = RNG.standard_normal((2, 1, 4))
    cat, cat_last, w = ev(lambda a, c: [graphc.concatenate([a, c, a], axis=1), graphc.concatenate([a, a], -1),
                                        graphc.where(a > 1.0, a, c)], a=A, c=c)
    np.testing.assert_array_equal(cat, np.concatenate([A, c, A], axis=1))
    np.testing.assert_array_equal(cat_last, np.concatenate([A, A], axis=-1))
    np.testing.assert_array_equal(w, np.where(A > 1.0, A, c))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2), (1,)], ids=str)
@pytest.mark.parametrize("method", ["sum", "mean", "max", "min"])
def test_reduction_methods(method, axis, keepdims):
    got = ev(lambda a: getattr(a, method)(axis=axis, keepdims=keepdims), a=A)
    want = getattr(A, method)(axis=axis, keepdims=keepdims)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("axis, keepdims", [(0, False), (1, True), (-1, False), (None, False)])
def test_argmax_method(axis, keepdims):
    got = ev(lambda a: a.argmax(axis=axis, keepdims=keepdims), a=A)
    np.testing.assert_array_equal(got, A.argmax(axis=axis, keepdims=keepdims))


# -- context vs tracing ------------------------------------------------------------------------------------------

def _model(x, labels):
    w = graphc.param("w", np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
    b = graphc.param("b", np.zeros(3, np.float32))
    logits = graphc.relu(x @ w + b) * 2.0
    return graphc.softmax_cross_entropy(logits, labels), logits.argmax(axis=1)


SPECS = (((8, 4), "float32"), ((8,), "int64"))


def _without_source_lines(text: str) -> str:
    return re.sub(r"\S+\.py:\d+", "<loc>", text)


def _built_in_a_context() -> graphc.Graph:
    with graphc.Graph("_model") as g:
        x = graphc.input("x", (8, 4))
        labels = graphc.input("labels", (8,), "int64")
        loss, pred = _model(x, labels)
        g.output(loss, pred)
    return g


def test_context_and_tracing_build_the_same_ir():
    by_context = _built_in_a_context()
    by_call = graphc.trace(_model, *SPECS)

    @graphc.trace(x=SPECS[0], labels=graphc.TensorSpec((8,), "int64"))
    def by_decorator(x, labels):
        return _model(x, labels)

    assert isinstance(by_call, graphc.Graph) and isinstance(by_decorator, graphc.Graph)
    assert by_context.structural_hash() == by_call.structural_hash() == by_decorator.structural_hash()
    texts = {_without_source_lines(g.text()).replace("graph by_decorator", "graph _model")
             for g in (by_context, by_call, by_decorator)}
    assert len(texts) == 1
    assert [n.name for n in by_call.inputs] == ["x", "labels"]
    # and they compute the same thing
    feeds = {"x": RNG.standard_normal((8, 4)).astype(np.float32), "labels": np.arange(8) % 3}
    results = [graphc.evaluate([graphc.Tensor(o, g) for o in g.outputs], feeds) for g in (by_context, by_call, by_decorator)]
    for r in results[1:]:
        np.testing.assert_array_equal(r[0], results[0][0])
        np.testing.assert_array_equal(r[1], results[0][1])


def test_trace_accepts_arrays_and_shapes_as_specs():
    g = graphc.trace(lambda x, y: x * y, np.zeros((2, 3), np.float64), (2, 3))
    assert [n.type_str for n in g.inputs] == ["f64[2,3]", "f32[2,3]"]
    assert g.outputs[0].type_str == "f64[2,3]"
    with pytest.raises(TypeError, match="no spec for argument"):
        graphc.trace(lambda x, y: x + y, (2,))


def test_source_locations_point_at_the_dsl_call():
    with graphc.Graph():
        x = graphc.input("x", (3,)); line_x = sys._getframe().f_lineno  # noqa: E702
        y = graphc.sigmoid(x) * 2.0; line_y = sys._getframe().f_lineno  # noqa: E702
    assert x.node.loc.line == line_x and x.node.loc.file == __file__
    assert y.node.loc.line == line_y and y.node.inputs[0].loc.line == line_y
    assert y.node.loc.short == f"test_dsl.py:{line_y}"


# -- inputs, params, constants -------------------------------------------------------------------------------------

def test_inputs_params_and_constants():
    w0 = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    with graphc.Graph("sources") as g:
        x = graphc.input("x", (2,), "f64")
        w = graphc.param("w", w0)
        b = graphc.param("b", [0.5, -0.5], dtype="float64")
        k = graphc.constant(np.array([1.0, 10.0]))        # arrays keep their dtype
        s = graphc.constant(3.0)                           # Python floats are float32
        out = g.output(x @ w + b + k * s)
    w0[0, 0] = 100.0                                       # the param took a copy
    assert [n.name for n in g.inputs] == ["x"] and [n.name for n in g.params] == ["w", "b"]
    assert len(g.constants) == 2 and k.dtype == graphc.float64 and s.dtype == graphc.float32
    assert w.dtype == graphc.float32 and b.dtype == graphc.float64 and w.shape == (2, 2)
    assert g.find("w") is w.node and g.parameter_count() == 6
    with pytest.raises(ValueError):
        w.node.value[0, 0] = 1.0                           # initial values are read-only
    x0 = np.array([1.0, 2.0])
    want = x0 @ np.array([[1.0, 2.0], [3.0, 4.0]]) + [0.5, -0.5] + np.array([1.0, 10.0]) * 3
    np.testing.assert_allclose(graphc.evaluate(out, {"x": x0}), want)
    np.testing.assert_allclose(graphc.evaluate(out, {x: x0}, params={"w": np.eye(2)}),
                               x0 + [0.5, -0.5] + np.array([1.0, 10.0]) * 3)


def test_tensors_of_different_graphs_do_not_mix_and_building_needs_a_graph():
    with graphc.Graph("one"):
        a = graphc.input("a", (2,))
    with graphc.Graph("two"):
        b = graphc.input("b", (2,))
        with pytest.raises(GraphcError, match="'one'.*'two'|'two'.*'one'"):
            a + b
    with pytest.raises(GraphcError, match="no graph is being built"):
        graphc.input("c", (2,))


def test_tensor_properties():
    with graphc.Graph():
        x = graphc.input("x", (2, 3, 4), "int32")
    assert (x.shape, x.dtype, x.ndim, x.size, x.name, x.op) == ((2, 3, 4), graphc.int32, 3, 24, "x", "input")
    assert repr(x) == "Tensor(input 'x': i32[2,3,4])"


# -- weak typing of Python scalars -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, expr, result", [
    ("float32", "x * 2.0", "float32"),
    ("float32", "2.0 * x", "float32"),
    ("float32", "x * 2", "float32"),
    ("float32", "x / 3 + 1.5", "float32"),
    ("float32", "x ** 2.0", "float32"),
    ("float32", "graphc.maximum(x, 0.0)", "float32"),
    ("float64", "x * 2.0", "float64"),
    ("int32", "x * 2", "int32"),
    ("int64", "1 - x", "int64"),
    ("int32", "x * 2.0", None),              # an int tensor with a float scalar gives a float
    ("float32", "x * np.float64(2.0)", "float32"),
    ("float32", "x * np.ones(3)", "float64"),   # arrays are not weak: NumPy promotion
    ("float32", "graphc.where(x > 0, x, 0.0)", "float32"),
    ("float32", "graphc.where(x > 0, 1.0, x)", "float32"),
    ("bool", "x == True", "bool"),
])
def test_python_scalars_are_weakly_typed(dtype, expr, result):
    value = np.array([1, 0, 2], dtype)
    with graphc.Graph():
        x = graphc.input("x", (3,), dtype)
        y = eval(expr, globals(), {"x": x})
    got = graphc.evaluate(y, {"x": value})
    if result is None:
        assert y.dtype.is_float
    else:
        assert y.dtype.name == result
    assert got.dtype == y.dtype.np
    np.testing.assert_allclose(got.astype(np.float64), eval(expr.replace("graphc.", "np."), {"np": np, "x": value}))

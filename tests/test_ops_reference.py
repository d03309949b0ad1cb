"""Every op's reference (NumPy backend) result against an independent oracle written here:
closed forms evaluated with the math module, plain NumPy, or straightforward Python loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import graphc
from graphc import InputError

FLOATS = [np.float32, np.float64]
# float32 results against float64 oracles: a few ulps of float32.
TOL = {np.float32: dict(rtol=2e-6, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}
SETTINGS = settings(max_examples=20, deadline=None)
GEOMETRY_SETTINGS = settings(max_examples=50, deadline=None)   # conv/pool geometry: cheap, and easy to get wrong


def run(fn, *arrays):
    """Build ``fn`` over inputs shaped and typed like ``arrays``; evaluate with the reference backend."""
    arrays = [np.asarray(a) for a in arrays]
    with graphc.Graph("op_test") as g:
        inputs = [graphc.input(f"in{k}", a.shape, a.dtype) for k, a in enumerate(arrays)]
        out = fn(*inputs)
        g.output(*(out if isinstance(out, (list, tuple)) else [out]))
    return graphc.evaluate(out, {f"in{k}": a for k, a in enumerate(arrays)})


def scalar_map(f, x: np.ndarray) -> np.ndarray:
    """Apply a scalar Python function to every element, in float64 (the oracle for elementwise ops)."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([f(float(v)) for v in x.ravel()], dtype=np.float64).reshape(x.shape)


# -- the course's worked examples ----------------------------------------------------------------------------

def test_course_perceptron():
    x = np.array([2.0, 3.0, -1.0, 5.0])
    w = np.array([0.1, 0.5, 2.5, 0.2])
    with graphc.Graph("perceptron"):
        xs = graphc.input("x", (1, 4), "float64")
        W = graphc.param("W", w.reshape(4, 1))
        b = graphc.param("b", np.array([3.0]))
        z = graphc.dense(xs, W, b)
        out = graphc.sigmoid(z)
        z_vec = xs[0] @ graphc.constant(w) + 3.0
    z_val, out_val, z_vec_val = graphc.evaluate([z, out, z_vec], {"x": x.reshape(1, 4)})
    # 2*0.1 + 3*0.5 + (-1)*2.5 + 5*0.2 + 3.0 = 3.2 ; sigma(3.2) = 1/(1 + e^-3.2) = 0.9608
    assert z_val[0, 0] == pytest.approx(3.2, abs=1e-12)
    assert float(z_vec_val) == pytest.approx(3.2, abs=1e-12)
    assert out_val[0, 0] == pytest.approx(1 / (1 + math.exp(-3.2)), rel=1e-12)
    assert round(float(out_val[0, 0]), 4) == 0.9608


def test_course_simplified_perceptron_g_of_minus_6():
    # y = g(1 + 3 x1 - 2 x2) at x = (-1, 2): g(-6) ~= 0.0025 for the sigmoid
    with graphc.Graph():
        x = graphc.input("x", (2,), "float64")
        pre = 1.0 + x @ graphc.constant(np.array([3.0, -2.0]))
        y = graphc.sigmoid(pre)
    pre_val, y_val = graphc.evaluate([pre, y], {"x": np.array([-1.0, 2.0])})
    assert float(pre_val) == -6.0
    assert float(y_val) == pytest.approx(1 / (1 + math.exp(6)), rel=1e-12)
    assert round(float(y_val), 4) == 0.0025


# -- activations: closed forms ------------------------------------------------------------------------------

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _ramp(v, a, b, c, d):
    # The course's neuron model: a below c, b above d, a + (v - c)(b - a)/(d - c) between.
    if v < c:
        return a
    if v > d:
        return b
    return a + (v - c) * (b - a) / (d - c)


ACTIVATIONS = [
    ("sigmoid", {}, lambda v: 1 / (1 + math.exp(-v))),
    ("tanh", {}, math.tanh),
    ("relu", {}, lambda v: max(0.0, v)),
    ("leaky_relu", {}, lambda v: v if v > 0 else 0.01 * v),
    ("leaky_relu", {"alpha": 0.1}, lambda v: max(0.1 * v, v)),  # the course's max(0.1x, x)
    ("elu", {}, lambda v: v if v >= 0 else math.exp(v) - 1),
    ("elu", {"alpha": 0.7}, lambda v: v if v >= 0 else 0.7 * (math.exp(v) - 1)),
    ("selu", {}, lambda v: SELU_SCALE * (v if v > 0 else SELU_ALPHA * (math.exp(v) - 1))),
    ("softplus", {}, lambda v: math.log(1 + math.exp(v))),
    ("softsign", {}, lambda v: v / (1 + abs(v))),
    ("step", {}, lambda v: 1.0 if v > 0 else 0.0),
    ("step", {"a": -1.0, "b": 2.0, "c": 0.5}, lambda v: 2.0 if v > 0.5 else -1.0),
    ("ramp", {}, lambda v: _ramp(v, 0.0, 1.0, 0.0, 1.0)),
    ("ramp", {"a": -1.0, "b": 3.0, "c": -0.5, "d": 1.5}, lambda v: _ramp(v, -1.0, 3.0, -0.5, 1.5)),
    ("gaussian", {}, lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi)),
    ("gaussian", {"mu": 0.5, "sigma": 2.0},
     lambda v: math.exp(-0.5 * ((v - 0.5) / 2.0) ** 2) / (math.sqrt(2 * math.pi) * 2.0)),
    ("identity", {}, lambda v: v),
]
# A grid with the kinks and thresholds of every activation above on it.
GRID = np.unique(np.concatenate([np.linspace(-6, 6, 49), [-0.5, -1e-3, 0.0, 1e-3, 0.3, 0.5, 1.0, 1.5, 2.0]]))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name, params, oracle", ACTIVATIONS, ids=[f"{a[0]}{a[1] or ''}" for a in ACTIVATIONS])
def test_activation_closed_form(name, params, oracle, dtype):
    x = GRID.astype(dtype).reshape(2, -1)
    got = run(lambda t: getattr(graphc, name)(t, **params), x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, scalar_map(oracle, x), **TOL[dtype])


def test_ramp_pieces_match_the_course_slide():
    # a below c, b above d, linear between: at c it is a, at d it is b, halfway it is (a + b)/2
    x = np.array([-10.0, 1.0, 2.0, 3.0, 4.0, 10.0])
    got = run(lambda t: graphc.ramp(t, a=-2.0, b=6.0, c=1.0, d=3.0), x)
    np.testing.assert_allclose(got, [-2.0, -2.0, 2.0, 6.0, 6.0, 6.0], rtol=0, atol=1e-15)


def test_step_is_a_below_and_b_above_the_threshold():
    x = np.array([-5.0, 0.99, 1.0, 1.01, 5.0])
    got = run(lambda t: graphc.step(t, a=-3.0, b=7.0, c=1.0), x)
    np.testing.assert_array_equal(got, [-3.0, -3.0, -3.0, 7.0, 7.0])


def test_gaussian_is_the_normalized_density():
    # integrates to 1 (trapezoid rule on a wide grid) and peaks at 1/(sqrt(2 pi) sigma) at mu
    x = np.linspace(-40, 40, 40001)
    got = run(lambda t: graphc.gaussian(t, mu=1.5, sigma=3.0), x)
    assert np.sum((got[1:] + got[:-1]) / 2 * np.diff(x)) == pytest.approx(1.0, abs=1e-9)
    assert got.max() == pytest.approx(1 / (math.sqrt(2 * math.pi) * 3.0), rel=1e-6)
    assert x[np.argmax(got)] == pytest.approx(1.5, abs=1e-3)


@pytest.mark.parametrize("dtype", FLOATS)
def test_activations_stay_finite_at_extreme_inputs(dtype):
    x = np.array([-1e4, -1000.0, -100.0, 100.0, 1000.0, 1e4], dtype)
    sig, sp_, tanh, elu, selu, ss, gauss = run(lambda t: [graphc.sigmoid(t), graphc.softplus(t), graphc.tanh(t),
                                                          graphc.elu(t), graphc.selu(t), graphc.softsign(t),
                                                          graphc.gaussian(t)], x)
    for out in (sig, sp_, tanh, elu, selu, ss, gauss):
        assert np.all(np.isfinite(out))
    # sigmoid(-100) = 3.7e-44 is subnormal in float32: compare it to the grain of float32 subnormals
    np.testing.assert_allclose(sig, [0, 0, math.exp(-100) / (1 + math.exp(-100)), 1, 1, 1], rtol=1e-6, atol=1e-44)
    np.testing.assert_allclose(sp_, [0, 0, math.log1p(math.exp(-100)), 100, 1000, 1e4], rtol=1e-6, atol=1e-40)
    np.testing.assert_allclose(tanh, [-1, -1, -1, 1, 1, 1])
    np.testing.assert_allclose(elu, [-1, -1, -1, 100, 1000, 1e4], rtol=1e-6)
    np.testing.assert_allclose(selu, SELU_SCALE * np.array([-SELU_ALPHA] * 3 + [100, 1000, 1e4]), rtol=1e-6)
    np.testing.assert_allclose(gauss, 0, atol=1e-300)


def test_user_defined_sympy_activation_swish():
    swish = graphc.elementwise("swish", lambda x: x * graphc.sympy_sigmoid(x))
    x = np.concatenate([GRID, [-800.0, 800.0]])
    for dtype in FLOATS:
        got = run(lambda t: swish(t), x.astype(dtype))
        assert got.dtype == dtype
        want = scalar_map(lambda v: v / (1 + math.exp(-v)) if v > -700 else 0.0, x.astype(dtype))
        np.testing.assert_allclose(got, want, **TOL[dtype])
    # registering the same definition again is allowed; a different one under the same name is not
    assert graphc.elementwise("swish", lambda x: x * graphc.sympy_sigmoid(x)) is not None
    with pytest.raises(ValueError, match="swish"):
        graphc.elementwise("swish", lambda x: x * 2)


# -- elementwise math ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
def test_unary_math(dtype):
    x = np.array([[0.25, 1.0, 2.5], [4.0, 9.0, 40.0]], dtype)
    exp, log, sqrt, square, neg = run(lambda t: [graphc.exp(t), graphc.log(t), graphc.sqrt(t), graphc.square(t),
                                                 graphc.neg(t)], x)
    np.testing.assert_allclose(exp, scalar_map(math.exp, x), **TOL[dtype])
    np.testing.assert_allclose(log, scalar_map(math.log, x), **TOL[dtype])
    np.testing.assert_allclose(sqrt, scalar_map(math.sqrt, x), **TOL[dtype])
    np.testing.assert_allclose(square, scalar_map(lambda v: v * v, x), **TOL[dtype])
    np.testing.assert_array_equal(neg, -x)
    assert {a.dtype for a in (exp, log, sqrt, square, neg)} == {np.dtype(dtype)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_abs_and_sign(dtype):
    x = np.array([-3, -1, 0, 2, 7], dtype)
    a, s = run(lambda t: [graphc.abs(t), graphc.sign(t)], x)
    assert a.dtype == dtype and s.dtype == dtype
    np.testing.assert_array_equal(a, [3, 1, 0, 2, 7])
    np.testing.assert_array_equal(s, [-1, -1, 0, 1, 1])


def test_pow_exp_log_of_integers_are_float():
    x = np.array([1, 2, 3], np.int32)
    p, e = run(lambda t: [graphc.pow(t, 2), graphc.exp(t)], x)
    assert p.dtype == np.float32 and e.dtype == np.float32
    np.testing.assert_allclose(p, [1.0, 4.0, 9.0])
    np.testing.assert_allclose(e, [math.e, math.e ** 2, math.e ** 3], rtol=1e-6)


broadcastable_pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4)


@SETTINGS
@given(shapes=broadcastable_pairs, dtype=st.sampled_from(FLOATS), seed=st.integers(0, 2**31 - 1))
def test_binary_arithmetic_broadcasts_like_numpy(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, shapes.input_shapes[0]).astype(dtype)
    b = rng.uniform(-2.0, 2.0, shapes.input_shapes[1]).astype(dtype)
    outs = run(lambda x, y: [graphc.add(x, y), graphc.sub(x, y), graphc.mul(x, y), graphc.div(x, y),
                             graphc.pow(x, y), graphc.maximum(x, y), graphc.minimum(x, y)], a, b)
    a64, b64 = np.broadcast_arrays(a.astype(np.float64), b.astype(np.float64))
    oracles = [lambda u, v: u + v, lambda u, v: u - v, lambda u, v: u * v, lambda u, v: u / v,
               lambda u, v: u ** v, max, min]
    for got, f in zip(outs, oracles):
        assert got.shape == shapes.result_shape and got.dtype == dtype
        want = np.array([f(float(u), float(v)) for u, v in zip(a64.ravel(), b64.ravel())]).reshape(a64.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12)


@SETTINGS
@given(shapes=broadcastable_pairs, seed=st.integers(0, 2**31 - 1))
def test_comparisons_broadcast_and_give_bool(shapes, seed):
    rng = np.random.default_rng(seed)
    # small integers as floats: plenty of ties
    a = rng.integers(-2, 3, shapes.input_shapes[0]).astype(np.float32)
    b = rng.integers(-2, 3, shapes.input_shapes[1]).astype(np.float32)
    names = ["less", "less_equal", "greater", "greater_equal", "equal", "not_equal"]
    outs = run(lambda x, y: [getattr(graphc, n)(x, y) for n in names], a, b)
    ua, ub = np.broadcast_arrays(a, b)
    pyops = [lambda u, v: u < v, lambda u, v: u <= v, lambda u, v: u > v, lambda u, v: u >= v,
             lambda u, v: u == v, lambda u, v: u != v]
    for got, f in zip(outs, pyops):
        assert got.dtype == np.bool_
        want = np.array([f(u, v) for u, v in zip(ua.ravel(), ub.ravel())], bool).reshape(ua.shape)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", FLOATS)
def test_clip(dtype):
    x = np.array([-3.0, -1.0, -0.5, 0.0, 0.7, 2.0, 5.0], dtype)
    got = run(lambda t: graphc.clip(t, -1.0, 2.0), x)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, [min(max(v, -1.0), 2.0) for v in x.tolist()])


def test_where_broadcasts_condition_and_branches():
    cond = np.array([[True], [False]])
    x = np.arange(6.0).reshape(2, 3)
    got = run(lambda c, t: graphc.where(c, t, -1.0), cond, x)
    np.testing.assert_array_equal(got, [[0.0, 1.0, 2.0], [-1.0, -1.0, -1.0]])
    assert got.dtype == np.float64
    # a numeric condition counts nonzero as true
    got = run(lambda c, t: graphc.where(c, t, 0.0), np.array([0.0, 2.0, -1.0], np.float32),
              np.array([5.0, 6.0, 7.0], np.float32))
    np.testing.assert_array_equal(got, [0.0, 6.0, 7.0])
    assert got.dtype == np.float32


def test_cast():
    x = np.array([-2.7, -0.5, 0.0, 0.5, 3.9])
    to_i32, to_bool, back = run(lambda t: [graphc.cast(t, "int32"), graphc.cast(t, "bool"),
                                           graphc.cast(graphc.cast(t, "int64"), "float32")], x)
    assert to_i32.dtype == np.int32 and to_bool.dtype == np.bool_ and back.dtype == np.float32
    np.testing.assert_array_equal(to_i32, [int(v) for v in x])  # truncation toward zero, like C
    np.testing.assert_array_equal(to_bool, [True, True, False, True, True])
    np.testing.assert_array_equal(back, [-2.0, 0.0, 0.0, 0.0, 3.0])


# -- linear algebra ----------------------------------------------------------------------------------------------

def _matmul_loops(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched matrix product by explicit broadcasting of the batch axes and triple loops."""
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, batch + a.shape[-2:]).reshape((-1,) + a.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:]).reshape((-1,) + b.shape[-2:])
    out = np.zeros((a.shape[0], a.shape[1], b.shape[2]))
    for n in range(a.shape[0]):
        for i in range(a.shape[1]):
            for j in range(b.shape[2]):
                out[n, i, j] = sum(float(a[n, i, k]) * float(b[n, k, j]) for k in range(a.shape[2]))
    return out.reshape(batch + (a.shape[1], b.shape[2]))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("a_shape, b_shape", [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),      # batch axes broadcast: [2,1] with [5] -> [2,5]
    ((3, 4), (6, 4, 2)),            # a 2-D operand against a batch
])
def test_matmul_batched(a_shape, b_shape, dtype):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(a_shape).astype(dtype), rng.standard_normal(b_shape).astype(dtype)
    got = run(lambda x, y: x @ y, a, b)
    want = _matmul_loops(a.astype(np.float64), b.astype(np.float64))
    assert got.shape == want.shape and got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_matmul_with_1d_operands():
    rng = np.random.default_rng(1)
    v, m, w, batch = rng.standard_normal(4), rng.standard_normal((4, 3)), rng.standard_normal(4), \
        rng.standard_normal((2, 3, 4))
    vm, mv, vv, bv = run(lambda v_, m_, w_, b_: [v_ @ m_, graphc.matmul(b_, w_), v_ @ w_, b_ @ v_], v, m, w, batch)
    assert vm.shape == (3,) and mv.shape == (2, 3) and vv.shape == () and bv.shape == (2, 3)
    np.testing.assert_allclose(vm, [sum(v[k] * m[k, j] for k in range(4)) for j in range(3)], rtol=1e-12)
    np.testing.assert_allclose(vv, sum(v[k] * w[k] for k in range(4)), rtol=1e-12)
    np.testing.assert_allclose(mv, _matmul_loops(batch, w.reshape(4, 1))[..., 0], rtol=1e-12)
    np.testing.assert_allclose(bv, _matmul_loops(batch, v.reshape(4, 1))[..., 0], rtol=1e-12)


@pytest.mark.parametrize("dtype", FLOATS)
def test_dense(dtype):
    rng = np.random.default_rng(2)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in [(2, 3, 4), (4, 5), (5,)])
    got = run(graphc.dense, x, w, b)
    want = np.zeros((2, 3, 5))
    for i in range(2):
        for j in range(3):
            for o in range(5):
                want[i, j, o] = float(b[o]) + sum(float(x[i, j, k]) * float(w[k, o]) for k in range(4))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


# -- convolution and pooling: Python loops ------------------------------------------------------------------------

def conv2d_loops(x, w, stride, padding, dilation):
    n_, c_, h_, w_ = x.shape
    o_, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (h_ + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w_ + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n_, o_, ho, wo))
    for n in range(n_):
        for o in range(o_):
            for i in range(ho):
                for j in range(wo):
                    total = 0.0
                    for c in range(c_):
                        for a in range(kh):
                            for b in range(kw):
                                r, s = i * sh - ph + a * dh, j * sw - pw + b * dw
                                if 0 <= r < h_ and 0 <= s < w_:
                                    total += float(x[n, c, r, s]) * float(w[o, c, a, b])
                    out[n, o, i, j] = total
    return out


def conv_transpose2d_loops(x, w, stride, padding, output_padding, dilation):
    """Scatter every input pixel times the kernel into the output, then crop the padding."""
    n_, c_, h_, w_ = x.shape
    _, o_, kh, kw = w.shape
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    full = np.zeros((n_, o_, (h_ - 1) * sh + dh * (kh - 1) + 1 + oph, (w_ - 1) * sw + dw * (kw - 1) + 1 + opw))
    for n in range(n_):
        for c in range(c_):
            for i in range(h_):
                for j in range(w_):
                    for o in range(o_):
                        for a in range(kh):
                            for b in range(kw):
                                full[n, o, i * sh + a * dh, j * sw + b * dw] += float(x[n, c, i, j]) * float(w[c, o, a, b])
    return full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]


CONV_CASES = [
    # x shape, w shape, stride, padding, dilation
    ((2, 3, 6, 6), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1)),
    ((1, 2, 7, 8), (3, 2, 3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 2, 9, 7), (2, 2, 3, 2), (2, 1), (2, 0), (2, 3)),
    ((2, 1, 5, 5), (2, 1, 1, 1), (3, 3), (0, 0), (1, 1)),
    ((1, 3, 5, 6), (2, 3, 5, 2), (1, 2), (1, 3), (1, 1)),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation", CONV_CASES)
def test_conv2d_against_loops(x_shape, w_shape, stride, padding, dilation):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    got = run(lambda a, b: graphc.conv2d(a, b, stride=stride, padding=padding, dilation=dilation), x, w)
    want = conv2d_loops(x, w, stride, padding, dilation)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


geometry = st.tuples(st.integers(1, 3), st.integers(1, 3))     # a (height, width) pair


@GEOMETRY_SETTINGS
@given(hw=st.tuples(st.integers(1, 7), st.integers(1, 7)), kernel=geometry, stride=geometry,
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       seed=st.integers(0, 2**31 - 1))
def test_conv2d_random_geometry(hw, kernel, stride, padding, dilation, seed):
    assume(all(h + 2 * p >= d * (k - 1) + 1 for h, p, d, k in zip(hw, padding, dilation, kernel)))
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((1, 2) + hw), rng.standard_normal((2, 2) + kernel)
    got = run(lambda a, b: graphc.conv2d(a, b, stride=stride, padding=padding, dilation=dilation), x, w)
    np.testing.assert_allclose(got, conv2d_loops(x, w, stride, padding, dilation), rtol=1e-12, atol=1e-12)


def test_conv2d_float32_and_known_shape():
    # PyTorch: Conv2d(3, 4, 3, stride=2, padding=1, dilation=2) on 7x7 -> 3x3
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 3, 7, 7)).astype(np.float32), rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    got = run(lambda a, b: graphc.conv2d(a, b, stride=2, padding=1, dilation=2), x, w)
    assert got.shape == (1, 4, 3, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, conv2d_loops(x, w, (2, 2), (1, 1), (2, 2)), rtol=1e-5, atol=1e-5)


def test_conv2d_hand_computed():
    # a 3x3 image of 1..9, a 2x2 kernel [[1, 0], [0, -1]]: each output is x[i,j] - x[i+1,j+1] = -4
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    np.testing.assert_array_equal(run(graphc.conv2d, x, w), [[[[-4.0, -4.0], [-4.0, -4.0]]]])


CONV_T_CASES = [
    # x shape, w shape [C, O, kh, kw], stride, padding, output_padding, dilation
    ((1, 2, 3, 3), (2, 3, 3, 3), (1, 1), (0, 0), (0, 0), (1, 1)),
    ((2, 2, 3, 4), (2, 1, 3, 3), (2, 2), (1, 1), (1, 1), (1, 1)),
    ((1, 1, 4, 3), (1, 2, 2, 3), (3, 2), (0, 1), (2, 0), (1, 1)),
    ((1, 2, 3, 3), (2, 2, 3, 2), (2, 1), (1, 0), (0, 0), (2, 3)),
    ((1, 3, 2, 2), (3, 2, 4, 4), (2, 2), (1, 1), (0, 0), (1, 1)),   # the usual 2x upsampling
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, output_padding, dilation", CONV_T_CASES)
def test_conv_transpose2d_against_scatter_loops(x_shape, w_shape, stride, padding, output_padding, dilation):
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    got = run(lambda a, b: graphc.conv_transpose2d(a, b, stride=stride, padding=padding,
                                                   output_padding=output_padding, dilation=dilation), x, w)
    want = conv_transpose2d_loops(x, w, stride, padding, output_padding, dilation)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@GEOMETRY_SETTINGS
@given(hw=st.tuples(st.integers(1, 4), st.integers(1, 4)), kernel=geometry, stride=geometry,
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       output_padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), seed=st.integers(0, 2**31 - 1))
def test_conv_transpose2d_random_geometry(hw, kernel, stride, padding, dilation, output_padding, seed):
    assume(all(op < max(s, d) for op, s, d in zip(output_padding, stride, dilation)))
    assume(all((h - 1) * s - 2 * p + d * (k - 1) + op + 1 >= 1
               for h, s, p, d, k, op in zip(hw, stride, padding, dilation, kernel, output_padding)))
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((1, 2) + hw), rng.standard_normal((2, 3) + kernel)
    got = run(lambda a, b: graphc.conv_transpose2d(a, b, stride=stride, padding=padding,
                                                   output_padding=output_padding, dilation=dilation), x, w)
    want = conv_transpose2d_loops(x, w, stride, padding, output_padding, dilation)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv_transpose2d_upsamples_2x_and_is_the_adjoint_of_conv2d():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 4, 4))        # conv2d weight [O, C, kh, kw]
    y = rng.standard_normal((2, 4, 4, 4))
    conv, conv_t = run(lambda a, b, c: [graphc.conv2d(a, b, stride=2, padding=1),
                                        graphc.conv_transpose2d(c, b, stride=2, padding=1)], x, w, y)
    assert conv.shape == (2, 4, 4, 4) and conv_t.shape == (2, 3, 8, 8)   # 4x4 -> 8x8
    # <conv2d(x, w), y> == <x, conv_transpose2d(y, w)>
    assert np.sum(conv * y) == pytest.approx(np.sum(x * conv_t), rel=1e-10)


def pool_loops(x, kernel, stride, padding, kind):
    n_, c_, h_, w_ = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = (h_ + 2 * ph - kh) // sh + 1, (w_ + 2 * pw - kw) // sw + 1
    out = np.zeros((n_, c_, ho, wo))
    for n in range(n_):
        for c in range(c_):
            for i in range(ho):
                for j in range(wo):
                    window = [float(x[n, c, r, s])
                              for r in range(i * sh - ph, i * sh - ph + kh)
                              for s in range(j * sw - pw, j * sw - pw + kw)
                              if 0 <= r < h_ and 0 <= s < w_]
                    # padding never wins a max; it counts as zeros in the average (count_include_pad)
                    out[n, c, i, j] = max(window) if kind == "max" else sum(window) / (kh * kw)
    return out


POOL_CASES = [
    # x shape, kernel, stride (None = kernel), padding
    ((2, 3, 6, 6), (2, 2), None, (0, 0)),
    ((1, 2, 7, 7), (3, 3), (2, 2), (1, 1)),
    ((1, 1, 5, 8), (2, 3), (1, 2), (1, 0)),
    ((2, 2, 4, 4), (4, 4), None, (0, 0)),       # global pooling
    ((1, 1, 5, 5), (3, 3), (3, 3), (0, 0)),     # the last row and column are dropped (floor)
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("x_shape, kernel, stride, padding", POOL_CASES)
def test_pooling_against_loops(x_shape, kernel, stride, padding, kind):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape) - 3.0     # all negative-ish: zero padding must not win a max
    fn = graphc.max_pool2d if kind == "max" else graphc.avg_pool2d
    got = run(lambda a: fn(a, kernel, stride, padding), x)
    want = pool_loops(x, kernel, stride or kernel, padding, kind)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@GEOMETRY_SETTINGS
@given(hw=st.tuples(st.integers(1, 7), st.integers(1, 7)), kernel=geometry, stride=geometry,
       padding=st.tuples(st.integers(0, 1), st.integers(0, 1)), kind=st.sampled_from(["max", "avg"]),
       seed=st.integers(0, 2**31 - 1))
def test_pooling_random_geometry(hw, kernel, stride, padding, kind, seed):
    assume(all(2 * p <= k <= h + 2 * p for h, k, p in zip(hw, kernel, padding)))
    x = np.random.default_rng(seed).standard_normal((2, 1) + hw) - 3.0
    fn = graphc.max_pool2d if kind == "max" else graphc.avg_pool2d
    got = run(lambda a: fn(a, kernel, stride, padding), x)
    np.testing.assert_allclose(got, pool_loops(x, kernel, stride, padding, kind), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_float32(kind):
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    fn = graphc.max_pool2d if kind == "max" else graphc.avg_pool2d
    got = run(lambda a: fn(a, 2), x)
    assert got.dtype == np.float32
    # windows of an arange: max is the bottom-right, mean the centre of each 2x2 block
    base = np.array([[5.0, 7.0], [13.0, 15.0]])
    want = np.stack([base, base + 16]) if kind == "max" else np.stack([base - 2.5, base + 13.5])
    np.testing.assert_array_equal(got[0], want)


# -- reductions --------------------------------------------------------------------------------------------------

AXES = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
def test_reductions(op, axis, keepdims):
    x = np.random.default_rng(8).standard_normal((2, 3, 4))
    got = run(lambda t: getattr(graphc, op)(t, axis, keepdims), x)
    want = getattr(np, op)(x, axis=axis, keepdims=keepdims)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_reductions_keep_or_widen_dtype():
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    s, m, mx = run(lambda t: [graphc.sum(t, 0), graphc.mean(t, 1), graphc.max(t)], x)
    assert s.dtype == np.int32 and mx.dtype == np.int32 and m.dtype == np.float32
    np.testing.assert_array_equal(s, [12, 15, 18, 21])
    np.testing.assert_allclose(m, [1.5, 5.5, 9.5])
    assert mx == 11
    f32 = run(lambda t: graphc.sum(t, 1), np.ones((2, 5), np.float32))
    assert f32.dtype == np.float32 and list(f32) == [5.0, 5.0]


@pytest.mark.parametrize("axis, keepdims", [(0, False), (1, True), (-1, False), (None, False), (None, True)])
def test_argmax(axis, keepdims):
    x = np.array([[[1.0, 5.0, 5.0], [7.0, 0.0, 2.0]], [[3.0, 3.0, -1.0], [2.0, 9.0, 9.0]]])  # ties: first wins
    got = run(lambda t: graphc.argmax(t, axis, keepdims), x)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.argmax(x, axis=axis, keepdims=keepdims))
    if axis == -1 and not keepdims:
        np.testing.assert_array_equal(got, [[1, 0], [0, 1]])


# -- shape ops -----------------------------------------------------------------------------------------------------

def test_reshape_transpose_concatenate():
    x = np.arange(24.0).reshape(2, 3, 4)
    y = np.arange(8.0).reshape(2, 1, 4) + 100
    flat, r, t, t_default, cat, cat_neg = run(lambda a, b: [graphc.reshape(a, (-1,)), graphc.reshape(a, (4, -1)),
                                                            graphc.transpose(a, (1, 2, 0)), graphc.transpose(a),
                                                            graphc.concatenate([a, b], axis=1),
                                                            graphc.concatenate([b, b, b], axis=-2)], x, y)
    np.testing.assert_array_equal(flat, list(range(24)))
    assert r.shape == (4, 6)
    np.testing.assert_array_equal(r.ravel(), list(range(24)))
    for i in range(2):
        for j in range(3):
            for k in range(4):
                assert t[j, k, i] == x[i, j, k] and t_default[k, j, i] == x[i, j, k]
    assert cat.shape == (2, 4, 4)
    np.testing.assert_array_equal(cat[:, :3], x)
    np.testing.assert_array_equal(cat[:, 3], y[:, 0])
    assert cat_neg.shape == (2, 3, 4) and np.all(cat_neg == y)


@pytest.mark.parametrize("index", [
    1, -1, (slice(None), 2), (0, slice(1, None), slice(None, None, 2)), (Ellipsis, 1), (Ellipsis, slice(0, 3, 2)),
    (None, 1), (1, None, Ellipsis, None), (slice(None, None, 3), Ellipsis, -2), (slice(-2, None), slice(1, 2), 0),
    (slice(5, 1),), (slice(-100, 100, 2),), (Ellipsis, None, slice(1, 3)), (Ellipsis,),
], ids=repr)
def test_slicing(index):
    x = np.arange(60.0).reshape(3, 4, 5)
    got = run(lambda t: t[index], x)
    want = x[index]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


# -- softmax and friends -------------------------------------------------------------------------------------------

def _softmax_rows(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    for i, row in enumerate(x):
        m = max(row)
        e = [math.exp(v - m) for v in row]
        out[i] = [v / sum(e) for v in e]
    return out


@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_and_log_softmax(dtype):
    x = np.random.default_rng(9).standard_normal((4, 5)).astype(dtype) * 3
    sm, lsm, sm0, lsm0 = run(lambda t: [graphc.softmax(t), graphc.log_softmax(t),
                                        graphc.softmax(t, axis=0), graphc.log_softmax(t, axis=0)], x)
    want = _softmax_rows(x)
    np.testing.assert_allclose(sm, want, **TOL[dtype])
    np.testing.assert_allclose(lsm, np.log(want), **TOL[dtype])
    np.testing.assert_allclose(sm0, _softmax_rows(x.T).T, **TOL[dtype])
    np.testing.assert_allclose(lsm0, np.log(_softmax_rows(x.T).T), **TOL[dtype])
    assert sm.dtype == dtype and lsm.dtype == dtype


@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_of_extreme_logits_stays_finite(dtype):
    x = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [1e4, 1e4, 0.0]], dtype)
    sm, lsm = run(lambda t: [graphc.softmax(t), graphc.log_softmax(t)], x)
    assert np.all(np.isfinite(sm)) and np.all(np.isfinite(lsm))
    np.testing.assert_allclose(sm, [[1, 0, 0], [1 / 3] * 3, [0.5, 0.5, 0]], rtol=1e-6, atol=0)
    np.testing.assert_allclose(lsm, [[0, -1e4, -2e4], [-math.log(3)] * 3, [-math.log(2), -math.log(2), -1e4 - math.log(2)]],
                               rtol=1e-6)


# -- batch norm ----------------------------------------------------------------------------------------------------

def _bn_loops(x, gamma, beta, mean, var, eps):
    out = np.zeros_like(x, dtype=np.float64)
    for c in range(x.shape[1]):
        out[:, c] = (x[:, c] - mean[c]) / math.sqrt(var[c] + eps) * gamma[c] + beta[c]
    return out


def _channel_stats(x):
    """Per-channel mean and biased variance of an [N, C, ...] array, by plain sums."""
    values = [x[:, c].ravel().astype(np.float64) for c in range(x.shape[1])]
    mean = np.array([sum(v) / len(v) for v in values])
    var = np.array([sum((u - m) ** 2 for u in v) / len(v) for v, m in zip(values, mean)])
    return mean, var


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)])
def test_batch_norm_training_uses_batch_statistics(shape, dtype):
    rng = np.random.default_rng(10)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma, beta = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    got = run(lambda a, g, b: graphc.batch_norm(a, g, b, eps=1e-3), x, gamma, beta)
    mean, var = _channel_stats(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, _bn_loops(x, gamma, beta, mean, var, 1e-3),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-12)
    # with gamma = 1, beta = 0 every channel comes out with mean 0 and variance var/(var + eps)
    unit = run(lambda a: graphc.batch_norm(a, graphc.constant(np.ones(3, dtype)), graphc.constant(np.zeros(3, dtype)),
                                           eps=1e-3), x)
    m2, v2 = _channel_stats(unit)
    np.testing.assert_allclose(m2, 0, atol=1e-5)
    np.testing.assert_allclose(v2, var / (var + 1e-3), rtol=1e-4)


@pytest.mark.parametrize("dtype", FLOATS)
def test_batch_norm_inference_uses_running_statistics(dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 3, 2, 2)).astype(dtype)
    gamma, beta = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    rmean, rvar = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    got = run(lambda a, g, b, m, v: graphc.batch_norm(a, g, b, m, v, eps=1e-2, training=False),
              x, gamma, beta, rmean, rvar)
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(got, _bn_loops(x, gamma, beta, rmean, rvar, 1e-2), **{
        np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}[dtype])


# -- losses -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
def test_mse(dtype):
    p = np.array([[0.5, 1.0], [2.0, -1.0]], dtype)
    t = np.array([[0.0, 1.0], [1.0, 1.0]], dtype)
    got = run(graphc.mse, p, t)
    assert got.dtype == dtype and got.shape == ()
    assert float(got) == pytest.approx((0.25 + 0 + 1 + 4) / 4, rel=1e-6)


def test_binary_cross_entropy_on_probabilities_is_the_course_formula():
    p = np.array([0.9, 0.2, 0.6, 0.01])
    y = np.array([1.0, 0.0, 1.0, 1.0])
    got = run(graphc.binary_cross_entropy, p, y)
    want = -sum(yi * math.log(pi) + (1 - yi) * math.log(1 - pi) for pi, yi in zip(p, y)) / len(p)
    assert float(got) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("dtype", FLOATS)
def test_binary_cross_entropy_with_logits(dtype):
    z = np.array([-3.0, -0.5, 0.0, 1.0, 4.0], dtype)
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0], dtype)
    got = run(graphc.binary_cross_entropy_with_logits, z, y)
    p = [1 / (1 + math.exp(-v)) for v in z.tolist()]
    want = -sum(yi * math.log(pi) + (1 - yi) * math.log(1 - pi) for pi, yi in zip(p, y.tolist())) / len(p)
    assert got.dtype == dtype
    assert float(got) == pytest.approx(want, rel=1e-6 if dtype == np.float32 else 1e-12)
    # extreme logits: confident and wrong costs |z|, confident and right costs ~0; never inf/nan
    extreme = run(graphc.binary_cross_entropy_with_logits, np.array([100.0, -100.0, 1000.0, -1000.0], dtype),
                  np.array([0.0, 1.0, 1.0, 0.0], dtype))
    assert float(extreme) == pytest.approx((100 + 100 + 0 + 0) / 4, rel=1e-6)


def _ce_loop(logits, labels):
    total = 0.0
    for row, label in zip(logits.astype(np.float64), labels):
        m = max(row)
        total += -(row[label] - m - math.log(sum(math.exp(v - m) for v in row)))
    return total / len(labels)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_cross_entropy_integer_and_one_hot_labels(dtype, label_dtype):
    rng = np.random.default_rng(12)
    logits = (rng.standard_normal((5, 4)) * 2).astype(dtype)
    labels = np.array([0, 3, 1, 1, 2], label_dtype)
    onehot = np.eye(4, dtype=dtype)[labels]
    by_index, by_onehot = run(lambda z, y, t: [graphc.softmax_cross_entropy(z, y), graphc.softmax_cross_entropy(z, t)],
                              logits, labels, onehot)
    want = _ce_loop(logits, labels)
    assert by_index.dtype == dtype and by_index.shape == ()
    assert float(by_index) == pytest.approx(want, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert float(by_onehot) == pytest.approx(want, rel=1e-6 if dtype == np.float32 else 1e-12)


def test_softmax_cross_entropy_soft_labels_and_extreme_logits():
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])
    soft = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    got = run(graphc.softmax_cross_entropy, logits, soft)
    # row 0: -(0.5 * 0 + 0.5 * -1e4) = 5000; row 1: log 3
    assert float(got) == pytest.approx((5000 + math.log(3)) / 2, rel=1e-12)
    hard = run(graphc.softmax_cross_entropy, logits, np.array([1, 2]))
    assert np.isfinite(hard) and float(hard) == pytest.approx((1e4 + math.log(3)) / 2, rel=1e-12)


def test_l2_penalty():
    a, b = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([4.0, -1.0, 0.0])
    got = run(lambda x, y: graphc.l2_penalty([x, y], 0.01), a, b)
    assert float(got) == pytest.approx(0.01 * (1 + 4 + 0.25 + 9 + 16 + 1), rel=1e-12)


@pytest.mark.parametrize("dtype", FLOATS)
def test_maxout_is_the_max_over_affine_pieces(dtype):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 4)).astype(dtype)
    w = rng.standard_normal((2, 4, 5)).astype(dtype)   # k = 2 pieces, as on the course slide
    b = rng.standard_normal((2, 5)).astype(dtype)
    got = run(graphc.maxout, x, w, b)
    want = np.zeros((3, 5))
    for n in range(3):
        for o in range(5):
            want[n, o] = max(float(b[k, o]) + sum(float(x[n, i]) * float(w[k, i, o]) for i in range(4)) for k in range(2))
    assert got.dtype == dtype and got.shape == (3, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_one_hot():
    labels = np.array([[2, 0], [1, 3]], np.int64)
    got = run(lambda t: graphc.one_hot(t, 4), labels)
    assert got.shape == (2, 2, 4) and got.dtype == np.float32
    for i in range(2):
        for j in range(2):
            assert list(got[i, j]) == [1.0 if c == labels[i, j] else 0.0 for c in range(4)]
    with pytest.raises(InputError, match=r"one_hot: label 4 is out of range \[0, 4\)"):
        run(lambda t: graphc.one_hot(t, 4), np.array([1, 4], np.int32))

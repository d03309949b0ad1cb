"""Every op's derivative against central finite differences, in float64.

The registry is walked: every op either has a derivative that is checked here on
hypothesis-generated shapes (broadcasting, conv/pool strides, paddings and dilations), or
is declared not differentiable (``registry.no_gradient``). The finite differences are
written here (fourth-order central differences of the forward graph evaluated by the
reference backend), independently of graphc.check_grad.

Inputs are kept away from the points where an op is not differentiable, so that finite
differences are valid: elementwise inputs lie on a lattice 0.05 away from every multiple of
0.1 (relu, abs, step at 0, clip and ramp corners at 0 and 1); the two operands of binary
ops on offset lattices (maximum/minimum never tie); pooled and reduced values are distinct.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc
from graphc.ops import registry
from graphc.ops.elementwise import derivative_op, fused

REL_TOL = 1e-6
FLOOR = 1e-4  # entries smaller than this are compared absolutely (|error| < REL_TOL * FLOOR)
STEP = 1e-4
SOURCES = {"input", "param", "constant"}

# First-order derivative ops are registered lazily; register them now so the walk below covers them.
for _op in list(registry.all_ops()):
    if _op.is_elementwise and _op.name != "fused" and _op.vjp is not registry.no_gradient:
        for _i in range(len(_op.symbols)):
            derivative_op(_op.name, _i)


# -- the oracle ------------------------------------------------------------------------------------------------

def numeric_gradient(loss_of, x: np.ndarray) -> np.ndarray:
    """d loss / dx by fourth-order central differences (error O(STEP^4))."""
    out = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        def f(step, index=index):
            moved = x.copy()
            moved[index] += step
            return loss_of(moved)
        out[index] = (8 * (f(STEP) - f(-STEP)) - (f(2 * STEP) - f(-2 * STEP))) / (12 * STEP)
    return out


def relative_error(symbolic: np.ndarray, numeric: np.ndarray) -> float:
    if symbolic.size == 0:
        return 0.0
    scale = np.maximum(np.maximum(np.abs(symbolic), np.abs(numeric)), FLOOR)
    return float(np.max(np.abs(symbolic - numeric) / scale))


def assert_gradients_match(arrays: list[np.ndarray], build, seed: int = 0) -> None:
    """Float arrays become float64 parameters (differentiated), the others constants.

    The loss is sum(build(...) * R) with a random R, so every output entry matters differently.
    """
    rng = np.random.default_rng(seed)
    with graphc.Graph("gradcheck") as g:
        tensors, params = [], []
        for k, a in enumerate(arrays):
            if a.dtype.kind == "f":
                t = graphc.param(f"p{k}", a.astype(np.float64))
                params.append(t)
            else:
                t = graphc.constant(a)
            tensors.append(t)
        out = build(*tensors)
        weights = graphc.constant(rng.normal(size=out.shape))
        loss = graphc.sum(graphc.cast(out, "float64") * weights)
        grads = graphc.grad(loss, params)
    assert all(d.shape == p.shape and d.dtype == p.dtype for d, p in zip(grads, params))
    symbolic = graphc.evaluate(grads)
    for p, sym in zip(params, symbolic):
        value = np.asarray(p.node.value, np.float64)
        numeric = numeric_gradient(lambda v, p=p: float(graphc.evaluate(loss, params={p: v})), value)
        err = relative_error(sym, numeric)
        assert err < REL_TOL, (f"{out.op}: gradient of {p.name} {p.shape} differs from finite differences "
                               f"(relative error {err:.3g})\nsymbolic\n{sym}\nnumeric\n{numeric}\n{g}")


def assert_second_order_matches(arrays: list[np.ndarray], build, seed: int = 0) -> None:
    """The gradient graph is differentiable again: d/dp <grad(p), V> (a Hessian-vector product built
    by graphc.grad of the gradient) equals finite differences of <grad(p), V> evaluated numerically."""
    rng = np.random.default_rng(seed)
    with graphc.Graph("gradcheck2") as g:
        params = [graphc.param(f"p{k}", a) if a.dtype.kind == "f" else graphc.constant(a) for k, a in enumerate(arrays)]
        out = build(*params)
        params = [p for p in params if p.op == "param"]
        loss = graphc.sum(graphc.cast(out, "float64") * graphc.constant(rng.normal(size=out.shape)))
        grads = graphc.grad(loss, params)
        inner = graphc.sum(graphc.constant(np.zeros(())))
        for d in grads:
            inner = inner + graphc.sum(d * graphc.constant(rng.normal(size=d.shape)))
        second = graphc.grad(inner, params)
    symbolic = graphc.evaluate(second)
    for p, sym in zip(params, symbolic):
        value = np.asarray(p.node.value, np.float64)
        numeric = numeric_gradient(lambda v, p=p: float(graphc.evaluate(inner, params={p: v})), value)
        err = relative_error(sym, numeric)
        assert err < REL_TOL, (f"{out.op}: second derivative for {p.name} {p.shape} differs from finite differences "
                               f"(relative error {err:.3g})\nsymbolic\n{sym}\nnumeric\n{numeric}\n{g}")


# -- strategies ------------------------------------------------------------------------------------------------

def lattice(draw, shape, offset=0.05, low=-20, high=19, positive=False):
    """Values 0.1 k + offset: away from 0, from the integers and from another lattice's values."""
    n = int(np.prod(shape, dtype=np.int64))
    ks = draw(st.lists(st.integers(0 if positive else low, high), min_size=n, max_size=n))
    return (np.array(ks, np.float64) * 0.1 + offset).reshape(shape)


def distinct(draw, shape):
    """Distinct values (a shuffled lattice with spacing 0.05): no ties in max/min/pooling."""
    n = int(np.prod(shape, dtype=np.int64))
    perm = draw(st.permutations(list(range(n))))
    return ((np.array(perm, np.float64) - n / 2) * 0.05 + 0.013).reshape(shape)


@st.composite
def broadcast_shapes(draw, arity):
    """A base shape and ``arity`` shapes that broadcast to it (some axes 1, some leading axes dropped)."""
    base = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    shapes = []
    for _ in range(arity):
        shape = tuple(d if draw(st.booleans()) else 1 for d in base)
        drop = draw(st.integers(0, len(shape)))
        shapes.append(shape[drop:])
    shapes[draw(st.integers(0, arity - 1))] = base  # the output keeps the base shape
    return shapes


def _parent(op_name: str) -> str:
    """sigmoid for dsigmoid_dx and ddsigmoid_dx_dx: derivative ops share their op's domain."""
    parent = registry.get(op_name).derivative_of if registry.is_registered(op_name) else None
    return _parent(parent[0]) if parent else op_name


POSITIVE_FIRST = {"log", "sqrt", "pow"}  # their first input must be > 0
# Divisors stay >= 0.53 away from 0: near y = 0 the higher derivatives of x / y (-6x/y^4, ...) grow so
# fast that fourth-order finite differences of the second derivative lose their accuracy.
NONZERO_SECOND = {"div"}


@st.composite
def elementwise_case(draw, op_name):
    op = registry.get(op_name)
    arity = len(op.symbols)
    shapes = draw(broadcast_shapes(arity))
    parent = _parent(op_name)
    arrays = []
    for k, shape in enumerate(shapes):
        if parent == "where" and k == 0:
            arrays.append(np.array(draw(st.lists(st.booleans(), min_size=int(np.prod(shape)),
                                                 max_size=int(np.prod(shape)))), bool).reshape(shape))
        elif k == 0 and parent in POSITIVE_FIRST:
            arrays.append(lattice(draw, shape, 0.55, high=14, positive=True))
        elif k == 1 and parent in NONZERO_SECOND:
            sign = draw(st.sampled_from([-1.0, 1.0]))
            arrays.append(sign * lattice(draw, shape, 0.53, high=14, positive=True))
        else:
            arrays.append(lattice(draw, shape, (0.05, 0.03, 0.08)[k] if arity > 1 else 0.05))
    attrs = {p: float(v) for p, v in op.params.items()}
    if op_name == "cast":
        attrs["dtype"] = "float64"

    def build(*ts):
        return graphc.apply(op_name, list(ts), attrs)
    return arrays, build


def _ints(draw, lo, hi):
    return draw(st.integers(lo, hi))


@st.composite
def reduce_case(draw, op_name):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    axis = draw(st.one_of(st.none(), st.integers(0, len(shape) - 1),
                          st.lists(st.integers(0, len(shape) - 1), unique=True, min_size=1).map(tuple)))
    keepdims = draw(st.booleans())
    x = distinct(draw, shape) if op_name in ("max", "min") else lattice(draw, shape)
    fn = getattr(graphc, op_name)
    return [x], lambda t: fn(t, axis, keepdims)


@st.composite
def broadcast_to_case(draw, op_name):
    target = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    small = tuple(d if draw(st.booleans()) else 1 for d in target)[draw(st.integers(0, len(target))):]
    extra = tuple(draw(st.lists(st.integers(1, 2), max_size=1)))  # a new leading axis
    return [lattice(draw, small)], lambda t: graphc.broadcast_to(t, extra + target)


@st.composite
def reshape_case(draw, op_name):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    size = int(np.prod(shape))
    target = draw(st.sampled_from([(size,), (1, size), (size, 1)] + ([(2, size // 2)] if size % 2 == 0 else [])))
    return [lattice(draw, shape)], lambda t: graphc.apply("reshape", [t], {"shape": target})


@st.composite
def transpose_case(draw, op_name):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=4)))
    perm = tuple(draw(st.permutations(list(range(len(shape))))))
    return [lattice(draw, shape)], lambda t: graphc.transpose(t, perm)


@st.composite
def allreduce_case(draw, op_name):
    """On one process (the test run): the identity, whose VJP (the allreduce of the cotangent) is too."""
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    reduce = draw(st.sampled_from(["mean", "sum"]))
    return [lattice(draw, shape)], lambda t: graphc.allreduce(t, reduce)


@st.composite
def _slices(draw, shape):
    starts, stops, steps = [], [], []
    for d in shape:
        b = draw(st.integers(0, d - 1))
        e = draw(st.integers(b + 1, d))
        s = draw(st.integers(1, 2))
        starts.append(b), stops.append(e), steps.append(s)
    return {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)}


@st.composite
def slice_case(draw, op_name):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    attrs = draw(_slices(shape))
    if op_name == "slice":
        return [lattice(draw, shape)], lambda t: graphc.apply("slice", [t], attrs)
    sliced = tuple(len(range(b, e, s)) for b, e, s in zip(attrs["starts"], attrs["stops"], attrs["steps"]))
    return [lattice(draw, sliced)], lambda t: graphc.apply("unslice", [t], attrs | {"shape": shape})


@st.composite
def concatenate_case(draw, op_name):
    shape = list(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    axis = draw(st.integers(0, len(shape) - 1))
    arrays = []
    for _ in range(draw(st.integers(1, 3))):
        s = list(shape)
        s[axis] = draw(st.integers(1, 3))
        arrays.append(lattice(draw, tuple(s)))
    return arrays, lambda *ts: graphc.concatenate(list(ts), axis)


@st.composite
def matmul_case(draw, op_name):
    m, k, n = (draw(st.integers(1, 3)) for _ in range(3))
    batch_a, batch_b = draw(broadcast_shapes(2)) if draw(st.booleans()) else ((), ())
    a = lattice(draw, tuple(batch_a[-2:]) + (m, k))
    b = lattice(draw, tuple(batch_b[-2:]) + (k, n))
    return [a, b], lambda x, y: graphc.apply("matmul", [x, y])


@st.composite
def dense_case(draw, op_name):
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    i, o = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return [lattice(draw, lead + (i,)), lattice(draw, (i, o)), lattice(draw, (o,))], graphc.dense


@st.composite
def softmax_case(draw, op_name):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    fn = getattr(graphc, op_name)
    return [lattice(draw, shape)], lambda t: fn(t, axis)


@st.composite
def sce_case(draw, op_name):
    n, c = draw(st.integers(1, 4)), draw(st.integers(2, 4))
    logits = lattice(draw, (n, c))
    if draw(st.booleans()):
        labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), np.int64)
    else:  # soft labels are differentiated too
        labels = np.abs(lattice(draw, (n, c)))
        labels /= labels.sum(axis=1, keepdims=True)
    return [logits, labels], graphc.softmax_cross_entropy


@st.composite
def batch_norm_case(draw, op_name):
    n, c = draw(st.integers(2, 4)), draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2).filter(lambda s: len(s) != 1)))
    eps = draw(st.sampled_from([1e-5, 0.1]))
    x = distinct(draw, (n, c) + spatial) * 2.0  # distinct: no channel has zero variance
    return [x, lattice(draw, (c,)), lattice(draw, (c,))], lambda a, g, b: graphc.batch_norm(a, g, b, eps=eps)


@st.composite
def conv2d_case(draw, op_name):
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]) + draw(st.integers(0, 4))
    w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]) + draw(st.integers(0, 4))
    x, weight = lattice(draw, (n, c, h, w)), lattice(draw, (o, c, kh, kw))
    return [x, weight], lambda a, b: graphc.conv2d(a, b, stride, padding, dilation)


@st.composite
def conv_transpose2d_case(draw, op_name):
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    full = [(h - 1) * stride[0] + dilation[0] * (kh - 1) + out_pad[0] + 1,
            (w - 1) * stride[1] + dilation[1] * (kw - 1) + out_pad[1] + 1]
    padding = tuple(draw(st.integers(0, (f - 1) // 2)) for f in full)
    x, weight = lattice(draw, (n, c, h, w)), lattice(draw, (c, o, kh, kw))
    return [x, weight], lambda a, b: graphc.conv_transpose2d(a, b, stride, padding, out_pad, dilation)


@st.composite
def _pool_geometry(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    hw = tuple(max(1, k - 2 * p) + draw(st.integers(0, 3)) for k, p in zip(kernel, padding))
    return {"kernel": kernel, "stride": stride, "padding": padding}, (n, c) + hw


def _pooled_shape(shape, attrs):
    return shape[:2] + tuple((shape[2 + k] + 2 * attrs["padding"][k] - attrs["kernel"][k]) // attrs["stride"][k] + 1
                             for k in range(2))


@st.composite
def pool_case(draw, op_name):
    attrs, shape = draw(_pool_geometry())
    x = distinct(draw, shape)
    if op_name in ("max_pool2d", "avg_pool2d"):
        return [x], lambda t: graphc.apply(op_name, [t], attrs)
    other_shape = _pooled_shape(shape, attrs) if op_name == "max_pool2d_backward" else shape
    return [x, lattice(draw, other_shape)], lambda a, b: graphc.apply(op_name, [a, b], attrs)


@st.composite
def fused_case(draw, op_name):
    shapes = draw(broadcast_shapes(2))
    x0, x1 = sp.symbols("x0 x1", real=True)
    # sign and Max differentiate to DiracDelta and Heaviside, which must become numbers (0, a step)
    expr = x0 * sp.exp(x1 / 4) + sp.Piecewise((x0, x0 > 0), (0.1 * x0, True)) * x1 + sp.sign(x0) * x1 \
        + sp.Max(x1, 0) * x0
    arrays = [lattice(draw, shapes[0], 0.03), lattice(draw, shapes[1], 0.08)]
    return arrays, lambda a, b: fused(expr, [a, b], "float64")


@st.composite
def matmul_epilogue_case(draw, op_name):
    m, k, n = (draw(st.integers(1, 3)) for _ in range(3))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    a = lattice(draw, (k, m) if ta else (m, k))
    b = lattice(draw, (n, k) if tb else (k, n))
    x0, x1, x2 = sp.symbols("x0 x1 x2", real=True)
    attrs = {"transpose_a": ta, "transpose_b": tb, "expr": sp.tanh(x0 + x1) + x0 * x2, "dtype": "float64"}
    return [a, b, lattice(draw, (n,)), lattice(draw, (m, n))], lambda *ts: graphc.apply(op_name, list(ts), attrs)


@st.composite
def conv2d_epilogue_case(draw, op_name):
    arrays, _ = draw(conv2d_case("conv2d"))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    x0, x1 = sp.symbols("x0 x1", real=True)
    attrs = {"stride": stride, "padding": (1, 0), "dilation": (1, 1), "expr": sp.tanh(x0 + x1), "dtype": "float64"}
    x, w = arrays
    x = lattice(draw, x.shape[:2] + (max(x.shape[2], w.shape[2]), max(x.shape[3], w.shape[3])))
    bias = lattice(draw, (1, w.shape[0], 1, 1))
    return [x, w, bias], lambda *ts: graphc.apply(op_name, list(ts), attrs)


CASES = {
    "sum": reduce_case, "mean": reduce_case, "max": reduce_case, "min": reduce_case,
    "broadcast_to": broadcast_to_case, "reshape": reshape_case, "transpose": transpose_case,
    "allreduce": allreduce_case,
    "slice": slice_case, "unslice": slice_case, "concatenate": concatenate_case,
    "matmul": matmul_case, "dense": dense_case,
    "softmax": softmax_case, "log_softmax": softmax_case, "softmax_cross_entropy": sce_case,
    "batch_norm": batch_norm_case,
    "conv2d": conv2d_case, "conv_transpose2d": conv_transpose2d_case,
    "max_pool2d": pool_case, "avg_pool2d": pool_case, "max_pool2d_backward": pool_case, "max_pool2d_gather": pool_case,
    "fused": fused_case, "matmul_epilogue": matmul_epilogue_case, "conv2d_epilogue": conv2d_epilogue_case,
}
DEFAULT_EXAMPLES = 15
SECOND_ORDER_EXAMPLES = 5
#: More examples where the geometry has more corners to explore.
EXAMPLES = {"conv2d": 60, "conv_transpose2d": 60, "max_pool2d": 40, "avg_pool2d": 40, "max_pool2d_backward": 20,
            "max_pool2d_gather": 20, "matmul": 30, "batch_norm": 20, "broadcast_to": 25, "add": 25, "mul": 25,
            "slice": 25, "unslice": 25}


def case_for(op):
    if op.name in CASES:
        return CASES[op.name]
    if op.is_elementwise:
        return elementwise_case
    return None


def not_differentiable(op) -> bool:
    return op.name in SOURCES or op.vjp is registry.no_gradient


ALL_AT_COLLECTION = [op.name for op in registry.all_ops()]
CHECKED = [name for name in ALL_AT_COLLECTION if not not_differentiable(registry.get(name))]


# -- the registry walk -------------------------------------------------------------------------------------------

def registry_problems() -> list[str]:
    """Ops without a derivative rule, or without a finite-difference check in this file."""
    problems = []
    for op in registry.all_ops():
        if op.vjp is None:
            problems.append(f"{op.name}: no derivative (register it with vjp=..., or registry.no_gradient)")
        elif not not_differentiable(op) and case_for(op) is None:
            problems.append(f"{op.name}: no finite-difference check in {__file__}: add a case to CASES")
    return problems


def test_every_op_has_a_checked_derivative():
    assert registry_problems() == []


def test_the_skip_list_is_exactly_the_sources_and_the_non_differentiable_ops():
    skipped = {name for name in ALL_AT_COLLECTION if name not in CHECKED}
    declared = {op.name for op in registry.all_ops() if op.name in ALL_AT_COLLECTION
                and (op.name in SOURCES or op.vjp is registry.no_gradient)}
    assert skipped == declared
    # The built-in non-differentiable ops: integer or random outputs, integer inputs.
    assert {"argmax", "one_hot"} <= skipped
    assert not skipped & {"relu", "step", "sign", "max_pool2d", "conv2d", "batch_norm", "less"}
    # Everything else is checked, including the derivative ops SymPy produced and the pooling helpers.
    assert {"dsigmoid_dx", "dpow_dy", "max_pool2d_backward", "max_pool2d_gather"} <= set(CHECKED)


def test_the_registry_walk_catches_an_op_without_derivative():
    def shape_rule(inputs, attrs):
        return inputs[0].shape, inputs[0].dtype
    registry.register(registry.OpDef("no_vjp_for_test", "test", "an op nobody differentiates", shape_rule,
                                     lambda a, at: a[0] * 2))
    try:
        assert any(p.startswith("no_vjp_for_test: no derivative") for p in registry_problems())
        with graphc.Graph():
            w = graphc.param("w", np.ones(3))
            loss = graphc.sum(graphc.apply("no_vjp_for_test", [w]))
            with pytest.raises(graphc.GraphcError, match="no_vjp_for_test.*no derivative rule"):
                graphc.grad(loss, [w])
    finally:
        registry._REGISTRY.pop("no_vjp_for_test")


# -- the finite-difference check of every op ---------------------------------------------------------------------

@pytest.mark.parametrize("op_name", CHECKED)
def test_gradient_equals_finite_differences(op_name):
    case = case_for(registry.get(op_name))
    assert case is not None, f"{op_name}: no finite-difference case"

    @settings(max_examples=EXAMPLES.get(op_name, DEFAULT_EXAMPLES), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def check(data):
        arrays, build = data.draw(case(op_name))
        assert_gradients_match(arrays, build, seed=data.draw(st.integers(0, 2 ** 16)))

    check()


@pytest.mark.parametrize("op_name", CHECKED)
def test_gradient_of_the_gradient_equals_finite_differences(op_name):
    case = case_for(registry.get(op_name))

    @settings(max_examples=SECOND_ORDER_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def check(data):
        arrays, build = data.draw(case(op_name))
        assert_second_order_matches(arrays, build, seed=data.draw(st.integers(0, 2 ** 16)))

    check()

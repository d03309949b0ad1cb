"""IEEE semantics by default (issue 10, items 3, 4 and 6): the passes and both backends give the
values NumPy gives for NaN, infinities, signed zeros and overflow, at every optimize level.

Oracles are plain NumPy formulas written here (np.maximum for relu, np.heaviside for step, sqrt
for pow(x, 0.5), ...), never graphc's own registry. Rewrites that only hold for finite reals
(x*0 -> 0, x - x -> 0, x/x -> 1, exp(log x) -> x, SymPy's simplifications) happen only with
``fast_math=True``; a test shows they then do.

Each dtype's expressions are the outputs of one graph, compiled once per level and backend
(module-scoped fixtures), so the cpu backend compiles few modules.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphc
from graphc.backends import reference
from graphc.ops import registry

NAN, INF = np.nan, np.inf
#: The largest magnitudes used: 2*(x + y) overflows in one order of operations and not in the other.
BIG = {"float32": 3e38, "float64": 1e308}
TOL = {"float32": dict(rtol=2e-6, atol=1e-30), "float64": dict(rtol=1e-12, atol=1e-300)}
LEVELS = (0, 1, 2, 3)


def specials(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """x and y: NaN, +-inf, +-0, ordinary values, and a pair whose sum is exactly 0 but whose doubled
    terms overflow."""
    big = BIG[dtype]
    x = np.array([NAN, INF, -INF, 0.0, -0.0, 2.5, -2.5, 100.0, big, -big, 1.0, -0.5], dtype)
    y = np.array([1.0, NAN, 0.5, -0.0, 0.0, 2.0, INF, -INF, -big, big, NAN, 3.0], dtype)
    return x, y


def ieee_pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """graphc's documented pow, element by element with Python's math: C's pow, except that a
    negative base (-inf included) with a finite non-integer exponent is NaN (as sqrt(-inf))."""
    def one(p: float, q: float) -> float:
        if math.isnan(p) or math.isnan(q):
            return 1.0 if (p == 1.0 or q == 0.0) else NAN
        if p < 0 and math.isfinite(q) and q != math.floor(q):
            return NAN
        try:
            return math.pow(p, q)
        except OverflowError:
            return INF
        except (ValueError, ZeroDivisionError):  # 0 ** negative
            return math.copysign(INF, p) if q == math.floor(q) and q % 2 == 1 else INF
    return np.array([one(float(p), float(q)) for p, q in zip(a, b)], a.dtype)


#: name -> (graph expression of x, y; NumPy oracle of x, y as arrays of the dtype)
CASES = {
    # item 4: identities that NaN and infinities break (and SymPy applies as it builds expressions)
    "x*0": (lambda x, y: x * 0.0, lambda x, y: x * 0),
    "0*x": (lambda x, y: 0.0 * x, lambda x, y: 0 * x),
    "x/x": (lambda x, y: x / x, lambda x, y: x / x),
    "x-x": (lambda x, y: x - x, lambda x, y: x - x),
    "x-x+y": (lambda x, y: x - x + y, lambda x, y: x - x + y),
    "exp(log x)": (lambda x, y: graphc.exp(graphc.log(x)), lambda x, y: np.exp(np.log(x))),
    "log(exp x)": (lambda x, y: graphc.log(graphc.exp(x)), lambda x, y: np.log(np.exp(x))),
    "(x+1)-x": (lambda x, y: (x + 1.0) - x, lambda x, y: (x + 1) - x),
    "(x+y)*2": (lambda x, y: (x + y) * 2.0, lambda x, y: (x + y) * 2),
    "x*y/y": (lambda x, y: x * y / y, lambda x, y: x * y / y),
    "sqrt(x)^2": (lambda x, y: graphc.square(graphc.sqrt(x)), lambda x, y: np.sqrt(x) ** 2),
    "pow(x,0.5)": (lambda x, y: graphc.pow(x, 0.5), lambda x, y: np.sqrt(x)),
    "pow(x,1.5)": (lambda x, y: graphc.pow(x, 1.5), lambda x, y: np.sqrt(x) ** 3),
    "pow(x,y)": (lambda x, y: graphc.pow(x, y), ieee_pow),
    # item 6: NaN goes through the Piecewise activations, as numpy.maximum and PyTorch/JAX
    "relu": (lambda x, y: graphc.relu(x), lambda x, y: np.maximum(x, 0)),
    "relu(x*y)": (lambda x, y: graphc.relu(x * y), lambda x, y: np.maximum(x * y, 0)),
    "maximum": (lambda x, y: graphc.maximum(x, y), np.maximum),
    "minimum": (lambda x, y: graphc.minimum(x, y), np.minimum),
    "leaky_relu": (lambda x, y: graphc.leaky_relu(x), lambda x, y: np.where(x > 0, x, 0.01 * x)),
    "elu": (lambda x, y: graphc.elu(x), lambda x, y: np.where(x >= 0, x, np.expm1(x))),
    "clip": (lambda x, y: graphc.clip(x, -1.0, 1.0), lambda x, y: np.clip(x, -1, 1)),
    "step": (lambda x, y: graphc.step(x), lambda x, y: np.heaviside(x, 0.0)),
}

#: name -> (loss of x, y whose gradient with respect to ``wrt`` is checked; wrt; the derivative's oracle).
#: Decided: the derivative at a NaN input is the taken branch's (relu'(NaN) = 1 as in PyTorch; JAX
#: gives 0), elu'(NaN) = NaN (as JAX), and maximum's gradient goes to the NaN input.
GRADIENTS = {
    "relu'": (lambda x, y: graphc.relu(x), "x", lambda x, y: np.where(x <= 0, 0.0, 1.0)),
    "relu'*y": (lambda x, y: graphc.relu(x) * y, "x", lambda x, y: np.where(x <= 0, 0.0, 1.0) * y),
    "elu'": (lambda x, y: graphc.elu(x), "x", lambda x, y: np.where(x >= 0, 1.0, np.exp(x))),
    "maximum'x": (lambda x, y: graphc.maximum(x, y), "x",
                  lambda x, y: np.where((x >= y) | np.isnan(x), 1.0, 0.0)),
    "maximum'y": (lambda x, y: graphc.maximum(x, y), "y",
                  lambda x, y: np.where((x >= y) | np.isnan(x), 0.0, 1.0)),
}


def build_graph(dtype: str):
    """One graph whose outputs are every case and every gradient, over inputs x and y of ``dtype``."""
    with graphc.Graph(f"ieee_{dtype}") as g:
        x, y = graphc.input("x", (12,), dtype), graphc.input("y", (12,), dtype)
        outs = [build(x, y) for build, _ in CASES.values()]
        for build, wrt, _ in GRADIENTS.values():
            outs.append(graphc.grad(graphc.sum(build(x, y)), {"x": x, "y": y}[wrt]))
        g.output(*outs)
    return outs


def expected_values(dtype: str) -> list[np.ndarray]:
    x, y = specials(dtype)
    with np.errstate(all="ignore"):
        return ([np.asarray(oracle(x, y), dtype) for _, oracle in CASES.values()]
                + [np.asarray(oracle(x, y), dtype) for _, _, oracle in GRADIENTS.values()])


NAMES = list(CASES) + [f"d/d{wrt} sum({name})" for name, (_, wrt, _) in GRADIENTS.items()]


@pytest.fixture(scope="module", params=["float32", "float64"])
def compiled(request, graphc_cache_dir):
    """(dtype, {(backend, level): the outputs on the special values})."""
    dtype = request.param
    outs = build_graph(dtype)
    x, y = specials(dtype)
    results = {}
    for backend, levels in (("reference", LEVELS), ("cpu", (0, 2, 3))):
        for level in levels:
            exe = graphc.compile(outs, backend=backend, optimize=level, cache_dir=str(graphc_cache_dir)) \
                if backend == "cpu" else graphc.compile(outs, backend=backend, optimize=level)
            with np.errstate(all="ignore"):
                results[(backend, level)] = exe(x, y)
    return dtype, results


@pytest.mark.parametrize("where", [("reference", lv) for lv in LEVELS] + [("cpu", lv) for lv in (0, 2, 3)],
                         ids=lambda w: f"{w[0]}-O{w[1]}")
def test_special_values_match_numpy(compiled, where):
    """Items 3, 4, 6: every case and gradient at NaN/+-inf/+-0/overflowing inputs equals NumPy's value."""
    dtype, results = compiled
    got = results[where]
    bad = []
    for name, value, expected in zip(NAMES, got, expected_values(dtype)):
        assert value.dtype == np.dtype(dtype), name
        try:
            np.testing.assert_allclose(value, expected, equal_nan=True, **TOL[dtype])
        except AssertionError:
            bad.append(f"{name}: got {value.tolist()}, NumPy {expected.tolist()}")
    assert not bad, f"{where} {dtype}:\n" + "\n".join(bad)


# -- item 3: a cast is a value ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cast_graph():
    with graphc.Graph("casts") as g:
        x = graphc.input("x", (6,), "float64")
        i = graphc.input("i", (6,), "int32")
        outs = [graphc.cast(graphc.cast(x, "float32"), "float64") - x,
                graphc.cast(graphc.cast(i, "float32"), "float64") - graphc.cast(i, "float64"),
                graphc.cast(graphc.cast(x, "float32") * 3.0, "float64") - x * 3.0,
                graphc.cast(x, "bool")]
        g.output(*outs)
    return outs


def test_cast_round_trip_keeps_the_rounding(cast_graph, graphc_cache_dir):
    """cast(cast(x, float32), float64) - x is float32's rounding error (not 0) at every level, both backends;
    an int32 -> float32 cast rounds 2**24 + 1; NaN and inf stay NaN."""
    x = np.array([0.1, 1 / 3, NAN, INF, -0.0, 1e300])
    i = np.array([2 ** 24 + 1, 3, -(2 ** 24) - 1, 0, 7, 2 ** 30 + 1], np.int32)
    with np.errstate(all="ignore"):
        expected = [x.astype(np.float32).astype(np.float64) - x,
                    i.astype(np.float32).astype(np.float64) - i.astype(np.float64),
                    (x.astype(np.float32) * np.float32(3.0)).astype(np.float64) - x * 3.0,
                    x.astype(bool)]
    assert expected[0][0] != 0 and expected[1][0] == -1  # the oracle itself is not trivially zero
    runs = [("reference", lv) for lv in LEVELS] + [("cpu", 0), ("cpu", 2)]
    for backend, level in runs:
        options = {"cache_dir": str(graphc_cache_dir)} if backend == "cpu" else {}
        exe = graphc.compile(cast_graph, backend=backend, optimize=level, **options)
        with np.errstate(all="ignore"):
            got = exe(x, i)
        for k, (value, want) in enumerate(zip(got, expected)):
            # the cpu backend contracts a*b - c into one FMA by default (LLVM "contract"): 1e-16 apart
            np.testing.assert_allclose(value, want, rtol=1e-12, atol=1e-15, err_msg=f"{backend} O{level} output {k}")


def test_fused_expression_keeps_the_cast():
    with graphc.Graph() as g:
        x = graphc.input("x", (3,), "float64")
        g.output(graphc.cast(graphc.cast(x, "float32"), "float64") - x)
    (fused,) = [n for n in graphc.optimize(g, 2).graph.nodes if n.op == "fused"]
    assert str(fused.attrs["expr"]) == "-x0 + float64(float32(x0))"


# -- item 4: fast_math is the only way to the real-number identities ----------------------------------------

def fast_math_graph():
    with graphc.Graph("fast") as g:
        x, y = graphc.input("x", (4,), "float64"), graphc.input("y", (4,), "float64")
        outs = [x * 0.0, x / x, x - x + y * 2.0, graphc.exp(graphc.log(x))]
        g.output(*outs)
    return g, outs


@pytest.mark.parametrize("level", [1, 2, 3])
def test_fast_math_allows_the_identities_and_the_default_does_not(level):
    g, _ = fast_math_graph()
    x = np.array([INF, NAN, 0.0, -2.0])
    y = np.array([1.0, 2.0, 3.0, 4.0])
    fast = graphc.optimize(g, level, fast_math=True)
    assert fast.fast_math and not graphc.optimize(g, level).fast_math
    # x*0 folds to the constant 0 and x/x to 1; x - x disappears and with it the input x
    first, second = fast.graph.outputs[:2]
    assert first.op in ("constant", "broadcast_to") and second.op in ("constant", "broadcast_to")
    assert [n.name for n in fast.graph.inputs] == ["x", "y"]
    values = reference.evaluate(fast.graph, {"x": x, "y": y})
    np.testing.assert_array_equal(values[0], 0.0)
    np.testing.assert_array_equal(values[1], 1.0)
    np.testing.assert_array_equal(values[2], 2 * y)
    np.testing.assert_array_equal(values[3], x)
    default = reference.evaluate(graphc.optimize(g, level).graph, {"x": x, "y": y})
    with np.errstate(all="ignore"):
        for value, want in zip(default, [x * 0, x / x, x - x + 2 * y, np.exp(np.log(x))]):
            np.testing.assert_array_equal(value, want)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_an_input_the_passes_made_unused_is_still_taken_and_ignored(backend, graphc_cache_dir):
    """Item 4(a): x - x + y*2 and x*0 + y under fast_math no longer read x; the executable still takes
    x in its place (checked, then ignored), never a KeyError."""
    with graphc.Graph("unused") as g:
        x, y = graphc.input("x", (3,), "float64"), graphc.input("y", (3,), "float64")
        a = g.output(x - x + y * 2.0)
    with graphc.Graph("unused2") as g2:
        u, v = graphc.input("u", (3,), "float64"), graphc.input("v", (3,), "float64")
        b = g2.output(u * 0.0 + v)
    options = {"cache_dir": str(graphc_cache_dir)} if backend == "cpu" else {}
    exe = graphc.compile(a, backend=backend, optimize=2, fast_math=True, **options)
    assert exe.input_names == ["x", "y"]
    yv = np.array([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(exe(np.array([INF, NAN, 1.0]), yv), 2 * yv)
    np.testing.assert_array_equal(exe(y=yv, x=np.zeros(3)), 2 * yv)
    with pytest.raises(graphc.InputError, match="x"):
        exe(np.zeros(4), yv)  # still checked
    exe2 = graphc.compile(b, inputs=["v", "u"], backend=backend, optimize=1, fast_math=True, **options)
    assert exe2.input_names == ["v", "u"]
    np.testing.assert_array_equal(exe2(yv, np.full(3, INF)), yv)


def test_outputs_of_two_graphs_are_refused_with_both_names():
    """Item 4(b): not a KeyError from the cloning."""
    with graphc.Graph("first") as g1:
        a = g1.output(graphc.input("x", (2,)) * 2.0)
    with graphc.Graph("second") as g2:
        b = g2.output(graphc.input("x", (2,)) + 1.0)
    for backend in ("reference", "cpu"):
        with pytest.raises(graphc.GraphcError, match=r"two graphs, 'first' and 'second'.*test_ieee_semantics.py:\d+"):
            graphc.compile([a, b], backend=backend)


def test_an_output_that_is_not_a_tensor_is_named():
    """A graph's node (``g.outputs`` holds Nodes) or a name is a GraphcError, not an AttributeError."""
    with graphc.Graph("nodes") as g:
        y = g.output(graphc.input("x", (2,)) * 2.0)
    for outputs, what in (([y, g.outputs[0]], r"output 1 is a graph node \(mul, \S*test_ieee_semantics.py:\d+\)"),
                          (["y"], "output 0 is a str")):
        with pytest.raises(graphc.GraphcError, match=what + ", not a Tensor"):
            graphc.compile(outputs)
    np.testing.assert_array_equal(graphc.compile(g)(np.array([1.0, -2.0], np.float32)), [2.0, -4.0])


def test_fusion_does_not_merge_what_sympy_would_simplify():
    """SymPy's automatic x - x -> 0, (x + 1) - x -> 1, x*0 -> 0, 2(x + y) -> 2x + 2y are not taken
    inside fused expressions by default; with fast_math they are."""
    from graphc.passes import fuse_elementwise

    with graphc.Graph() as g:
        x, y = graphc.input("x", (3,), "float64"), graphc.input("y", (3,), "float64")
        g.output((x + 1.0) - x, x * 0.0, graphc.relu(x - x), (x + y) * 2.0)
    default = fuse_elementwise(g)
    fast = fuse_elementwise(g, fast_math=True)
    xv, yv = np.array([INF, 1e308, 1.0]), np.array([0.0, -1e308, 2.0])
    with np.errstate(all="ignore"):
        want = [(xv + 1) - xv, xv * 0, np.maximum(xv - xv, 0), (xv + yv) * 2]
    got = reference.evaluate(default, {"x": xv, "y": yv})
    for value, expected in zip(got, want):
        np.testing.assert_array_equal(value, expected)
    exprs = [str(n.attrs["expr"]) for n in fast.nodes if n.op == "fused"]
    assert "2.0*x0 + 2.0*x1" in exprs  # fast_math: SymPy's forms are taken
    assert all(o.op in ("constant", "broadcast_to") for o in fast.outputs[:3])


@pytest.mark.parametrize("fast_math", [False, True])
def test_a_nan_branch_that_sympy_cannot_fold_into_a_comparison_is_computed_on_its_own(fast_math):
    """step's NaN branch composed into elu's `x >= 0` makes SymPy raise "Invalid NaN comparison": fusion
    leaves elu (and relu) unfused instead of crashing optimize (found by the fuzzer, seed 20261129)."""
    xv = np.array([-1.0, 0.0, 2.0, np.nan])
    step = np.where(np.isnan(xv), np.nan, (xv > 0).astype(float))  # numpy.heaviside's NaN, the course's step
    for activation in (graphc.elu, graphc.relu):
        with graphc.Graph() as g:  # step read once, so fusion would inline it into the activation
            x = graphc.input("x", (4,), "float64")
            g.output(activation(graphc.step(x)))
        (out,) = reference.evaluate(graphc.optimize(g, 2, fast_math=fast_math).graph, {"x": xv})
        np.testing.assert_array_equal(out, step)  # elu and relu of 0/1/NaN are 0/1/NaN


def test_the_reference_evaluates_a_folded_nan_condition_as_written():
    """SymPy's NumPy printer simplified an ITE condition as if no input were NaN and printed
    maximum(x, relu(x))'s fused condition as True: the optimized graph gave -1.5 for x = -1.5."""
    with graphc.Graph() as g:
        x = graphc.input("x", (4,), "float64")
        g.output(graphc.maximum(x, graphc.relu(x)))
    xv = np.array([-1.5, 0.0, 2.0, np.nan])
    optimized = graphc.optimize(g, 2).graph
    assert any(n.op == "fused" and "ITE" in str(n.attrs["expr"]) for n in optimized.nodes)
    (got,) = reference.evaluate(optimized, {"x": xv})
    np.testing.assert_array_equal(got, np.maximum(xv, np.maximum(xv, 0)))


def test_compile_cache_key_covers_the_op_definitions(monkeypatch):
    """Item 5: the key changes when an op's expression changes (relu redefined), and the environment
    hashes graphc/ops' sources."""
    import sympy as sp

    from graphc.backends import cache

    with graphc.Graph() as g:
        g.output(graphc.relu(graphc.input("x", (3,))))
    key = cache.cache_key(g.structural_hash(), [0], {}, cache.op_definitions(g))
    relu = registry.get("relu")
    x = relu.symbols[0]
    monkeypatch.setattr(relu, "expr", sp.Piecewise((x, x > 0), (0, True)))  # the definition before issue 10
    assert cache.cache_key(g.structural_hash(), [0], {}, cache.op_definitions(g)) != key
    assert "ops_source" in cache.environment()


def test_relu_derivative_from_its_output_agrees_at_nan():
    """derivatives_from_outputs rewrites relu'(z) as a function of h = relu(z); at z = NaN it must give
    what relu's own derivative gives (1), not (h > 0) = 0."""
    from graphc.passes.activations import from_output_expr

    expr = from_output_expr("relu", graphc.ir.Attrs({}))
    assert expr is not None
    f = graphc.ops.elementwise.numpy_function(sorted(expr.free_symbols, key=str), expr)
    h = np.array([NAN, 0.0, 2.0])
    np.testing.assert_array_equal(np.broadcast_to(f(h), h.shape), [1.0, 0.0, 1.0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_folding_the_mean_of_a_uniform_tensor_keeps_its_overflow(dtype):
    """fold_constants writes mean(c, c, c, c) as c only while the sum is finite: NumPy's mean of four
    BIG values is inf (the sum overflows), and so is graphc's at every level."""
    with graphc.Graph() as g:
        c = graphc.broadcast_to(graphc.constant(np.array(BIG[dtype], dtype)), (4,))
        small = graphc.broadcast_to(graphc.constant(np.array(2.5, dtype)), (4,))
        g.output(graphc.mean(c), graphc.mean(small))
    with np.errstate(all="ignore"):
        want = [np.mean(np.full(4, BIG[dtype], dtype)), np.mean(np.full(4, 2.5, dtype))]
    assert np.isinf(want[0])
    for level in LEVELS:
        with np.errstate(all="ignore"):
            got = reference.evaluate(graphc.optimize(g, level).graph, {})
        for value, expected in zip(got, want):
            np.testing.assert_array_equal(value, expected, err_msg=f"O{level}")

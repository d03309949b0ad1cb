"""Issue 10, the checks at the boundaries: inputs that alias the memory a step writes are read as
passed; duplicate names, bad op attributes and bad shapes are refused when the graph is built;
derivatives of step functions and check_grad's feeds are defined, not a bare Python exception."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import sympy as sp

import graphc
from graphc import GraphcError, ShapeError

THIS_FILE = os.path.basename(__file__)


def next_line() -> int:
    """The line number after the caller's line: put this just above the call that should fail."""
    return sys._getframe(1).f_lineno + 1


def assert_located(message: str, line: int) -> None:
    """The message points at this test file, at exactly ``line``."""
    assert f"{THIS_FILE}:{line}" in message, message


# -- 1. an input that aliases the parameters is read as passed ---------------------------------------------------

BATCH, FEATURES, CLASSES = 16, 32, 10


def aliasing_step():
    """A float64 dense-tanh-dense SGD step whose x [16, 32] has the rows of W1 [32, 32]: a slice of W1 is a
    valid x. lr 0.5 makes a half-updated read visible; at the cpu default level the update of W1 runs inside
    its gradient GEMM x^T @ dh, which reads x while it writes W1."""
    r = np.random.default_rng(3)
    with graphc.Graph("aliasing") as g:
        x = graphc.input("x", (BATCH, FEATURES), "float64")
        y = graphc.input("y", (BATCH,), "int64")
        params = [graphc.param("W1", r.standard_normal((FEATURES, FEATURES)) / np.sqrt(FEATURES)),
                  graphc.param("b1", np.zeros(FEATURES)),
                  graphc.param("W2", r.standard_normal((FEATURES, CLASSES)) / np.sqrt(FEATURES)),
                  graphc.param("b2", np.zeros(CLASSES))]
        h = graphc.tanh(graphc.dense(x, params[0], params[1]))
        loss = g.output(graphc.softmax_cross_entropy(graphc.dense(h, params[2], params[3]), y))
        for p, d in zip(params, graphc.grad(loss, params)):
            g.update(p, p - 0.5 * d)
    return loss, [x, y], {p.name: p.node.value for p in params}


@pytest.fixture(scope="module")
def aliasing(graphc_cache_dir):
    loss, inputs, initial = aliasing_step()
    exes = {"cpu": graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir=graphc_cache_dir),
            "reference": graphc.compile(loss, inputs=inputs)}
    return exes, initial


def reset(exe, initial) -> None:
    for k, v in initial.items():
        exe.params[k][...] = v


LABELS = np.arange(2 * BATCH) % CLASSES


def reference_steps(aliasing, rows: list[np.ndarray], labels: list[np.ndarray]):
    """The oracle: the reference backend from the initial parameters, fed copies; its losses and parameters."""
    exes, initial = aliasing
    ref = exes["reference"]
    reset(ref, initial)
    losses = [float(ref(x.copy(), y)) for x, y in zip(rows, labels)]
    return losses, {k: v.copy() for k, v in ref.params.items()}


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("rows", [slice(0, BATCH), slice(BATCH, 2 * BATCH)])
def test_an_input_that_is_a_view_of_a_parameter_is_read_as_passed(aliasing, backend, rows):
    exes, initial = aliasing
    x_values = initial["W1"][rows]
    want_loss, want_params = reference_steps(aliasing, [x_values], [LABELS[:BATCH]])
    exe = exes[backend]
    reset(exe, initial)
    x = exe.params["W1"][rows]                       # the parameter's own memory, C-contiguous
    assert np.shares_memory(x, exe.params["W1"]) and x.flags.c_contiguous
    loss = exe(x, LABELS[:BATCH])
    assert float(loss) == pytest.approx(want_loss[0], rel=1e-12)
    for k, want in want_params.items():
        np.testing.assert_allclose(exe.params[k], want, rtol=1e-10, atol=1e-12, err_msg=k)


def test_run_epoch_data_that_aliases_the_parameters_is_read_as_passed(aliasing):
    exes, initial = aliasing
    perm = np.random.default_rng(7).permutation(2 * BATCH)
    batches = [perm[:BATCH], perm[BATCH:]]
    want_losses, want_params = reference_steps(aliasing, [initial["W1"][b] for b in batches],
                                               [LABELS[b] for b in batches])
    exe = exes["cpu"]
    reset(exe, initial)
    # Every row of W1 is a sample: the second step must read W1 as it was passed, not as the first step left it.
    losses = exe.run_epoch(exe.params["W1"], LABELS, perm=perm)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-12)
    for k, want in want_params.items():
        np.testing.assert_allclose(exe.params[k], want, rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_outputs_are_fresh_arrays_that_a_later_call_leaves_alone(aliasing, backend):
    """Regression guard: an output can be fed back (or kept) safely, it is never a view of the memory a step writes."""
    exes, initial = aliasing
    exe = exes[backend]
    reset(exe, initial)
    x = np.random.default_rng(0).standard_normal((BATCH, FEATURES))
    first = exe(x, LABELS[:BATCH])
    kept = first.copy()
    second = exe(x, LABELS[:BATCH])
    assert not any(np.shares_memory(first, p) for p in exe.params.values())
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_updates_that_swap_two_parameters_read_the_old_values(backend, graphc_cache_dir):
    """g.update(a, b); g.update(b, a) swaps a and b: every update reads the values from before the step."""
    with graphc.Graph("swap") as g:
        x = graphc.input("x", (3,), "float64")
        a = graphc.param("a", np.array([1.0, 2.0, 3.0]))
        b = graphc.param("b", np.array([10.0, 20.0, 30.0]))
        out = g.output(graphc.sum(x * a))
        g.update(a, b)
        g.update(b, a)
    options = {"cache_dir": graphc_cache_dir} if backend == "cpu" else {}
    exe = graphc.compile(out, [x], backend=backend, **options)
    assert float(exe(np.ones(3))) == 6.0
    np.testing.assert_array_equal(exe.params["a"], [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(exe.params["b"], [1.0, 2.0, 3.0])


# -- 2. input and parameter names are unique -----------------------------------------------------------------------

SOURCE_ARGS = {"input": ((3,), "float64"), "param": (np.zeros(3),)}


@pytest.mark.parametrize("first, second", [("input", "input"), ("param", "param"), ("input", "param"),
                                           ("param", "input")])
def test_a_second_input_or_parameter_with_the_same_name_is_refused(first, second):
    with graphc.Graph("dup") as g:
        first_line = next_line()
        getattr(graphc, first)("a", *SOURCE_ARGS[first])
        with pytest.raises(GraphcError) as info:
            second_line = next_line()
            getattr(graphc, second)("a", *SOURCE_ARGS[second])
    msg = str(info.value)
    assert msg.startswith(f"{second} 'a' (f64[3]) at "), msg
    assert f"already has {first} 'a' (f64[3])" in msg and "names must be unique" in msg
    assert_located(msg, first_line)
    assert_located(msg, second_line)
    assert msg.index(f":{second_line}") < msg.index(f":{first_line}")   # the new one first, then the original
    assert isinstance(info.value, ValueError)
    assert [n.op for n in g.nodes] == [first]        # the duplicate is not added


# -- 3. integer attributes and shapes are checked when the graph is built ----------------------------------------

def _key():
    return graphc.input("key", (), "int64")


def _labels():
    return graphc.input("labels", (2,), "int64")


def _weight(shape):
    return graphc.param("w", np.zeros(shape, np.float32))


# (build from x: f32[2,3,8,8], the op named, what the message says about the value, the operand types shown)
BAD_ATTRIBUTES = [
    (lambda x: graphc.conv2d(x, _weight((4, 3, 3, 3)), stride=1.5), "conv2d",
     "stride must be an integer or a pair of integers, got 1.5", "f32[2,3,8,8], f32[4,3,3,3]"),
    (lambda x: graphc.conv2d(x, _weight((4, 3, 3, 3)), stride=True), "conv2d",
     "stride must be an integer or a pair of integers, got True", "f32[4,3,3,3]"),
    (lambda x: graphc.conv2d(x, _weight((4, 3, 3, 3)), padding=(1, 0.5)), "conv2d",
     "padding must be an integer or a pair of integers, got (1, 0.5)", "f32[4,3,3,3]"),
    (lambda x: graphc.conv2d(x, _weight((4, 3, 0, 0))), "conv2d",
     "the weight [out, in, kh, kw] = [4, 3, 0, 0] has an empty 0x0 window", "f32[2,3,8,8], f32[4,3,0,0]"),
    (lambda x: graphc.conv_transpose2d(x, _weight((3, 4, 0, 2))), "conv_transpose2d",
     "the weight [in, out, kh, kw] = [3, 4, 0, 2] has an empty 0x2 window", "f32[3,4,0,2]"),
    (lambda x: graphc.conv_transpose2d(x, _weight((3, 4, 3, 3)), stride=2.0), "conv_transpose2d",
     "stride must be an integer or a pair of integers, got 2.0", "f32[3,4,3,3]"),
    (lambda x: graphc.max_pool2d(x, 2.5), "max_pool2d",
     "kernel must be an integer or a pair of integers, got 2.5", "f32[2,3,8,8]"),
    (lambda x: graphc.avg_pool2d(x, 2, stride=1.5), "avg_pool2d",
     "stride must be an integer or a pair of integers, got 1.5", "f32[2,3,8,8]"),
    (lambda x: graphc.sum(x, axis=0.5), "sum", "axis must be an integer, got 0.5 (float)", "f32[2,3,8,8]"),
    (lambda x: x.mean(axis=(0, 1.0)), "mean", "axis must be an integer, got 1.0 (float)", "f32[2,3,8,8]"),
    (lambda x: x.max(axis=True), "max", "axis must be an integer, got True (bool)", "f32[2,3,8,8]"),
    (lambda x: graphc.argmax(x, 1.0), "argmax", "axis must be an integer, got 1.0 (float)", "f32[2,3,8,8]"),
    (lambda x: graphc.softmax(x, 1.5), "softmax", "axis must be an integer, got 1.5", "f32[2,3,8,8]"),
    (lambda x: graphc.concatenate([x, x], axis=0.5), "concatenate", "axis must be an integer, got 0.5",
     "f32[2,3,8,8], f32[2,3,8,8]"),
    (lambda x: x.transpose(0.5, 1, 2, 3), "transpose", "axis must be an integer, got 0.5", "f32[2,3,8,8]"),
    (lambda x: graphc.reshape(x, (-2, -3)), "reshape",
     "to [-2, -3]: dimensions must be >= 0, or -1 for the one inferred", "f32[2,3,8,8]"),
    (lambda x: x.reshape(2.5, -1), "reshape", "to (2.5, -1): dimension 2.5 is not an integer", "f32[2,3,8,8]"),
    (lambda x: x[0:1.5], "slice", "slice bounds and steps must be integers or None, got slice(0, 1.5, None)",
     "f32[2,3,8,8]"),
    (lambda x: graphc.one_hot(_labels(), -1), "one_hot", "classes must be >= 1, got -1", "i64[2]"),
    (lambda x: graphc.one_hot(_labels(), 0), "one_hot", "classes must be >= 1, got 0", "i64[2]"),
    (lambda x: graphc.one_hot(_labels(), 2.5), "one_hot", "classes must be an integer, got 2.5", "i64[2]"),
    (lambda x: graphc.random_uniform(_key(), (2.5,)), "random_uniform",
     "shape (2.5,): dimension 2.5 is not an integer", "i64[]"),
    (lambda x: graphc.ops.random.random_shift2d(x, _key(), max_shift=-1), "random_shift2d", "max_shift must be >= 0, got -1",
     "f32[2,3,8,8], i64[]"),
    (lambda x: graphc.ops.random.random_flip2d(x, _key(), salt=0.5), "random_flip2d", "salt must be an integer, got 0.5",
     "f32[2,3,8,8], i64[]"),
]
# Refused on main already (regression guards: the checks moved into graphc/ops/checks.py).
ALREADY_REFUSED = [
    (lambda x: graphc.conv2d(x, _weight((4, 3, 3, 3)), stride=0), "conv2d", "stride must be >= 1", "f32[4,3,3,3]"),
    (lambda x: graphc.conv2d(x, _weight((4, 3, 3, 3)), padding=-1), "conv2d", "padding must be >= 0",
     "f32[4,3,3,3]"),
    (lambda x: graphc.max_pool2d(x, 0), "max_pool2d", "kernel must be >= 1", "f32[2,3,8,8]"),
    (lambda x: graphc.conv2d(x, _weight((4, 3, 3, 3)), dilation=(1, 0)), "conv2d",
     "dilation must be >= 1, got (1, 0)", "f32[4,3,3,3]"),
    (lambda x: graphc.avg_pool2d(x, (2, 0)), "avg_pool2d", "kernel must be >= 1, got (2, 0)", "f32[2,3,8,8]"),
    (lambda x: x.sum(axis=(1, -3)), "sum", "repeated axis in (1, -3)", "f32[2,3,8,8]"),
    (lambda x: x.sum(axis=4), "sum", "axis 4 is out of range for a tensor of rank 4", "f32[2,3,8,8]"),
    (lambda x: graphc.reshape(x, (-1, -1)), "reshape", "only one dimension may be -1", "f32[2,3,8,8]"),
]


@pytest.mark.parametrize("build, op, needle, operands", BAD_ATTRIBUTES + ALREADY_REFUSED)
def test_a_bad_attribute_is_refused_when_built(build, op, needle, operands):
    with graphc.Graph() as g:
        x = graphc.input("x", (2, 3, 8, 8))
        before = len(g.nodes)
        with pytest.raises(ShapeError) as info:
            build(x)
    msg = str(info.value)
    assert msg.startswith(f"{op}: "), msg
    assert needle in msg and operands in msg, msg
    assert info.value.op == op and info.value.__cause__ is None
    # the user's line: the lambda above, on its own line in the list
    assert info.value.loc.file == __file__ and info.value.loc.line == build.__code__.co_firstlineno, msg
    assert f"{THIS_FILE}:{build.__code__.co_firstlineno}" in msg
    assert [n.op for n in g.nodes[before:]] in ([], ["param"], ["input"])   # no node of the refused op


@pytest.mark.parametrize("shape, needle", [
    ((2.5, 3), "dimension 2.5 is not an integer"),
    ((True, 3), "dimension True is not an integer"),
    ((np.float64(2.0), 3), "dimension 2.0 is not an integer"),
    ((2, -1), "dimension -1 is negative"),
    ("ab", "must be a sequence of integers, got 'ab'"),
])
def test_a_bad_input_shape_is_refused_when_built(shape, needle):
    with graphc.Graph() as g:
        with pytest.raises(ShapeError) as info:
            line = next_line()
            graphc.input("x", shape)
    msg = str(info.value)
    assert msg.startswith("input 'x': shape") and needle in msg, msg
    assert_located(msg, line)
    assert g.nodes == []


def test_a_bad_traced_shape_is_refused():
    with pytest.raises(ShapeError, match=r"TensorSpec shape \(2\.5,\): dimension 2\.5 is not an integer"):
        graphc.trace(lambda x: x * 2.0, ((2.5,), "float32"))


def test_numpy_integers_are_accepted_as_attributes():
    """Regression guard: the checks refuse floats and bools, not NumPy integers."""
    with graphc.Graph():
        x = graphc.input("x", (np.int64(2), np.int32(3), 8, 8))
        w = graphc.param("w", np.zeros((4, 3, 3, 3), np.float32))
        y = graphc.conv2d(x, w, stride=np.int64(2), padding=(np.int32(1), 1))
        assert y.shape == (2, 4, 4, 4)
        assert graphc.sum(y, axis=np.int64(-1)).shape == (2, 4, 4)
        assert graphc.one_hot(graphc.input("y", (2,), "int64"), np.int64(5)).shape == (2, 5)


# -- 4. derivatives of step functions in user elementwise ops ----------------------------------------------------

def central_difference(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d sum(f(x)) / dx by float64 central differences, one entry at a time (f elementwise)."""
    out = np.empty_like(x)
    for k in range(x.size):
        up, down = x.copy(), x.copy()
        up.flat[k] += eps
        down.flat[k] -= eps
        out.flat[k] = (np.sum(f(up)) - np.sum(f(down))) / (2 * eps)
    return out


# points at least 0.05 from every jump of floor(x), floor(x y) and x mod y below
X_POINTS = np.array([-2.3, -0.6, 0.3, 1.45, 2.8])
Y_POINTS = np.array([1.5, 0.7, 2.2, -1.3, 3.1])


def test_floor_in_a_user_elementwise_has_the_derivative_of_its_pieces():
    staircase = graphc.elementwise("test_build_checks_staircase", lambda x: x * sp.floor(x) + sp.ceiling(x / 2))
    with graphc.Graph():
        x = graphc.input("x", (5,), "float64")
        (dx,) = graphc.grad(graphc.sum(staircase(x)), [x])
    got = graphc.evaluate(dx, {"x": X_POINTS})
    numeric = central_difference(lambda v: v * np.floor(v) + np.ceil(v / 2), X_POINTS)
    np.testing.assert_allclose(got, numeric, rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(got, np.floor(X_POINTS))        # d/dx x floor(x) = floor(x) between jumps


def test_frac_mod_and_floor_of_a_product_are_differentiated():
    """frac and Mod are rewritten with floor; floor(x*y) comes back from SymPy as a Subs of a Derivative."""
    op = graphc.elementwise("test_build_checks_sawtooth", lambda x, y: sp.frac(x) * y + sp.Mod(x, y)
                            + sp.floor(x * y) * x, 2)
    with graphc.Graph():
        x = graphc.input("x", (5,), "float64")
        y = graphc.input("y", (5,), "float64")
        dx, dy = graphc.grad(graphc.sum(op(x, y)), [x, y])
    got_x, got_y = graphc.evaluate([dx, dy], {"x": X_POINTS, "y": Y_POINTS})

    def forward(a, b):
        return (a - np.floor(a)) * b + np.mod(a, b) + np.floor(a * b) * a
    np.testing.assert_allclose(got_x, central_difference(lambda v: forward(v, Y_POINTS), X_POINTS), rtol=1e-7)
    np.testing.assert_allclose(got_y, central_difference(lambda v: forward(X_POINTS, v), Y_POINTS), rtol=1e-7,
                               atol=1e-7)


def test_frac_and_mod_inside_products_compute_numpys_values_on_cpu():
    """The cpu printer wrote y*frac(x) as `y*x % 1` (frac of the product): found when the suite's walk over
    every registered op met the sawtooth op above; its value and gradients against NumPy's formulas."""
    op = graphc.elementwise("test_build_checks_frac_product", lambda x, y: sp.frac(x) * y + 2 * sp.Mod(x, y), 2)
    with graphc.Graph():
        x = graphc.input("x", (5,), "float64")
        y = graphc.input("y", (5,), "float64")
        out = op(x, y)
        dx, dy = graphc.grad(graphc.sum(out * out), [x, y])
    got = graphc.compile([out, dx, dy], backend="cpu", optimize=0)(X_POINTS, Y_POINTS)
    value = np.mod(X_POINTS, 1) * Y_POINTS + 2 * np.mod(X_POINTS, Y_POINTS)
    np.testing.assert_allclose(got[0], value, rtol=1e-12)
    np.testing.assert_allclose(got[1], 2 * value * (Y_POINTS + 2), rtol=1e-12)   # d/dx: y + 2 between jumps
    np.testing.assert_allclose(got[2], 2 * value * (np.mod(X_POINTS, 1) - 2 * np.floor(X_POINTS / Y_POINTS)),
                               rtol=1e-12)


def test_an_expression_sympy_cannot_differentiate_fails_at_grad_time_naming_the_op_and_line(scratch_registry):
    mystery = graphc.elementwise("test_build_checks_mystery", lambda x: sp.Function("f")(x) + x)
    with graphc.Graph():
        x = graphc.input("x", (3,), "float64")
        line = next_line()
        y = mystery(x)
        loss = graphc.sum(y)
        with pytest.raises(GraphcError) as info:
            graphc.grad(loss, [x])
    msg = str(info.value)
    assert msg.startswith("test_build_checks_mystery: cannot differentiate x + f(x) with respect to x"), msg
    assert "Derivative(f(x), x) unevaluated" in msg and "f64[3]" in msg
    assert_located(msg, line)


# -- 5. check_grad ignores the feeds the loss does not use, like graphc.evaluate -----------------------------------

def test_check_grad_ignores_a_feed_the_loss_does_not_use():
    with graphc.Graph():
        x = graphc.input("x", (3,), "float64")
        unused = graphc.input("unused", (2,), "float64")
        w = graphc.param("w", np.array([0.3, -0.2, 0.5]))
        loss = graphc.sum(graphc.tanh(x * w))
        graphc.sum(unused * 2.0)
    x_value = np.array([0.1, 0.7, -0.4])
    feeds = {"x": x_value, "unused": np.ones(2)}
    assert float(graphc.evaluate(loss, feeds)) == pytest.approx(np.sum(np.tanh(x_value * w.node.value)))  # precedent
    result = graphc.check_grad(loss, [w, x], feeds)
    assert result.ok and result.max_rel_error < 1e-8
    # the symbolic gradient it checked is float64 central differences' too (the oracle here, not check_grad's own)
    numeric_w = central_difference(lambda v: np.tanh(x_value * v), w.node.value.copy())
    (dw,) = graphc.evaluate(graphc.grad(loss, [w]), feeds)
    np.testing.assert_allclose(dw, numeric_w, rtol=1e-8)
    # unknown names are still refused, as evaluate refuses them
    with pytest.raises(GraphcError, match=r"no input or parameter named 'nope'"):
        graphc.check_grad(loss, [w], {"x": x_value, "nope": 1.0})


def test_a_model_called_twice_in_one_graph_shares_its_parameters():
    """Training and evaluation outputs of one model in one graph: one parameter per name, compiled together
    (on main each call made its own 'dense_1.W' and compiling both outputs was refused)."""
    from graphc.nn import Context, Dense, Sequential

    model = Sequential([Dense(3)], input_shape=(4,))
    x = np.random.default_rng(2).random((5, 4)).astype(np.float32)
    with graphc.Graph() as g:
        xi = graphc.input("x", x.shape)
        train, infer = model(xi, Context(training=True)), model(xi, Context(training=False))
    assert sorted(p.name for p in g.params) == ["dense_1.W", "dense_1.b"]
    both = graphc.compile([train, infer])
    w, b = model.layers[0].values["W"], model.layers[0].values["b"]
    for out in both(x):
        np.testing.assert_allclose(out, x @ w + b, rtol=1e-6)


@pytest.mark.parametrize("build, layer, needle", [
    (lambda: graphc.nn.Dense(2.5), "Dense", "units must be an integer, got 2.5"),
    (lambda: graphc.nn.Dense(0), "Dense", "units must be >= 1, got 0"),
    (lambda: graphc.nn.Conv2D(True, 3), "Conv2D", "filters must be an integer, got True"),
    (lambda: graphc.nn.Maxout(4, pieces=1.5), "Maxout", "pieces must be an integer, got 1.5"),
    (lambda: graphc.nn.RandomShift(-1), "RandomShift", "max_shift must be >= 0, got -1"),
])
def test_a_layer_with_a_non_integer_size_is_refused_not_truncated(build, layer, needle):
    # Dense(2.5) used to become Dense(2) through int(): the layer's sizes use the ops' integer checks
    with pytest.raises(ShapeError) as info:
        build()
    msg = str(info.value)
    assert msg.startswith(f"{layer}: ") and needle in msg, msg
    assert f"{THIS_FILE}:{build.__code__.co_firstlineno}" in msg, msg

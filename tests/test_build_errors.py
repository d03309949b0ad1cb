"""Bad graphs fail when they are built, naming the op, the shapes/dtypes and the user's file:line;
bad feeds fail at run time with an InputError, not a NumPy traceback."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import graphc
from graphc import DTypeError, GraphcError, InputError, ShapeError

THIS_FILE = os.path.basename(__file__)


def next_line() -> int:
    """The line number after the caller's line: put this just above the call that should fail."""
    return sys._getframe(1).f_lineno + 1


def assert_located(message: str, line: int) -> None:
    """The message points at this test file, at exactly ``line``."""
    assert f"{THIS_FILE}:{line}" in message, message
    assert f"{__file__}:{line}" in message, message   # the full path is there too, for editors


def test_matmul_inner_dimension_mismatch():
    with graphc.Graph():
        a = graphc.input("a", (2, 3))
        b = graphc.input("b", (4, 5))
        with pytest.raises(ShapeError) as info:
            line = next_line()
            a @ b
    msg = str(info.value)
    assert msg.startswith("matmul:")
    assert "f32[2,3]" in msg and "f32[4,5]" in msg
    assert "3" in msg and "!= 4" in msg
    assert_located(msg, line)


def test_impossible_broadcast():
    with graphc.Graph():
        a = graphc.input("a", (2, 3))
        b = graphc.input("b", (4, 3))
        with pytest.raises(ShapeError) as info:
            line = next_line()
            graphc.relu(a) + b
    msg = str(info.value)
    assert msg.startswith("add:")
    assert "cannot broadcast" in msg and "[2, 3]" in msg and "[4, 3]" in msg
    assert "f32[2,3]" in msg and "f32[4,3]" in msg
    assert_located(msg, line)


def test_conv2d_channel_mismatch():
    with graphc.Graph():
        x = graphc.input("images", (8, 3, 28, 28))
        w = graphc.param("w", np.zeros((16, 1, 5, 5), np.float32))
        with pytest.raises(ShapeError) as info:
            line = next_line()
            graphc.conv2d(x, w, padding=2)
    msg = str(info.value)
    assert msg.startswith("conv2d:")
    assert "channel" in msg and "3 channels" in msg and "expects 1" in msg
    assert "f32[8,3,28,28]" in msg and "f32[16,1,5,5]" in msg
    assert_located(msg, line)


def test_float_labels_to_softmax_cross_entropy():
    with graphc.Graph():
        logits = graphc.input("logits", (32, 10))
        labels = graphc.input("labels", (32,), "float32")
        with pytest.raises(DTypeError) as info:
            line = next_line()
            graphc.softmax_cross_entropy(logits, labels)
    msg = str(info.value)
    assert msg.startswith("softmax_cross_entropy:")
    assert "f32[32]" in msg and "integer" in msg and "f32[32,10]" in msg
    assert_located(msg, line)


@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_pooling_window_larger_than_input(pool):
    with graphc.Graph():
        x = graphc.input("x", (1, 4, 6, 6))
        with pytest.raises(ShapeError) as info:
            line = next_line()
            getattr(graphc, pool)(x, kernel=(3, 7))
    msg = str(info.value)
    assert msg.startswith(f"{pool}:")
    assert "window" in msg and "width 7" in msg and "larger than the input's 6" in msg
    assert "f32[1,4,6,6]" in msg
    assert_located(msg, line)


# -- more build-time checks: each names the op, the types and the line ------------------------------------------

@pytest.mark.parametrize("build, op, needle", [
    (lambda x: graphc.dense(x, graphc.param("W", np.zeros((5, 2), np.float32)), graphc.param("b", np.zeros(2, np.float32))),
     "dense", "input features 4 != weight rows 5"),
    (lambda x: x.reshape(3, -1), "reshape", "cannot reshape f32[2,4]"),
    (lambda x: x[0, 0, 0], "slice", "too many indices"),
    (lambda x: x[:, 9], "slice", "index 9 is out of bounds for axis 1"),
    (lambda x: x[::-1], "slice", "negative slice steps"),
    (lambda x: x.sum(axis=2), "sum", "axis 2 is out of range"),
    (lambda x: x.transpose(0, 2), "transpose", "out of range"),
    (lambda x: graphc.concatenate([x, x.T]), "concatenate", "shapes differ outside axis 0"),
    (lambda x: graphc.conv2d(x, x), "conv2d", "4-D NCHW"),
    (lambda x: graphc.softmax(graphc.cast(x, "int32")), "softmax", "float"),
])
def test_other_build_errors_are_located(build, op, needle):
    with graphc.Graph():
        x = graphc.input("x", (2, 4))
        with pytest.raises(GraphcError) as info:
            line = next_line()
            build(x)
    msg = str(info.value)
    assert msg.startswith(f"{op}:"), msg
    assert needle in msg and "[2,4]" in msg, msg
    # the offending call is in a lambda on the parametrize list: that is the line reported
    assert info.value.loc.file == __file__ and info.value.loc.line < line
    assert f"{THIS_FILE}:{info.value.loc.line}" in msg


def test_build_error_is_not_a_numpy_traceback():
    with graphc.Graph():
        a, b = graphc.input("a", (2, 3)), graphc.input("b", (4, 5))
        with pytest.raises(ShapeError) as info:
            a @ b
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert info.value.op == "matmul"
    assert isinstance(info.value, ValueError)   # ShapeError is also a ValueError, for callers catching that


def test_the_bad_node_is_not_added_to_the_graph():
    with graphc.Graph() as g:
        a, b = graphc.input("a", (2, 3)), graphc.input("b", (4, 5))
        with pytest.raises(ShapeError):
            a @ b
    assert [n.op for n in g.nodes] == ["input", "input"]


# -- run-time feed errors ----------------------------------------------------------------------------------------

@pytest.fixture
def classifier():
    with graphc.Graph("classifier") as g:
        x = graphc.input("x", (4, 3))
        y = graphc.input("y", (4,), "int64")
        w = graphc.param("w", np.ones((3, 5), np.float32))
        loss = g.output(graphc.softmax_cross_entropy(x @ w, y))
    return g, loss


GOOD_X = np.zeros((4, 3), np.float32)
GOOD_Y = np.array([0, 1, 2, 4])


def test_good_feeds_evaluate(classifier):
    _, loss = classifier
    assert float(graphc.evaluate(loss, {"x": GOOD_X, "y": GOOD_Y})) == pytest.approx(np.log(5))


def test_missing_input(classifier):
    _, loss = classifier
    with pytest.raises(InputError, match=r"input 'y' \(i64\[4\]\) was not fed"):
        graphc.evaluate(loss, {"x": GOOD_X})


def test_wrong_shape(classifier):
    _, loss = classifier
    with pytest.raises(InputError) as info:
        graphc.evaluate(loss, {"x": np.zeros((3, 4), np.float32), "y": GOOD_Y})
    msg = str(info.value)
    assert "'x'" in msg and "expected shape [4, 3]" in msg and "got [3, 4]" in msg


@pytest.mark.parametrize("name, value, expected, got", [
    ("y", GOOD_Y.astype(np.float64), "int64", "float64"),        # float labels
    ("x", GOOD_X.astype(np.complex64), "float32", "complex64"),
    ("x", np.full((4, 3), "a"), "float32", "str"),
])
def test_wrong_dtype(classifier, name, value, expected, got):
    _, loss = classifier
    feeds = {"x": GOOD_X, "y": GOOD_Y} | {name: value}
    with pytest.raises(InputError) as info:
        graphc.evaluate(loss, feeds)
    msg = str(info.value)
    assert f"'{name}'" in msg and f"expected dtype {expected}" in msg and got in msg


@pytest.mark.parametrize("bad", [5, -1, 1000])
def test_out_of_range_label(classifier, bad):
    _, loss = classifier
    with pytest.raises(InputError) as info:
        graphc.evaluate(loss, {"x": GOOD_X, "y": np.array([0, bad, 1, 2])})
    msg = str(info.value)
    assert msg.startswith("softmax_cross_entropy: label")
    assert f"label {bad} is out of range [0, 5)" in msg
    assert msg.count("softmax_cross_entropy:") == 1
    assert "test_build_errors.py:" in msg     # where the loss was built
    assert info.value.__cause__ is None


def test_unknown_feed_name(classifier):
    _, loss = classifier
    with pytest.raises(InputError, match=r"no input or parameter named 'z'.*'x', 'y', 'w'"):
        graphc.evaluate(loss, {"x": GOOD_X, "y": GOOD_Y, "z": 1.0})


def test_param_override_is_checked(classifier):
    _, loss = classifier
    with pytest.raises(InputError, match=r"param 'w': expected shape \[3, 5\]"):
        graphc.evaluate(loss, {"x": GOOD_X, "y": GOOD_Y}, params={"w": np.ones((5, 3))})
    # a correct override is used
    w = np.zeros((3, 5), np.float32)
    assert float(graphc.evaluate(loss, {"x": np.ones((4, 3)), "y": GOOD_Y}, params={"w": w})) == pytest.approx(np.log(5))


def test_ragged_feed(classifier):
    _, loss = classifier
    with pytest.raises(InputError, match=r"input 'x': expected an array f32\[4,3\], got list"):
        graphc.evaluate(loss, {"x": [[1.0, 2.0, 3.0], [4.0]], "y": GOOD_Y})


def test_integer_feed_that_does_not_fit_is_refused():
    with graphc.Graph() as g:
        y = graphc.input("y", (2,), "int32")
        out = g.output(y + 0)
    with pytest.raises(InputError, match=r"input 'y': values in \[3, 1099511627776\] do not fit in int32"):
        graphc.evaluate(out, {"y": np.array([2**40, 3])})
    np.testing.assert_array_equal(graphc.evaluate(out, {"y": np.array([-(2**31), 2**31 - 1])}), [-(2**31), 2**31 - 1])

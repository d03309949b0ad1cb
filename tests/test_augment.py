"""Augmentation ops and layers: per-sample shifts and flips drawn from the step's key.

The oracle re-derives each sample's offsets from NumPy's legacy generator seeded as documented
(key * 1_000_003 + salt), then moves pixels one at a time in Python loops.
"""
import numpy as np
import pytest

import graphc
from graphc.nn import Context, Dense, Flatten, RandomFlip, RandomShift, Sequential


def _seed(key, salt):
    return (key * 1_000_003 + salt) % 2**32


def _shift_loops(x, key, salt, max_shift):
    n, c, h, w = x.shape
    u = np.random.RandomState(_seed(key, salt)).random_sample((n, 2))
    out = np.zeros_like(x)
    for i in range(n):
        dy = int(np.floor(u[i, 0] * (2 * max_shift + 1))) - max_shift
        dx = int(np.floor(u[i, 1] * (2 * max_shift + 1))) - max_shift
        assert -max_shift <= dy <= max_shift and -max_shift <= dx <= max_shift
        for ch in range(c):
            for r in range(h):
                for col in range(w):
                    if 0 <= r - dy < h and 0 <= col - dx < w:
                        out[i, ch, r, col] = x[i, ch, r - dy, col - dx]
    return out


def _flip_loops(x, key, salt):
    u = np.random.RandomState(_seed(key, salt)).random_sample(x.shape[0])
    out = x.copy()
    for i in range(x.shape[0]):
        if u[i] < 0.5:
            out[i] = x[i, :, :, ::-1]
    return out


def _graph(op, shape, **attrs):
    with graphc.Graph(op) as g:
        x = graphc.input("x", shape)
        key = graphc.input("key", (), "int64")
        y = g.output(getattr(graphc.ops.random, op)(x, key, **attrs))
    return g, y


@pytest.mark.parametrize("key", [0, 7, 123456])
@pytest.mark.parametrize("max_shift", [1, 3])
def test_random_shift_matches_loops(key, max_shift):
    x = np.random.default_rng(key).random((6, 2, 5, 7)).astype(np.float32)
    _, y = _graph("random_shift2d", x.shape, max_shift=max_shift, salt=11)
    np.testing.assert_array_equal(graphc.evaluate(y, {"x": x, "key": key}), _shift_loops(x, key, 11, max_shift))


@pytest.mark.parametrize("key", [0, 3, 99])
def test_random_flip_matches_loops(key):
    x = np.random.default_rng(key).random((8, 1, 4, 5)).astype(np.float32)
    _, y = _graph("random_flip2d", x.shape, salt=5)
    np.testing.assert_array_equal(graphc.evaluate(y, {"x": x, "key": key}), _flip_loops(x, key, 5))


def test_shifts_vary_with_the_key_and_repeat_for_the_same_key():
    x = np.random.default_rng(0).random((16, 1, 6, 6)).astype(np.float32)
    _, y = _graph("random_shift2d", x.shape, max_shift=2)
    a, b, c = (graphc.evaluate(y, {"x": x, "key": k}) for k in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_augmentation_layers_act_only_in_training():
    model = Sequential([RandomShift(2), RandomFlip(), Flatten(), Dense(3)], input_shape=(1, 6, 6))
    assert model.parameter_count() == 36 * 3 + 3
    x = np.random.default_rng(1).random((4, 1, 6, 6)).astype(np.float32)
    with graphc.Graph():
        xi = graphc.input("x", x.shape)
        key = graphc.input("key", (), "int64")
        train = model(xi, Context(training=True, key=key))
        infer = model(xi, Context(training=False))
    shift, flip = model.layers[0], model.layers[1]
    augmented = _flip_loops(_shift_loops(x, 5, shift.salt, 2), 5, flip.salt).reshape(4, -1)
    w, b = model.layers[-1].values["W"], model.layers[-1].values["b"]
    np.testing.assert_allclose(graphc.evaluate(train, {"x": x, "key": 5}), augmented @ w + b, rtol=1e-5)
    np.testing.assert_allclose(graphc.evaluate(infer, {"x": x}), x.reshape(4, -1) @ w + b, rtol=1e-5)


def test_augmentation_needs_a_key_in_training():
    model = Sequential([RandomShift(1), Flatten(), Dense(2)], input_shape=(1, 4, 4))
    with graphc.Graph():
        x = graphc.input("x", (2, 1, 4, 4))
        with pytest.raises(graphc.ShapeError, match="random key"):
            model(x, Context(training=True))


def test_fit_trains_with_augmentation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 64)
    x = np.zeros((64, 1, 6, 6), np.float32)
    x[y == 1, :, :, :3] = 1.0  # class 1: left half lit (a shift of one pixel keeps most of it)
    x[y == 0, :, :, 3:] = 1.0
    model = Sequential([RandomShift(1), Flatten(), Dense(2)], input_shape=(1, 6, 6))
    h = graphc.fit(model, (x, y), epochs=15, batch_size=16, optimizer=graphc.optim.SGD(0.5), backend="reference",
                   verbose=False)
    assert h["acc"][-1] > 0.95 and graphc.train.evaluate(model, (x, y), backend="reference")[1] == 1.0

"""Layers against NumPy forward passes written here; summary; parameter counts; initializers' statistics."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc
from graphc.nn import (
    AvgPool2D,
    BatchNorm,
    Context,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Maxout,
    MaxPool2D,
    Residual,
    Sequential,
    init,
)


def run(model: Sequential, x: np.ndarray, training: bool = False, key: int | None = None):
    """Compile the model's forward pass (with its state updates) and run it once; returns (output, params)."""
    with graphc.Graph("forward") as g:
        xin = graphc.input("x", x.shape, x.dtype)
        k = graphc.input("key", (), "int64") if key is not None else None
        ctx = Context(training=training, key=k)
        out = g.output(model(xin, ctx))
        for state, value in ctx.updates:
            g.update(state, graphc.cast(value, state.dtype))
    exe = graphc.compile(out, backend="reference")
    y = exe(x) if key is None else exe(x, np.int64(key))
    return y, exe.params


# -- NumPy oracles ------------------------------------------------------------------------------------------------

def relu(z):
    return np.maximum(z, 0.0)


def conv_np(x, w, b, stride=1, pad=0):
    """Cross-correlation with zero padding, by loops over output positions."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


def pool_np(x, k, stride, pad, reduce):
    fill = -np.inf if reduce is np.max else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    ho, wo = (x.shape[2] + 2 * pad - k) // stride + 1, (x.shape[3] + 2 * pad - k) // stride + 1
    out = np.zeros(x.shape[:2] + (ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = reduce(xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k], axis=(2, 3))
    return out


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


# -- layers ---------------------------------------------------------------------------------------------------------

def test_dense_with_activation():
    model = Sequential([Dense(5, "relu"), Dense(3)], input_shape=(4,), dtype=np.float64, seed=1)
    x = rand(6, 4)
    (l1, l2) = model.layers
    want = relu(x @ l1.values["W"] + l1.values["b"]) @ l2.values["W"] + l2.values["b"]
    got, _ = run(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert l1.values["W"].shape == (4, 5) and sorted(model.named_values()) == [
        "dense_1.W", "dense_1.b", "dense_2.W", "dense_2.b"]


@pytest.mark.parametrize("stride,pad", [(1, 0), (2, 1)])
def test_conv2d_with_bias(stride, pad):
    model = Sequential([Conv2D(4, 3, stride=stride, padding=pad)], input_shape=(2, 7, 7), dtype=np.float64)
    conv = model.layers[0]
    conv.values["b"] = rand(4, seed=5)  # a nonzero bias (it starts at zero)
    x = rand(3, 2, 7, 7, seed=2)
    got, _ = run(model, x)
    want = conv_np(x, conv.values["W"], conv.values["b"], stride, pad)
    assert got.shape == want.shape == (3, 4) + conv.out_shape[1:]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer,k,stride,pad,reduce", [
    (MaxPool2D(2), 2, 2, 0, np.max),
    (MaxPool2D(3, stride=2, padding=1), 3, 2, 1, np.max),
    (AvgPool2D(2), 2, 2, 0, np.mean),
    (AvgPool2D(3, stride=1, padding=1), 3, 1, 1, np.mean),
])
def test_pooling(layer, k, stride, pad, reduce):
    model = Sequential([layer], input_shape=(3, 6, 6), dtype=np.float64)
    x = rand(2, 3, 6, 6, seed=3)
    got, _ = run(model, x)
    want = pool_np(x, k, stride, pad, reduce)
    assert layer.out_shape == want.shape[1:]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_flatten_then_dense():
    model = Sequential([Flatten(), Dense(3)], input_shape=(2, 3, 4), dtype=np.float64)
    x = rand(5, 2, 3, 4, seed=4)
    d = model.layers[1]
    got, _ = run(model, x)
    np.testing.assert_allclose(got, x.reshape(5, 24) @ d.values["W"] + d.values["b"], rtol=1e-12)
    assert model.layers[0].out_shape == (24,)


def batchnorm_model(in_shape, momentum=0.8, eps=1e-3):
    model = Sequential([BatchNorm(momentum=momentum, eps=eps)], input_shape=in_shape, dtype=np.float64)
    bn = model.layers[0]
    c = in_shape[0]
    bn.values["gamma"] = 1.0 + rand(c, seed=7)
    bn.values["beta"] = rand(c, seed=8)
    return model, bn


@pytest.mark.parametrize("in_shape", [(3,), (3, 4, 5)])
def test_batchnorm_training_uses_batch_stats_and_updates_running_stats(in_shape):
    model, bn = batchnorm_model(in_shape)
    c = in_shape[0]
    cshape = (1, c) + (1,) * (len(in_shape) - 1)
    axes = (0,) + tuple(range(2, len(in_shape) + 1))
    running_mean, running_var = np.zeros(c), np.ones(c)
    with graphc.Graph("bn") as g:
        xin = graphc.input("x", (6,) + in_shape, "float64")
        ctx = Context(training=True)
        out = g.output(model(xin, ctx))
        for state, value in ctx.updates:
            g.update(state, value)
    exe = graphc.compile(out, backend="reference")
    for step in range(3):  # three batches: the running statistics follow the momentum recurrence
        x = rand(6, *in_shape, seed=10 + step) * 2.0 + 3.0
        mu = x.mean(axis=axes)
        var_biased = ((x - mu.reshape(cshape)) ** 2).mean(axis=axes)
        n = x.size // c
        want = ((x - mu.reshape(cshape)) / np.sqrt(var_biased.reshape(cshape) + 1e-3) * bn.values["gamma"].reshape(cshape)
                + bn.values["beta"].reshape(cshape))
        np.testing.assert_allclose(exe(x), want, rtol=1e-10, atol=1e-10)
        running_mean = 0.8 * running_mean + 0.2 * mu
        running_var = 0.8 * running_var + 0.2 * var_biased * n / (n - 1)  # unbiased, as PyTorch
        np.testing.assert_allclose(exe.params["batchnorm_1.running_mean"], running_mean, rtol=1e-12)
        np.testing.assert_allclose(exe.params["batchnorm_1.running_var"], running_var, rtol=1e-12)


@pytest.mark.parametrize("in_shape", [(3,), (3, 4, 5)])
def test_batchnorm_eval_uses_running_stats(in_shape):
    model, bn = batchnorm_model(in_shape)
    c = in_shape[0]
    cshape = (1, c) + (1,) * (len(in_shape) - 1)
    bn.values["running_mean"] = rand(c, seed=20)
    bn.values["running_var"] = 0.5 + np.abs(rand(c, seed=21))
    x = rand(4, *in_shape, seed=22)
    got, params = run(model, x, training=False)
    want = ((x - bn.values["running_mean"].reshape(cshape)) / np.sqrt(bn.values["running_var"].reshape(cshape) + 1e-3)
            * bn.values["gamma"].reshape(cshape) + bn.values["beta"].reshape(cshape))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(params["batchnorm_1.running_mean"], bn.values["running_mean"])  # untouched


def dropout_model(rate=0.3, shape=(40,)):
    return Sequential([Dropout(rate)], input_shape=shape, dtype=np.float64)


def test_dropout_eval_is_identity():
    x = rand(50, 40, seed=30)
    got, _ = run(dropout_model(), x, training=False)
    np.testing.assert_array_equal(got, x)


def test_dropout_training_rate_and_scale():
    x = 1.0 + np.abs(rand(50, 40, seed=31))  # no zeros of its own
    dropped = []
    for key in range(5):
        got, _ = run(dropout_model(0.3), x, training=True, key=key)
        kept = got != 0
        np.testing.assert_allclose(got[kept], x[kept] / 0.7, rtol=1e-12)  # inverted dropout: 1/(1 - rate)
        dropped.append(1.0 - kept.mean())
    # 5 x 2000 Bernoulli(0.3) draws: the pooled fraction has std 0.0065; allow 4 sigma
    assert abs(np.mean(dropped) - 0.3) < 0.026
    assert all(abs(d - 0.3) < 0.06 for d in dropped)


def test_dropout_is_reproducible_for_a_key_and_differs_across_keys():
    x = np.ones((20, 40))
    a, _ = run(dropout_model(0.5), x, training=True, key=7)
    b, _ = run(dropout_model(0.5), x, training=True, key=7)  # a separately built, identical model
    c, _ = run(dropout_model(0.5), x, training=True, key=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.3  # independent masks disagree on about half the units


def test_two_dropout_layers_draw_different_masks():
    model = Sequential([Dropout(0.5), Flatten(), Dropout(0.5)], input_shape=(40,), dtype=np.float64)
    first = Sequential([Dropout(0.5)], input_shape=(40,), dtype=np.float64)
    x = np.ones((20, 40))
    both, _ = run(model, x, training=True, key=3)
    one, _ = run(first, x, training=True, key=3)
    # the second layer's mask is not the first's again (which would leave exactly the first's pattern)
    assert ((both != 0) != (one != 0)).any()
    assert abs((both == 0).mean() - 0.75) < 0.06


def test_residual_identity_shortcut():
    model = Sequential([Residual([Dense(5, "relu"), Dense(5)], activation="relu")], input_shape=(5,),
                       dtype=np.float64, seed=2)
    d1, d2 = model.layers[0].body
    x = rand(4, 5, seed=40)
    want = relu(relu(x @ d1.values["W"] + d1.values["b"]) @ d2.values["W"] + d2.values["b"] + x)
    got, _ = run(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_residual_projection_shortcut():
    block = Residual([Conv2D(4, 3, stride=2, padding=1, activation="relu"), Conv2D(4, 3, padding=1)],
                     shortcut=[Conv2D(4, 1, stride=2)], activation="relu")
    model = Sequential([block], input_shape=(2, 6, 6), dtype=np.float64, seed=3)
    c1, c2 = block.body
    (proj,) = block.shortcut
    for k, layer in enumerate((c1, c2, proj)):
        layer.values["b"] = rand(4, seed=50 + k)
    x = rand(3, 2, 6, 6, seed=41)
    body = conv_np(relu(conv_np(x, c1.values["W"], c1.values["b"], 2, 1)), c2.values["W"], c2.values["b"], 1, 1)
    want = relu(body + conv_np(x, proj.values["W"], proj.values["b"], 2, 0))
    got, _ = run(model, x)
    assert block.out_shape == (4, 3, 3)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_residual_shape_mismatch_is_refused():
    with pytest.raises(graphc.ShapeError, match="shortcut"):
        Sequential([Residual([Conv2D(4, 3, stride=2, padding=1)])], input_shape=(2, 6, 6))


def test_maxout():
    model = Sequential([Maxout(3, pieces=4)], input_shape=(5,), dtype=np.float64, seed=4)
    m = model.layers[0]
    m.values["b"] = rand(4, 3, seed=60)
    x = rand(6, 5, seed=61)
    want = np.max(np.stack([x @ m.values["W"][k] + m.values["b"][k] for k in range(4)]), axis=0)
    got, _ = run(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# -- summary and parameter counts ------------------------------------------------------------------------------

def test_summary_lists_each_layer_shape_and_count():
    model = Sequential([Conv2D(6, 5, activation="relu"), MaxPool2D(2), BatchNorm(), Flatten(), Dropout(0.5),
                        Dense(10)], input_shape=(1, 28, 28))
    text = model.summary()
    expected = [  # name, output shape, trainable parameters (by hand)
        ("conv2d_1", [6, 24, 24], 6 * 1 * 5 * 5 + 6),
        ("maxpool_1", [6, 12, 12], 0),
        ("batchnorm_1", [6, 12, 12], 2 * 6),
        ("flatten_1", [864], 0),
        ("dropout_1", [864], 0),
        ("dense_1", [10], 864 * 10 + 10),
    ]
    lines = text.splitlines()
    for name, shape, count in expected:
        (line,) = [ln for ln in lines if ln.startswith(name + " ")]
        assert str(shape) in line, line
        assert line.split()[-1] == f"{count:,}", line
    total = sum(c for _, _, c in expected)
    assert re.search(rf"total trainable parameters: {total:,}\b", text)
    assert model.parameter_count() == total


def test_mlp_784_512_256_10_has_535818_parameters():
    model = Sequential([Dense(512, "relu"), Dense(256, "relu"), Dense(10)], input_shape=(784,))
    by_hand = (784 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10)
    assert by_hand == 535_818
    assert model.parameter_count() == by_hand
    assert "535,818" in model.summary()


# -- initializers ---------------------------------------------------------------------------------------------

FAN_IN, FAN_OUT = 300, 500
SHAPE = (FAN_IN, FAN_OUT)  # 150,000 samples: std estimates good to ~0.2%


@pytest.mark.parametrize("name,fn,std", [
    ("normal 0.01", init.normal(0.01), 0.01),
    ("normal 0.05", init.normal(0.05), 0.05),
    ("glorot_normal", init.glorot_normal, np.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("he_normal", init.he_normal, np.sqrt(2 / FAN_IN)),
])
def test_normal_initializers_std(name, fn, std):
    w = fn(SHAPE, FAN_IN, FAN_OUT, np.random.default_rng(0))
    assert w.shape == SHAPE
    assert abs(w.mean()) < 4 * std / np.sqrt(w.size)
    assert w.std() == pytest.approx(std, rel=0.01), name


@pytest.mark.parametrize("name,fn,limit", [
    ("glorot_uniform", init.glorot_uniform, np.sqrt(6 / (FAN_IN + FAN_OUT))),
    ("he_uniform", init.he_uniform, np.sqrt(6 / FAN_IN)),
])
def test_uniform_initializers_limits(name, fn, limit):
    w = fn(SHAPE, FAN_IN, FAN_OUT, np.random.default_rng(0))
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.999 * limit  # fills the interval
    assert w.std() == pytest.approx(limit / np.sqrt(3), rel=0.01), name


@pytest.mark.parametrize("name", ["glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "normal"])
def test_initializers_are_seeded(name):
    fn = init.get(name)
    a = fn((20, 30), 20, 30, np.random.default_rng(5))
    b = fn((20, 30), 20, 30, np.random.default_rng(5))
    c = fn((20, 30), 20, 30, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_models_are_reproducible_from_their_seed():
    def make(seed):
        return Sequential([Conv2D(4, 3), Flatten(), Dense(8, "relu"), Dense(3)], input_shape=(1, 6, 6), seed=seed)

    a, b, c = make(9).named_values(), make(9).named_values(), make(10).named_values()
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["dense_1.W"], c["dense_1.W"])


def test_layers_use_their_fans():
    """Dense fans are (in, units); Conv2D's are (C kh kw, filters kh kw)."""
    dense = Sequential([Dense(400, init="he_normal")], input_shape=(250,), seed=0).layers[0]
    assert dense.values["W"].std() == pytest.approx(np.sqrt(2 / 250), rel=0.01)
    conv = Sequential([Conv2D(64, 3, init="glorot_uniform")], input_shape=(32, 8, 8), seed=0).layers[0]
    limit = np.sqrt(6 / (32 * 9 + 64 * 9))
    w = conv.values["W"]
    assert np.abs(w).max() <= limit * (1 + 1e-6) and w.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)
    conv_he = Sequential([Conv2D(64, 3)], input_shape=(32, 8, 8), seed=0).layers[0]  # default he_normal
    assert conv_he.values["W"].std() == pytest.approx(np.sqrt(2 / (32 * 9)), rel=0.02)
    assert not conv_he.values["b"].any() and not dense.values["b"].any()


def test_unknown_initializer_and_activation_are_named():
    with pytest.raises(ValueError, match="unknown initializer 'he_norml'"):
        Dense(3, init="he_norml")
    with pytest.raises(ValueError, match="unknown activation 'rleu'"):
        Dense(3, activation="rleu")

"""Numerical-stability rewrites: losses written by hand overflow on large logits before optimization
and are finite (and correct) after it, for the loss and for the gradient graphc.grad built.

Oracles: the stable closed forms computed here with NumPy (logsumexp with the max shifted out,
softplus as max(x, 0) + log1p(exp(-|x|))), and the analytic gradients (p - y)/N and sigmoid(z) - y.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_passes_support import values

import graphc

N, C = 6, 5
BIG = 1e4


def logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(z - logsumexp(z))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-softplus(-x))


def big_logits(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, C)) * BIG


def all_finite(arrays) -> bool:
    return all(np.all(np.isfinite(a)) for a in arrays)


def hand_written_ce(labels_kind: str, dtype: str = "float64"):
    """-mean(sum(y * log(softmax(z)), axis=1)) with its gradient w.r.t. z and a weight W (z = x @ W)."""
    with graphc.Graph("ce_by_hand") as g:
        x = graphc.input("x", (N, C), dtype)
        W = graphc.param("W", np.eye(C, dtype=dtype))
        z = x @ W
        if labels_kind == "one_hot":
            y = graphc.one_hot(graphc.input("labels", (N,), "int64"), C, dtype)
        else:
            y = graphc.input("y", (N, C), dtype)
        loss = -graphc.mean(graphc.sum(y * graphc.log(graphc.softmax(z, axis=1)), axis=1))
        dW, dx = graphc.grad(loss, [W, x])
        g.output(loss, dW, dx)
    return g


@pytest.mark.parametrize("level", [2, 3])
def test_softmax_cross_entropy_by_hand_is_finite_after_optimization(level):
    g = hand_written_ce("one_hot")
    z = big_logits()
    labels = np.random.default_rng(1).integers(0, C, N)
    feeds = {"x": z, "labels": labels}
    assert not all_finite(values(g, feeds))           # log(0) * 0 = nan, and 0/0 in the gradient

    out = graphc.optimize(g, level=level).graph
    assert "softmax_cross_entropy" in [n.op for n in out.nodes]   # the one fused stable op
    loss, dW, dx = values(out, feeds)
    y = np.eye(C)[labels]
    np.testing.assert_allclose(loss, np.mean(logsumexp(z)[:, 0] - z[np.arange(N), labels]), rtol=1e-12)
    want_dz = (softmax(z) - y) / N
    np.testing.assert_allclose(dx, want_dz, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(dW, z.T @ want_dz, rtol=1e-10, atol=1e-9)


def test_softmax_cross_entropy_by_hand_in_float32():
    g = hand_written_ce("one_hot", "float32")
    z = big_logits(3).astype(np.float32)
    labels = np.random.default_rng(4).integers(0, C, N)
    feeds = {"x": z, "labels": labels}
    assert not all_finite(values(g, feeds))
    loss, dW, dx = values(graphc.optimize(g).graph, feeds)
    assert all_finite([loss, dW, dx])
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(loss, np.mean(logsumexp(z64)[:, 0] - z64[np.arange(N), labels]), rtol=1e-5)
    np.testing.assert_allclose(dx, (softmax(z64) - np.eye(C)[labels]) / N, atol=1e-6)


def test_soft_labels_keep_the_general_stable_form():
    """Labels that need not sum to 1: no fused op (its gradient assumes they do), still finite and exact."""
    g = hand_written_ce("soft")
    z = big_logits(5)
    y = np.random.default_rng(6).random((N, C))
    feeds = {"x": z, "y": y}
    assert not all_finite(values(g, feeds))
    out = graphc.optimize(g).graph
    kinds = [n.op for n in out.nodes]
    assert "softmax_cross_entropy" not in kinds and "log_softmax" in kinds
    loss, dW, dx = values(out, feeds)
    logp = z - logsumexp(z)
    np.testing.assert_allclose(loss, -np.mean(np.sum(y * logp, axis=1)), rtol=1e-12)
    want_dz = (softmax(z) * y.sum(axis=1, keepdims=True) - y) / N
    np.testing.assert_allclose(dx, want_dz, rtol=1e-10, atol=1e-15)


def test_log_softmax_of_softmax_forward_and_gradient():
    with graphc.Graph() as g:
        x = graphc.input("x", (N, C), "float64")
        r = graphc.input("r", (N, C), "float64")
        loss = graphc.sum(graphc.log(graphc.softmax(x, axis=1)) * r)
        g.output(loss, graphc.grad(loss, x))
    z, r = big_logits(7), np.random.default_rng(8).standard_normal((N, C))
    assert not all_finite(values(g, {"x": z, "r": r}))
    out = graphc.optimize(g).graph
    assert "log_softmax" in [n.op for n in out.nodes] and "log" not in [n.op for n in out.nodes]
    loss, dx = values(out, {"x": z, "r": r})
    np.testing.assert_allclose(loss, np.sum((z - logsumexp(z)) * r), rtol=1e-12)
    np.testing.assert_allclose(dx, r - softmax(z) * r.sum(axis=1, keepdims=True), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_log_sigmoid_becomes_minus_softplus(dtype):
    with graphc.Graph() as g:
        x = graphc.input("x", (6,), dtype)
        loss = graphc.sum(graphc.log(graphc.sigmoid(x)))
        g.output(graphc.log(graphc.sigmoid(x)), graphc.grad(loss, x))
    xv = np.array([-BIG, -50.0, -1.0, 0.0, 3.0, BIG], dtype)
    assert not all_finite(values(g, {"x": xv}))
    out = graphc.optimize(g).graph
    logs, dx = values(out, {"x": xv})
    x64 = xv.astype(np.float64)
    rtol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(logs, -softplus(-x64), rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(dx, sigmoid(-x64), rtol=rtol, atol=1e-30)   # d/dx log sigmoid(x) = sigmoid(-x)


def test_binary_cross_entropy_on_a_sigmoid_becomes_the_with_logits_form():
    rng = np.random.default_rng(9)
    with graphc.Graph() as g:
        z = graphc.input("z", (8,), "float64")
        y = graphc.input("y", (8,), "float64")
        loss = graphc.binary_cross_entropy(graphc.sigmoid(z), y)
        g.output(loss, graphc.grad(loss, z))
    zv = np.array([-BIG, -40.0, -2.0, -0.1, 0.0, 1.5, 40.0, BIG])
    yv = rng.integers(0, 2, 8).astype(np.float64)
    yv[0], yv[-1] = 1.0, 0.0   # the confidently wrong ends: log(0) in the hand-written form
    assert not all_finite(values(g, {"z": zv, "y": yv}))
    out = graphc.optimize(g).graph
    assert "sigmoid" not in [n.op for n in out.nodes if n.op != "fused"]
    loss, dz = values(out, {"z": zv, "y": yv})
    np.testing.assert_allclose(loss, np.mean(softplus(zv) - yv * zv), rtol=1e-12)
    np.testing.assert_allclose(dz, (sigmoid(zv) - yv) / 8, rtol=1e-10, atol=1e-15)

"""Optimizers: each one's parameter trajectory equals a NumPy transcription of its textbook update.

The model is softmax regression, logits = x @ W + b, loss = mean cross-entropy, whose gradient has
the closed form dlogits = (softmax(logits) - onehot(y)) / N, dW = x^T dlogits, db = sum(dlogits).
The oracle below uses only that formula and the update rules as printed in CS231n (SGD, momentum,
Nesterov, AdaGrad, RMSProp, Adam with bias correction) and Zeiler 2012 (AdaDelta); graphc's
side differentiates the graph itself and runs the update inside the compiled step.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc import optim

N, D, C = 8, 4, 3
STEPS = 6


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    y = rng.integers(0, C, N)
    w0 = rng.normal(size=(D, C)) * 0.5
    b0 = rng.normal(size=C) * 0.1
    return x, y, w0, b0


def numpy_gradient(x, y, w, b):
    """Closed-form gradient of mean softmax cross-entropy for logits x @ w + b."""
    z = x @ w + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    dz = p / len(y)
    return {"W": x.T @ dz, "b": dz.sum(axis=0)}


def graphc_step(optimizer: optim.Optimizer, w0, b0):
    """The compiled training step (float64) and its parameter dict."""
    with graphc.Graph("softmax_regression") as g:
        x = graphc.input("x", (N, D), "float64")
        y = graphc.input("y", (N,), "int64")
        lr = graphc.input("lr", (), "float64")
        w = graphc.param("W", w0)
        b = graphc.param("b", b0)
        loss = g.output(graphc.softmax_cross_entropy(graphc.dense(x, w, b), y))
        optimizer.minimize(loss, [w, b], lr)
    return graphc.compile(loss, backend="reference")


# -- textbook updates, one function per rule: (params, grads, state, lr, t) -> None, updating in place ------------

def sgd(p, g, s, lr, t):
    for k in p:
        p[k] = p[k] - lr * g[k]


def momentum(mu):
    def rule(p, g, s, lr, t):
        for k in p:
            v = s.setdefault(k, np.zeros_like(p[k]))
            v = mu * v - lr * g[k]
            s[k] = v
            p[k] = p[k] + v
    return rule


def nesterov(mu):
    def rule(p, g, s, lr, t):  # CS231n: v_prev = v; v = mu*v - lr*dx; x += -mu*v_prev + (1+mu)*v
        for k in p:
            v_prev = s.setdefault(k, np.zeros_like(p[k]))
            v = mu * v_prev - lr * g[k]
            s[k] = v
            p[k] = p[k] - mu * v_prev + (1 + mu) * v
    return rule


def adagrad(eps):
    def rule(p, g, s, lr, t):  # cache += dx**2; x += -lr * dx / (sqrt(cache) + eps)
        for k in p:
            cache = s.setdefault(k, np.zeros_like(p[k])) + g[k] ** 2
            s[k] = cache
            p[k] = p[k] - lr * g[k] / (np.sqrt(cache) + eps)
    return rule


def rmsprop(rho, eps):
    def rule(p, g, s, lr, t):  # cache = rho*cache + (1-rho)*dx**2; x += -lr * dx / (sqrt(cache) + eps)
        for k in p:
            cache = rho * s.setdefault(k, np.zeros_like(p[k])) + (1 - rho) * g[k] ** 2
            s[k] = cache
            p[k] = p[k] - lr * g[k] / (np.sqrt(cache) + eps)
    return rule


def adadelta(rho, eps):
    def rule(p, g, s, lr, t):  # Zeiler 2012, Algorithm 1 (lr scales the applied step; lr = 1 is the paper)
        for k in p:
            eg2, ed2 = s.setdefault(k, (np.zeros_like(p[k]), np.zeros_like(p[k])))
            eg2 = rho * eg2 + (1 - rho) * g[k] ** 2
            delta = -np.sqrt(ed2 + eps) / np.sqrt(eg2 + eps) * g[k]
            ed2 = rho * ed2 + (1 - rho) * delta ** 2
            s[k] = (eg2, ed2)
            p[k] = p[k] + lr * delta
    return rule


def adam(b1, b2, eps):
    def rule(p, g, s, lr, t):  # t = 1, 2, ...; bias-corrected moments
        for k in p:
            m, v = s.setdefault(k, (np.zeros_like(p[k]), np.zeros_like(p[k])))
            m = b1 * m + (1 - b1) * g[k]
            v = b2 * v + (1 - b2) * g[k] ** 2
            s[k] = (m, v)
            mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            p[k] = p[k] - lr * mhat / (np.sqrt(vhat) + eps)
    return rule


CASES = {
    "sgd": (lambda **kw: optim.SGD(**kw), sgd, 0.5),
    "momentum": (lambda **kw: optim.Momentum(momentum=0.8, **kw), momentum(0.8), 0.3),
    "nesterov": (lambda **kw: optim.Nesterov(momentum=0.8, **kw), nesterov(0.8), 0.3),
    "adagrad": (lambda **kw: optim.AdaGrad(eps=1e-7, **kw), adagrad(1e-7), 0.2),
    "rmsprop": (lambda **kw: optim.RMSProp(rho=0.85, eps=1e-7, **kw), rmsprop(0.85, 1e-7), 0.05),
    "adadelta": (lambda **kw: optim.AdaDelta(rho=0.9, eps=1e-4, **kw), adadelta(0.9, 1e-4), 1.0),
    "adam": (lambda **kw: optim.Adam(beta1=0.85, beta2=0.99, eps=1e-7, **kw), adam(0.85, 0.99, 1e-7), 0.1),
}


def reference_trajectory(rule, x, y, w0, b0, lrs, weight_decay=0.0, clip_norm=None):
    p = {"W": w0.copy(), "b": b0.copy()}
    state: dict = {}
    out = []
    for t, lr in enumerate(lrs, start=1):
        g = numpy_gradient(x, y, p["W"], p["b"])
        g = {k: g[k] + weight_decay * p[k] for k in g}  # L2: wd * p added to the gradient
        if clip_norm is not None:  # global norm over all parameters together
            norm = np.sqrt(sum(np.sum(v ** 2) for v in g.values()))
            g = {k: v * min(1.0, clip_norm / norm) for k, v in g.items()}
        rule(p, g, state, lr, t)
        out.append({k: v.copy() for k, v in p.items()})
    return out


def graphc_trajectory(make, x, y, w0, b0, lrs, **kw):
    exe = graphc_step(make(**kw), w0, b0)
    out = []
    for lr in lrs:
        exe(x, y, lr)
        out.append({k: exe.params[k].copy() for k in ("W", "b")})
    return out, exe


def assert_same_trajectory(got, want):
    assert len(got) == len(want) >= 5
    for step, (a, b) in enumerate(zip(got, want), start=1):
        for k in ("W", "b"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12, err_msg=f"step {step}, parameter {k}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_matches_textbook_update(name):
    make, rule, lr = CASES[name]
    x, y, w0, b0 = data()
    lrs = [lr] * STEPS
    got, _ = graphc_trajectory(make, x, y, w0, b0, lrs)
    want = reference_trajectory(rule, x, y, w0, b0, lrs)
    assert_same_trajectory(got, want)
    # the parameters actually moved, by more than the comparison's tolerance
    assert np.abs(got[-1]["W"] - w0).max() > 1e-3


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_with_weight_decay_and_a_changing_lr(name):
    make, rule, lr = CASES[name]
    x, y, w0, b0 = data(1)
    lrs = [lr * f for f in (1.0, 0.5, 0.9, 0.25, 0.7, 0.1)]  # the lr input is read on every step
    got, _ = graphc_trajectory(make, x, y, w0, b0, lrs, weight_decay=0.3)
    want = reference_trajectory(rule, x, y, w0, b0, lrs, weight_decay=0.3)
    assert_same_trajectory(got, want)
    # weight decay changed the result (so the comparison above is not blind to it)
    plain = reference_trajectory(rule, x, y, w0, b0, lrs)
    assert np.abs(plain[-1]["W"] - want[-1]["W"]).max() > 1e-4


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_with_global_norm_clipping(name):
    make, rule, lr = CASES[name]
    x, y, w0, b0 = data(2)
    w0 = w0 * 6.0  # large logits: the gradient norm is well above the clip
    lrs = [lr] * STEPS
    g0 = numpy_gradient(x, y, w0, b0)
    norm0 = np.sqrt(np.sum(g0["W"] ** 2) + np.sum(g0["b"] ** 2))
    clip = 0.25 * norm0
    got, _ = graphc_trajectory(make, x, y, w0, b0, lrs, clip_norm=clip)
    want = reference_trajectory(rule, x, y, w0, b0, lrs, clip_norm=clip)
    assert_same_trajectory(got, want)


def test_weight_decay_then_clipping_together():
    """Documented order: the L2 term joins the gradient first, then the global norm is clipped."""
    make, rule, lr = CASES["momentum"]
    x, y, w0, b0 = data(3)
    lrs = [lr] * STEPS
    got, _ = graphc_trajectory(make, x, y, w0, b0, lrs, weight_decay=0.5, clip_norm=0.1)
    want = reference_trajectory(rule, x, y, w0, b0, lrs, weight_decay=0.5, clip_norm=0.1)
    assert_same_trajectory(got, want)


def test_clipping_leaves_small_gradients_alone():
    x, y, w0, b0 = data(4)
    got, _ = graphc_trajectory(CASES["sgd"][0], x, y, w0, b0, [0.5] * STEPS, clip_norm=1e6)
    want = reference_trajectory(sgd, x, y, w0, b0, [0.5] * STEPS)
    assert_same_trajectory(got, want)


def test_optimizer_state_lives_in_the_executable_params():
    """Adam's moments and step count are parameters of the step, equal to the oracle's after 6 steps."""
    make, rule, lr = CASES["adam"]
    x, y, w0, b0 = data()
    _, exe = graphc_trajectory(make, x, y, w0, b0, [lr] * STEPS)
    p = {"W": w0.copy(), "b": b0.copy()}
    state: dict = {}
    for t in range(1, STEPS + 1):
        rule(p, numpy_gradient(x, y, p["W"], p["b"]), state, lr, t)
    for k in ("W", "b"):
        np.testing.assert_allclose(exe.params[f"{k}.m"], state[k][0], rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(exe.params[f"{k}.v"], state[k][1], rtol=1e-9, atol=1e-14)
    assert float(exe.params["adam.t"]) == STEPS


def test_float32_train_step_of_a_dense_model_matches_float64_oracle():
    """The fit path: build_train_step on a Sequential model (float32), SGD with momentum."""
    from graphc.nn import Dense, Sequential
    from graphc.train import build_train_step

    x, y, _, _ = data(5)
    model = Sequential([Dense(C)], input_shape=(D,), seed=3)
    w0 = model.layers[0].values["W"].astype(np.float64)
    b0 = model.layers[0].values["b"].astype(np.float64)
    g = build_train_step(model, N, optim.Momentum(momentum=0.9))
    exe = graphc.compile([graphc.Tensor(o, g) for o in g.outputs], backend="reference")
    rule = momentum(0.9)
    p, state = {"W": w0.copy(), "b": b0.copy()}, {}
    for t in range(1, STEPS + 1):
        loss, correct = exe(x=x.astype(np.float32), y=y, lr=np.float32(0.4))
        z = x @ p["W"] + p["b"]
        logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        assert float(loss) == pytest.approx(-logp[np.arange(N), y].mean(), rel=1e-5)
        assert float(correct) == float((z.argmax(1) == y).sum())
        rule(p, numpy_gradient(x, y, p["W"], p["b"]), state, 0.4, t)
        np.testing.assert_allclose(exe.params["dense_1.W"], p["W"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(exe.params["dense_1.b"], p["b"], rtol=1e-4, atol=1e-6)

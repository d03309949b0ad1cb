"""Learning-rate schedules: each one's values equal its formula, and fit() really feeds them to the step.

The formulas are written out here independently (the course's linear decay alpha0 (1 - t/T);
reduce-on-plateau dividing by 10 after ``patience`` epochs without improvement).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.nn import Dense, Sequential
from graphc.train import schedules

TS = range(0, 40)


def test_constant():
    s = schedules.constant(0.3)
    assert [s(t) for t in TS] == [0.3] * len(TS)


def test_step():
    s = schedules.step(0.5, drop=0.2, every=7)
    for t in TS:
        k = 0 if t < 7 else 1 if t < 14 else 2 if t < 21 else 3 if t < 28 else 4 if t < 35 else 5
        assert s(t) == pytest.approx(0.5 * 0.2 ** k, rel=1e-12), t


def test_linear_is_the_course_formula_and_holds_after_T():
    s = schedules.linear(0.1, T=25)
    for t in TS:
        want = 0.1 * (1 - t / 25) if t <= 25 else 0.0
        assert s(t) == pytest.approx(want, rel=1e-12, abs=1e-15), t
    assert s(0) == 0.1 and s(25) == 0.0


def test_linear_with_a_final_rate():
    s = schedules.linear(0.1, T=10, final=0.01)
    assert [s(t) for t in (0, 5, 10, 30)] == pytest.approx([0.1, 0.055, 0.01, 0.01], rel=1e-12)


def test_exponential():
    s = schedules.exponential(0.2, k=0.15)
    for t in TS:
        assert s(t) == pytest.approx(0.2 * math.e ** (-0.15 * t), rel=1e-12), t


def test_cosine():
    s = schedules.cosine(0.4, T=20, final=0.05)
    for t in TS:
        frac = min(t, 20) / 20
        assert s(t) == pytest.approx(0.05 + 0.5 * (0.4 - 0.05) * (1 + math.cos(math.pi * frac)), rel=1e-12), t
    assert s(0) == pytest.approx(0.4) and s(10) == pytest.approx(0.225) and s(20) == pytest.approx(0.05)


@pytest.mark.parametrize("warmup", [1, 4])
def test_inverse_sqrt(warmup):
    s = schedules.inverse_sqrt(0.8, warmup=warmup)
    for t in TS:
        step = t + 1  # the 1-based step number
        want = 0.8 if step <= warmup else 0.8 * math.sqrt(warmup) / math.sqrt(step)
        assert s(t) == pytest.approx(want, rel=1e-12), t
    assert s.per == "step"


def plateau_oracle(lr0, val_losses, patience, factor=10.0):
    """The lr in force during each epoch, and after the last; written from the definition."""
    lr, best, waited, out = lr0, float("inf"), 0, []
    for v in val_losses:
        out.append(lr)
        if v < best:
            best, waited = v, 0
        else:
            waited += 1
            if waited == patience:
                lr, waited = lr / factor, 0
    return out, lr


def test_reduce_on_plateau_divides_by_10_after_patience_bad_epochs():
    losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.8, 0.85, 0.81, 0.83, 0.82, 0.84, 0.7, 0.75, 0.71, 0.72]
    s = schedules.reduce_on_plateau(0.1, patience=3)
    seen = []
    for v in losses:
        seen.append(s(len(seen)))
        s.observe(v)
    want, final = plateau_oracle(0.1, losses, 3)
    assert seen == pytest.approx(want, rel=1e-12)
    assert s(99) == pytest.approx(final, rel=1e-12)
    # by hand: epochs 2-4 do not beat 0.9 -> 0.01 from epoch 5; 6-8 do not beat 0.8 -> 0.001 from epoch 9;
    # 0.7 at epoch 11, then 12-14 do not beat it -> 0.0001
    assert want[:5] == [0.1] * 5 and want[5] == pytest.approx(0.01) and want[9] == pytest.approx(0.001)
    assert final == pytest.approx(0.0001)


def test_reduce_on_plateau_state_round_trip():
    s = schedules.reduce_on_plateau(0.1, patience=2)
    for v in (1.0, 1.1, 1.2, 0.5, 0.6):
        s.observe(v)
    t = schedules.reduce_on_plateau(0.1, patience=2)
    t.load_state(s.state())
    for v in (0.7, 0.4, 0.45, 0.5):
        s.observe(v)
        t.observe(v)
        assert t(0) == s(0)
    assert s(0) == pytest.approx(0.0001)


# -- fit feeds the scheduled rate ------------------------------------------------------------------------------

def softmax_regression_grad(x, y, w, b):
    z = x @ w + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    dz = p / len(y)
    return x.T @ dz, dz.sum(axis=0)


def model_and_data(seed=0, n=12):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = rng.integers(0, 4, n).astype(np.int64)
    model = Sequential([Dense(4)], input_shape=(3,), seed=seed, dtype=np.float32)
    return model, x, y


def test_fit_feeds_a_per_epoch_schedule_to_sgd():
    """Full-batch SGD: each epoch is one step with the schedule's rate for that epoch (t = epoch - 1)."""
    model, x, y = model_and_data()
    w = model.layers[0].values["W"].astype(np.float64)
    b = model.layers[0].values["b"].astype(np.float64)
    sched = schedules.linear(0.9, T=5)
    h = graphc.fit(model, (x, y), epochs=5, batch_size=len(x), optimizer=optim.SGD(123.0), schedule=sched,
                   backend="reference", verbose=False)
    want_lrs = [0.9 * (1 - t / 5) for t in range(5)]
    assert h["lr"] == pytest.approx(want_lrs, rel=1e-12)
    for lr in want_lrs:
        gw, gb = softmax_regression_grad(x.astype(np.float64), y, w, b)
        w, b = w - lr * gw, b - lr * gb
    np.testing.assert_allclose(model.layers[0].values["W"], w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.layers[0].values["b"], b, rtol=1e-4, atol=1e-6)


def test_fit_feeds_a_per_step_schedule_to_sgd():
    """Per-step schedule, 3 steps per epoch (the last one partial). Every row is the same example, so each
    batch's mean gradient is the one example's, whatever the shuffle: the trajectory is known exactly."""
    rng = np.random.default_rng(7)
    x = np.repeat(rng.normal(size=(1, 3)), 10, axis=0).astype(np.float32)
    y = np.full(10, 2, np.int64)
    model = Sequential([Dense(4)], input_shape=(3,), seed=1)
    w = model.layers[0].values["W"].astype(np.float64)
    b = model.layers[0].values["b"].astype(np.float64)
    sched = schedules.exponential(0.5, k=0.3, per="step")
    h = graphc.fit(model, (x, y), epochs=2, batch_size=4, optimizer=optim.SGD(99.0), schedule=sched,
                   backend="reference", verbose=False)
    lrs = [0.5 * math.exp(-0.3 * t) for t in range(6)]
    assert h["lr"] == pytest.approx([lrs[0], lrs[3]], rel=1e-12)  # the rate at each epoch's first step
    for lr in lrs:
        gw, gb = softmax_regression_grad(x[:1].astype(np.float64), y[:1], w, b)
        w, b = w - lr * gw, b - lr * gb
    np.testing.assert_allclose(model.layers[0].values["W"], w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.layers[0].values["b"], b, rtol=1e-4, atol=1e-6)


def test_fit_reduces_on_plateau_from_the_validation_loss():
    """Validation labels that disagree with the training ones on the same inputs: the validation loss rises,
    and the lr fed in each epoch is the plateau rule applied to the recorded validation losses."""
    model, x, y = model_and_data(3, n=16)
    xv, yv = x, (y + 1) % 4
    sched = schedules.reduce_on_plateau(0.5, patience=2)
    h = graphc.fit(model, (x, y), epochs=12, batch_size=16, optimizer=optim.SGD(0.5), schedule=sched,
                   validation_data=(xv, yv), backend="reference", verbose=False)
    want, _ = plateau_oracle(0.5, h["val_loss"], 2)
    assert h["lr"] == pytest.approx(want, rel=1e-12)
    assert min(h["lr"]) < 0.5  # the test saw at least one reduction

"""Parameter groups, AdamW, two optimizers in one step, learning-rate warm-up and the course's sigmoid(z, x, y).

Every trajectory is compared with a NumPy transcription of the update written here, in float64, over
several steps with a rate that changes each step, on the reference and the cpu backend. The model is
least squares, loss = 0.5/N sum((x W + b - t)^2), whose gradient has the closed form r = (x W + b - t)/N,
dW = x^T r, db = sum(r); fit's test uses softmax regression's closed form (as tests/test_schedules.py).
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.nn import Dense, Sequential
from graphc.optim import HyperparameterError, ParamGroupError
from graphc.train import schedules

BACKENDS = ["reference", "cpu"]
N, D, K = 6, 3, 2
LRS = [0.1, 0.05, 0.2, 0.08, 0.15, 0.12]  # the lr input changes every step


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(N, D)), rng.normal(size=(N, K)), rng.normal(size=(D, K)) * 0.5,
            rng.normal(size=K) * 0.3)


def numpy_gradient(x, t, p):
    r = (x @ p["lin.W"] + p["lin.b"] - t) / len(x)
    return {"lin.W": x.T @ r, "lin.b": r.sum(axis=0)}


def compiled_step(backend: str, w0, b0, minimize):
    """The least-squares step; ``minimize(loss, W, b, lr)`` appends the optimizers' updates."""
    with graphc.Graph("least_squares") as g:
        x = graphc.input("x", (N, D), "float64")
        t = graphc.input("t", (N, K), "float64")
        lr = graphc.input("lr", (), "float64")
        w, b = graphc.param("lin.W", w0), graphc.param("lin.b", b0)
        loss = g.output(graphc.sum(graphc.square(graphc.dense(x, w, b) - t)) * (0.5 / N))
        minimize(loss, w, b, lr)
    return graphc.compile(loss, backend=backend)


def graphc_trajectory(exe, x, t, lrs):
    out = []
    for lr in lrs:
        exe(x, t, lr)
        out.append({k: exe.params[k].copy() for k in ("lin.W", "lin.b")})
    return out


def numpy_trajectory(x, t, w0, b0, lrs, rule):
    """``rule(p, g, state, k, lr, step)`` updates parameter k of p in place (step = 1, 2, ...)."""
    p, state, out = {"lin.W": w0.copy(), "lin.b": b0.copy()}, {}, []
    for step, lr in enumerate(lrs, start=1):
        g = numpy_gradient(x, t, p)
        for k in p:
            rule(p, g, state, k, lr, step)
        out.append({k: v.copy() for k, v in p.items()})
    return out


def assert_same(got, want):
    assert len(got) == len(want) == len(LRS)
    for step, (a, b) in enumerate(zip(got, want), start=1):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12, err_msg=f"step {step}, {k}")


def adam_direction(g, state, k, step, b1, b2, eps):
    """Kingma and Ba's bias-corrected step direction m_hat / (sqrt(v_hat) + eps), moments kept in state[k]."""
    m, v = state.get(k, (0.0, 0.0))
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
    state[k] = (m, v)
    return (m / (1 - b1 ** step)) / (np.sqrt(v / (1 - b2 ** step)) + eps)


# -- parameter groups ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_groups_have_their_own_rate_and_weight_decay(backend):
    """Momentum 0.8, lr 0.1, weight decay 0.02; group 0 (a name pattern, W) runs at 3x the fed rate
    (lr 0.3 against the optimizer's 0.1), group 1 (a tensor, b) has weight decay 0.5; group 2 (a pattern
    selecting b again) sets b's rate to 2x: overlapping groups that set different things combine."""
    x, t, w0, b0 = data()
    exe = compiled_step(backend, w0, b0, lambda loss, w, b, lr: optim.Momentum(
        lr=0.1, momentum=0.8, weight_decay=0.02,
        groups=[{"params": "*.W", "lr": 0.3}, {"params": [b], "weight_decay": 0.5},
                {"params": ["*.b"], "lr": 0.2}]).minimize(loss, [w, b], lr))
    rate = {"lin.W": 3.0, "lin.b": 2.0}
    decay = {"lin.W": 0.02, "lin.b": 0.5}

    def rule(p, g, state, k, lr, step):  # v <- mu v - lr (g + wd p); p <- p + v
        v = 0.8 * state.get(k, 0.0) - lr * rate[k] * (g[k] + decay[k] * p[k])
        state[k] = v
        p[k] = p[k] + v

    want = numpy_trajectory(x, t, w0, b0, LRS, rule)
    assert_same(graphc_trajectory(exe, x, t, LRS), want)
    rate.update({"lin.W": 1.0, "lin.b": 1.0})
    decay.update({"lin.b": 0.02})
    without_groups = numpy_trajectory(x, t, w0, b0, LRS, rule)
    assert all(np.abs(without_groups[-1][k] - want[-1][k]).max() > 1e-3 for k in want[-1])  # groups mattered


# -- AdamW -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_decays_the_weights_outside_the_moments(backend):
    """p <- p - lr (m_hat / (sqrt(v_hat) + eps) + wd p), moments of the loss's gradient alone; the biases'
    group turns the decay off."""
    b1, b2, eps, wd = 0.85, 0.99, 1e-7, 0.4
    x, t, w0, b0 = data(1)
    exe = compiled_step(backend, w0, b0, lambda loss, w, b, lr: optim.AdamW(
        lr=0.05, beta1=b1, beta2=b2, eps=eps, weight_decay=wd,
        groups=[{"params": "*.b", "weight_decay": 0.0}]).minimize(loss, [w, b], lr))
    decay = {"lin.W": wd, "lin.b": 0.0}

    def adamw(p, g, state, k, lr, step):
        p[k] = p[k] - lr * (adam_direction(g[k], state, k, step, b1, b2, eps) + decay[k] * p[k])

    def adam_l2(p, g, state, k, lr, step):  # the coupled form, to show the decoupling is not a no-op
        p[k] = p[k] - lr * adam_direction(g[k] + decay[k] * p[k], state, k, step, b1, b2, eps)

    want = numpy_trajectory(x, t, w0, b0, LRS, adamw)
    assert_same(graphc_trajectory(exe, x, t, LRS), want)
    assert float(exe.params["adamw.t"]) == len(LRS)
    assert np.abs(numpy_trajectory(x, t, w0, b0, LRS, adam_l2)[-1]["lin.W"] - want[-1]["lin.W"]).max() > 1e-3


def test_adamw_is_an_optimizer_by_name_with_pytorchs_default_decay():
    assert optim.OPTIMIZERS["adamw"] is optim.AdamW
    assert optim.AdamW().weight_decay == 0.01
    assert optim.AdamW.decoupled_weight_decay and not optim.Adam.decoupled_weight_decay


# -- two optimizers in one step --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_two_adams_on_different_parameters_in_one_step(backend):
    """Each Adam has its own step count (adam.t, adam_1.t) and betas; W's is fed the rate, b's has 0.02."""
    hp = {"lin.W": (0.85, 0.99, 1e-7), "lin.b": (0.5, 0.9, 1e-6)}
    x, t, w0, b0 = data(2)

    def two_adams(loss, w, b, lr):
        b1, b2, eps = hp["lin.W"]
        optim.Adam(lr=0.1, beta1=b1, beta2=b2, eps=eps).minimize(loss, [w], lr)
        b1, b2, eps = hp["lin.b"]
        optim.Adam(lr=0.02, beta1=b1, beta2=b2, eps=eps).minimize(loss, [b])

    exe = compiled_step(backend, w0, b0, two_adams)

    def rule(p, g, state, k, lr, step):
        rate = lr if k == "lin.W" else 0.02
        p[k] = p[k] - rate * adam_direction(g[k], state, k, step, *hp[k])

    assert_same(graphc_trajectory(exe, x, t, LRS), numpy_trajectory(x, t, w0, b0, LRS, rule))
    assert float(exe.params["adam.t"]) == float(exe.params["adam_1.t"]) == len(LRS)


# -- warm-up ---------------------------------------------------------------------------------------------------

def test_warmup_is_linear_from_the_start_factor_then_the_schedule_from_its_start():
    s = schedules.warmup(4, then=schedules.cosine(0.2, T=6, per="step"), start_factor=0.25)
    want = [0.2 * (0.25 + 0.75 * t / 4) for t in range(4)]
    want += [0.2 * (1 + np.cos(np.pi * min(t, 6) / 6)) / 2 for t in range(7)]  # cosine from its own t = 0
    assert [s(t) for t in range(11)] == pytest.approx(want, rel=1e-12)
    assert s.per == "step"


def test_warmup_before_a_constant_rate_and_a_step_schedule():
    const = schedules.warmup(2, then=0.5)  # a number: held constant, counted in steps
    assert [const(t) for t in range(4)] == pytest.approx([0.05, 0.275, 0.5, 0.5], rel=1e-12)
    assert const.per == "step"
    stepped = schedules.warmup(1, then=schedules.step(1.0, drop=0.5, every=2), start_factor=0.5)
    assert [stepped(t) for t in range(6)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5, 0.25], rel=1e-12)
    assert stepped.per == "epoch"


@pytest.fixture(scope="module")
def softmax_data():
    rng = np.random.default_rng(5)
    return rng.normal(size=(10, 3)), rng.integers(0, 2, 10).astype(np.int64)


def softmax_regression_grad(x, y, w, b):
    z = x @ w + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return x.T @ p / len(y), p.sum(axis=0) / len(y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_with_warmup_and_a_group_of_biases_at_half_the_rate(backend, softmax_data):
    """Full-batch SGD through fit: epoch e runs at warmup(3, then=linear(0.9, T=3), start 0.2)(e); the
    biases' group (lr 0.45 against the optimizer's 0.9) at half of it, the schedule scaling both."""
    x, y = softmax_data
    model = Sequential([Dense(2)], input_shape=(3,), seed=3, dtype=np.float64)
    w, b = (model.layers[0].values[k].copy() for k in ("W", "b"))
    sched = schedules.warmup(3, then=schedules.linear(0.9, T=3), start_factor=0.2)
    h = graphc.fit(model, (x, y), epochs=6, batch_size=len(x), schedule=sched, backend=backend, verbose=False,
                   optimizer=optim.SGD(0.9, groups=[{"params": "*.b", "lr": 0.45}]))
    lrs = [0.9 * (0.2 + 0.8 * e / 3) for e in range(3)] + [0.9 * (1 - e / 3) for e in range(3)]
    assert h["lr"] == pytest.approx(lrs, rel=1e-12)
    for lr in lrs:
        gw, gb = softmax_regression_grad(x, y, w, b)
        w, b = w - lr * gw, b - 0.5 * lr * gb
    np.testing.assert_allclose(model.layers[0].values["W"], w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.layers[0].values["b"], b, rtol=1e-9, atol=1e-12)


# -- the course's sigmoid with z, x, y parameters (deck 001) ------------------------------------------------------

Z, X, Y = 0.5, 2.0, 1.0
V = np.concatenate([np.linspace(-6.0, 6.0, 13), [-40.0, 40.0, -1000.0, 1000.0]])


def course_sigmoid(v, z=Z, x=X, y=Y):
    """Deck 001: phi(v) = z + 1 / (1 + exp(-x v + y))."""
    with np.errstate(over="ignore"):
        return z + 1.0 / (1.0 + np.exp(-x * v + y))


@pytest.fixture(scope="module", params=BACKENDS)
def sigmoid_zxy_step(request):
    """sigmoid_zxy(v) (course parameters), its default form, and d(sum(weights * sigmoid_zxy(v)))/dv."""
    with graphc.Graph("sigmoid_zxy") as g:
        v = graphc.input("v", V.shape, "float64")
        weights = graphc.constant(np.linspace(0.5, 2.0, V.size))
        out = graphc.sigmoid_zxy(v, z=Z, x=X, y=Y)
        (dv,) = graphc.grad(graphc.sum(out * weights), [v])
        g.output(out, graphc.sigmoid_zxy(v), dv)
    exe = graphc.compile([graphc.Tensor(o, g) for o in g.outputs], backend=request.param)
    return exe(V)


def test_sigmoid_zxy_values_are_the_courses_closed_form(sigmoid_zxy_step):
    out, default, _ = sigmoid_zxy_step
    np.testing.assert_allclose(out, course_sigmoid(V), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(default, course_sigmoid(V, 0.0, 1.0, 0.0), rtol=1e-14, atol=1e-15)
    assert out[-2] == Z and out[-1] == Z + 1.0  # saturated without overflow


def test_sigmoid_zxy_gradient_matches_central_differences(sigmoid_zxy_step):
    _, _, dv = sigmoid_zxy_step
    h = 1e-6
    want = (course_sigmoid(V + h) - course_sigmoid(V - h)) / (2 * h) * np.linspace(0.5, 2.0, V.size)
    assert np.all(np.isfinite(dv))
    np.testing.assert_allclose(dv, want, rtol=1e-6, atol=1e-9)
    assert dv[6] > 0.1  # not vacuously zero: the slope at v = 0 is x e^-y' / (1 + e^-y')^2 ~ 0.39 * 1.25


def test_sigmoid_zxy_fuses_with_its_neighbours_and_its_derivative_on_cpu():
    """Defined by its SymPy expression, it fuses like any elementwise op: the optimized cpu graph computes
    3 phi(v) + 1 and its gradient as two fused nodes, with the course's values."""
    with graphc.Graph("sigmoid_zxy_fused") as g:
        v = graphc.input("v", V.shape, "float64")
        out = graphc.sigmoid_zxy(v, z=Z, x=X, y=Y) * 3.0 + 1.0
        (dv,) = graphc.grad(graphc.sum(out), [v])
        g.output(out, dv)
    exe = graphc.compile([graphc.Tensor(o, g) for o in g.outputs], backend="cpu")
    assert [n.op for n in exe.graph.nodes] == ["input", "fused", "fused"]
    got, grad = exe(V)
    np.testing.assert_allclose(got, 3.0 * course_sigmoid(V) + 1.0, rtol=1e-14)
    h = 1e-6
    np.testing.assert_allclose(grad, 3.0 * (course_sigmoid(V + h) - course_sigmoid(V - h)) / (2 * h),
                               rtol=1e-6, atol=1e-9)


# -- errors ----------------------------------------------------------------------------------------------------

def minimize_in_a_graph(make_optimizer, second=None):
    with graphc.Graph("errors") as g:
        w, b = graphc.param("lin.W", np.ones((2, 2))), graphc.param("lin.b", np.ones(2))
        loss = g.output(graphc.sum(graphc.square(w)) + graphc.sum(b))
        make_optimizer(b).minimize(loss, [w, b])
        if second is not None:
            second.minimize(loss, [w])


def test_a_group_that_selects_no_parameter_is_an_error():
    with pytest.raises(ParamGroupError, match=r"SGD group 1 \(\*\.bias\) selects none of the parameters it "
                                              r"optimizes: lin\.W, lin\.b\n  at .*test_optim_groups\.py:\d+"):
        minimize_in_a_graph(lambda b: optim.SGD(groups=[{"params": "*.W"}, {"params": "*.bias", "lr": 0.1}]))


def test_two_groups_setting_the_same_thing_for_a_parameter_is_an_error():
    with pytest.raises(ParamGroupError, match=r"Adam: parameter 'lin\.b' gets lr from group 0 \(lin\.\*\) and from "
                                              r"group 2 \('lin\.b'\); one group may set each setting of a "
                                              r"parameter\n  at .*test_optim_groups\.py:\d+"):
        minimize_in_a_graph(lambda b: optim.Adam(groups=[{"params": "lin.*", "lr": 0.2},
                                                         {"params": "*.b", "weight_decay": 0.0},
                                                         {"params": [b], "lr": 0.1}]))


def test_a_parameter_updated_by_two_optimizers_is_an_error():
    with pytest.raises(ParamGroupError, match=r"Momentum: parameter 'lin\.W' already has an update in graph "
                                              r"'errors' \(another optimizer's minimize\?\).*\n  at .*test_optim_groups\.py:\d+"):
        minimize_in_a_graph(lambda b: optim.SGD(), second=optim.Momentum())


def test_group_settings_are_checked_where_the_optimizer_is_made():
    with pytest.raises(HyperparameterError, match=r"SGD group 0: lr=-0\.1 is out of range; lr must be a finite "
                                                  r"number > 0\n  at .*test_optim_groups\.py:\d+"):
        optim.SGD(groups=[{"params": "*", "lr": -0.1}])
    with pytest.raises(ParamGroupError, match=r"Adam group 0: unknown setting\(s\) \['beta1'\]; a group may set "
                                              r"\['lr', 'weight_decay'\]\n  at .*test_optim_groups\.py:\d+"):
        optim.Adam(groups=[{"params": "*", "beta1": 0.5}])
    with pytest.raises(ParamGroupError, match=r"AdamW group 0: 'params' must be name patterns .* got 3"):
        optim.AdamW(groups=[{"params": 3}])


def test_warmup_arguments_are_checked():
    with pytest.raises(HyperparameterError, match=r"warmup: steps=0 must be a whole number >= 1\n  at "
                                                  r".*test_optim_groups\.py:\d+"):
        schedules.warmup(0, then=0.1)
    with pytest.raises(HyperparameterError, match=r"warmup: start_factor=0 is out of range; start_factor must be "
                                                  r"in \(0, 1\]"):
        schedules.warmup(3, then=0.1, start_factor=0)
    with pytest.raises(HyperparameterError, match=r"warmup: then=ReduceOnPlateau\(.*\) is not supported"):
        schedules.warmup(3, then=schedules.reduce_on_plateau(0.1))
    with pytest.raises(HyperparameterError, match=r"warmup: per='step' but then=cosine\(.*\) counts epochs"):
        schedules.warmup(3, then=schedules.cosine(0.1, T=5), per="step")

"""NaN origin: compile(check_finite=True) and fit stop at the first non-finite value and name the node that made it.

The origin is found by replaying the failing call on the reference backend from the graph as built. The
expected facts come from outside the code under test: closed forms (d/dw x**w = x**w log x is NaN at x = 0,
|z|**z has derivative (log|z| + 1)|z|**z, -inf at z = 0), the rows we poison, the permutation fit draws
from its seed, and the lines of this file (found with a marker comment, never written as numbers).
"""
from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import sympy as sp

import graphc
from graphc import InputError, NonFiniteError
from graphc.backends.finite import replay
from graphc.nn import Dense, Module, Sequential

BACKENDS = ["reference", "cpu"]


def line_of(marker: str) -> str:
    """``<this file>:<line>`` of the line carrying ``# <marker>``."""
    lines = inspect.getsource(inspect.getmodule(line_of)).splitlines()
    hits = [k + 1 for k, text in enumerate(lines) if text.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, marker
    return f"{__file__}:{hits[0]}"


@pytest.fixture(autouse=True)
def _compile_cache(graphc_cache_dir, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))


# -- compile(check_finite=True) ----------------------------------------------------------------------------------

def power_step():
    """loss = sum(x ** w) with an SGD update of w: at x = 0 the gradient x**w * log(x) is 0 * -inf = NaN."""
    with graphc.Graph("power_step") as g:
        x = graphc.input("x", (3,), "float64")
        w = graphc.param("w", np.array([2.0, 3.0, 0.5]))
        loss = g.output(graphc.sum(x ** w))  # power-line
        g.update(w, w - 0.1 * graphc.grad(loss, w))
    return loss


@pytest.fixture(scope="module", params=BACKENDS)
def power_exe(request):
    return graphc.compile(power_step(), backend=request.param, check_finite=True)


def test_check_finite_names_the_backward_node_whose_log_receives_zero(power_exe):
    x_ok = np.array([1.0, 2.0, 3.0])
    w0 = np.array([2.0, 3.0, 0.5])
    power_exe.set_params({"w": w0})  # copied into the executable's store
    assert power_exe(x_ok) == pytest.approx(np.sum(x_ok ** w0))  # finite calls run as usual
    before = power_exe.params["w"].copy()
    np.testing.assert_allclose(before, w0 - 0.1 * x_ok ** w0 * np.log(x_ok))
    with pytest.raises(NonFiniteError) as info:
        power_exe(np.array([2.0, 0.0, 1.0]))  # x[1] = 0: d/dw[1] = 0**3 * log(0) = 0 * -inf
    text = str(info.value)
    assert "power_step: parameter 'w' is not finite after the call: first at index [1]: nan" in text
    # the node: the derivative op of pow with respect to its exponent, whose log(x) receives x = 0
    assert re.search(r"%\d+:f64\[3\] = dpow_dy %0, %1 ", text), text
    assert f"op dpow_dy gave nan at index [1] from finite inputs %0, %1 (x=0.0, y={before[1]})" in text
    assert "dpow_dy = x**y*log(x) (derivative of pow, derived by SymPy)" in text
    assert "the non-finite part: log(x) = -inf" in text
    # the rule: the VJP of the forward pow, on the user's line
    assert re.search(r"rule: pow-vjp, the VJP \(vector-Jacobian product\) of forward node %\d+ pow, "
                     r"in the gradient of 'w'", text), text
    assert f"user's line: {line_of('power-line')}" in text
    node = info.value.node
    assert node.op == "dpow_dy" and node.provenance.forward.op == "pow"
    assert node in power_exe.source_graph and info.value.index == (1,) and np.isnan(info.value.value)
    # the parameters are back at their values before the failing call
    np.testing.assert_array_equal(power_exe.params["w"], before)
    assert "The parameters are left at their values before this call." in text


def test_cpu_keeps_the_graph_as_built_for_the_replay(power_exe):
    if power_exe.backend == "cpu":
        assert power_exe.source_graph is not power_exe.graph  # the optimized graph is what runs
    assert [n.op for n in power_exe.source_graph.nodes].count("dpow_dy") == 1
    assert all(not n.absorbed for n in power_exe.source_graph.nodes)  # never fused


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_finite_names_a_forward_log_of_zero_even_after_fusion(backend):
    with graphc.Graph("log_ratio") as g:
        x = graphc.input("x", (4,))
        y = g.output(graphc.log(x) * 2.0 + 1.0)  # log-line
    exe = graphc.compile(y, backend=backend, check_finite=True)
    np.testing.assert_allclose(exe(np.array([1, 2, 3, 4], np.float32)), 2 * np.log([1, 2, 3, 4]) + 1, rtol=1e-6)
    with pytest.raises(NonFiniteError) as info:
        exe(np.array([1, 2, 0, 4], np.float32))
    text = str(info.value)
    assert re.search(r"log_ratio: output 0 \(%\d+ .+ at .*\) is not finite: first at index \[2\]: -inf", text), text
    assert re.search(r"%1:f32\[4\] = log %0 ", text), text
    assert "op log gave -inf at index [2] from finite inputs %0 (x=0.0)" in text
    assert f"user's line: {line_of('log-line')}" in text
    assert "rule:" not in text  # a forward node: no rule made it
    assert "parameters are left" not in text  # there are none


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_finite_refuses_non_finite_inputs_on_every_backend(backend):
    with graphc.Graph("doubler") as g:
        x = graphc.input("x", (3,))
        y = g.output(x * 2.0)
    exe = graphc.compile(y, backend=backend, check_finite=True)
    with pytest.raises(InputError, match=re.escape("input 'x': contains NaN or Inf, first at index [1]: inf "
                                                   "(compiled with check_finite=True)")):
        exe(np.array([1.0, np.inf, 0.0], np.float32))


def test_a_nan_that_where_masks_is_not_the_origin():
    with graphc.Graph("masked") as g:
        x = graphc.input("x", (3,), "float64")
        z = graphc.input("z", (3,), "float64")
        safe = graphc.where(x > 0.0, graphc.log(x), 0.0)  # log(0) = -inf comes first, but where drops it
        g.output(safe + graphc.sqrt(z))  # sqrt-line
    x = np.array([0.0, 2.0, 3.0])
    origin = replay(g, {"x": x, "z": np.array([1.0, -1.0, 4.0])}, {})
    assert origin.node.op == "sqrt" and origin.index == (1,) and np.isnan(origin.value)
    assert origin.node.loc.line == int(line_of("sqrt-line").rsplit(":", 1)[1])
    assert replay(g, {"x": x, "z": np.array([1.0, 1.0, 4.0])}, {}) is None  # only the masked -inf: nothing reaches the output


# -- fit ----------------------------------------------------------------------------------------------------------

pow_abs = graphc.elementwise("nan_origin_pow_abs", lambda z: sp.Abs(z) ** z)  # d/dz = (log|z| + 1)|z|**z


class Gate(Module):
    """y = pow_abs(x * w), w trainable: at an input x = 0 the derivative is log(0) = -inf, and dL/dw = NaN."""

    kind = "gate"

    def _build(self, in_shape, rng, dtype):
        self.add_param("w", np.ones(in_shape), dtype)
        return in_shape

    def forward(self, x, ctx):
        return pow_abs(x * self.param(ctx, "w"))


N, BATCH, SEED, ZERO_ROW = 40, 8, 5, 17


def gate_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype(np.float32)
    x[ZERO_ROW, 1] = 0.0
    return x, (x[:, 0] > 0).astype(np.int64)


def failing_step(row: int) -> int:
    """The 1-based step of epoch 1 whose minibatch holds ``row`` (fit shuffles with default_rng(seed))."""
    position = int(np.flatnonzero(np.random.default_rng(SEED).permutation(N) == row)[0])
    return position // BATCH + 1


@pytest.fixture(scope="module", params=BACKENDS)
def gate_failure(request):
    model = Sequential([Gate(), Dense(2)], input_shape=(3,), seed=1)  # gate-line
    initial = {k: v.copy() for k, v in model.named_values().items()}
    with pytest.raises(NonFiniteError) as info:
        graphc.fit(model, gate_data(), epochs=3, batch_size=BATCH, optimizer=graphc.optim.SGD(0.1),
                   backend=request.param, seed=SEED, verbose=False)
    return request.param, model, initial, info.value


def test_fit_names_the_vjp_node_whose_log_receives_zero(gate_failure):
    _, _, _, err = gate_failure
    text = str(err)
    step = failing_step(ZERO_ROW)
    assert step > 1  # the state must be restored to the middle of the epoch, not to its start
    assert err.epoch == 1 and err.step == step
    assert text.startswith(f"fit: epoch 1, step {step} of {N // BATCH} (minibatch rows [")
    assert "parameter 'gate_1.w' became non-finite" in text
    assert re.search(r"%\d+:f32\[8,3\] = dnan_origin_pow_abs_dx %\d+ ", text), text
    assert "op dnan_origin_pow_abs_dx gave -inf at index [" in text and "(x=0.0)" in text
    assert "the non-finite part: log(Abs(x)) = -inf" in text
    assert re.search(r"rule: nan_origin_pow_abs-vjp, the VJP \(vector-Jacobian product\) of forward node "
                     r"%\d+ nan_origin_pow_abs, in the gradient of 'gate_1.w'", text), text
    assert f"user's line: {line_of('gate-line')}" in text
    assert f"The model's parameters are left at their values before epoch 1, step {step}." in text


def test_fit_leaves_the_state_before_the_failing_step(gate_failure):
    backend, model, initial, _ = gate_failure
    values = model.named_values()
    assert all(np.isfinite(v).all() for v in values.values())
    assert any(not np.array_equal(values[k], initial[k]) for k in initial)  # the steps before it did train
    # the oracle: a reference run of the steps before the failing one, from the same initial values
    reference = Sequential([Gate(), Dense(2)], input_shape=(3,), seed=1)
    x, y = gate_data()
    perm = np.random.default_rng(SEED).permutation(N)
    trainer = graphc.train.Trainer(reference, graphc.optim.SGD(0.1), backend="reference")
    exe = trainer.step_executable(BATCH)
    for s in range(failing_step(ZERO_ROW) - 1):
        idx = perm[s * BATCH:(s + 1) * BATCH]
        exe(x[idx], y[idx], np.float32(0.1))
    for k, v in exe.params.items():
        np.testing.assert_allclose(values[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{backend} {k}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_fit_names_a_nan_row_of_the_training_data(backend, activation):
    # relu: the case (relu(NaN) was 0 in generated code: the loss stayed finite while every
    # first-layer weight became NaN); NaN now propagates through relu, so the loss shows it
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    x[23, 2] = np.nan
    model = Sequential([Dense(4, activation), Dense(2)], input_shape=(3,), seed=1)
    with pytest.raises(NonFiniteError) as info:
        graphc.fit(model, (x, y), epochs=2, batch_size=BATCH, optimizer=graphc.optim.SGD(0.1), backend=backend,
                   seed=SEED, verbose=False)
    text = str(info.value)
    step = failing_step(23)
    position = int(np.flatnonzero(np.random.default_rng(SEED).permutation(N) == 23)[0]) % BATCH
    assert text.startswith(f"fit: epoch 1, step {step} of {N // BATCH}")
    assert re.search(r"%0:f32\[8,3\] = input +# \S+ x", text), text
    assert f"input 'x' itself holds nan at index [{position}, 2]" in text
    assert f"Row {position} of this minibatch is row 23 of the training data: x[23] is not finite." in text
    assert all(np.isfinite(v).all() for v in model.named_values().values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_on_a_normal_model_raises_nothing(backend):
    """Regression guard (passes on main too): the check never fires on finite training."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N + 3, 3)).astype(np.float32)  # a partial last batch too
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = Sequential([Dense(8, "relu"), Dense(2)], input_shape=(3,), seed=1)
    history = graphc.fit(model, (x, y), epochs=4, batch_size=BATCH, optimizer=graphc.optim.Adam(0.05),
                         backend=backend, seed=SEED, verbose=False)
    assert np.all(np.isfinite(history["loss"])) and history["acc"][-1] > 0.8


def test_run_epoch_with_check_finite_names_the_step_and_the_origin():
    with graphc.Graph("power_epoch") as g:
        x = graphc.input("x", (2, 3), "float64")
        lr = graphc.input("lr", (), "float64")
        w = graphc.param("w", np.array([2.0, 3.0, 0.5]))
        loss = g.output(graphc.sum(x ** w))  # epoch-power-line
        g.update(w, w - lr * graphc.grad(loss, w))
    exe = graphc.compile(loss, inputs=[x, lr], backend="cpu", check_finite=True)
    data = np.full((6, 3), 1.5)
    data[4, 2] = 0.0  # d/dw[2] = 0**0.5 * log(0): NaN in the step holding row 4
    perm = np.array([1, 5, 0, 3, 4, 2])  # row 4 is in the third minibatch of 2 rows
    w0 = exe.params["w"].copy()
    lr = 0.01
    with pytest.raises(NonFiniteError) as info:
        exe.run_epoch(data, lr, perm=perm)
    text = str(info.value)
    assert text.startswith("run_epoch: step 3 of 3 (rows [4, 2]): power_epoch: parameter 'w' is not finite"), text
    assert "op dpow_dy gave nan at index [0, 2] from finite inputs %0, %2 (x=0.0, y=" in text
    assert f"user's line: {line_of('epoch-power-line')}" in text
    assert info.value.step == 3 and info.value.node.op == "dpow_dy"
    # left before step 3: two closed-form SGD steps on rows of 1.5 (d/dw sum(x**w) = sum over rows of x**w log x)
    w = w0
    for _ in range(2):
        w = w - lr * 2 * 1.5 ** w * np.log(1.5)
    np.testing.assert_allclose(exe.params["w"], w, rtol=1e-12)


@pytest.mark.parametrize("last_batch", ["partial", "wrap"])
def test_fit_finds_a_nan_in_the_last_batch(last_batch):
    """43 rows in batches of 8: the sixth step holds the last 3 rows of the permutation ("partial": a smaller
    step, which the cpu backend runs on the reference backend; "wrap": filled from the permutation's start)."""
    n = N + 3
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    row = int(np.random.default_rng(SEED).permutation(n)[-1])
    x[row, 0] = np.inf
    model = Sequential([Dense(4, "tanh"), Dense(2)], input_shape=(3,), seed=1)
    with pytest.raises(NonFiniteError) as info:
        graphc.fit(model, (x, y), epochs=2, batch_size=BATCH, optimizer=graphc.optim.SGD(0.1), backend="cpu",
                   seed=SEED, verbose=False, last_batch=last_batch)
    text = str(info.value)
    assert text.startswith("fit: epoch 1, step 6 of 6"), text
    assert "input 'x' itself holds inf at index [2, 0]" in text
    assert f"is row {row} of the training data: x[{row}] is not finite." in text

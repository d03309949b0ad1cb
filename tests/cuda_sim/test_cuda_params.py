"""exe.params of a cuda executable behaves like the cpu's: values read after steps are the device's, and
values written (assigned, or written into the returned arrays, as Executable.set_params and fit's evaluation
do) are what the next step uses. Oracle: the cpu backend on the same graph."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.nn import Dense, Sequential


def step_graph():
    r = np.random.default_rng(0)
    with graphc.Graph("params_step") as g:
        x = graphc.input("x", (4, 3), "float64")
        W = graphc.param("W", r.standard_normal((3, 2)))
        loss = g.output(graphc.sum(graphc.tanh(x @ W)))
        (dW,) = graphc.grad(loss, [W])
        g.update(W, W - 0.1 * dW)
    return loss, [x]


@pytest.fixture(scope="module")
def pair(graphc_cache_dir):
    loss, inputs = step_graph()
    return [graphc.compile(loss, inputs=inputs, backend=b, cache_dir=graphc_cache_dir) for b in ("cpu", "cuda")]


def test_reads_after_steps_and_writes_into_returned_arrays_reach_the_device(pair):
    cpu, gpu = pair
    x = np.random.default_rng(1).standard_normal((4, 3))
    for exe in pair:
        exe(x)
    np.testing.assert_allclose(gpu.params["W"], cpu.params["W"], rtol=1e-12)
    for exe in pair:  # written in place, as Executable.set_params and finite.restore do
        exe.params["W"][...] = np.arange(6.0).reshape(3, 2) / 10
    np.testing.assert_allclose(gpu(x), cpu(x), rtol=1e-12)
    for exe in pair:
        exe.params["W"] = np.ones((3, 2))
    np.testing.assert_allclose(gpu(x), cpu(x), rtol=1e-12)
    np.testing.assert_allclose(gpu.params["W"], cpu.params["W"], rtol=1e-12)


def test_fit_validation_and_evaluate_on_the_device_equal_the_cpu():
    r = np.random.default_rng(2)
    x = r.standard_normal((24, 5)).astype(np.float32)
    y = r.integers(0, 3, 24)
    results = {}
    for backend in ("cpu", "cuda"):
        model = Sequential([Dense(4, "relu"), Dense(3)], input_shape=(5,), seed=0)
        history = graphc.fit(model, (x, y), epochs=2, batch_size=8, optimizer=optim.SGD(0.5), backend=backend,
                             validation_data=(x[:16], y[:16]), verbose=False)
        results[backend] = history["val_loss"] + list(graphc.train.evaluate(model, (x, y), batch_size=24,
                                                                             backend=backend))
    # fit's validation executable gets the trained weights with set_params (written into exe.params' arrays):
    # a device copy that missed them gave the untrained loss every epoch.
    np.testing.assert_allclose(results["cuda"], results["cpu"], rtol=1e-5)

"""Training on backend="cuda" in Numba's CUDA simulator, against the cpu backend: SGD and Adam steps
(with dropout: the keyed draws), a native epoch (run_epoch, the last batch wrapped), graphc.fit; a
label out of range (the same InputError, and the executable still works); the parameter store
(reading after steps, assigning before one, set_params); check_finite's NonFiniteError.

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda_sim

The cpu backend is the oracle (tested against the reference backend in tests/test_numba_cpu.py); the
models are float64, so the two agree to rounding.
"""
from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the shared tolerances
from test_numba_cpu import TOL, rng  # noqa: E402

import graphc  # noqa: E402
from graphc import InputError, NonFiniteError  # noqa: E402
from graphc.nn import Dense, Dropout, Sequential  # noqa: E402
from graphc.train import build_train_step  # noqa: E402

BATCH = 4
OPTIMIZERS = {"sgd": lambda: graphc.optim.SGD(0.1), "adam": lambda: graphc.optim.Adam(0.05)}


def line_of(marker: str) -> str:
    """``test_backend_training.py:<line>`` of the line ending with ``# <marker>``."""
    lines = inspect.getsource(sys.modules[__name__]).splitlines()
    hits = [k + 1 for k, text in enumerate(lines) if text.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, marker
    return f"{Path(__file__).name}:{hits[0]}"


def model(seed: int = 0) -> Sequential:
    """dense-relu, dropout (the step takes a key), dense: 4 features, 3 classes, float64."""
    return Sequential([Dense(6, "relu"), Dropout(0.3), Dense(3)], input_shape=(4,), dtype=np.float64, seed=seed)


def batch(r: np.random.Generator, rows: int = BATCH):
    return r.standard_normal((rows, 4)), r.integers(0, 3, rows)


@pytest.fixture(scope="module", params=list(OPTIMIZERS))
def step(request, graphc_cache_dir):
    """One training step (inputs x, y, lr, key; outputs the loss and the number right) compiled for the
    device and for the cpu, and the initial parameters and optimizer state."""
    graph = build_train_step(model(), BATCH, OPTIMIZERS[request.param](), name=f"step_{request.param}")  # step-line
    outs = [graphc.Tensor(o, graph) for o in graph.outputs]
    exe = graphc.compile(outs, backend="cuda", cache_dir=graphc_cache_dir)
    cpu = graphc.compile(outs, backend="cpu", cache_dir=graphc_cache_dir)
    assert exe.input_names == cpu.input_names == ["x", "y", "lr", "key"]
    start = {k: v.copy() for k, v in cpu.params.items()}
    return exe, cpu, start


def restart(exe, cpu, start) -> None:
    """Both executables back at the initial state (the fixture is shared by the tests)."""
    for e in (exe, cpu):
        e.set_params(start)


def assert_params_equal(exe, cpu) -> None:
    assert exe.params.keys() == cpu.params.keys()
    for k in cpu.params:
        np.testing.assert_allclose(exe.params[k], cpu.params[k], **TOL["float64"], err_msg=k)


# -- 3. steps, an epoch, fit ----------------------------------------------------------------------------------------

def test_two_steps_equal_the_cpu_backends(step):
    exe, cpu, start = step
    restart(exe, cpu, start)
    r = rng(20)
    for s in range(2):
        x, y = batch(r)
        feeds = (x, y, np.float64(0.1 / (1 + s)), np.int64(100 + s))
        got, want = exe(*feeds), cpu(*feeds)
        np.testing.assert_allclose(got[0], want[0], **TOL["float64"])  # the loss
        assert got[1] == want[1]  # the number of right predictions
        assert_params_equal(exe, cpu)
    assert not np.allclose(exe.params["dense_1.W"], start["dense_1.W"])  # the steps did train
    if exe.graph.name == "step_sgd":
        # Each weight's update rides in its gradient GEMM on the device: W <- 1 * W + alpha * x^T @ g, with
        # alpha = -lr computed in the kernel from the lr input.
        assert len(re.findall(r"gemm_tile\(1, 0, \d+, \d+, 4, f64\(alpha\d+\), .*, f64\(1\.0\), sf64, P\d+, \d+\)",
                              exe.source)) == 2, exe.source


def test_native_epoch_equals_the_cpu_backends(step):
    exe, cpu, start = step
    restart(exe, cpu, start)
    r = rng(21)
    X, Y = batch(r, 11)  # 3 minibatches of 4; the last one wraps to the start of the permutation
    rates, keys = np.array([0.1, 0.05, 0.02]), np.array([7, 8, 9], np.int64)
    got = exe.run_epoch(X, Y, rates, keys, seed=3, last_batch="wrap")
    want = cpu.run_epoch(X, Y, rates, keys, seed=3, last_batch="wrap")
    assert got[0].shape == (3,)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL["float64"])
    assert_params_equal(exe, cpu)
    # ...and a second epoch goes on from the device's state.
    got, want = (e.run_epoch(X, Y, 0.03, keys[:2], seed=4, last_batch="drop") for e in (exe, cpu))
    np.testing.assert_allclose(got[0], want[0], **TOL["float64"])
    assert_params_equal(exe, cpu)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_fit_on_cuda_equals_fit_on_cpu(optimizer, graphc_cache_dir, monkeypatch):
    # 10 rows in batches of 4: the third batch of each epoch is partial (fit runs it on the reference
    # backend, on the device executable's state), and the second epoch starts from what it left.
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    X, Y = batch(rng(22), 10)
    histories, models = [], []
    for backend in ("cuda", "cpu"):
        m = model(seed=5)
        histories.append(graphc.fit(m, (X, Y), epochs=2, batch_size=BATCH, optimizer=OPTIMIZERS[optimizer](),
                                    backend=backend, seed=6, verbose=False, last_batch="partial"))
        models.append(m)
    (cuda, cpu), (m_cuda, m_cpu) = histories, models
    np.testing.assert_allclose(cuda["loss"], cpu["loss"], **TOL["float64"])
    np.testing.assert_allclose(cuda["acc"], cpu["acc"], **TOL["float64"])
    assert m_cuda.named_values().keys() == m_cpu.named_values().keys()
    for k, v in m_cpu.named_values().items():
        np.testing.assert_allclose(m_cuda.named_values()[k], v, **TOL["float64"], err_msg=k)


# -- 5. a label out of range --------------------------------------------------------------------------------------

def test_label_out_of_range_raises_the_cpu_backends_error_and_the_step_still_works(step):
    exe, cpu, start = step
    restart(exe, cpu, start)
    x, y = batch(rng(23))
    bad = y.copy()
    bad[2] = 7
    errors = []
    for e in (exe, cpu):
        with pytest.raises(InputError) as info:
            e(x, bad, np.float64(0.1), np.int64(1))
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert errors[0].startswith("input 'y': label 7 at index 2 is out of range [0, 3) for softmax_cross_entropy (%")
    assert errors[0].endswith(f"{line_of('step-line')}); 1 of 4 labels are out of range"), errors[0]
    # Nothing was updated, and the next step runs (the device's status was reset).
    for k in start:
        np.testing.assert_array_equal(exe.params[k], start[k], err_msg=k)
    got, want = exe(x, y, np.float64(0.1), np.int64(1)), cpu(x, y, np.float64(0.1), np.int64(1))
    np.testing.assert_allclose(got[0], want[0], **TOL["float64"])
    assert_params_equal(exe, cpu)


def test_label_out_of_range_in_an_epoch_raises_the_cpu_backends_error(step):
    exe, cpu, start = step
    restart(exe, cpu, start)
    X, Y = batch(rng(24), 9)
    bad = Y.copy()
    bad[5] = -1
    errors = []
    for e in (exe, cpu):
        with pytest.raises(InputError) as info:
            e.run_epoch(X, bad, 0.1, 3, seed=1)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert "input 'y': label -1 at row 5 is out of range [0, 3) for softmax_cross_entropy" in errors[0]
    assert errors[0].endswith(f"{line_of('step-line')}); 1 of 9 labels are out of range"), errors[0]
    got, want = (e.run_epoch(X, Y, 0.1, 3, seed=1) for e in (exe, cpu))
    np.testing.assert_allclose(got[0], want[0], **TOL["float64"])
    assert_params_equal(exe, cpu)


# -- 6. the parameter store ------------------------------------------------------------------------------------------

def test_assigned_parameters_are_used_by_the_next_step(step):
    exe, cpu, start = step
    restart(exe, cpu, start)
    r = rng(25)
    x, y = batch(r)
    exe(x, y, np.float64(0.1), np.int64(2))
    cpu(x, y, np.float64(0.1), np.int64(2))
    value = r.standard_normal((4, 6))
    for e in (exe, cpu):
        e.params["dense_1.W"] = value
    np.testing.assert_array_equal(exe.params["dense_1.W"], value)
    x, y = batch(r)
    got, want = exe(x, y, np.float64(0.1), np.int64(3)), cpu(x, y, np.float64(0.1), np.int64(3))
    np.testing.assert_allclose(got[0], want[0], **TOL["float64"])
    assert_params_equal(exe, cpu)


def test_set_params_and_in_place_writes_are_used_by_the_next_step(step):
    # set_params (and fit's trainer, and check_finite's restore) write into the arrays exe.params hands
    # out: the device must see those writes too.
    exe, cpu, start = step
    restart(exe, cpu, start)
    r = rng(26)
    x, y = batch(r)
    exe(x, y, np.float64(0.1), np.int64(4))
    new = {k: v * 0.5 + 0.01 for k, v in start.items()}
    exe.set_params(new)
    cpu.set_params(new)
    exe.params["dense_2.b"][...] = 0.25
    cpu.params["dense_2.b"][...] = 0.25
    got, want = exe(x, y, np.float64(0.1), np.int64(5)), cpu(x, y, np.float64(0.1), np.int64(5))
    np.testing.assert_allclose(got[0], want[0], **TOL["float64"])
    assert_params_equal(exe, cpu)


def ratio_step():
    """loss = sum(w / x) with an SGD update of w: at x = 0 the quotient is inf (the simulator runs the
    kernels as Python, where math.log(0) raises instead of giving -inf: the NaN of tests/test_nan_origin.py's
    x ** w cannot be made there; a float64 division by zero gives inf, as on the device)."""
    with graphc.Graph("ratio_step") as g:
        x = graphc.input("x", (3,), "float64")
        w = graphc.param("w", np.array([2.0, 3.0, 0.5]))
        loss = g.output(graphc.sum(w / x))  # ratio-line
        g.update(w, w - 0.1 * graphc.grad(loss, w))
    return loss


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the simulator's NumPy scalars
def test_check_finite_names_the_node_as_the_cpu_backend_does(graphc_cache_dir):
    loss = ratio_step()
    exe = graphc.compile(loss, backend="cuda", check_finite=True, cache_dir=graphc_cache_dir)
    cpu = graphc.compile(loss, backend="cpu", check_finite=True, cache_dir=graphc_cache_dir)
    ok = np.array([1.0, 2.0, 3.0])
    assert exe(ok) == pytest.approx(cpu(ok), rel=1e-12)
    before = exe.params["w"].copy()
    errors = []
    for e in (exe, cpu):
        with pytest.raises(NonFiniteError) as info:
            e(np.array([2.0, 0.0, 1.0]))  # x[1] = 0: w[1] / 0 = inf
        errors.append(info.value)
    assert str(errors[0]) == str(errors[1])
    text = str(errors[0])
    assert text.startswith("ratio_step: output 0 (%3 sum at ") and "is not finite: first at index []: inf" in text
    assert "op div gave inf at index [1] from finite inputs" in text and "user's line: " in text
    assert text.count(line_of("ratio-line")) >= 2, text
    assert errors[0].node.op == "div" and errors[0].index == (1,) and errors[0].value == np.inf
    # The parameters are back at their values before the call, on the device too: the next call uses them.
    np.testing.assert_array_equal(exe.params["w"], before)
    assert exe(ok) == pytest.approx(cpu(ok), rel=1e-12)
    np.testing.assert_allclose(exe.params["w"], cpu.params["w"], **TOL["float64"])


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_check_finite_finds_the_failing_step_of_an_epoch_as_the_cpu_backend_does(graphc_cache_dir):
    with graphc.Graph("ratio_epoch") as g:
        x = graphc.input("x", (2, 3), "float64")
        w = graphc.param("w", np.array([2.0, 3.0, 0.5]))
        loss = g.output(graphc.sum(w / x))  # epoch-ratio-line
        g.update(w, w - 0.01 * graphc.grad(loss, w))
    exe = graphc.compile(loss, backend="cuda", check_finite=True, cache_dir=graphc_cache_dir)
    cpu = graphc.compile(loss, backend="cpu", check_finite=True, cache_dir=graphc_cache_dir)
    X = rng(27).uniform(1, 2, (6, 3))
    X[4, 2] = 0.0  # row 4: its step divides by zero
    perm = np.array([1, 0, 3, 2, 4, 5])  # rows 4 and 5 are the third step
    errors = []
    for e in (exe, cpu):
        with pytest.raises(NonFiniteError) as info:
            e.run_epoch(X, perm=perm)
        errors.append(info.value)
    assert str(errors[0]) == str(errors[1])
    assert str(errors[0]).startswith("run_epoch: step 3 of 3 (rows ") and errors[0].step == 3
    assert errors[0].node.op == "div" and line_of("epoch-ratio-line") in str(errors[0])
    # The parameters are left at their values before the failing step, and the device runs on from them.
    np.testing.assert_allclose(exe.params["w"], cpu.params["w"], **TOL["float64"])
    good = np.delete(X, 4, axis=0)[:4]
    np.testing.assert_allclose(exe.run_epoch(good, seed=2), cpu.run_epoch(good, seed=2), **TOL["float64"])
    np.testing.assert_allclose(exe.params["w"], cpu.params["w"], **TOL["float64"])

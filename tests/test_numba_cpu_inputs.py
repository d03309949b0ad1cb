"""Bad inputs to a numba_cpu executable: every check happens before native code computes anything,
and every error names the input and the expected and actual values. Nothing here may crash the process.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc
from graphc import InputError

BATCH, FEATURES, CLASSES = 6, 4, 3


def build_step():
    r = np.random.default_rng(0)
    with graphc.Graph("checked_step") as g:
        x = graphc.input("x", (BATCH, FEATURES))
        y = graphc.input("y", (BATCH,), "int64")
        lr = graphc.input("lr", ())
        W = graphc.param("W", r.standard_normal((FEATURES, CLASSES)).astype(np.float32))
        b = graphc.param("b", np.zeros(CLASSES, np.float32))
        loss = g.output(graphc.softmax_cross_entropy(graphc.dense(x, W, b), y))
        for p, d in zip([W, b], graphc.grad(loss, [W, b])):
            g.update(p, p - lr * d)
    return loss, [x, y, lr]


@pytest.fixture(scope="module")
def step(graphc_cache_dir):
    loss, inputs = build_step()
    return graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir=graphc_cache_dir)


@pytest.fixture(scope="module")
def strict_step(graphc_cache_dir):
    loss, inputs = build_step()
    return graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir=graphc_cache_dir, strict=True,
                          check_finite=True)


def good_batch(seed=0):
    r = np.random.default_rng(seed)
    return (r.standard_normal((BATCH, FEATURES)).astype(np.float32), r.integers(0, CLASSES, BATCH),
            np.float32(0.1))


def reference_loss(x, y, W, b):
    z = x.astype(np.float64) @ W + b
    z = z - z.max(1, keepdims=True)
    return -np.mean(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))


def params_of(exe):
    return {k: v.copy() for k, v in exe.params.items()}


def assert_unchanged(exe, before):
    for k, v in before.items():
        np.testing.assert_array_equal(exe.params[k], v, err_msg=f"parameter {k} changed by a rejected call")


# -- shapes, dtypes, contiguity ------------------------------------------------------------------------------

def test_wrong_shape_names_input_expected_and_actual(step):
    x, y, lr = good_batch()
    with pytest.raises(InputError, match=re.escape("input 'x': expected shape [6, 4] (f32[6,4]), got [6, 5]")):
        step(np.zeros((6, 5), np.float32), y, lr)
    with pytest.raises(InputError, match=re.escape("input 'y': expected shape [6] (i64[6]), got [5]")):
        step(x, y[:5], lr)
    with pytest.raises(InputError, match=re.escape("input 'lr': expected shape [] (f32[]), got [1]")):
        step(x, y, np.ones(1, np.float32))


def test_wrong_dtype_names_input_expected_and_actual(step, strict_step):
    x, y, lr = good_batch()
    with pytest.raises(InputError, match=re.escape("input 'y': expected dtype int64, got float64")):
        step(x, y.astype(np.float64), lr)  # float labels would change meaning: never converted
    # A float64 feature array converts safely by default; strict=True refuses any conversion.
    before = params_of(step)
    loss = step(x.astype(np.float64), y, lr)
    np.testing.assert_allclose(loss, reference_loss(x, y, before["W"], before["b"]), rtol=1e-5)
    with pytest.raises(InputError, match=re.escape("input 'x': expected dtype float32, got float64 (strict=True")):
        strict_step(x.astype(np.float64), y, lr)
    with pytest.raises(InputError, match=re.escape("input 'y': expected dtype int64, got int32 (strict=True")):
        strict_step(x, y.astype(np.int32), lr)


def test_non_contiguous_inputs_are_copied_or_refused_in_strict_mode(step, strict_step):
    x, y, lr = good_batch(1)
    wide = np.zeros((BATCH, 2 * FEATURES), np.float32)
    wide[:, ::2] = x
    view = wide[:, ::2]
    assert not view.flags.c_contiguous
    before = params_of(step)
    np.testing.assert_allclose(step(view, y, lr), reference_loss(x, y, before["W"], before["b"]), rtol=1e-5)
    with pytest.raises(InputError, match=r"input 'x': expected a C-contiguous array, got strides \(32, 8\) "
                                         r"for shape \[6, 4\] \(strict=True"):
        strict_step(view, y, lr)


def test_run_refuses_unbound_arrays_instead_of_reading_out_of_bounds(step):
    x, y, lr = good_batch()
    with pytest.raises(InputError, match=re.escape("input 'x': run() needs a C-contiguous, aligned, writable "
                                                   "float32 array of shape [6, 4]; got float32 array of shape [2, 4]")):
        step.run([x[:2], y, np.asarray(lr)])
    with pytest.raises(InputError, match=re.escape("got non-contiguous float32 array of shape [6, 4]")):
        step.run([np.asfortranarray(x), y, np.asarray(lr)])
    with pytest.raises(InputError, match=re.escape("run() expected 3 arrays, got 2")):
        step.run([x, y])


def test_missing_and_unknown_inputs(step):
    x, y, lr = good_batch()
    with pytest.raises(InputError, match=re.escape("missing input(s) ['lr']")):
        step(x, y)
    with pytest.raises(InputError, match=re.escape("unknown input 'z'")):
        step(x, y, lr, z=1.0)


# -- labels -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [CLASSES, -1, 10 ** 12])
def test_out_of_range_label_is_an_error_not_an_out_of_bounds_read(step, bad):
    x, y, lr = good_batch()
    y = y.copy()
    y[4] = bad
    before = params_of(step)
    pattern = (rf"input 'y': label {bad} at index 4 is out of range \[0, 3\) for softmax_cross_entropy "
               rf"\(%\d+ at test_numba_cpu_inputs.py:\d+\); 1 of 6 labels are out of range")
    with pytest.raises(InputError, match=pattern):
        step(x, y, lr)
    assert_unchanged(step, before)  # checked before anything ran: no partial update
    step(*good_batch())  # and the executable still works


def test_computed_labels_are_checked_inside_the_kernel(graphc_cache_dir):
    # Labels computed in the graph (not an input) are range-checked by the kernel that reads them.
    with graphc.Graph("computed_labels") as g:
        z = graphc.input("z", (5,))
        labels = graphc.cast(z, "int64")
        out = g.output(graphc.one_hot(labels, 4) * 2.0)
    exe = graphc.compile(out, backend="cpu", cache_dir=graphc_cache_dir)
    np.testing.assert_array_equal(exe(np.array([0, 1, 2, 3, 1.5], np.float32)), 2 * np.eye(4)[[0, 1, 2, 3, 1]])
    with pytest.raises(InputError, match=r"the labels of %\d+: label 7 at index 2 is out of range \[0, 4\) for "
                                         r"one_hot \(%\d+ at test_numba_cpu_inputs.py:\d+\)"):
        exe(np.array([0, 1, 7.2, 3, 1], np.float32))


# -- NaN / Inf ------------------------------------------------------------------------------------------------------

def test_check_finite_rejects_nan_and_inf_inputs_and_parameters(strict_step):
    x, y, lr = good_batch()
    x = x.copy()
    x[2, 1] = np.nan
    with pytest.raises(InputError, match=re.escape("input 'x': contains NaN or Inf, first at index [2, 1]: nan "
                                                   "(compiled with check_finite=True)")):
        strict_step(x, y, lr)
    with pytest.raises(InputError, match=re.escape("input 'lr': contains NaN or Inf, first at index []: inf")):
        strict_step(good_batch()[0], y, np.float32(np.inf))
    saved = strict_step.params["b"].copy()
    strict_step.params["b"][1] = -np.inf
    try:
        with pytest.raises(InputError, match=re.escape("parameter 'b': contains NaN or Inf, first at index [1]: -inf")):
            strict_step(*good_batch())
    finally:
        strict_step.params["b"] = saved


def test_check_finite_reports_a_non_finite_output(graphc_cache_dir):
    with graphc.Graph("log_of_input") as g:
        x = graphc.input("x", (3,))
        out = g.output(graphc.log(x))
    exe = graphc.compile(out, backend="cpu", cache_dir=graphc_cache_dir, check_finite=True)
    np.testing.assert_allclose(exe(np.array([1, 2, 3], np.float32)), np.log([1, 2, 3]), rtol=1e-6)
    # The optimized graph computes log in a fused node; the message says which ops it stands for
    # (and, replayed on the graph as built, that the log node made it: tests/test_nan_origin.py).
    with pytest.raises(graphc.NonFiniteError, match=r"output 0 \(%\d+ fused\[log\] at .*test_numba_cpu_inputs.py:\d+\) is not finite: "
                                         r"first at index \[1\]: -inf"):
        exe(np.array([1, 0, 3], np.float32))


# -- parameters ------------------------------------------------------------------------------------------------------

def test_parameter_assignment_is_checked_and_copies_into_the_store(step):
    view = step.params["W"]
    with pytest.raises(InputError, match=re.escape("param 'W': expected shape [4, 3] (f32[4,3]), got [3, 4]")):
        step.params["W"] = np.zeros((3, 4))
    with pytest.raises(InputError, match=re.escape("no parameter 'V'; parameters are ['W', 'b']")):
        step.params["V"] = np.zeros((4, 3))
    with pytest.raises(InputError, match=re.escape("no parameter 'V'")):
        step.set_params({"V": 0})
    step.params["W"] = np.full((4, 3), 0.5)  # converted and copied into the memory native code reads
    assert step.params["W"] is view and np.all(view == 0.5)
    x, y, lr = good_batch()
    b = step.params["b"].copy()  # before the call updates it
    np.testing.assert_allclose(step(x, y, lr), reference_loss(x, y, np.full((4, 3), 0.5), b), rtol=1e-5)


# -- run_epoch ----------------------------------------------------------------------------------------------------------

def test_run_epoch_checks_its_data(step):
    r = np.random.default_rng(2)
    X, Y = r.standard_normal((20, FEATURES)).astype(np.float32), r.integers(0, CLASSES, 20)
    LR = np.float32(0.1)  # not batched: one learning rate for the epoch
    with pytest.raises(InputError, match=re.escape("run_epoch expected 3 data arrays ['x', 'y', 'lr'], got 2")):
        step.run_epoch(X, Y)
    with pytest.raises(InputError, match=re.escape("data for input 'x': expected shape [N, 4] (rows of f32[6,4]), "
                                                   "got [20, 5]")):
        step.run_epoch(np.zeros((20, 5), np.float32), Y, LR)
    with pytest.raises(InputError, match=re.escape("data for input 'y' has 19 rows, the first input has 20")):
        step.run_epoch(X, Y[:19], LR)
    bad = Y.copy()
    bad[[3, 11]] = [5, -2]
    before = params_of(step)
    with pytest.raises(InputError, match=re.escape("input 'y': label 5 at row 3 is out of range [0, 3) for "
                                                   "softmax_cross_entropy") + r".*2 of 20 labels are out of range"):
        step.run_epoch(X, bad, LR)
    assert_unchanged(step, before)
    with pytest.raises(InputError, match=re.escape("perm must be 20 row indices in [0, 20), got shape [20] with "
                                                   "values in [0, 20]")):
        step.run_epoch(X, Y, LR, perm=np.r_[np.arange(19), 20])
    with pytest.raises(InputError, match=re.escape("last_batch must be 'wrap' or 'drop', got 'pad'")):
        step.run_epoch(X, Y, LR, last_batch="pad")
    with pytest.raises(InputError, match=re.escape("batch_size 8 differs from the batch size 6")):
        step.run_epoch(X, Y, LR, batch_size=8)
    losses = step.run_epoch(X, Y, LR, seed=1)
    assert losses.shape == (4,) and np.all(np.isfinite(losses))  # ceil(20 / 6) steps

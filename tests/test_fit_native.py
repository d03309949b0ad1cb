"""fit on the Numba CPU backend (a native epoch per call) against fit on the reference backend.

Same model, seed, shuffling, per-step learning rates, dropout keys and partial last batch: the
trained parameters and the history must agree (float32 tolerance).
"""
import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.nn import Dense, Dropout, Sequential
from graphc.train import schedules


def _data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 6)).astype(np.float32)  # 70 = 2 batches of 32 + a partial batch of 6
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64) + (x[:, 3] > 1.0)
    return x, y


def _fit(backend, epochs=3, last_batch="partial"):
    model = Sequential([Dense(16, "tanh"), Dropout(0.25), Dense(3)], input_shape=(6,), seed=4)
    history = graphc.fit(model, _data(), epochs=epochs, batch_size=32, optimizer=optim.Adam(0.02),
                         schedule=schedules.inverse_sqrt(0.02, warmup=2), validation_data=_data(),
                         backend=backend, seed=9, verbose=False, last_batch=last_batch)
    return model, history


@pytest.fixture(scope="module")
def both(graphc_cache_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    try:
        yield _fit("reference"), _fit("cpu")
    finally:
        mp.undo()


def test_native_fit_trains_the_same_parameters(both):
    (ref_model, _), (cpu_model, _) = both
    ref, cpu = ref_model.named_values(), cpu_model.named_values()
    assert ref.keys() == cpu.keys()
    for k in ref:
        np.testing.assert_allclose(cpu[k], ref[k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_native_fit_reports_the_same_history(both):
    (_, ref), (_, cpu) = both
    for metric in ("loss", "acc", "val_loss", "val_acc", "lr"):
        np.testing.assert_allclose(cpu[metric], ref[metric], rtol=1e-4, atol=1e-5, err_msg=metric)
    # A per-step schedule: History records the rate of each epoch's first step (3 steps an epoch).
    assert ref["lr"] == pytest.approx([0.02, 0.02 * np.sqrt(2 / 4), 0.02 * np.sqrt(2 / 7)])


def test_run_epoch_takes_one_value_per_step(graphc_cache_dir):
    with graphc.Graph("scaled") as g:
        x = graphc.input("x", (2, 3))
        lr = graphc.input("lr", ())
        g.output(graphc.sum(x) * lr)
    exe = graphc.compile(g.outputs and graphc.dsl.Tensor(g.outputs[0], g), backend="cpu", cache_dir=graphc_cache_dir)
    data = np.arange(18, dtype=np.float32).reshape(6, 3)
    perm = np.arange(6)
    per_step = exe.run_epoch(data, np.array([1.0, 10.0, 100.0], np.float32), perm=perm)
    np.testing.assert_allclose(per_step, [data[:2].sum() * 1, data[2:4].sum() * 10, data[4:].sum() * 100])
    np.testing.assert_allclose(exe.run_epoch(data, np.float32(2.0), perm=perm), 2 * data.reshape(3, 6).sum(axis=1))
    with pytest.raises(graphc.InputError, match=r"one value f32\[\] or one per step \[3\]"):
        exe.run_epoch(data, np.ones(4, np.float32), perm=perm)


@pytest.mark.parametrize("last_batch, steps", [("drop", 2), ("wrap", 3)])
def test_last_batch_dropped_or_wrapped_trains_the_same_on_both_backends(graphc_cache_dir, monkeypatch, last_batch,
                                                                        steps):
    # The reference backend loops in Python (np.resize wraps the permutation); the cpu backend runs the
    # epoch as one native call that wraps or drops by itself: two independent implementations.
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    (ref_model, ref), (cpu_model, cpu) = _fit("reference", 2, last_batch), _fit("cpu", 2, last_batch)
    assert ref_model._trainer.step_count == cpu_model._trainer.step_count == 2 * steps
    for k, v in ref_model.named_values().items():
        np.testing.assert_allclose(cpu_model.named_values()[k], v, rtol=2e-4, atol=2e-5, err_msg=k)
    np.testing.assert_allclose(cpu["loss"], ref["loss"], rtol=1e-4)
    # A per-step schedule again: the second epoch starts at step `steps`.
    assert ref["lr"][1] == pytest.approx(0.02 * np.sqrt(2 / (steps + 1)))


def test_last_batch_must_be_a_known_mode():
    model = Sequential([Dense(3)], input_shape=(6,))  # _data() has labels 0..2
    with pytest.raises(ValueError, match="last_batch must be one of"):
        graphc.fit(model, _data(), epochs=1, batch_size=32, last_batch="pad", backend="reference", verbose=False)

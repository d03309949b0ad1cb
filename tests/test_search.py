"""Random search over the learning rate and the L2 strength on one compiled step (graphc/train/search.py).

Oracle: for every trial, a separate ordinary ``fit`` of a fresh copy of the model with that learning rate
and that L2 strength as constants (its own compiled step): the search's trial must end with the same
parameters and the same validation loss, although the search compiled its step once.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.nn import Dense, Sequential
from graphc.train import loop, random_search

X = np.random.default_rng(4).normal(size=(40, 3))
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
TRAIN, VAL = (X[:30], Y[:30]), (X[30:], Y[30:])


def make_model() -> Sequential:
    return Sequential([Dense(4, "tanh"), Dense(2)], input_shape=(3,), dtype="float64", seed=7)


@pytest.fixture(scope="module", params=["reference", "cpu"])
def searched(request):
    """(result, compiles): a 3-trial search, and the step graphs compiled while it ran."""
    compiled = []
    original = loop.compile_graph

    def counting(outputs, **kwargs):
        compiled.append((outputs[0].graph.name, kwargs.get("backend")))
        return original(outputs, **kwargs)

    loop.compile_graph = counting
    try:
        result = random_search(make_model(), TRAIN, VAL, trials=3, lr=(0.05, 0.5), l2=(1e-4, 1e-1), epochs=2,
                               batch_size=8, optimizer=optim.Momentum(0.1, 0.9), backend=request.param, seed=3)
    finally:
        loop.compile_graph = original
    return request.param, result, compiled


def test_every_trial_equals_an_ordinary_fit_with_its_rates_as_constants(searched):
    backend, result, _ = searched
    assert len(result.trials) == 3
    for trial in result.trials:
        model = make_model()
        history = graphc.fit(model, TRAIN, 2, 8, optimizer=optim.Momentum(trial.lr, 0.9), l2=trial.l2,
                             validation_data=VAL, seed=3, backend=backend, verbose=False)
        for name, value in model.named_values().items():
            np.testing.assert_allclose(trial.state[name], value, rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(trial.val_loss, history["val_loss"][-1], rtol=1e-9)


def test_the_search_compiles_one_step_for_all_trials(searched):
    backend, _, compiled = searched
    # The step of the full batches once; the partial last batch (30 = 3 * 8 + 6 rows) once, on NumPy; the
    # validation's inference graph once: nothing is compiled again for the second and third trials.
    steps = [c for c in compiled if c[0].startswith("train_step")]
    assert sorted(steps) == sorted([("train_step_b8", backend), ("train_step_b6", "reference")])
    assert len(compiled) == len(set(compiled))


def test_trials_come_best_first_and_the_model_keeps_the_best(searched):
    _, result, _ = searched
    losses = [t.val_loss for t in result.trials]
    assert losses == sorted(losses) and result.best is result.trials[0]
    for name, value in result.trainer.model.named_values().items():
        np.testing.assert_array_equal(value, result.best.state[name])
    assert len({(t.lr, t.l2) for t in result.trials}) == 3
    assert all(0.05 <= t.lr <= 0.5 and 1e-4 <= t.l2 <= 1e-1 for t in result.trials)
    assert "val_loss" in result.table()


def test_a_diverging_rate_is_a_trial_with_an_infinite_loss_not_a_failure():
    result = random_search(make_model(), TRAIN, VAL, trials=2, lr=(1e200, 1e201), l2=(0.0, 0.0), epochs=1,
                           batch_size=8, backend="reference")
    assert [t.val_loss for t in result.trials] == [np.inf, np.inf]


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=(0.0, 0.1)), r"lr range \(0.0, 0.1\) must have 0 < low <= high"),
    (dict(l2=(0.1, 0.01)), r"l2 range \(0.1, 0.01\) must have 0 <= low <= high"),
    (dict(lr=0.1), r"lr must be a \(low, high\) pair"),
    (dict(trials=0), r"trials"),
])
def test_bad_ranges_are_refused_at_the_users_line(kwargs, message):
    with pytest.raises(graphc.optim.hyperparams.HyperparameterError, match=message) as err:
        random_search(make_model(), TRAIN, VAL, backend="reference", **kwargs)
    if "trials" not in kwargs:
        assert "test_search.py:" in str(err.value)

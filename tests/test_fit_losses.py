"""fit beyond classification (issue 17): mse, binary cross-entropy on probabilities and on logits, a custom
scalar loss, the metrics chosen by the user, the targets' checks and the regression example.

Each loss trains a tiny float64 network one full-batch step per epoch, on the cpu backend (a native
epoch) and on the reference backend: the parameters must agree after every step, and every epoch's loss
and metric must equal a NumPy transcription of the formula on a NumPy forward pass from the parameters
the step started from (the validation scores: from the parameters it ended with).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.ir import DTypeError, InputError, ShapeError
from graphc.nn import Dense, Sequential
from graphc.optim.hyperparams import HyperparameterError
from graphc.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
N, EPOCHS = 16, 5
HERE = r"test_fit_losses\.py:\d+"  # the user's line every error must name


def pseudo_huber(out, target):
    """A custom loss built from graphc ops: mean(sqrt(1 + d^2) - 1), d = out - target."""
    d = out - target
    return graphc.mean(graphc.sqrt(1.0 + d * d) - 1.0)


# -- NumPy oracles: the forward pass and each formula, written here -------------------------------------------------

def numpy_forward(values: dict[str, np.ndarray], x: np.ndarray, last: str | None) -> np.ndarray:
    """dense_1 (tanh) then dense_2 (``last`` activation), from the given parameter values, in float64."""
    h = np.tanh(x @ values["dense_1.W"] + values["dense_1.b"])
    out = h @ values["dense_2.W"] + values["dense_2.b"]
    return 1.0 / (1.0 + np.exp(-out)) if last == "sigmoid" else out


def numpy_loss(kind: str, out: np.ndarray, y: np.ndarray) -> float:
    if kind == "mse":
        return float(np.mean((out - y) ** 2))
    if kind == "binary_cross_entropy":
        return float(-np.mean(y * np.log(out) + (1 - y) * np.log(1 - out)))
    if kind == "binary_cross_entropy_with_logits":
        return float(np.mean(np.maximum(out, 0) - out * y + np.log1p(np.exp(-np.abs(out)))))
    d = out - y
    return float(np.mean(np.sqrt(1 + d * d) - 1))


def numpy_metric(kind: str, metric: str, out: np.ndarray, y: np.ndarray) -> float:
    if metric == "mae":
        return float(np.mean(np.abs(out - y)))
    threshold = 0.0 if kind == "binary_cross_entropy_with_logits" else 0.5
    return float(np.mean((out > threshold) == (y > 0.5)))


# -- the cases: a loss, its model's last layer, its targets and metrics -----------------------------------------------

#: kind -> (loss argument, last activation, outputs per row, metrics asked (None: default), metrics expected, lr)
CASES = {
    "mse": ("mse", None, 2, ("mae",), ("mae",), 0.3),
    "binary_cross_entropy": ("binary_cross_entropy", "sigmoid", 1, None, ("acc",), 1.0),
    "binary_cross_entropy_with_logits": ("binary_cross_entropy_with_logits", None, 1, None, ("acc",), 1.0),
    "custom": (pseudo_huber, None, 2, None, (), 0.5),
}


def case_data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(N, 3))
    if CASES[kind][2] == 2:  # regression targets: two smooth functions of x
        return x, np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float64)[:, None]  # 0/1 targets


def make_model(kind: str) -> Sequential:
    _, last, width, *_ = CASES[kind]
    return Sequential([Dense(4, "tanh"), Dense(width, last)], input_shape=(3,), seed=1, dtype=np.float64)


def train(kind: str, backend: str, validation: bool) -> dict:
    """EPOCHS epochs of one full-batch SGD step each, one fit call per epoch on one Trainer (one compile);
    the parameters before and after every step, and the histories."""
    loss, last, _, metrics, _, lr = CASES[kind]
    x, y = case_data(kind)
    model = make_model(kind)
    trainer = Trainer(model, optim.SGD(lr), loss=loss, backend=backend, metrics=metrics)
    before, after, histories = [], [], []
    for _ in range(EPOCHS):
        before.append({k: v.copy() for k, v in model.named_values().items()})
        histories.append(graphc.fit(model, (x, y), epochs=1, batch_size=N, trainer=trainer, verbose=False,
                                    validation_data=(x, y) if validation else None))
        after.append({k: v.copy() for k, v in model.named_values().items()})
    return {"before": before, "after": after, "histories": histories, "x": x, "y": y, "last": last}


@pytest.fixture(scope="module", params=list(CASES))
def runs(request, graphc_cache_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    try:
        kind = request.param
        yield kind, train(kind, "reference", validation=True), train(kind, "cpu", validation=False)
    finally:
        mp.undo()


def test_cpu_matches_the_reference_backend_step_for_step(runs):
    kind, ref, cpu = runs
    for step, (r, c) in enumerate(zip(ref["after"], cpu["after"]), 1):
        for name in r:
            np.testing.assert_allclose(c[name], r[name], rtol=1e-10, atol=1e-12, err_msg=f"{kind} step {step} {name}")
    assert any(not np.array_equal(ref["after"][-1][k], ref["before"][0][k]) for k in ref["before"][0])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_each_epoch_loss_is_the_numpy_formula_on_the_model_outputs_and_decreases(runs, backend):
    kind, ref, cpu = runs
    run = ref if backend == "reference" else cpu
    losses = []
    for values, history in zip(run["before"], run["histories"]):
        expected = numpy_loss(kind, numpy_forward(values, run["x"], run["last"]), run["y"])
        assert history["loss"] == pytest.approx([expected], rel=1e-12), kind
        losses.append(expected)
    assert all(b < a for a, b in zip(losses, losses[1:])), (kind, losses)
    assert losses[-1] < 0.9 * losses[0], (kind, losses)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_metrics_are_the_ones_chosen_and_equal_numpy(runs, backend):
    kind, ref, cpu = runs
    run = ref if backend == "reference" else cpu
    expected_metrics = CASES[kind][4]
    for values, history in zip(run["before"], run["histories"]):
        extra = {"val_loss", *("val_" + m for m in expected_metrics)} if run is ref else set()
        assert set(history.metrics) == {"loss", "lr", "seconds", *expected_metrics} | extra, kind
        out = numpy_forward(values, run["x"], run["last"])
        for metric in expected_metrics:
            assert history[metric] == pytest.approx([numpy_metric(kind, metric, out, run["y"])], rel=1e-12)


def test_validation_scores_are_the_numpy_formula_after_the_step(runs):
    kind, ref, _ = runs
    for values, history in zip(ref["after"], ref["histories"]):
        out = numpy_forward(values, ref["x"], ref["last"])
        assert history["val_loss"] == pytest.approx([numpy_loss(kind, out, ref["y"])], rel=1e-12)
        for metric in CASES[kind][4]:
            assert history["val_" + metric] == pytest.approx([numpy_metric(kind, metric, out, ref["y"])], rel=1e-12)


# -- binary cross-entropy with logits at |z| = 1000 --------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bce_with_logits_is_finite_at_logits_of_1000(backend, graphc_cache_dir, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    y = np.array([[1.0], [0.0], [0.0], [1.0]])
    model = Sequential([Dense(1)], input_shape=(2,), seed=0, dtype=np.float64)
    model.layers[0].values["W"][...] = [[1000.0], [0.0]]  # z = +-1000
    model.layers[0].values["b"][...] = 0.0
    h = graphc.fit(model, (x, y), epochs=1, batch_size=4, optimizer=optim.SGD(1e-6), verbose=False, backend=backend,
                   loss="binary_cross_entropy_with_logits", validation_data=(x, y) if backend == "reference" else None)
    # Closed form: the right sign costs log(1 + e^-1000) = 0 in float64, the wrong one 1000: mean 500.
    assert h["loss"] == [500.0]
    assert h["acc"] == [0.5]
    # The gradient (sigmoid(z) - y) / N * x is finite: one step of lr 1e-6 from W = [[1000], [0]].
    np.testing.assert_allclose(model.layers[0].values["W"], [[1000.0 - 1e-6 * 0.5], [0.0]], rtol=0, atol=1e-12)
    if backend == "reference":  # after the step, |z| = 1000 - 5e-7: the two wrong rows cost that each
        assert h["val_loss"] == pytest.approx([(1000.0 - 1e-6 * 0.5) / 2], rel=1e-12)


# -- errors name the loss, the shapes and dtypes, and the user's line --------------------------------------------------

def test_a_custom_loss_that_is_not_a_scalar_is_refused():
    def per_element(out, target):
        return graphc.square(out - target)

    x, y = case_data("custom")
    with pytest.raises(ShapeError, match=rf"fit: loss='per_element' \(defined at .*{HERE}\) returned shape "
                                         rf"\[16, 2\] .*a loss must be a scalar.*model output f64\[16,2\].*\n  at .*{HERE}"):
        graphc.fit(make_model("custom"), (x, y), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss=per_element)


def test_a_custom_loss_that_returns_no_tensor_is_refused():
    x, y = case_data("custom")
    with pytest.raises(ShapeError, match=rf"loss='<lambda>' .*returned a float, not a Tensor.*\n  at .*{HERE}"):
        graphc.fit(make_model("custom"), (x, y), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss=lambda out, target: 0.0)


def test_regression_targets_of_the_wrong_shape_are_refused():
    x, y = case_data("mse")
    with pytest.raises(InputError, match=rf"fit: y of train_data has shape \[16\]; loss='mse' takes targets shaped "
                                         rf"like the model's outputs: expected \[16, 2\].*\n  at .*{HERE}"):
        graphc.fit(make_model("mse"), (x, y[:, 0]), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss="mse")
    with pytest.raises(InputError, match=r"y of train_data has shape \[2, 16\].*\(reshape it: y.reshape\(16, 2\)\)"):
        graphc.fit(make_model("mse"), (x, y.T), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss="mse")


def test_bce_targets_of_the_wrong_dtype_or_range_are_refused():
    x, y = case_data("binary_cross_entropy")
    model = make_model("binary_cross_entropy")
    with pytest.raises(DTypeError, match=rf"fit: y of train_data has dtype int64; loss='binary_cross_entropy' takes "
                                         rf"float targets shaped like the model's outputs \[16, 1\].*\n  at .*{HERE}"):
        graphc.fit(model, (x, y.astype(np.int64)), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss="binary_cross_entropy")
    bad = y.copy()
    bad[3, 0] = 2.0
    with pytest.raises(InputError, match=rf"y of train_data\[3, 0\] = 2 is outside \[0, 1\]: loss="
                                         rf"'binary_cross_entropy_with_logits' takes .*1 of 16 are outside\n  at .*{HERE}"):
        graphc.fit(model, (x, bad), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss="binary_cross_entropy_with_logits")


def test_validation_targets_are_checked_like_the_training_ones():
    x, y = case_data("mse")
    with pytest.raises(InputError, match=r"y of validation_data has shape \[16, 1\].*expected \[16, 2\]"):
        graphc.fit(make_model("mse"), (x, y), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss="mse", validation_data=(x, y[:, :1]))
    with pytest.raises(InputError, match=r"y of validation_data has rows of \[\] int64; y of train_data has rows of "
                                         r"\[2\] float64: loss='pseudo_huber'"):
        graphc.fit(make_model("custom"), (x, y), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss=pseudo_huber, validation_data=(x, np.zeros(N, np.int64)))


def test_metrics_are_refused_where_they_mean_nothing():
    x, y = case_data("mse")
    with pytest.raises(HyperparameterError, match=rf"metric 'acc' means nothing for loss='mse'.*\n  at .*{HERE}"):
        graphc.fit(make_model("mse"), (x, y), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss="mse", metrics=("acc",))
    with pytest.raises(HyperparameterError, match=r"metrics must be a tuple of metric names .*got 'mae'"):
        graphc.fit(make_model("mse"), (x, y), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss="mse", metrics="mae")
    with pytest.raises(HyperparameterError, match=r"unknown metric 'r2'; the metrics are \['acc', 'mae'\]"):
        graphc.fit(make_model("mse"), (x, y), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss="mse", metrics=("r2",))
    with pytest.raises(HyperparameterError, match=r"metric 'mae' needs float targets .*softmax_cross_entropy"):
        graphc.fit(make_model("mse"), (x, np.zeros(N, np.int64)), epochs=1, batch_size=N, backend="reference",
                   verbose=False, metrics=("mae",))
    with pytest.raises(InputError, match=r"metric 'mae' compares outputs \[N, 2\] with float targets of that "
                                         r"shape; loss='pseudo_huber' got float64 targets \[N, 1\]"):
        graphc.fit(make_model("custom"), (x, y[:, :1]), epochs=1, batch_size=N, backend="reference", verbose=False,
                   loss=pseudo_huber, metrics=("mae",))


def test_evaluate_of_a_regression_model_points_to_scores():
    x, y = case_data("mse")
    model = make_model("mse")
    graphc.fit(model, (x, y), epochs=1, batch_size=N, backend="reference", verbose=False, loss="mse")
    with pytest.raises(HyperparameterError, match=r"evaluate: returns \(loss, accuracy\).*loss='mse'.*Trainer.scores"):
        graphc.train.evaluate(model, (x, y), backend="reference")
    out = graphc.train.predict_outputs(model, x, backend="reference")
    np.testing.assert_allclose(out, numpy_forward(model.named_values(), x, None), rtol=1e-12)
    scores = model._trainer.scores(x, y, metrics=("mae",))
    assert scores == pytest.approx({"loss": numpy_loss("mse", out, y), "mae": numpy_metric("mse", "mae", out, y)},
                                   rel=1e-12)


# -- the regression example ------------------------------------------------------------------------------------------

def test_regression_example_fits_sin(graphc_cache_dir):
    package_root = Path(graphc.__file__).resolve().parents[1]  # the graphc under test runs the example
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")]),
               GRAPHC_CACHE_DIR=str(graphc_cache_dir))
    result = subprocess.run([sys.executable, "examples/regression.py"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loss = float(re.search(r"final training loss \(mse\): ([\d.e-]+)", result.stdout).group(1))
    max_error = float(re.search(r"max error on 1001 test points: ([\d.]+)", result.stdout).group(1))
    assert loss < 1e-3 and max_error < 0.05, result.stdout

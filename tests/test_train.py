"""fit / evaluate / predict, early stopping, and the course's sanity checks (reference backend)."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.nn import BatchNorm, Dense, Dropout, Sequential, init
from graphc.train import EarlyStopping, History, evaluate, initial_loss_check, overfit_check, predict

BACKEND = "reference"


def numpy_mlp(model: Sequential, x: np.ndarray) -> np.ndarray:
    """Logits of a Dense/ReLU stack, from the model's current values (float64)."""
    h = x.astype(np.float64)
    for k, layer in enumerate(model.layers):
        h = h @ layer.values["W"].astype(np.float64) + layer.values["b"].astype(np.float64)
        if k < len(model.layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def numpy_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def blobs(n_per_class: int, seed: int):
    """Three well-separated Gaussian clusters in 2-D."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    x = np.concatenate([c + 0.6 * rng.normal(size=(n_per_class, 2)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(3), n_per_class).astype(np.int64)
    return x, y


def test_fit_learns_a_separable_problem():
    x, y = blobs(40, 0)
    xt, yt = blobs(50, 1)
    model = Sequential([Dense(16, "relu"), Dense(3)], input_shape=(2,), seed=0)
    h = graphc.fit(model, (x, y), epochs=15, batch_size=16, optimizer=optim.SGD(0.1), validation_data=(xt, yt),
                   backend=BACKEND, verbose=False)
    test_acc = float((numpy_mlp(model, xt).argmax(1) == yt).mean())  # NumPy forward with the trained values
    assert test_acc > 0.95
    assert h["val_acc"][-1] == pytest.approx(test_acc)
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    assert h.epochs == list(range(1, 16)) and len(h["lr"]) == 15 and not h.stopped_early


def test_fit_with_batchnorm_and_dropout_is_deterministic_for_a_seed():
    x, y = blobs(30, 2)

    def train(seed):
        model = Sequential([Dense(16), BatchNorm(), Dense(16, "relu"), Dropout(0.3), Dense(3)], input_shape=(2,), seed=0)
        h = graphc.fit(model, (x, y), epochs=4, batch_size=16, optimizer=optim.Adam(0.01), seed=seed,
                       backend=BACKEND, verbose=False)
        return model.named_values(), h

    a, ha = train(5)
    b, hb = train(5)
    c, _ = train(6)  # another shuffle and other dropout keys
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert ha["loss"] == hb["loss"]
    assert not np.array_equal(a["dense_3.W"], c["dense_3.W"])
    assert not np.array_equal(a["batchnorm_1.running_mean"], np.zeros(16, np.float32))  # state was updated


# -- early stopping ----------------------------------------------------------------------------------------------

def noisy_problem():
    """Training labels are 35% noise, the validation set is clean: the validation loss falls while the model
    learns the signal and rises once it memorizes the noise."""
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=(10, 3))

    def make(n, noise):
        x = rng.normal(size=(n, 10)).astype(np.float32)
        y = (x @ w_true).argmax(1)
        flip = rng.random(n) < noise
        y[flip] = rng.integers(0, 3, flip.sum())
        return x, y.astype(np.int64)

    return make(80, 0.35), make(200, 0.0)


def train_noisy(epochs, early_stopping=None):
    train, val = noisy_problem()
    model = Sequential([Dense(64, "relu"), Dense(3)], input_shape=(10,), seed=0)
    h = graphc.fit(model, train, epochs=epochs, batch_size=20, optimizer=optim.Adam(0.005), validation_data=val,
                   early_stopping=early_stopping, backend=BACKEND, verbose=False)
    return model, h, val


def test_early_stopping_stops_and_restores_the_best_epoch():
    model, h, val = train_noisy(60, EarlyStopping(patience=4))
    best = h.best_epoch
    vl = h["val_loss"]
    # it stopped: patience epochs after the best one, well before 60
    assert h.stopped_early and 1 < best < 60
    assert len(h.epochs) == best + 4
    assert vl[best - 1] == min(vl) and all(v >= vl[best - 1] for v in vl[best:])
    # the same run without early stopping, cut at the best epoch, is deterministic: its weights are the
    # best epoch's weights, bit for bit
    at_best, _, _ = train_noisy(best)
    at_end, _, _ = train_noisy(len(h.epochs))
    restored = model.named_values()
    for k, v in at_best.named_values().items():
        np.testing.assert_array_equal(restored[k], v, err_msg=k)
    assert not np.array_equal(restored["dense_1.W"], at_end.named_values()["dense_1.W"])
    # and evaluation after fit sees the restored weights
    loss, acc = evaluate(model, val, backend=BACKEND)
    assert loss == pytest.approx(vl[best - 1], rel=1e-6)
    assert loss == pytest.approx(numpy_cross_entropy(numpy_mlp(model, val[0]), val[1]), rel=1e-5)


def test_early_stopping_without_restore_keeps_the_last_weights():
    model, h, _ = train_noisy(60, EarlyStopping(patience=3, restore_best=False))
    assert h.stopped_early and len(h.epochs) == h.best_epoch + 3
    last, _, _ = train_noisy(len(h.epochs))
    for k, v in last.named_values().items():
        np.testing.assert_array_equal(model.named_values()[k], v, err_msg=k)


# -- the course's sanity checks ------------------------------------------------------------------------------------

def test_initial_loss_is_log_C_for_a_fresh_classifier():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 20)).astype(np.float32)
    y = rng.integers(0, 10, 200).astype(np.int64)
    model = Sequential([Dense(50, "relu", init=init.normal(0.01)), Dense(10, init=init.normal(0.01))],
                       input_shape=(20,))
    loss = initial_loss_check(model, x, y, classes=10, backend=BACKEND)
    assert loss == pytest.approx(numpy_cross_entropy(numpy_mlp(model, x), y), rel=1e-5)
    assert abs(loss - math.log(10)) < 0.01  # tiny weights: logits ~ 0, every class ~ 1/10


def test_initial_loss_check_flags_a_badly_scaled_model():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 20)).astype(np.float32)
    y = rng.integers(0, 10, 100).astype(np.int64)
    model = Sequential([Dense(50, "relu", init=init.normal(3.0)), Dense(10, init=init.normal(3.0))], input_shape=(20,))
    with pytest.raises(AssertionError, match=r"not near log\(10\) = 2\.3026"):
        initial_loss_check(model, x, y, classes=10, backend=BACKEND)


def test_overfit_check_memorizes_a_tiny_dataset():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 8)).astype(np.float32)
    y = rng.integers(0, 4, 12).astype(np.int64)  # random labels: only memorization gets them all
    model = Sequential([Dense(32, "relu"), Dense(4)], input_shape=(8,), seed=1)
    acc = overfit_check(model, x, y, epochs=150, optimizer=optim.Adam(0.02), backend=BACKEND)
    assert acc == 1.0
    assert (numpy_mlp(model, x).argmax(1) == y).all()


def test_overfit_check_fails_when_the_model_cannot_learn():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(12, 8)).astype(np.float32)
    y = rng.integers(0, 4, 12).astype(np.int64)
    model = Sequential([Dense(32, "relu"), Dense(4)], input_shape=(8,), seed=1)
    with pytest.raises(AssertionError, match="could not overfit 12 samples"):
        overfit_check(model, x, y, epochs=2, optimizer=optim.SGD(1e-6), backend=BACKEND)


# -- evaluate / predict ----------------------------------------------------------------------------------------------

def test_evaluate_and_predict_match_numpy_forward():
    x, y = blobs(35, 7)  # 105 rows: batches of 25 leave a padded partial batch
    model = Sequential([Dense(12, "relu"), Dense(8, "relu"), Dense(3)], input_shape=(2,), seed=2)
    graphc.fit(model, (x, y), epochs=2, batch_size=32, optimizer=optim.SGD(0.05), backend=BACKEND, verbose=False)
    logits = numpy_mlp(model, x)
    loss, acc = evaluate(model, (x, y), batch_size=25, backend=BACKEND)
    assert loss == pytest.approx(numpy_cross_entropy(logits, y), rel=1e-5)
    assert acc == float((logits.argmax(1) == y).mean())
    np.testing.assert_array_equal(predict(model, x, batch_size=25, backend=BACKEND), logits.argmax(1))


def test_evaluate_a_model_that_was_never_trained():
    x, y = blobs(10, 8)
    model = Sequential([Dense(5, "relu"), Dense(3)], input_shape=(2,), seed=4)
    logits = numpy_mlp(model, x)
    loss, acc = evaluate(model, (x, y), backend=BACKEND)
    assert loss == pytest.approx(numpy_cross_entropy(logits, y), rel=1e-5)
    np.testing.assert_array_equal(predict(model, x, backend=BACKEND), logits.argmax(1))


# -- history ---------------------------------------------------------------------------------------------------------

def small_history() -> History:
    h = History()
    for e, (tl, vl) in enumerate([(1.0, 1.1), (0.6, 0.8), (0.4, 0.7)], start=1):
        h.append(e, loss=tl, acc=1 - tl / 2, val_loss=vl, val_acc=1 - vl / 2, lr=0.1)
    return h


def test_history_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = small_history().plot(str(tmp_path / "curves.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_history_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    # As if matplotlib were not installed (the test command installs the plot extra): importing it fails.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="matplotlib"):
        small_history().plot(str(tmp_path / "curves.png"))
    assert not (tmp_path / "curves.png").exists()


def test_history_round_trips_through_a_dict():
    h = small_history()
    h.best_epoch = 3
    back = History.from_dict(h.to_dict())
    assert back.epochs == [1, 2, 3] and back["val_loss"] == [1.1, 0.8, 0.7] and back.best_epoch == 3


def test_evaluate_and_predict_follow_values_changed_after_fit():
    x, y = blobs(20, seed=5)
    model = Sequential([Dense(8, "relu"), Dense(3)], input_shape=(2,), seed=1)
    graphc.fit(model, (x, y), epochs=3, batch_size=20, optimizer=optim.SGD(0.1), backend=BACKEND, verbose=False)
    layer = model.layers[-1]
    layer.values["W"] = layer.values["W"] * np.float32(-2.0)  # the user edits the trained model
    np.testing.assert_array_equal(predict(model, x, backend=BACKEND), numpy_mlp(model, x).argmax(axis=1))
    assert evaluate(model, (x, y), backend=BACKEND)[0] == pytest.approx(numpy_cross_entropy(numpy_mlp(model, x), y),
                                                                       rel=1e-5)


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path):
    x, y = blobs(10, seed=6)
    path = str(tmp_path / "never_written.npz")
    make = lambda: Sequential([Dense(4, "tanh"), Dense(3)], input_shape=(2,), seed=2)  # noqa: E731
    a, b = make(), make()
    ha = graphc.fit(a, (x, y), epochs=2, batch_size=10, backend=BACKEND, verbose=False, checkpoint=path, resume=True)
    hb = graphc.fit(b, (x, y), epochs=2, batch_size=10, backend=BACKEND, verbose=False)
    assert ha["loss"] == hb["loss"]
    for k, v in a.named_values().items():
        np.testing.assert_array_equal(v, b.named_values()[k])


def test_fit_refuses_a_loss_it_cannot_train_with():
    model = Sequential([Dense(3)], input_shape=(2,))
    with pytest.raises(ValueError, match="unknown loss='hinge'.*softmax_cross_entropy"):
        graphc.fit(model, blobs(4, 0), epochs=1, loss="hinge", backend=BACKEND, verbose=False)

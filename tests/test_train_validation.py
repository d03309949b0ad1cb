"""fit / evaluate / predict refuse bad data, bad settings and damaged checkpoints with a graphc error that
names the argument and the user's line (issue 10): never a bare IndexError or KeyError, never a label -1
scored as the last class, never a checkpoint that resumes from NaN weights. Reference backend unless an
item is about the cpu backend."""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.ir import DTypeError, GraphcError, InputError
from graphc.nn import Dense, Sequential
from graphc.optim import HyperparameterError
from graphc.train import CheckpointError, EarlyStopping, evaluate, load_checkpoint, predict, schedules

BACKEND = "reference"
HERE = r"test_train_validation\.py:\d+"  # the user's line every message ends with


def problem(n: int = 6, seed: int = 0):
    """n rows of 2 features, 3 classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    return x, y


def new_model() -> Sequential:
    return Sequential([Dense(4, "relu"), Dense(3)], input_shape=(2,), seed=1)


def numpy_logits(model: Sequential, x: np.ndarray) -> np.ndarray:
    h = np.maximum(x.astype(np.float64) @ model.layers[0].values["W"] + model.layers[0].values["b"], 0.0)
    return h @ model.layers[1].values["W"].astype(np.float64) + model.layers[1].values["b"]


def fit(model, data, **kw):
    kw = {"epochs": 1, "batch_size": 4, "backend": BACKEND, "verbose": False, **kw}
    return graphc.fit(model, data, **kw)


# -- labels and features (evaluate, predict, fit) -----------------------------------------------------------------

def test_evaluate_refuses_label_minus_one_instead_of_scoring_the_last_class():
    x, y = problem()
    y[2] = -1
    with pytest.raises(InputError, match=r"evaluate: y: label -1 at index 2 is out of range \[0, 3\) for a model "
                                         rf"with 3 outputs; 1 of 6 labels are out of range\n  at .*{HERE}"):
        evaluate(new_model(), (x, y), backend=BACKEND)


def test_evaluate_refuses_a_label_past_the_last_class_and_counts_them():
    x, y = problem()
    y[[1, 4]] = [3, 7]
    with pytest.raises(InputError, match=r"label 3 at index 1 is out of range \[0, 3\).*2 of 6 labels"):
        evaluate(new_model(), (x, y), backend=BACKEND)


@pytest.mark.parametrize("shape_of,message", [
    (lambda y: y[:, None], r"y has shape \[6, 1\]; expected \[6\], one class index per row of x \(flatten it: "
                           r"y\.reshape\(-1\)\)"),
    (lambda y: y[:1], r"y has shape \[1\]; expected \[6\], one class index per row of x"),
    (lambda y: y[:5], r"y has shape \[5\]; expected \[6\]"),
    (lambda y: np.eye(3, dtype=np.int64)[y], r"y has shape \[6, 3\]; expected \[6\].*one-hot rows\? pass "
                                             r"y\.argmax\(axis=1\)"),
], ids=["N-by-1", "length-1", "shorter", "one-hot"])
def test_evaluate_refuses_labels_that_would_broadcast(shape_of, message):
    x, y = problem()
    with pytest.raises(InputError, match=rf"evaluate: {message}.*\n  at .*{HERE}"):
        evaluate(new_model(), (x, shape_of(y)), backend=BACKEND)


def test_evaluate_refuses_float_labels_as_pytorch_does():
    x, y = problem()
    with pytest.raises(DTypeError, match=r"evaluate: y has dtype float64; class labels must be integers .*"
                                         r"y\.astype\(np\.int64\)"):
        evaluate(new_model(), (x, y.astype(np.float64)), backend=BACKEND)


@pytest.mark.parametrize("bad_x,error,message", [
    (lambda x: x[:, :1], InputError, r" has shape \[6, 1\]; the model takes \[N, 2\]"),
    (lambda x: x[None], InputError, r" has shape \[1, 6, 2\]; the model takes \[N, 2\]"),
    (lambda x: (x * 100).astype(np.uint8), DTypeError, r" has dtype uint8; the model takes floating-point inputs "
                                                       r"\(float32\)"),
], ids=["features", "rank", "uint8"])
@pytest.mark.parametrize("call", ["evaluate", "predict", "fit"])
def test_features_of_the_wrong_shape_or_dtype_are_refused_by_every_entry_point(call, bad_x, error, message):
    x, y = problem()
    x = bad_x(x)
    run = {"evaluate": lambda: evaluate(new_model(), (x, y), backend=BACKEND),
           "predict": lambda: predict(new_model(), x, backend=BACKEND),
           "fit": lambda: fit(new_model(), (x, y))}[call]
    where = f"{call}: " + ("x of train_data" if call == "fit" else "x")
    with pytest.raises(error, match=rf"{where}{message}.*\n  at .*{HERE}"):
        run()


@pytest.mark.parametrize("arg", ["train_data", "validation_data"])
def test_fit_checks_the_labels_of_the_training_and_the_validation_data_before_training(arg):
    model = new_model()
    before = {k: v.copy() for k, v in model.named_values().items()}
    good = problem()
    bad = (good[0], np.array([0, 1, 2, 3, 0, 1]))
    train, val = (bad, good) if arg == "train_data" else (good, bad)
    with pytest.raises(InputError, match=rf"fit: y of {arg}: label 3 at index 3 is out of range \[0, 3\)"):
        fit(model, train, validation_data=val, epochs=3)
    for k, v in model.named_values().items():  # refused before the first step
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_fit_refuses_data_that_is_not_a_pair():
    x, y = problem()
    with pytest.raises(InputError, match=r"fit: train_data must be a pair \(x, y\), got a tuple of 3"):
        fit(new_model(), (x, y, y))


def test_valid_labels_still_score_as_numpy_does():
    """A guard for the checks themselves (passes on main too): valid int32 labels are scored as NumPy scores them."""
    x, y = problem(20, 2)
    model = new_model()
    logits = numpy_logits(model, x)
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    loss, acc = evaluate(model, (x, y.astype(np.int32)), backend=BACKEND)
    assert loss == pytest.approx(-logp[np.arange(20), y].mean(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == y).mean())


# -- no rows, batch_size 0 ------------------------------------------------------------------------------------------

def test_predict_with_no_rows_returns_no_predictions():
    x, _ = problem()
    out = predict(new_model(), x[:0], backend=BACKEND)
    assert out.shape == (0,) and out.dtype.kind == "i"


def test_evaluate_with_no_rows_is_refused():
    x, y = problem()
    with pytest.raises(InputError, match=rf"evaluate: x has 0 rows: the loss and accuracy of no examples are "
                                         rf"undefined\n  at .*{HERE}"):
        evaluate(new_model(), (x[:0], y[:0]), backend=BACKEND)


def test_fit_with_no_rows_is_refused():
    x, y = problem()
    with pytest.raises(InputError, match=rf"fit: x of train_data has 0 rows: there is nothing to train on\n  at .*{HERE}"):
        fit(new_model(), (x[:0], y[:0]))
    with pytest.raises(InputError, match=r"fit: x of validation_data has 0 rows"):
        fit(new_model(), (x, y), validation_data=(x[:0], y[:0]))


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, "8"])
@pytest.mark.parametrize("call", ["fit", "evaluate", "predict"])
def test_a_batch_size_that_is_not_a_positive_whole_number_is_refused(call, batch_size):
    x, y = problem()
    run = {"evaluate": lambda: evaluate(new_model(), (x, y), batch_size=batch_size, backend=BACKEND),
           "predict": lambda: predict(new_model(), x, batch_size=batch_size, backend=BACKEND),
           "fit": lambda: fit(new_model(), (x, y), batch_size=batch_size)}[call]
    with pytest.raises(HyperparameterError, match=rf"{call}: batch_size={batch_size!r} must be a whole number >= 1"
                                                  rf"\n  at .*{HERE}"):
        run()


@pytest.fixture(scope="module")
def zero_row_graph():
    """One cpu compile of a graph whose input has 0 rows: a dense layer, a softmax, a sum and a mean over them."""
    w = np.arange(6, dtype=np.float32).reshape(3, 2) / 7
    with graphc.Graph("zero_rows") as g:
        x = graphc.input("x", (0, 3))
        h = graphc.relu(x @ graphc.param("W", w))
        outs = [h, graphc.softmax(h), graphc.sum(h), graphc.mean(h)]
    return g, outs, w


def test_a_zero_row_input_compiles_on_cpu_and_agrees_with_numpy(zero_row_graph):
    """cpu: `graphc.input("x", (0, 3))` compiles (today: ZeroDivisionError in the epoch generator) and gives
    NumPy's answers: empty rows, a sum of 0 and a mean of NaN (the stability pass divided by the count of
    no elements); the reference backend agrees."""
    _, outs, w = zero_row_graph
    x = np.zeros((0, 3), np.float32)
    want = [np.maximum(x @ w, 0), np.zeros((0, 2), np.float32), 0.0, np.nan]
    for backend in ("cpu", "reference"):
        got = graphc.compile(outs, backend=backend)(x)
        for g_, w_ in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g_), w_)
            assert np.shape(g_) == np.shape(w_), backend


# -- array-likes ------------------------------------------------------------------------------------------------------

def test_fit_evaluate_and_predict_accept_python_lists_as_arrays():
    """Nested lists are converted with np.asarray (as Keras does): the same run as with the arrays."""
    x, y = problem(12)
    xv, yv = problem(6, 1)
    runs = []
    for as_input in (lambda a: a, lambda a: a.tolist()):
        model = new_model()
        h = fit(model, (as_input(x), as_input(y)), validation_data=(as_input(xv), as_input(yv)), epochs=3,
                optimizer=optim.SGD(0.1))
        runs.append((model, h["loss"], h["val_loss"], evaluate(model, (as_input(xv), as_input(yv)), backend=BACKEND),
                     predict(model, as_input(xv), backend=BACKEND)))
    (model_a, loss_a, val_a, ev_a, pred_a), (model_l, loss_l, val_l, ev_l, pred_l) = runs
    for k, v in model_a.named_values().items():
        np.testing.assert_array_equal(model_l.named_values()[k], v, err_msg=k)
    assert loss_a == loss_l and val_a == val_l and ev_a == ev_l
    np.testing.assert_array_equal(pred_l, numpy_logits(model_l, xv).argmax(1))  # NumPy's forward pass


def test_ragged_lists_are_refused():
    with pytest.raises(InputError, match=r"fit: x of train_data is not a rectangular array"):
        fit(new_model(), ([[0.1, 0.2], [0.3]], [0, 1]))


# -- optimizer and schedule hyper-parameters ------------------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda: optim.Adam(-0.001, beta1=1.5), r"Adam: lr=-0.001 is out of range; lr must be a finite number > 0"),
    (lambda: optim.Adam(0.001, beta1=1.5), r"Adam: beta1=1.5 is out of range; beta1 must be in \[0, 1\)"),
    (lambda: optim.Adam(0.001, beta2=-0.1), r"Adam: beta2=-0.1 is out of range; beta2 must be in \[0, 1\)"),
    (lambda: optim.Adam(0.001, eps=0.0), r"Adam: eps=0.0 is out of range; eps must be a finite number > 0"),
    (lambda: optim.SGD(0), r"SGD: lr=0 is out of range; lr must be a finite number > 0"),
    (lambda: optim.SGD(float("nan")), r"SGD: lr=nan is out of range"),
    (lambda: optim.SGD(float("inf")), r"SGD: lr=inf is out of range"),
    (lambda: optim.SGD("0.1"), r"SGD: lr='0.1' is not a number; lr must be a finite number > 0"),
    (lambda: optim.SGD(0.1, weight_decay=-1e-4), r"SGD: weight_decay=-0.0001 is out of range; weight_decay must be "
                                                 r"a finite number >= 0"),
    (lambda: optim.SGD(0.1, clip_norm=0), r"SGD: clip_norm=0 is out of range; clip_norm must be a finite number > 0 "
                                          r"\(or None\)"),
    (lambda: optim.Momentum(0.1, momentum=1.0), r"Momentum: momentum=1.0 is out of range; momentum must be in \[0, 1\)"),
    (lambda: optim.Nesterov(0.1, momentum=-0.5), r"Nesterov: momentum=-0.5 is out of range"),
    (lambda: optim.AdaGrad(0.1, eps=-1e-8), r"AdaGrad: eps=-1e-08 is out of range"),
    (lambda: optim.RMSProp(0.1, rho=1.0), r"RMSProp: rho=1.0 is out of range; rho must be in \[0, 1\)"),
    (lambda: optim.AdaDelta(1.0, rho=2), r"AdaDelta: rho=2 is out of range"),
    (lambda: optim.AdaDelta(1.0, eps=True), r"AdaDelta: eps=True is not a number"),
])
def test_optimizer_hyperparameters_out_of_range_are_refused(make, message):
    with pytest.raises(HyperparameterError, match=rf"{message}.*\n  at .*{HERE}"):
        make()


def test_an_optimizer_changed_after_construction_is_checked_again_by_minimize():
    opt = optim.Momentum(0.1)
    opt.momentum = 1.5  # the update would diverge geometrically
    with pytest.raises(HyperparameterError, match=r"Momentum: momentum=1.5 is out of range"):
        fit(new_model(), problem(), optimizer=opt)


def test_boundary_hyperparameters_are_accepted():
    """A guard (passes on main too): the closed ends of each range are valid settings."""
    for opt in (optim.Momentum(0.1, momentum=0.0), optim.Adam(0.1, beta1=0.0, beta2=0.0, weight_decay=0.0),
                optim.RMSProp(0.1, rho=0.0), optim.SGD(0.1, clip_norm=None)):
        h = fit(new_model(), problem(), optimizer=opt)
        assert math.isfinite(h["loss"][0])


@pytest.mark.parametrize("make,message", [
    (lambda: schedules.step(0.1, every=0), r"step: every=0 must be a whole number >= 1"),
    (lambda: schedules.step(0.1, drop=0.0), r"step: drop=0.0 is out of range; drop must be in \(0, 1\]"),
    (lambda: schedules.step(0.1, drop=1.5), r"step: drop=1.5 is out of range"),
    (lambda: schedules.linear(0.1, T=0), r"linear: T=0 must be a whole number >= 1"),
    (lambda: schedules.linear(0.1, T=10, final=-0.01), r"linear: final=-0.01 is out of range"),
    (lambda: schedules.cosine(0.1, T=2.5), r"cosine: T=2.5 must be a whole number >= 1"),
    (lambda: schedules.exponential(0.1, k=-1), r"exponential: k=-1 is out of range; k must be a finite number >= 0"),
    (lambda: schedules.inverse_sqrt(0.1, warmup=0), r"inverse_sqrt: warmup=0 must be a whole number >= 1"),
    (lambda: schedules.constant(-0.1), r"constant: lr0=-0.1 is out of range; lr0 must be a finite number > 0"),
    (lambda: schedules.constant(0.1, per="steps"), r"constant: per='steps' must be one of \['epoch', 'step'\]"),
    (lambda: schedules.reduce_on_plateau(0.1, factor=1.0), r"reduce_on_plateau: factor=1.0 is out of range; factor "
                                                           r"must be a finite number > 1"),
    (lambda: schedules.reduce_on_plateau(0.1, patience=0), r"reduce_on_plateau: patience=0 must be a whole number"),
    (lambda: schedules.reduce_on_plateau(0.1, min_lr=0.5), r"reduce_on_plateau: min_lr=0.5 is out of range; min_lr "
                                                           r"must be in \[0, 0.1\]"),
    (lambda: EarlyStopping(patience=0), r"EarlyStopping: patience=0 must be a whole number >= 1"),
    (lambda: EarlyStopping(min_delta=-0.1), r"EarlyStopping: min_delta=-0.1 is out of range"),
    (lambda: EarlyStopping(monitor="val_acc"), r"EarlyStopping: monitor='val_acc' must be one of \['val_loss', "
                                               r"'loss'\]: it stops when a loss stops decreasing"),
])
def test_schedule_and_early_stopping_arguments_out_of_range_are_refused(make, message):
    with pytest.raises(HyperparameterError, match=rf"{message}.*\n  at .*{HERE}"):
        make()


# -- what needs validation data ---------------------------------------------------------------------------------------

def test_early_stopping_without_validation_data_is_refused_before_training():
    model = new_model()
    before = model.named_values()["dense_1.W"].copy()
    with pytest.raises(HyperparameterError, match=r"fit: EarlyStopping\(monitor='val_loss'\) needs validation_data="
                                                  rf".*EarlyStopping\(monitor='loss'\)\n  at .*{HERE}"):
        fit(model, problem(), epochs=3, early_stopping=EarlyStopping(patience=1))
    np.testing.assert_array_equal(model.named_values()["dense_1.W"], before)


def test_reduce_on_plateau_without_validation_data_is_refused():
    with pytest.raises(HyperparameterError, match=r"fit: ReduceOnPlateau\(lr=0.1.*needs validation_data=\(x_val, "
                                                  r"y_val\) \(without it, it would never lower the rate\)"):
        fit(new_model(), problem(), epochs=3, schedule=schedules.reduce_on_plateau(0.1, patience=1))


def test_an_early_stopping_whose_monitor_was_changed_to_an_unknown_metric_is_refused_by_fit():
    es = EarlyStopping()
    es.monitor = "val_accuracy"
    with pytest.raises(HyperparameterError, match=r"EarlyStopping: monitor='val_accuracy' must be one of"):
        fit(new_model(), problem(), validation_data=problem(), early_stopping=es)


def test_early_stopping_on_the_training_loss_when_asked_explicitly():
    """A guard (monitor="loss" already worked on main): it needs no validation data, and its best epoch is
    the one with the lowest training loss."""
    x, y = problem(12)
    h = fit(new_model(), (x, y), epochs=12, optimizer=optim.SGD(2.0), early_stopping=EarlyStopping(patience=2,
                                                                                                   monitor="loss"))
    losses = h["loss"]
    assert h.best_epoch == 1 + int(np.argmin(losses))
    assert h.stopped_early == (len(losses) < 12)


# -- checkpoints: whole files that are wrong --------------------------------------------------------------------------

def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The raw arrays and manifest of a checkpoint, read with NumPy and json (not graphc)."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return arrays, json.loads(arrays.pop("__manifest__").tobytes())


def write_checkpoint(path: Path, arrays: dict[str, np.ndarray], manifest: dict, consistent: bool = True) -> None:
    """Write arrays and manifest as a checkpoint; ``consistent``: the manifest's shape, dtype and SHA-256 of each
    array are recomputed here (hashlib), so only a check of what the values mean can tell."""
    if consistent:
        manifest["arrays"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype),
                                  "sha256": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()}
                              for k, v in arrays.items()}
    text = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    np.savez(path, **arrays, __manifest__=text)


def resume(path: Path, schedule=None):
    """Resume a fit from ``path`` with a fresh model, as a user would."""
    train = problem(12)
    return fit(new_model(), train, epochs=4, optimizer=optim.Adam(0.01), validation_data=problem(6, 1),
               early_stopping=EarlyStopping(patience=5), schedule=schedule or schedules.reduce_on_plateau(0.01),
               checkpoint=str(path), resume=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A real checkpoint after 2 epochs: Adam state, reduce_on_plateau state, early stopping's best weights."""
    path = tmp_path_factory.mktemp("ckpt") / "c.npz"
    fit(new_model(), problem(12), epochs=2, optimizer=optim.Adam(0.01), validation_data=problem(6, 1),
        early_stopping=EarlyStopping(patience=5), schedule=schedules.reduce_on_plateau(0.01), checkpoint=str(path))
    return path


@pytest.fixture
def damaged(saved, tmp_path):
    """A copy of the saved checkpoint and its raw contents, to damage and write back."""
    path = tmp_path / "c.npz"
    shutil.copy(saved, path)
    return path, *read_checkpoint(path)


def test_the_undamaged_checkpoint_resumes(damaged):
    """A guard: the fixture's checkpoint, rewritten by write_checkpoint unchanged, resumes to epoch 4."""
    path, arrays, manifest = damaged
    assert len(arrays) == 26  # the weights, Adam's moments and step, and the best weights
    write_checkpoint(path, arrays, manifest)
    assert resume(path).epochs == [1, 2, 3, 4]


@pytest.mark.parametrize("damage,message", [
    (lambda m: m.update(epoch="two"), r"meta field 'epoch' must be a whole number >= 0; got 'two'"),
    (lambda m: m.update(epoch=2.0), r"meta field 'epoch' must be a whole number >= 0; got 2\.0"),
    (lambda m: m.update(step_count=-3), r"meta field 'step_count' must be a whole number >= 0; got -3"),
    (lambda m: m.pop("rng"), r"meta field 'rng' must be the shuffling RNG's state \(a JSON object\); it is missing"),
    (lambda m: m["rng"].update(state={"state": 1}), r"meta field 'rng' is not a PCG64 state"),
    (lambda m: m["rng"].update(bit_generator="MT19937"), r"meta field 'rng' is not a PCG64 state"),
    (lambda m: m.update(schedule={"lr": 0.01}), r"meta field 'schedule' does not fit ReduceOnPlateau.*KeyError"),
    (lambda m: m.update(best_loss="low"), r"meta field 'best_loss' must be a finite number or null; got 'low'"),
    (lambda m: m.update(bad_epochs=True), r"meta field 'bad_epochs' must be a whole number >= 0; got True"),
    (lambda m: m["history"].update(epochs=[1]), r"meta field 'history' must be a history of epochs 1\.\.2"),
    (lambda m: m["history"]["metrics"]["loss"].pop(), r"meta field 'history' must be a history of epochs 1\.\.2"),
    (lambda m: m.pop("history"), r"meta field 'history' must be the history of the epochs trained.*it is missing"),
])
def test_a_self_consistent_checkpoint_with_a_wrong_field_is_refused(damaged, damage, message):
    path, arrays, manifest = damaged
    damage(manifest["meta"])
    write_checkpoint(path, arrays, manifest)
    load_checkpoint(str(path))  # whole and self-consistent: only resuming can tell
    with pytest.raises(CheckpointError, match=rf"checkpoint .*c\.npz: {message}"):
        resume(path)


def test_a_float64_array_where_float32_belongs_is_refused(damaged):
    path, arrays, manifest = damaged
    arrays["dense_1.W"] = arrays["dense_1.W"].astype(np.float64)
    write_checkpoint(path, arrays, manifest)
    with pytest.raises(CheckpointError, match=r"c\.npz: array 'dense_1\.W' is float64 where the model's is float32"):
        resume(path)


@pytest.mark.parametrize("name,index", [("dense_1.W", r"\(0, 1\)"), ("dense_2.b.m", r"\(1,\)"),
                                        ("__best__.dense_2.W", r"\(0, 1\)")])
def test_an_array_with_nan_or_inf_is_refused(damaged, name, index):
    path, arrays, manifest = damaged
    arrays[name] = arrays[name].copy()
    arrays[name].flat[1] = np.nan  # the first bad value, at that index
    arrays[name].flat[-1] = np.inf
    write_checkpoint(path, arrays, manifest)
    with pytest.raises(CheckpointError, match=rf"c\.npz: array '{re.escape(name)}' holds nan at index {index} \(2 of "
                                              rf"{arrays[name].size} values are NaN or Inf\): not resumable"):
        resume(path)


def test_a_dropped_best_weight_is_refused_not_replaced_by_the_current_one(damaged):
    path, arrays, manifest = damaged
    del arrays["__best__.dense_1.b"]
    write_checkpoint(path, arrays, manifest)
    with pytest.raises(CheckpointError, match=r"c\.npz lacks \['__best__\.dense_1\.b'\]: it was written for another"):
        resume(path)


def test_an_array_dropped_from_the_file_alone_is_named_alone(damaged):
    path, arrays, manifest = damaged
    del arrays["dense_1.b"]
    write_checkpoint(path, arrays, manifest, consistent=False)  # the manifest still lists it
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path))
    message = str(err.value)
    assert message.endswith("c.npz: array(s) ['dense_1.b'] listed in the manifest are missing from the file")
    assert message.count("dense_") == 1  # not all 26 names, twice


def test_an_array_whose_dtype_disagrees_with_its_manifest_entry_is_refused(damaged):
    path, arrays, manifest = damaged
    manifest["arrays"]["dense_1.W"]["dtype"] = "float16"
    write_checkpoint(path, arrays, manifest, consistent=False)
    with pytest.raises(CheckpointError, match=r"array 'dense_1\.W' is float32, its manifest entry says float16"):
        load_checkpoint(str(path))


def test_checkpoint_error_is_a_graphc_error_and_still_a_value_error():
    assert issubclass(CheckpointError, GraphcError) and issubclass(CheckpointError, ValueError)
    assert issubclass(HyperparameterError, GraphcError) and issubclass(HyperparameterError, ValueError)

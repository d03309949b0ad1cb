"""Issue 14's rough edges a newcomer hit: "did you mean" for misspelt names, graphc.__all__, log_softmax as an
activation, the early-stopping message, reaching a fit's executable and its source, History.plot's figure, and the
help texts that still said training arrives later."""
from __future__ import annotations

import inspect
import io
import re
import types
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
from test_docs import run_python

import graphc
from graphc.nn import Activation, Dense, Sequential

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).name


def this_line() -> int:
    """The caller's line number, for asserting that an error names it."""
    return inspect.currentframe().f_back.f_lineno


# -- "did you mean" ---------------------------------------------------------------------------------------------

def test_misspelt_op_name_suggests_the_registered_one_and_names_the_line():
    with graphc.Graph("typo"):
        x = graphc.input("x", (2, 3))
        with pytest.raises(graphc.UnknownOpError, match=r"unknown op 'reluu' \(did you mean 'relu'") as err:
            line = this_line() + 1
            graphc.apply("reluu", [x])
    assert f"{HERE}:{line}" in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, graphc.GraphcError)


def test_misspelt_op_name_in_the_registry_lookup_suggests_close_names():
    with pytest.raises(KeyError, match=r"unknown op 'softmax_cross_entropi' \(did you mean "
                                       r"'softmax_cross_entropy'"):
        graphc.registry.get("softmax_cross_entropi")


def test_an_op_name_close_to_nothing_gets_no_suggestion():
    with pytest.raises(graphc.UnknownOpError, match="unknown op 'zzzzqqq'; `graphc ops` lists") as err:
        graphc.registry.get("zzzzqqq")
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize("typo, meant", [("rleu", "relu"), ("sigmod", "sigmoid"), ("log_sofmax", "log_softmax"),
                                         ("leaky-relu", "leaky_relu")])
def test_misspelt_activation_name_suggests_the_known_one(typo, meant):
    with pytest.raises(graphc.nn.UnknownActivationError,
                       match=rf"unknown activation '{typo}' \(did you mean '{meant}'") as err:
        line = this_line() + 1
        Dense(3, typo)
    assert f"{HERE}:{line}" in str(err.value)
    assert isinstance(err.value, ValueError)  # as before it had a class of its own
    with pytest.raises(graphc.nn.UnknownActivationError, match=rf"did you mean '{meant}'"):
        Activation(typo)


# -- graphc.__all__ ---------------------------------------------------------------------------------------------

def test_graphc_all_holds_only_graphcs_own_names():
    for leaked in ("Any", "Mapping", "Sequence", "np", "annotations"):
        assert leaked not in graphc.__all__
    for name in graphc.__all__:
        obj = getattr(graphc, name)
        module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        assert module.split(".")[0] == "graphc", f"graphc.__all__ has {name!r}, from {module!r}"
    # the public API is all still there
    for name in ("fit", "compile", "grad", "Graph", "input", "param", "relu", "float32", "evaluate", "optim", "nn",
                 "train", "UnknownOpError"):
        assert name in graphc.__all__
    namespace: dict = {}
    exec("from graphc import *", namespace)
    assert "Any" not in namespace and "Sequence" not in namespace and "relu" in namespace


# -- log_softmax as an activation name ----------------------------------------------------------------------------

def test_dense_log_softmax_activation_matches_numpy():
    model = Sequential([Dense(5, "log_softmax")], input_shape=(3,), seed=0)
    x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    out = graphc.train.predict_outputs(model, x, backend="reference")
    values = model.named_values()
    z = x.astype(np.float64) @ values["dense_1.W"] + values["dense_1.b"]
    expected = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # independent: the definition
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, rtol=1e-5)
    assert "log_softmax" in graphc.nn.layers.ACTIVATIONS
    assert "Dense(5, log_softmax)" in model.summary()


# -- the help texts ------------------------------------------------------------------------------------------------

def test_graphc_help_and_mlp_784_no_longer_say_training_arrives_later():
    from graphc.cli import build_parser

    help_text = build_parser().format_help()
    assert "later issue" not in help_text
    assert "examples/mnist_mlp.py trains" in help_text
    example = (ROOT / "examples" / "mlp_784.py").read_text()
    assert "later issue" not in example and "until training exists" not in example
    assert "examples/mnist_mlp.py" in example


# -- fit: the early-stopping message, the executable and its generated source ---------------------------------------

def tiny_data(rows: int = 32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0).astype(np.int64)  # 3 classes


@pytest.fixture(scope="module")
def cpu_fit():
    """One small fit on the cpu backend (one Numba compile shared by the tests below), stopped early: with
    min_delta far above any change of the loss, no epoch after the first counts as an improvement."""
    model = Sequential([Dense(3)], input_shape=(4,), seed=0)
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        history = graphc.fit(model, tiny_data(), epochs=6, batch_size=16, optimizer=graphc.optim.SGD(0.1),
                             backend="cpu", early_stopping=graphc.train.EarlyStopping(patience=2, min_delta=1e9,
                                                                                       monitor="loss"))
    return model, history, stderr.getvalue()


def test_early_stopping_says_when_it_stopped_the_monitored_value_and_the_best_epoch(cpu_fit):
    _, history, stderr = cpu_fit
    # the rule, applied by hand: epoch 1 is the best; epochs 2 and 3 do not beat it by 1e9; patience 2 stops at 3
    assert history.stopped_early and history.epochs == [1, 2, 3] and history.best_epoch == 1
    message = history.stop_message
    assert message == (f"fit: early stopping after epoch 3 of 6: loss {history['loss'][2]:.4f} has not improved by "
                       f"more than min_delta=1e+09 for 2 epochs; best epoch 1 (loss {history['loss'][0]:.4f}); "
                       f"the model has epoch 1's weights (restore_best=True)")
    assert message in stderr  # printed, since verbose is the default


def test_early_stopping_message_with_validation_loss_names_the_best_epoch():
    # min_delta=0: the best epoch is the first minimum of val_loss, found here with NumPy from the history
    model = Sequential([Dense(3)], input_shape=(4,), seed=0)
    x, y = tiny_data(48)
    history = graphc.fit(model, (x[:32], y[:32]), epochs=40, batch_size=32, optimizer=graphc.optim.SGD(3.0),
                         backend="reference", validation_data=(x[32:], y[32:]), verbose=False,
                         early_stopping=graphc.train.EarlyStopping(patience=2, restore_best=False))
    assert history.stopped_early, history["val_loss"]
    val = history["val_loss"]
    best = int(np.argmin(val)) + 1
    assert len(val) == best + 2 and all(v >= val[best - 1] for v in val[best:])
    assert history.stop_message == (
        f"fit: early stopping after epoch {best + 2} of 40: val_loss {val[-1]:.4f} has not improved for 2 epochs; "
        f"best epoch {best} (val_loss {val[best - 1]:.4f}); the model keeps epoch {best + 2}'s weights "
        f"(restore_best=False)")


def test_a_fit_that_runs_every_epoch_has_no_stop_message():
    model = Sequential([Dense(3)], input_shape=(4,), seed=0)
    history = graphc.fit(model, tiny_data(), epochs=2, batch_size=16, backend="reference", verbose=False)
    assert history.stop_message is None and not history.stopped_early
    assert history.executable.backend == "reference"


def test_fit_history_reaches_the_compiled_step_and_its_generated_source(cpu_fit):
    model, history, _ = cpu_fit
    exe = history.executable
    assert exe is history.trainer.step_executable(16) and exe.backend == "cpu"
    assert exe.graph.name == "train_step_b16" and exe.input_names == ["x", "y", "lr"]
    # the generated module is the file in the compile cache
    source_file = Path(exe.stats["cache_dir"]) / "graph.py"
    assert source_file.read_text() == exe.source and "def step(" in exe.source
    # it is the step fit trained with: at lr = 0 it returns the loss of the trained weights, which NumPy computes
    x, y = tiny_data()
    values = model.named_values()
    z = x[:16].astype(np.float64) @ values["dense_1.W"] + values["dense_1.b"]
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss, correct = exe(x=x[:16], y=y[:16], lr=np.float32(0.0))
    assert float(loss) == pytest.approx(-log_p[np.arange(16), y[:16]].mean(), rel=1e-5)
    assert int(correct) == int((z.argmax(axis=1) == y[:16]).sum())


# -- History.plot ------------------------------------------------------------------------------------------------

def history_of(loss, val_loss, lr, best_epoch=None) -> graphc.train.History:
    h = graphc.train.History(best_epoch=best_epoch)
    for e, (tl, vl, rate) in enumerate(zip(loss, val_loss, lr), start=1):
        h.append(e, loss=tl, acc=1 - tl / 2, val_loss=vl, val_acc=1 - vl / 2, lr=rate, seconds=0.1)
    return h


def lines_by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def test_history_plot_has_labelled_axes_a_best_epoch_marker_and_a_learning_rate_panel(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image
    import matplotlib.pyplot as plt

    lr = [0.1, 0.1, 0.01, 0.01, 0.001]
    history = history_of([1.0, 0.6, 0.4, 0.35, 0.3], [1.1, 0.8, 0.7, 0.75, 0.9], lr, best_epoch=3)
    fig = history.figure()
    try:
        loss_ax, acc_ax, lr_ax = fig.axes
        for ax, score, ylabel in ((loss_ax, "loss", "loss"), (acc_ax, "acc", "accuracy")):
            assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", ylabel)
            lines = lines_by_label(ax)
            assert set(lines) == {f"training {score}", f"validation {score}", "best epoch 3"}
            assert list(lines["best epoch 3"].get_xdata()) == [3, 3]  # a vertical line at epoch 3
        np.testing.assert_allclose(lines_by_label(loss_ax)["validation loss"].get_ydata(), history["val_loss"])
        np.testing.assert_allclose(lines_by_label(acc_ax)["training acc"].get_ydata(), history["acc"])
        assert (lr_ax.get_xlabel(), lr_ax.get_ylabel()) == ("epoch", "learning rate")
        np.testing.assert_allclose(lines_by_label(lr_ax)["learning rate"].get_ydata(), lr)
        assert lr_ax.get_yscale() == "log"  # the rate spans two decades
        width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
    finally:
        plt.close(fig)
    path = history.plot(str(tmp_path / "curves.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[:2] == (height, width)


def test_history_plot_marks_the_lowest_validation_loss_without_early_stopping():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    history = history_of([1.0, 0.6, 0.4, 0.3], [1.1, 0.7, 0.8, 0.9], [0.05] * 4)  # lowest val_loss: epoch 2
    fig = history.figure()
    try:
        assert "best epoch 2" in lines_by_label(fig.axes[0])
        assert fig.axes[-1].get_yscale() == "linear"  # a constant rate
    finally:
        plt.close(fig)


# -- docs/training.md: the training step ------------------------------------------------------------------------

def test_docs_build_train_step_example_runs_as_written(tmp_path):
    """The example runs and shows what the text around it says it shows (the numbers of a training step are
    checked against NumPy in tests/test_optim.py and tests/test_train.py)."""
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    block = re.search(r"^<!-- docs:build_train_step -->\n```python\n(.*?)^```", text, re.M | re.S).group(1)
    script = tmp_path / "train_step.py"
    script.write_text(block)
    result = run_python(str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "['x', 'y', 'lr'] ['dense_1.W', 'dense_1.b', 'dense_2.W', 'dense_2.b', 'dense_1.W.velocity'" in out
    assert "dL/ddense_1.W via dense-vjp of %5" in out and "update %3 <- " in out
    loss, right = re.search(r"^loss (\S+), (\d+) of 32 right$", out, re.M).groups()
    assert float(loss) < np.log(3) - 0.5 and int(right) > 16  # it trained: below a uniform guess's loss
    assert "# Generated by graphc" in out
    assert "build_train_step" in graphc.train.__all__ and graphc.train.build_train_step.__doc__

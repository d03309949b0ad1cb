"""Training monitors compiled into the step (issue 17, "Monitoring"; deck 002's training tips).

The oracle: the same training replayed step by step with an unmonitored step on the reference backend
(same permutations, same learning rate), the parameters copied before and after every step, and the
statistics computed from them with NumPy in float64: each layer's outputs over the epoch (mean, std,
units that were 0 for every row) and ||W_after - W_before|| / ||W_before|| per step.
"""
import re
import sys

import numpy as np
import pytest

import graphc
from graphc.nn import Conv2D, Dense, Flatten, Sequential
from graphc.train import History, Trainer, build_train_step, fit
from graphc.train.loop import steps_per_epoch

ROWS, BATCH, EPOCHS, LR, SEED = 20, 8, 2, 0.2, 3  # 20 rows in batches of 8: two full steps and a partial one
DEAD_UNITS = 2  # dense_1's first units get a bias of -10: their ReLUs are 0 for every row


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 3)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _mlp(dead: int = DEAD_UNITS) -> Sequential:
    model = Sequential([Dense(6, "relu"), Dense(2)], input_shape=(3,), seed=1)
    model.layers[0].values["b"][:dead] = -10.0
    return model


def _forward(p: dict, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each layer's outputs from the parameter values, computed in float32 as the model computes them,
    then widened to float64 for the statistics."""
    hidden = np.maximum(x @ p["dense_1.W"] + p["dense_1.b"], np.float32(0))
    return {"dense_1": hidden.astype(np.float64),
            "dense_2": (hidden @ p["dense_2.W"] + p["dense_2.b"]).astype(np.float64)}


def _ratio(before: np.ndarray, after: np.ndarray) -> float:
    before, after = before.astype(np.float64), after.astype(np.float64)
    return float(np.linalg.norm(after - before) / np.linalg.norm(before))


def _numpy_monitors(x, y):
    """Replay fit's epochs with an unmonitored reference step; per epoch, per layer, the statistics and
    the per-step update ratios, from the parameter values before and after each step."""
    trainer = Trainer(_mlp(), graphc.optim.SGD(LR), backend="reference")
    trainer.step_executable(BATCH)
    rng = np.random.default_rng(SEED)
    epochs = []
    for _ in range(EPOCHS):
        perm = rng.permutation(ROWS)
        acts: dict[str, list[np.ndarray]] = {"dense_1": [], "dense_2": []}
        ratios: dict[str, list[float]] = {"dense_1": [], "dense_2": []}
        for s in range(steps_per_epoch(ROWS, BATCH)):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            before = {k: v.copy() for k, v in trainer.state.items()}
            for layer, out in _forward(before, x[idx]).items():
                acts[layer].append(out)
            trainer.run_step(trainer.step_executable(len(idx)), {"x": x[idx], "y": y[idx], "lr": LR, "key": 0})
            for layer in ratios:
                ratios[layer].append(_ratio(before[f"{layer}.W"], trainer.state[f"{layer}.W"]))
        stats = {}
        for layer, outs in acts.items():
            a = np.concatenate(outs)
            stats[layer] = {"mean": a.mean(), "std": a.std(), "update_ratio": np.mean(ratios[layer]),
                            "step_ratios": np.array(ratios[layer])}
        stats["dense_1"]["dead_fraction"] = np.mean(np.all(np.concatenate(acts["dense_1"]) == 0, axis=0))
        epochs.append(stats)
    return epochs, trainer.state


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def oracle(data):
    return _numpy_monitors(*data)


@pytest.fixture(scope="module", params=["reference", "cpu"])
def monitored(request, data):
    """A monitored fit of the MLP on one backend: (backend, its history, its trainer)."""
    model = _mlp()
    trainer = Trainer(model, graphc.optim.SGD(LR), backend=request.param, monitor=True)
    history = fit(model, data, epochs=EPOCHS, batch_size=BATCH, seed=SEED, trainer=trainer, monitor=True,
                  verbose=False)
    return request.param, history, trainer


def _tolerance(backend: str) -> dict:
    # reference: the same float32 trajectory as the oracle's replay; cpu: BLAS and fused kernels round
    # differently, a few float32 ulps per step
    return {"rtol": 1e-9, "atol": 1e-12} if backend == "reference" else {"rtol": 2e-5, "atol": 1e-7}


def test_monitors_equal_numpy_statistics_per_epoch(monitored, oracle):
    backend, history, _ = monitored
    expected, _ = oracle
    tol = _tolerance(backend)
    assert sorted(history.monitor) == ["dense_1", "dense_2"]
    assert sorted(history.monitor["dense_1"]) == ["dead_fraction", "mean", "std", "update_ratio"]
    assert "dead_fraction" not in history.monitor["dense_2"]  # no ReLU: no unit can die
    for stat in ("mean", "std", "update_ratio"):
        for layer in ("dense_1", "dense_2"):
            want = [e[layer][stat] for e in expected]
            np.testing.assert_allclose(history.monitor[layer][stat], want, **tol, err_msg=f"{layer} {stat}")
    assert history.monitor["dense_1"]["dead_fraction"] == [e["dense_1"]["dead_fraction"] for e in expected]
    assert history.monitor["dense_1"]["dead_fraction"][0] == pytest.approx(DEAD_UNITS / 6)


def test_monitors_update_ratio_of_every_step(monitored, oracle):
    backend, _, trainer = monitored
    expected, _ = oracle
    for layer in ("dense_1", "dense_2"):  # the last epoch's steps, the partial one last
        got = trainer.monitors.step_values(layer, "update_ratio")
        np.testing.assert_allclose(got, expected[-1][layer]["step_ratios"], **_tolerance(backend))


def test_monitoring_leaves_training_unchanged(monitored, oracle):
    backend, _, trainer = monitored
    _, state = oracle
    for name, value in state.items():
        np.testing.assert_allclose(trainer.state[name], value, **_tolerance(backend), err_msg=name)


def test_monitor_off_adds_nothing_to_the_step():
    model = _mlp()
    plain = build_train_step(model, BATCH, graphc.optim.SGD(LR), monitor=False)
    default = build_train_step(model, BATCH, graphc.optim.SGD(LR))
    watched = build_train_step(model, BATCH, graphc.optim.SGD(LR), monitor=True)
    assert plain.structural_hash() == default.structural_hash()
    assert len(plain.outputs) == 2  # the loss and the number of correct predictions, nothing else
    assert not any((n.name or "").startswith("monitor/") for n in plain.nodes)
    assert len(watched.outputs) == 2 + 4 + 3  # dense_1: mean, mean_sq, active, ratio; dense_2: mean, mean_sq, ratio
    assert len(plain.nodes) < len(watched.nodes)
    trainer = Trainer(model, graphc.optim.SGD(LR), backend="reference")
    assert trainer.monitors is None
    assert len(trainer.step_executable(BATCH).outputs) == 2
    history = fit(model, _data(), epochs=1, batch_size=BATCH, trainer=trainer, verbose=False)
    assert history.monitor == {}


def test_monitor_outputs_are_named_in_the_printed_step():
    text = build_train_step(_mlp(), BATCH, graphc.optim.SGD(LR), monitor=True).text()
    for name in ("dense_1/mean", "dense_1/mean_sq", "dense_1/active", "dense_1/update_ratio", "dense_2/mean",
                 "dense_2/mean_sq", "dense_2/update_ratio"):
        assert re.search(rf"# test_monitor\.py:\d+ monitor/{name}$", text, re.M), name


def _fit_printed(capsys, model, lr, epochs=1):
    history = fit(model, _data(), epochs=epochs, batch_size=BATCH, optimizer=graphc.optim.SGD(lr),
                  backend="reference", monitor=True, verbose=True)
    return history, capsys.readouterr().err


def test_progress_line_flags_a_learning_rate_out_of_band(capsys):
    history, err = _fit_printed(capsys, _mlp(dead=0), lr=20.0)
    ratio = history.monitor["dense_1"]["update_ratio"][0]
    assert ratio > 1e-2
    assert re.search(rf"epoch 1/1 .*! .*dense_1 update ratio {ratio:.2g} > 0\.01", err), err
    history, err = _fit_printed(capsys, _mlp(dead=0), lr=1e-6)
    assert history.monitor["dense_1"]["update_ratio"][0] < 1e-3
    assert re.search(r"epoch 1/1 .*! .*dense_1 update ratio \S+ < 0\.001", err), err


def test_progress_line_flags_a_layer_of_mostly_dead_relus(capsys):
    history, err = _fit_printed(capsys, _mlp(dead=4), lr=0.01)
    assert history.monitor["dense_1"]["dead_fraction"] == [4 / 6]  # the -10 biases: nothing lifts them
    assert re.search(r"epoch 1/1 .*! .*dense_1 67% dead", err), err
    history, err = _fit_printed(capsys, _mlp(dead=3), lr=0.01)
    assert history.monitor["dense_1"]["dead_fraction"] == [0.5]  # half is not "more than half"
    assert "dead" not in err


def test_conv_layer_units_are_channels():
    """A Conv2D unit is a channel: dead when 0 at every position of every row of the epoch."""
    model = Sequential([Conv2D(4, 3, activation="relu"), Flatten(), Dense(2)], input_shape=(1, 5, 5), seed=2)
    model.layers[0].values["b"][[0, 2]] = -100.0
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 1, 5, 5)).astype(np.float32)
    y = rng.integers(0, 2, 6)
    before = model.layers[0].values["W"].copy()
    history = fit(model, (x, y), epochs=1, batch_size=6, optimizer=graphc.optim.SGD(0.05), backend="reference",
                  monitor=True, verbose=False)
    assert history.monitor["conv2d_1"]["dead_fraction"] == [0.5]
    after = model.layers[0].values["W"]
    assert history.monitor["conv2d_1"]["update_ratio"][0] == pytest.approx(_ratio(before, after), rel=1e-9)


def test_fit_monitor_refuses_a_trainer_built_without_monitors():
    model = _mlp()
    trainer = Trainer(model, backend="reference")
    with pytest.raises(graphc.optim.HyperparameterError, match=r"(?s)monitor=True.*Trainer\(\.\.\., monitor=True\).*"
                                                               r"test_monitor\.py:\d+"):
        fit(model, _data(), epochs=1, trainer=trainer, monitor=True, verbose=False)


def test_history_keeps_monitors_through_to_dict():
    history = History()
    history.append(1, loss=1.0)
    history.append_monitors({"dense_1": {"mean": 0.5, "dead_fraction": 0.25}})
    again = History.from_dict(history.to_dict())
    assert again.monitor == {"dense_1": {"mean": [0.5], "dead_fraction": [0.25]}}


def test_monitor_plot_marks_the_band(tmp_path):
    pytest.importorskip("matplotlib")
    history = fit(_mlp(), _data(), epochs=2, batch_size=BATCH, optimizer=graphc.optim.SGD(LR), backend="reference",
                  monitor=True, verbose=False)
    path = history.plot_monitors(str(tmp_path / "monitor.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_monitor_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    # As if matplotlib were not installed (the test command installs the plot extra): importing it fails.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    history = History()
    with pytest.raises(ImportError, match=r"graphc\[plot\]"):
        history.plot_monitors(str(tmp_path / "monitor.png"))



# -- graphc train --monitor ---------------------------------------------------------------------------------------

def _npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def test_cli_train_monitor_flags_and_reports(tmp_path, capsys):
    from graphc.cli import main

    x, y = _data()
    code = main(["train", _npz(tmp_path, x=x, y=y), "--hidden", "6", "--epochs", "2", "--batch-size", "8",
                 "--lr", "20", "--backend", "reference", "--monitor"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.search(r"epoch 1/2 .*! .*dense_1 update ratio \S+ > 0\.01", err), err
    assert re.search(r"^MLP 3-6-2: training accuracy \d\.\d{4}$", out, re.M), out
    assert re.search(r"^  dense_1: mean \S+  std \S+  dead_fraction \S+  update_ratio \S+$", out, re.M), out


def test_cli_train_without_monitor_reports_no_monitors(tmp_path, capsys):
    from graphc.cli import main

    x, y = _data()
    assert main(["train", _npz(tmp_path, x=x, y=y), "--hidden", "4", "--epochs", "1", "--backend", "reference"]) == 0
    out, err = capsys.readouterr()
    assert "dense_1:" not in out and "!" not in err


def test_cli_train_refuses_data_without_labels_and_a_plot_without_monitors(tmp_path, capsys):
    from graphc.cli import main

    x, _ = _data()
    assert main(["train", _npz(tmp_path, x=x), "--backend", "reference"]) == 2
    assert re.search(r"graphc train: .*data\.npz has no array\(s\) y \(it has x\)", capsys.readouterr().err)
    assert main(["train", "mnist", "--monitor-plot", str(tmp_path / "m.png")]) == 2
    assert "--monitor-plot plots the monitors: add --monitor" in capsys.readouterr().err

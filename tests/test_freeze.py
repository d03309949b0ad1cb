"""Transfer learning: layer.freeze() / unfreeze() and loading layers by name from another model's checkpoint.

The oracle is a NumPy float64 transcription of full-batch gradient descent on a tanh MLP with softmax
cross-entropy, written here, that updates only the parameters it is told to (momentum included).
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.nn import BatchNorm, Dense, Residual, Sequential
from graphc.train import CheckpointError, Trainer, build_train_step, load_checkpoint, save_checkpoint

N, LR, MU = 12, 0.5, 0.9
TRUNK = ("dense_1.W", "dense_1.b")
HEAD = ("dense_2.W", "dense_2.b")


def data():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(N, 3))
    y = np.argmax(x @ rng.normal(size=(3, 3)), axis=1).astype(np.int64)
    return x, y


def mlp(seed: int = 1, head: int = 3, trunk: int = 4, dtype=np.float64) -> Sequential:
    return Sequential([Dense(trunk, "tanh"), Dense(head)], input_shape=(3,), dtype=dtype, seed=seed)


def numpy_gradients(v: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of the mean softmax cross-entropy of tanh(x W1 + b1) W2 + b2, by hand."""
    h = np.tanh(x @ v["dense_1.W"] + v["dense_1.b"])
    z = h @ v["dense_2.W"] + v["dense_2.b"]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    d = (p - np.eye(z.shape[1])[y]) / len(y)
    dh = (d @ v["dense_2.W"].T) * (1.0 - h ** 2)
    return {"dense_1.W": x.T @ dh, "dense_1.b": dh.sum(0), "dense_2.W": h.T @ d, "dense_2.b": d.sum(0)}


def numpy_descent(v, velocity, x, y, steps: int, trained, mu: float = 0.0) -> None:
    """``steps`` full-batch steps of v <- mu v - lr g; p <- p + v on the ``trained`` parameters only
    (mu = 0: plain SGD); ``v`` and ``velocity`` (float64, by parameter name) are updated in place."""
    for _ in range(steps):
        g = numpy_gradients(v, x, y)
        for k in trained:
            velocity[k] = mu * velocity.get(k, 0.0) - LR * g[k]
            v[k] = v[k] + velocity[k]


def values64(model) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in model.named_values().items()}


# -- the module API (nothing compiled) ------------------------------------------------------------------------------

def test_freeze_marks_the_layer_and_everything_inside_it():
    model = Sequential([Dense(3, "tanh"), Residual([Dense(3, "tanh"), Dense(3)]), Dense(2)], input_shape=(3,))
    trunk, block, head = model.layers
    assert not any(m.frozen for m in model.modules())
    assert block.freeze() is block
    assert block.frozen and all(m.frozen for m in block.modules()) and not trunk.frozen and not model.frozen
    assert model.frozen_names() == ("dense_2.W", "dense_2.b", "dense_3.W", "dense_3.b")
    model.freeze()
    assert model.frozen and all(m.frozen for m in model.modules())
    assert "dense_1 Dense(3, tanh) (frozen)" in model.summary()
    block.unfreeze()
    assert model.frozen_names() == ("dense_1.W", "dense_1.b", "dense_4.W", "dense_4.b")
    assert not block.frozen and not model.frozen and head.frozen
    assert "of which frozen: 20" in model.summary()  # dense_1 (12) + dense_4 (8)
    model.unfreeze()
    assert model.frozen_names() == () and "frozen" not in model.summary()


def test_the_step_of_a_frozen_layer_has_no_gradient_or_update_for_it():
    model = mlp()
    model.layers[0].freeze()
    g = build_train_step(model, N, optim.Momentum(LR, MU))
    text = g.text()
    assert "dL/ddense_2.W" in text and "dL/ddense_2.b" in text  # the head's gradients are printed ...
    assert "dL/ddense_1" not in text  # ... the trunk's are not
    assert [p.name for p in g.trainable_params] == list(HEAD)
    wrt = {n.provenance.wrt.name for n in g.nodes if n.provenance is not None and n.provenance.wrt is not None}
    assert wrt == set(HEAD)
    # nothing is differentiated through the trunk: its output only feeds the head's weight gradient
    assert not any(n.provenance is not None and n.provenance.forward.op == "tanh" for n in g.nodes)
    updated = {p.name for p, _ in g.updates}
    assert updated == set(HEAD) | {"dense_2.W.velocity", "dense_2.b.velocity"}
    assert not any(p.name.startswith("dense_1.") and p.name not in TRUNK for p in g.params)  # no trunk slots


# -- training with a frozen trunk, then unfrozen, on both backends ---------------------------------------------------

FROZEN_EPOCHS, UNFROZEN_EPOCHS = 3, 2


@pytest.fixture(scope="module")
def graphc_cache(graphc_cache_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    yield
    mp.undo()


@pytest.fixture(scope="module", params=["reference", "cpu"])
def trained(request, graphc_cache):
    """A model trained 3 full-batch SGD epochs with its trunk frozen, then 2 with it unfrozen, on one
    Trainer; the values after each epoch and the step executables of both phases."""
    x, y = data()
    model = mlp()
    initial = values64(model)
    model.layers[0].freeze()
    trainer = Trainer(model, optim.SGD(LR), backend=request.param)
    after = []
    for _ in range(FROZEN_EPOCHS):
        graphc.fit(model, (x, y), epochs=1, batch_size=N, trainer=trainer, verbose=False)
        after.append({k: v.copy() for k, v in model.named_values().items()})
    frozen_step = trainer.step_executable(N)
    model.unfreeze()
    for _ in range(UNFROZEN_EPOCHS):
        graphc.fit(model, (x, y), epochs=1, batch_size=N, trainer=trainer, verbose=False)
        after.append({k: v.copy() for k, v in model.named_values().items()})
    return {"initial": initial, "after": after, "frozen_step": frozen_step,
            "unfrozen_step": trainer.step_executable(N)}


def test_a_frozen_layer_stays_bit_identical_while_the_head_trains(trained):
    initial = trained["initial"]
    for epoch in trained["after"][:FROZEN_EPOCHS]:
        for k in TRUNK:
            assert epoch[k].tobytes() == initial[k].tobytes(), k
    last = trained["after"][FROZEN_EPOCHS - 1]
    for k in HEAD:
        assert np.max(np.abs(last[k] - initial[k])) > 1e-3, k


def test_the_head_follows_descent_on_the_head_alone(trained):
    x, y = data()
    expected, everything = dict(trained["initial"]), dict(trained["initial"])
    numpy_descent(expected, {}, x, y, FROZEN_EPOCHS, HEAD)
    numpy_descent(everything, {}, x, y, FROZEN_EPOCHS, TRUNK + HEAD)
    got = trained["after"][FROZEN_EPOCHS - 1]
    for k in HEAD:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-10, atol=1e-12, err_msg=k)
        # the oracle tells a frozen trunk apart: training everything gives another head
        assert np.max(np.abs(everything[k] - expected[k])) > 1e-4, k


def test_unfreezing_recompiles_the_step_and_the_trunk_trains_again(trained):
    assert trained["unfrozen_step"] is not trained["frozen_step"]
    assert "dL/ddense_1.W" not in trained["frozen_step"].source_graph.text()
    assert "dL/ddense_1.W" in trained["unfrozen_step"].source_graph.text()
    x, y = data()
    expected = dict(trained["initial"])
    numpy_descent(expected, {}, x, y, FROZEN_EPOCHS, HEAD)
    numpy_descent(expected, {}, x, y, UNFROZEN_EPOCHS, TRUNK + HEAD)
    got = trained["after"][-1]
    for k in TRUNK + HEAD:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert np.max(np.abs(got["dense_1.W"] - trained["initial"]["dense_1.W"])) > 1e-4


def test_optimizer_slots_of_a_frozen_layer_wait_and_resume():
    # unfrozen 2 epochs, frozen 2, unfrozen 2, on one Trainer with momentum: the trunk's velocity is kept
    # (not updated, not reset) while it is frozen, and resumes from there
    x, y = data()
    model = mlp()
    expected, velocity = values64(model), {}
    trainer = Trainer(model, optim.Momentum(LR, MU), backend="reference")
    for phase, trained_params in enumerate((TRUNK + HEAD, HEAD, TRUNK + HEAD)):
        if phase == 1:
            model.layers[0].freeze()
        else:
            model.layers[0].unfreeze()
        before = model.named_values()
        graphc.fit(model, (x, y), epochs=2, batch_size=N, trainer=trainer, verbose=False)
        numpy_descent(expected, velocity, x, y, 2, trained_params, MU)
        assert ("dense_1.W.velocity" in trainer.state) == (phase != 1)
        if phase == 1:
            for k in TRUNK:
                assert model.named_values()[k].tobytes() == before[k].tobytes(), k
    for k in TRUNK + HEAD:
        np.testing.assert_allclose(model.named_values()[k], expected[k], rtol=1e-10, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(trainer.state[k + ".velocity"], velocity[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_a_frozen_batchnorm_normalizes_with_its_running_statistics_and_keeps_them():
    x, y = data()
    model = Sequential([Dense(4), BatchNorm(), Dense(3)], input_shape=(3,), dtype=np.float64, seed=2)
    model.layers[1].freeze()
    v = values64(model)
    history = graphc.fit(model, (x, y), epochs=2, batch_size=N, optimizer=optim.SGD(LR), backend="reference",
                         verbose=False)
    for k in ("gamma", "beta", "running_mean", "running_var"):
        assert model.named_values()[f"batchnorm_1.{k}"].tobytes() == v[f"batchnorm_1.{k}"].tobytes(), k
    # the first epoch's loss (one full batch, before its update) is the evaluation-mode loss: running
    # statistics 0 and 1, gamma 1, beta 0; batch statistics would give another
    h = (x @ v["dense_1.W"] + v["dense_1.b"]) / np.sqrt(1.0 + 1e-5)
    z = h @ v["dense_2.W"] + v["dense_2.b"]
    z = z - z.max(axis=1, keepdims=True)
    loss = -np.mean((z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[np.arange(N), y])
    assert history["loss"][0] == pytest.approx(loss, rel=1e-12)


def test_training_a_model_frozen_everywhere_is_refused():
    x, y = data()
    model = mlp().freeze()
    with pytest.raises(graphc.HyperparameterError, match=r"fit: every parameter of model is frozen, so a training "
                                                         r"step would change nothing.*\n  at .*test_freeze.py:\d+"):
        graphc.fit(model, (x, y), epochs=1, batch_size=N, backend="reference", verbose=False)


# -- loading layers by name from another model's checkpoint ----------------------------------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A model trained one epoch with fit's checkpoint (weights, momentum slots, meta), and its path."""
    path = str(tmp_path_factory.mktemp("freeze") / "source.npz")
    model = mlp(seed=3)
    graphc.fit(model, data(), epochs=1, batch_size=N, optimizer=optim.Momentum(LR, MU), backend="reference",
               checkpoint=path, verbose=False)
    return model, path


def test_load_layers_copies_the_named_layers_exactly(source):
    trained, path = source
    target = mlp(seed=7, head=2)
    head_before = target.layers[1].values["W"].copy()
    loaded = graphc.train.load_layers(target, path, ["dense_1"])
    assert loaded == list(TRUNK)
    for k in ("W", "b"):
        got, want = target.layers[0].values[k], trained.layers[0].values[k]
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), k
    assert target.layers[1].values["W"].tobytes() == head_before.tobytes()
    # the realistic next step: train a new head on the frozen trunk; the trunk stays the checkpoint's
    target.layers[0].freeze()
    x, y = data()
    graphc.fit(target, (x, y % 2), epochs=2, batch_size=N, optimizer=optim.SGD(LR), backend="reference", verbose=False)
    assert target.layers[0].values["W"].tobytes() == trained.layers[0].values["W"].tobytes()
    assert not np.array_equal(target.layers[1].values["W"], head_before)


def test_load_layers_maps_names_and_brings_inner_layers(tmp_path):
    model = Sequential([Dense(3, "tanh"), Residual([Dense(3, "tanh"), Dense(3)]), Dense(2)], input_shape=(3,), seed=4)
    path = str(tmp_path / "weights.npz")
    save_checkpoint(path, model.named_values())
    same = Sequential([Dense(3, "tanh"), Residual([Dense(3, "tanh"), Dense(3)]), Dense(5)], input_shape=(3,), seed=9)
    assert graphc.train.load_layers(same, path, "residual_1") == ["dense_2.W", "dense_2.b", "dense_3.W", "dense_3.b"]
    renamed = Sequential([Dense(3, "tanh", name="trunk"), Dense(4)], input_shape=(3,), seed=9)
    assert graphc.train.load_layers(renamed, path, {"trunk": "dense_1"}) == ["trunk.W", "trunk.b"]
    saved, _ = load_checkpoint(path)
    for k in ("dense_2.W", "dense_2.b", "dense_3.W", "dense_3.b"):
        assert same.named_values()[k].tobytes() == saved[k].tobytes(), k
    assert renamed.named_values()["trunk.W"].tobytes() == saved["dense_1.W"].tobytes()


def test_load_layers_refuses_a_layer_the_model_lacks(source):
    _, path = source
    with pytest.raises(CheckpointError, match=r"load_layers: the model has no layer 'conv2d_1'; its layers: "
                                              r"\['dense_1', 'dense_2'\]\n  at .*test_freeze.py:\d+"):
        graphc.train.load_layers(mlp(), path, ["dense_1", "conv2d_1"])


def test_load_layers_refuses_a_layer_the_checkpoint_lacks(source):
    _, path = source
    target = Sequential([Dense(4, "tanh", name="trunk"), Dense(3)], input_shape=(3,), dtype=np.float64)
    with pytest.raises(CheckpointError, match=r"checkpoint .*source.npz has no 'trunk.W', 'trunk.b': no layer of that "
                                              r"name \(its weights: \['dense_1.W', 'dense_1.b', 'dense_2.W', "
                                              r"'dense_2.b'\]\)\n  at .*test_freeze.py:\d+"):
        graphc.train.load_layers(target, path, ["trunk"])


def test_load_layers_refuses_another_shape_naming_both_and_copies_nothing(source):
    _, path = source
    target = mlp(seed=8, head=2)
    before = {k: v.copy() for k, v in target.named_values().items()}
    with pytest.raises(CheckpointError, match=r"load_layers: dense_2.W in checkpoint .*source.npz is \[4, 3\] but the "
                                              r"model's dense_2.W is \[4, 2\]\n  at .*test_freeze.py:\d+"):
        graphc.train.load_layers(target, path, ["dense_1", "dense_2"])
    for k, v in target.named_values().items():  # dense_1 fitted, but nothing was copied
        assert v.tobytes() == before[k].tobytes(), k


def test_load_layers_refuses_another_dtype(source):
    _, path = source
    with pytest.raises(CheckpointError, match=r"array 'dense_1.W' is float64 where the model's is float32"):
        graphc.train.load_layers(mlp(dtype=np.float32), path, ["dense_1"])

"""Batch-size schedules (``fit(..., batch_size=train.BatchSizeSchedule(...))``) and the ConvTranspose2D and
Upsample layers (issue 17, deck 002: "Don't decay the learning rate, increase the batch size"; upsampling).

Oracles: a NumPy float64 transcription of shuffled minibatch momentum SGD on a tanh MLP with softmax
cross-entropy, written here (the permutation of each epoch drawn as fit documents it: seeded
``default_rng(seed).permutation`` once per epoch); np.repeat and a loop-by-loop scatter for the layers'
values; float64 central differences (check_grad) for their gradients; the reference backend for cpu.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc
from graphc import dsl, nn, optim, train
from graphc.backends import compile as compile_graph
from graphc.ir import Graph
from graphc.nn import Context, Conv2D, Dense, Sequential
from graphc.ops import reduce
from graphc.optim import HyperparameterError
from graphc.train import loop

# The new names are looked up when a test runs (not imported at the top), so that on a graphc without
# them each test fails on its own instead of the whole file failing to import.
HERE = re.escape(__file__.rsplit("/", 1)[-1]) + r":\d+"  # the user's file:line in error messages
N, LR, MU, SEED = 10, 0.3, 0.9, 3
SIZES = {0: 4, 1: 6, 2: 4, 3: 10}  # 4 again at epoch 2: its step must be reused, not recompiled


# -- the schedule itself (nothing compiled) --------------------------------------------------------------------------

def test_a_batch_size_schedule_gives_each_epoch_the_size_that_started_last():
    schedule = train.BatchSizeSchedule({5: 64, 0: 32, 10: 128})
    assert [schedule(t) for t in (0, 4, 5, 9, 10, 99)] == [32, 32, 64, 64, 128, 128]
    assert schedule.sizes == {0: 32, 5: 64, 10: 128}


def test_increase_multiplies_the_size_every_few_epochs_up_to_the_maximum():
    schedule = train.BatchSizeSchedule.increase(32, factor=2, every=3, max_batch_size=100)
    assert schedule.sizes == {0: 32, 3: 64, 6: 100}
    assert [schedule(t) for t in range(8)] == [32, 32, 32, 64, 64, 64, 100, 100]
    assert train.BatchSizeSchedule.increase(8, factor=4, every=1, max_batch_size=8).sizes == {0: 8}


@pytest.mark.parametrize("make, message", [
    (lambda: train.BatchSizeSchedule({1: 32}), r"does not say the batch size of epoch 0"),
    (lambda: train.BatchSizeSchedule({0: 32, 2: 0}), r"the batch size of epoch 2=0 must be a whole number >= 1"),
    (lambda: train.BatchSizeSchedule({0: 32, -1: 8}), r"a first epoch=-1 must be a whole number >= 0"),
    (lambda: train.BatchSizeSchedule([32, 64]), r"must be a non-empty dict"),
    (lambda: train.BatchSizeSchedule.increase(32, factor=1), r"factor=1 must be a whole number >= 2"),
    (lambda: train.BatchSizeSchedule.increase(32, max_batch_size=16), r"max_batch_size=16 must be a whole number >= 32"),
])
def test_a_bad_schedule_is_refused_at_the_users_line(make, message):
    with pytest.raises(HyperparameterError, match=message + r"(.|\n)*" + HERE):
        make()


def test_last_batch_drop_with_a_size_larger_than_the_data_is_refused_before_compiling(monkeypatch):
    monkeypatch.setattr(loop, "compile_graph", lambda *a, **k: pytest.fail("compiled before checking"))
    model = mlp()
    with pytest.raises(HyperparameterError, match=r"last_batch='drop' with 10 rows and batch_size 16"):
        graphc.fit(model, data(), epochs=3, batch_size=train.BatchSizeSchedule({0: 4, 2: 16}), last_batch="drop",
                   verbose=False)


# -- fit across sizes: one compile per size, the same numbers as NumPy ----------------------------------------------

def data():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(N, 3))
    y = np.argmax(x @ rng.normal(size=(3, 3)), axis=1).astype(np.int64)
    return x, y


def mlp() -> Sequential:
    return Sequential([Dense(4, "tanh"), Dense(3)], input_shape=(3,), dtype=np.float64, seed=1)


def numpy_loss_and_gradients(v: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray):
    """Mean softmax cross-entropy of tanh(x W1 + b1) W2 + b2 and its gradients, by hand."""
    h = np.tanh(x @ v["dense_1.W"] + v["dense_1.b"])
    z = h @ v["dense_2.W"] + v["dense_2.b"]
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    d = (np.exp(logp) - np.eye(z.shape[1])[y]) / len(y)
    dh = (d @ v["dense_2.W"].T) * (1.0 - h ** 2)
    grads = {"dense_1.W": x.T @ dh, "dense_1.b": dh.sum(0), "dense_2.W": h.T @ d, "dense_2.b": d.sum(0)}
    return -logp[np.arange(len(y)), y].mean(), grads


def epoch_batches(perm: np.ndarray, size: int, last_batch: str) -> list[np.ndarray]:
    """fit's documented minibatches: the leftover rows as a smaller batch ("partial"), skipped ("drop"),
    or completed from the start of the permutation ("wrap")."""
    starts = range(0, len(perm) - size + 1 if last_batch == "drop" else len(perm), size)
    rows = np.concatenate([perm, perm]) if last_batch == "wrap" else perm
    return [rows[start:start + size] for start in starts]


def numpy_fit(v: dict[str, np.ndarray], x, y, sizes: list[int], last_batch: str = "partial") -> list[float]:
    """Momentum SGD (v <- mu v - lr g; p <- p + v) over shuffled minibatches, one epoch per entry of
    ``sizes``; returns each epoch's mean loss over the rows it trained on."""
    rng, velocity, losses = np.random.default_rng(SEED), {k: 0.0 for k in v}, []
    for size in sizes:
        total, rows = 0.0, 0
        for idx in epoch_batches(rng.permutation(len(x)), size, last_batch):
            loss, g = numpy_loss_and_gradients(v, x[idx], y[idx])
            total, rows = total + loss * len(idx), rows + len(idx)
            for k in v:
                velocity[k] = MU * velocity[k] - LR * g[k]
                v[k] = v[k] + velocity[k]
        losses.append(total / rows)
    return losses


@pytest.fixture(scope="module")
def scheduled_fit(tmp_path_factory):
    """fit on cpu with SIZES, counting every compile by (graph name, backend), in a fresh on-disk cache."""
    compiles: list[tuple[str, str]] = []

    def counting_compile(outputs, backend="reference", **options):
        compiles.append((outputs[0].graph.name, backend))
        return compile_graph(outputs, backend=backend, **options)

    def scheduled(model):  # one line of code for both fits: the cache entry is keyed by the graph as built,
        # its source lines included (they are in the Program's error messages)
        return graphc.fit(model, data(), epochs=len(SIZES), batch_size=train.BatchSizeSchedule(SIZES),
                          optimizer=optim.Momentum(LR, MU), seed=SEED, backend="cpu", verbose=False)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAPHC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(loop, "compile_graph", counting_compile)
        model = mlp()
        start = {k: v.copy() for k, v in model.named_values().items()}
        history = scheduled(model)
        fit_compiles = list(compiles)
        # Another model and Trainer (as another process running the script would) compiles the same steps:
        # the on-disk cache has them.
        second = scheduled(mlp()).trainer.step_executable(6)
        yield model, start, history, fit_compiles, second


def test_each_batch_size_compiles_once_and_is_reused_when_the_schedule_comes_back_to_it(scheduled_fit):
    model, _, history, compiles, _ = scheduled_fit
    steps_on_cpu = sorted(name for name, backend in compiles if backend == "cpu")
    assert steps_on_cpu == ["train_step_b10", "train_step_b4", "train_step_b6"]  # b4 once, for epochs 1 and 3
    # the partial last batches (10 % 4 = 2 rows, 10 % 6 = 4 rows) run on NumPy, each compiled once too
    assert sorted(name for name, backend in compiles if backend == "reference") == ["train_step_b2", "train_step_b4"]
    assert set(model._trainer._steps) == {(4, "cpu"), (6, "cpu"), (10, "cpu"), (2, "reference"), (4, "reference")}
    assert history["batch_size"] == [4.0, 6.0, 4.0, 10.0]


def test_a_second_trainer_finds_a_scheduled_size_in_the_on_disk_cache(scheduled_fit):
    assert scheduled_fit[4].stats["cache"] == "hit"


def test_training_across_batch_sizes_equals_numpy_float64_minibatch_momentum(scheduled_fit):
    model, start, history, _, _ = scheduled_fit
    x, y = data()
    expected = dict(start)
    losses = numpy_fit(expected, x, y, [SIZES[t] for t in range(len(SIZES))])
    np.testing.assert_allclose(history["loss"], losses, rtol=1e-10)
    for k, v in model.named_values().items():  # parameters and momentum carried over between sizes
        np.testing.assert_allclose(v, expected[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("last_batch", ["drop", "wrap"])
def test_last_batch_applies_at_each_size_of_the_schedule(scheduled_fit, last_batch):
    # scheduled_fit first: its on-disk cache holds these steps (last_batch does not change the step graph)
    model = mlp()
    expected = {k: v.copy() for k, v in model.named_values().items()}
    history = graphc.fit(model, data(), epochs=len(SIZES), batch_size=train.BatchSizeSchedule(SIZES),
                         optimizer=optim.Momentum(LR, MU), seed=SEED, backend="cpu", verbose=False,
                         last_batch=last_batch)
    losses = numpy_fit(expected, *data(), [SIZES[t] for t in range(len(SIZES))], last_batch)
    np.testing.assert_allclose(history["loss"], losses, rtol=1e-10)
    for k, v in model.named_values().items():
        np.testing.assert_allclose(v, expected[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_the_reference_backend_trains_the_same_schedule_to_the_same_numbers(scheduled_fit):
    model = mlp()
    history = graphc.fit(model, data(), epochs=len(SIZES), batch_size=train.BatchSizeSchedule(SIZES),
                         optimizer=optim.Momentum(LR, MU), seed=SEED, backend="reference", verbose=False)
    np.testing.assert_allclose(history["loss"], scheduled_fit[2]["loss"], rtol=1e-10)
    for k, v in model.named_values().items():
        np.testing.assert_allclose(v, scheduled_fit[0].named_values()[k], rtol=1e-9, atol=1e-12, err_msg=k)


# -- ConvTranspose2D and Upsample ------------------------------------------------------------------------------------

def numpy_conv_transpose(x, w, b, stride, padding, output_padding):
    """Every input pixel scatters its kernel-weighted copy into the output, loop by loop (PyTorch's definition)."""
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    oh = (h - 1) * stride - 2 * padding + kh + output_padding
    ow = (wd - 1) * stride - 2 * padding + kw + output_padding
    out = np.zeros((n, o, oh, ow)) + b.reshape(1, o, 1, 1)
    for i in range(h):
        for j in range(wd):
            for ki in range(kh):
                for kj in range(kw):
                    r, s = i * stride + ki - padding, j * stride + kj - padding
                    if 0 <= r < oh and 0 <= s < ow:
                        out[:, :, r, s] += x[:, :, i, j] @ w[:, :, ki, kj]
    return out


def run_layer(layer, in_shape, x):
    """The layer (its bias, if any, set to nonzero values) applied to ``x`` by the reference backend."""
    model = Sequential([layer], input_shape=in_shape, dtype=np.float64, seed=2)
    if "b" in layer.values:
        layer.values["b"][...] = np.arange(1, len(layer.values["b"]) + 1) / 4
    with Graph("layer") as g:
        out = model(dsl.input("x", x.shape, "float64"))
        g.output(out)
    return compile_graph([out], backend="reference")(x)


@pytest.mark.parametrize("stride, padding, output_padding", [(1, 0, 0), (2, 1, 1), (3, 1, 0)])
def test_conv_transpose2d_layer_equals_the_scatter_definition(stride, padding, output_padding):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
    layer = nn.ConvTranspose2D(2, (3, 2), stride=stride, padding=padding, output_padding=output_padding)
    out = run_layer(layer, (3, 4, 5), x)
    expected = numpy_conv_transpose(x, layer.values["W"], layer.values["b"], stride, padding, output_padding)
    assert layer.out_shape == expected.shape[1:] and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert layer.values["W"].shape == (3, 2, 3, 2)  # [in, out, kh, kw], conv_transpose2d's layout


def test_conv_transpose2d_is_he_initialized_for_the_products_one_output_pixel_sums():
    # stride 2, kernel 4: each output pixel sums 32 channels x 16 taps / 4 = 128 products, so W ~ N(0, 2/128)
    layer = nn.ConvTranspose2D(64, 4, stride=2, padding=1)
    Sequential([layer], input_shape=(32, 5, 5), seed=0)
    assert layer.values["W"].shape == (32, 64, 4, 4) and layer.values["W"].dtype == np.float32
    assert abs(layer.values["W"].std() / np.sqrt(2 / 128) - 1) < 0.03  # 32768 draws: a 0.4% standard error
    np.testing.assert_array_equal(layer.values["b"], np.zeros(64))


def test_upsample_repeats_every_pixel_into_a_block():
    x = np.random.default_rng(1).normal(size=(2, 3, 2, 3))
    layer = nn.Upsample((2, 3))
    out = run_layer(layer, (3, 2, 3), x)
    assert layer.out_shape == (3, 4, 9) and layer.values == {}
    np.testing.assert_array_equal(out, np.repeat(np.repeat(x, 2, axis=2), 3, axis=3))


@pytest.mark.parametrize("make", [lambda: nn.ConvTranspose2D(2, 3, stride=2, padding=1, output_padding=1),
                                  lambda: nn.Upsample(2)], ids=["conv_transpose2d", "upsample"])
def test_the_layers_gradients_equal_float64_central_differences(make):
    layer = make()
    rng = np.random.default_rng(2)
    model = Sequential([layer], input_shape=(2, 3, 3), dtype=np.float64, seed=3)
    with Graph("grad"):
        x = dsl.input("x", (2, 2, 3, 3), "float64")
        ctx = Context()
        out = model(x, ctx)
        weights = dsl.param("weights", rng.normal(size=out.shape))
        loss = reduce.sum(out * weights)  # a generic cotangent: every output entry weighted differently
        result = graphc.check_grad(loss, [x, *ctx._params.values()], {"x": rng.normal(size=(2, 2, 3, 3))})
    assert result.ok, result


def test_layer_arguments_and_input_shapes_are_checked_at_the_users_line():
    with pytest.raises(graphc.ShapeError, match=r"Upsample: factor must be >= 1, got 0\n  at .*" + HERE):
        nn.Upsample(0)
    with pytest.raises(graphc.ShapeError, match=r"ConvTranspose2D: filters must be >= 1, got 0\n  at .*" + HERE):
        nn.ConvTranspose2D(0, 3)
    with pytest.raises(graphc.ShapeError, match=r"ConvTranspose2D expects \[channels, height, width\] inputs, "
                                                r"got \[4\]\n  at .*" + HERE):
        Sequential([nn.ConvTranspose2D(2, 3)], input_shape=(4,))
    with pytest.raises(graphc.ShapeError, match=r"upsample_1: Upsample expects .* got \[3, 4\]\n  at .*" + HERE):
        Sequential([nn.Upsample(2)], input_shape=(3, 4))
    with pytest.raises(graphc.ShapeError, match=r"padding \(3, 3\) leaves an empty output for input \[1, 2, 2\]"):
        Sequential([nn.ConvTranspose2D(1, 2, padding=3)], input_shape=(1, 2, 2))


# -- a tiny convolutional autoencoder trains, cpu and reference step for step ----------------------------------------

def autoencoder() -> Sequential:
    """8x8 -> Conv2D stride 2 -> 4x4 -> Upsample -> 8x8 -> Conv2D stride 2 -> 4x4 -> ConvTranspose2D stride 2 -> 8x8."""
    return Sequential([Conv2D(3, 3, stride=2, padding=1, activation="tanh"), nn.Upsample(2),
                       Conv2D(3, 3, stride=2, padding=1, activation="tanh"),
                       nn.ConvTranspose2D(1, 4, stride=2, padding=1)], input_shape=(1, 8, 8), dtype=np.float64, seed=4)


def reconstruction_step(backend: str):
    """A step minimizing the mean squared reconstruction error with SGD, compiled for ``backend``."""
    model = autoencoder()
    with Graph("autoencoder_step") as g:
        x = dsl.input("x", (4, 1, 8, 8), "float64")
        ctx = Context(training=True)
        loss = reduce.mean((model(x, ctx) - x) ** 2.0)
        optim.SGD(0.2).minimize(loss, list(ctx._params.values()), 0.2)
        g.output(loss)
    return compile_graph([loss], backend=backend)


def test_a_conv_autoencoder_with_upsample_and_conv_transpose_trains_the_same_on_cpu_and_reference():
    xs = np.random.default_rng(6).uniform(-1, 1, size=(4, 1, 8, 8))
    xs = (xs + np.roll(xs, 1, axis=3)) / 2  # some spatial correlation to learn
    cpu, ref = reconstruction_step("cpu"), reconstruction_step("reference")
    losses = [(float(cpu(xs)), float(ref(xs))) for _ in range(30)]
    np.testing.assert_allclose([c for c, _ in losses], [r for _, r in losses], rtol=1e-9)
    assert losses[-1][0] < 0.7 * losses[0][0]


def test_a_scheduled_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run(tmp_path):
    def run(epochs, **kw):
        model = mlp()
        history = graphc.fit(model, data(), epochs=epochs, batch_size=train.BatchSizeSchedule(SIZES),
                             optimizer=optim.Momentum(LR, MU), seed=SEED, backend="reference", verbose=False, **kw)
        return model, history

    whole, whole_history = run(len(SIZES))
    path = str(tmp_path / "ckpt.npz")
    run(2, checkpoint=path)  # sizes 4 and 6; the resumed run continues with 4 and 10
    resumed, resumed_history = run(len(SIZES), checkpoint=path, resume=True)
    assert resumed_history["batch_size"] == whole_history["batch_size"] == [4.0, 6.0, 4.0, 10.0]
    np.testing.assert_array_equal(resumed_history["loss"], whole_history["loss"])
    for k, v in resumed.named_values().items():
        np.testing.assert_array_equal(v, whole.named_values()[k], err_msg=k)

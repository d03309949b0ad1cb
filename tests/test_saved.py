"""Saved models (graphc.save / graphc.load): a model or a graph comes back from one file, without its source,
predicting, compiling and fine-tuning exactly like the original; damaged, foreign and newer files are refused."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.nn import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Dropout,
    Flatten,
    Maxout,
    MaxPool2D,
    Module,
    RandomFlip,
    RandomShift,
    Residual,
    Sequential,
    Upsample,
    layers,
)
from graphc.saved import SavedModelError
from graphc.train.checkpoint import save_checkpoint
from graphc.train.loop import build_eval, build_train_step

REPO = Path(__file__).resolve().parents[1]

swish = graphc.elementwise("saved_swish", lambda x: x * graphc.sympy_sigmoid(x))


def randomized(model: Module, seed: int = 3) -> Module:
    """``model`` with every value (weights and batch-norm statistics) drawn at random: nothing at its default."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        for k, v in m.values.items():
            m.values[k] = (rng.uniform(0.5, 1.5, v.shape) if k == "running_var" else rng.normal(0, 0.5, v.shape)
                           ).astype(v.dtype)
    return model


def every_layer_model() -> Sequential:
    """One model with every graphc.nn layer type, a user SymPy activation, named initializers and a frozen layer."""
    model = Sequential([
        Conv2D(4, 3, padding=1, init="glorot_normal"), BatchNorm(momentum=0.8, eps=1e-3), Activation("relu"),
        Residual([Conv2D(4, 3, padding=1), BatchNorm()], shortcut=[Conv2D(4, 1)], activation="relu"),
        MaxPool2D(2), ConvTranspose2D(3, 2, stride=2, output_padding=0), Upsample((1, 2)), AvgPool2D(2, stride=2),
        RandomShift(1), RandomFlip(), Flatten(), Dropout(0.3), Dense(8, "tanh", init=graphc.nn.init.normal(0.05)),
        Activation(swish), Maxout(5, pieces=3), Dense(3, "leaky_relu"),
    ], input_shape=(1, 8, 8), seed=7, dtype=np.float64, name="zoo")
    model.layers[0].freeze()
    model.layers[3].body[1].freeze()  # a layer inside a residual block
    return randomized(model)


CONFIG_SKIP = {"values", "_graph_params", "_trainer", "layers", "body", "shortcut"}


def config(module: Module) -> dict:
    """A layer's configuration as comparable values (functions by name)."""
    return {k: getattr(v, "__name__", v) for k, v in vars(module).items() if k not in CONFIG_SKIP}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    model = every_layer_model()
    path = str(tmp_path_factory.mktemp("zoo") / "zoo.graphc")
    assert graphc.save(model, path) == path
    return model, graphc.load(path)


def test_the_zoo_has_every_layer_type():
    """Guard: a layer type added to graphc.nn must join every_layer_model, so that its round trip is tested."""
    concrete = {name for name, cls in vars(layers).items() if isinstance(cls, type) and issubclass(cls, Module)
                and name not in ("Module", "RandomLayer", "_Pool")}
    assert concrete == {type(m).__name__ for m in every_layer_model().modules()}


def test_every_layer_type_round_trips_its_configuration_weights_and_frozen_flags(zoo):
    original, loaded = zoo
    assert [type(m) for m in loaded.modules()] == [type(m) for m in original.modules()]
    for a, b in zip(original.modules(), loaded.modules()):
        assert config(b) == config(a), a.name
        assert b.trainable == a.trainable
        assert b.values.keys() == a.values.keys()
        for k in a.values:
            assert b.values[k].dtype == a.values[k].dtype and np.array_equal(b.values[k], a.values[k]), f"{a.name}.{k}"
    assert loaded.frozen_names() == original.frozen_names() == (
        "conv2d_1.W", "conv2d_1.b", "batchnorm_2.gamma", "batchnorm_2.beta", "batchnorm_2.running_mean",
        "batchnorm_2.running_var")
    assert loaded.summary() == original.summary()


def test_a_loaded_model_declares_the_same_training_and_inference_graphs(zoo):
    """Same nodes, attributes (dropout's and augmentation's salts), source lines and trainable set: the loaded
    model trains and predicts as the original does on every backend."""
    original, loaded = zoo
    for build in (lambda m: build_train_step(m, 4, optim.Adam(1e-3)), lambda m: build_eval(m, 2)):
        a, b = build(original), build(loaded)
        assert b.text() == a.text()
        assert b.structural_hash() == a.structural_hash()
        assert [p.name for p in b.trainable_params] == [p.name for p in a.trainable_params]


def test_a_loaded_model_predicts_as_the_original_on_the_reference_backend(zoo):
    original, loaded = zoo
    x = np.random.default_rng(0).normal(size=(5, 1, 8, 8))
    expected = graphc.train.predict_outputs(original, x, backend="reference")
    assert np.array_equal(graphc.train.predict_outputs(loaded, x, backend="reference"), expected)


# -- cpu: predictions bit for bit, one fine-tuning epoch bit for bit --------------------------------------------

def mlp() -> Sequential:
    return randomized(Sequential([Dense(16, "relu"), Dropout(0.25), Dense(10)], input_shape=(12,), seed=1), seed=5)


def data(n: int = 48):
    rng = np.random.default_rng(2)
    return rng.normal(size=(n, 12)).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)


def test_a_loaded_model_predicts_bit_for_bit_on_cpu(tmp_path):
    original = mlp()
    loaded = graphc.load(graphc.save(original, str(tmp_path / "mlp.graphc")))
    x, _ = data()
    expected = graphc.train.predict_outputs(original, x, backend="cpu")
    assert np.array_equal(graphc.train.predict_outputs(loaded, x, backend="cpu"), expected)
    assert np.array_equal(graphc.train.predict(loaded, x, backend="cpu"), expected.argmax(axis=1))


def test_one_fine_tuning_epoch_from_a_loaded_model_equals_one_from_the_original(tmp_path):
    original = mlp()
    loaded = graphc.load(graphc.save(original, str(tmp_path / "mlp.graphc")))
    runs = [graphc.fit(m, data(), epochs=1, batch_size=16, optimizer=optim.Adam(1e-2), seed=4, backend="cpu",
                       verbose=False) for m in (original, loaded)]
    assert runs[1]["loss"] == runs[0]["loss"]
    trained, fine_tuned = original.named_values(), loaded.named_values()
    assert fine_tuned.keys() == trained.keys()
    for k in trained:
        assert np.array_equal(fine_tuned[k], trained[k]), k
    assert not np.array_equal(trained["dense_1.W"], mlp().named_values()["dense_1.W"])  # it did train


# -- graphs ------------------------------------------------------------------------------------------------------

def swish_graph() -> graphc.Graph:
    """A training step over conv, a user SymPy activation, a constant and a parameter update, with gradients."""
    rng = np.random.default_rng(1)
    with graphc.Graph("swish_step") as g:
        x = graphc.input("x", (2, 1, 5, 5), "float64")
        w = graphc.param("w", rng.normal(size=(2, 1, 3, 3)))
        v = graphc.param("v", rng.normal(size=(18, 3)))
        scale = graphc.constant(np.array([0.5, -1.0, 2.0]))
        h = graphc.reshape(swish(graphc.conv2d(x, w, padding=1)), (2, 50))[:, :18]
        loss = graphc.mean(graphc.square(graphc.leaky_relu(h @ v, alpha=0.2) * scale))
        dw, dv = graphc.grad(loss, [w, v])
        g.output(loss, dw)
        g.update(v, v - 0.1 * dv)
    return g


def feeds():
    return {"x": np.random.default_rng(9).normal(size=(2, 1, 5, 5))}


def test_a_graph_round_trips_nodes_provenance_and_values(tmp_path):
    original = swish_graph()
    loaded = graphc.load(graphc.save(original, str(tmp_path / "g.graphc")))
    assert isinstance(loaded, graphc.Graph) and loaded.name == "swish_step"
    assert loaded.text() == original.text()  # ops, attrs, shapes, dtypes, names, source lines, provenance
    assert loaded.structural_hash() == original.structural_hash()
    assert [(p.name, n.name) for p, n in loaded.updates] == [(p.name, n.name) for p, n in original.updates]
    for a, b in zip(original.nodes, loaded.nodes):
        assert (b.op, b.shape, b.dtype, b.name, b.loc) == (a.op, a.shape, a.dtype, a.name, a.loc)
        if a.value is not None:  # constants and parameters, 0-d ones included
            assert b.value.shape == a.value.shape and b.value.dtype == a.value.dtype
            assert np.array_equal(b.value, a.value)
    ref = graphc.backends.reference
    expected = ref.evaluate(original, feeds())
    for a, b in zip(ref.evaluate(loaded, feeds()), expected):
        assert np.array_equal(a, b)


def test_a_loaded_graph_compiles_to_the_reference_outputs_of_the_original(tmp_path):
    original = swish_graph()
    expected = graphc.backends.reference.evaluate(original, feeds())
    loaded = graphc.load(graphc.save(original, str(tmp_path / "g.graphc")))
    exe = graphc.compile([graphc.Tensor(o, loaded) for o in loaded.outputs], backend="cpu")
    v_before = exe.params["v"].copy()
    outs = exe(**feeds())
    for a, b in zip(outs, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert not np.array_equal(exe.params["v"], v_before)  # the update ran


def test_an_optimized_graph_with_fused_nodes_round_trips(tmp_path):
    """Fused nodes carry SymPy expressions (with graphc's casts) and name the nodes they absorbed."""
    result = graphc.optimize(swish_graph())
    original = result.graph if hasattr(result, "graph") else result
    assert any(n.op == "fused" for n in original.nodes) and any(n.absorbed for n in original.nodes)
    loaded = graphc.load(graphc.save(original, str(tmp_path / "opt.graphc")))
    assert loaded.text() == original.text() and loaded.structural_hash() == original.structural_hash()
    assert [[a.op for a in n.absorbed] for n in loaded.nodes] == [[a.op for a in n.absorbed] for n in original.nodes]
    for a, b in zip(graphc.backends.reference.evaluate(loaded, feeds()),
                    graphc.backends.reference.evaluate(original, feeds())):
        assert np.array_equal(a, b)


FRESH = textwrap.dedent("""
    import sys
    import numpy as np
    import graphc
    model = graphc.load(sys.argv[1])
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], graphc.train.predict_outputs(model, x, backend="reference"))
    print(graphc.ops.registry.get("fresh_swish").expr)
""")


def test_a_user_sympy_activation_comes_back_in_a_process_that_never_defined_it(tmp_path):
    fresh_swish = graphc.elementwise("fresh_swish", lambda x: x * graphc.sympy_sigmoid(2 * x))
    model = randomized(Sequential([Dense(6), Activation(fresh_swish), Dense(3, fresh_swish)], input_shape=(4,)))
    path = graphc.save(model, str(tmp_path / "fresh.graphc"))
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run([sys.executable, "-c", FRESH, path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "exp" in out.stdout  # the op's expression, registered in the fresh process from the file
    expected = graphc.train.predict_outputs(model, x, backend="reference")
    assert np.array_equal(np.load(tmp_path / "y.npy"), expected)


def test_an_initializer_that_is_a_python_function_is_saved_by_name(tmp_path):
    """The weights are saved; only build() (re-initializing) would need the function, and then it says so."""
    def halves(shape, fan_in, fan_out, rng):
        return np.full(shape, 0.5)

    model = randomized(Sequential([Dense(3, init=halves)], input_shape=(2,)))
    loaded = graphc.load(graphc.save(model, str(tmp_path / "m.graphc")))
    assert np.array_equal(loaded.named_values()["dense_1.W"], model.named_values()["dense_1.W"])
    with pytest.raises(SavedModelError, match=r"initializer 'halves' of a model loaded from .*m.graphc was a Python "
                                              r"function"):
        loaded.build((2,), np.random.default_rng(0))


# -- refusals: what cannot be saved ------------------------------------------------------------------------------

def test_save_refuses_a_python_function_activation_naming_the_layer(tmp_path):
    model = Sequential([Dense(3, activation=lambda t: t * 2.0, name="doubler")], input_shape=(2,))
    with pytest.raises(SavedModelError, match=r"layer 'doubler': activation is the Python function '<lambda>'.*"
                                              r"graphc\.elementwise.*\n  at .*test_saved.py:"):
        graphc.save(model, str(tmp_path / "x.graphc"))
    assert not os.path.exists(tmp_path / "x.graphc")


def test_save_refuses_a_layer_class_from_outside_graphc_nn(tmp_path):
    class Twice(Module):
        kind = "twice"

        def forward(self, x, ctx):
            return x * 2.0

    model = Sequential([Twice(), Dense(2)], input_shape=(3,))
    with pytest.raises(SavedModelError, match=r"layer 'twice_1' is a .*Twice, not a graphc.nn layer.*graphc.save\(graph"):
        graphc.save(model, str(tmp_path / "x.graphc"))


def test_save_refuses_what_is_neither_a_model_nor_a_graph(tmp_path):
    with pytest.raises(SavedModelError, match=r"expected a graphc.nn model or a Graph, got dict\n  at .*test_saved.py:"):
        graphc.save({}, str(tmp_path / "x.graphc"))


def test_a_refused_save_leaves_the_previous_file_whole(tmp_path):
    path = graphc.save(mlp(), str(tmp_path / "m.graphc"))
    before = Path(path).read_bytes()
    with pytest.raises(SavedModelError):
        graphc.save(Sequential([Dense(3, activation=lambda t: t)], input_shape=(2,)), path)
    assert Path(path).read_bytes() == before and os.listdir(tmp_path) == ["m.graphc"]


# -- refusals: files that cannot be loaded -----------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    return graphc.save(mlp(), str(tmp_path / "m.graphc"))


def read_archive(path: str) -> tuple[dict, dict]:
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return json.loads(arrays.pop("__manifest__").tobytes()), arrays


def write_archive(path: str, manifest: dict, arrays: dict, reseal: bool = True) -> None:
    """Write a well-formed archive, as another graphc (or a forger) would: the manifest's checksum recomputed
    here, independently of graphc.saved, unless ``reseal`` is False."""
    if reseal:
        body = {k: v for k, v in manifest.items() if k != "sha256"}
        manifest["sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    buf = io.BytesIO()
    np.savez(buf, **arrays, __manifest__=np.frombuffer(json.dumps(manifest).encode(), np.uint8))
    Path(path).write_bytes(buf.getvalue())


def test_load_refuses_a_well_sealed_file_whose_weights_do_not_fit_the_layers(saved):
    """Files not written by graphc.save, sealed with valid checksums: refused, never half used."""
    manifest, arrays = read_archive(saved)
    layer = manifest["content"]["state"]["layers"]["list"][0]["module"]["state"]
    layer["units"] = 17  # dense_1 says 17 units; its W is [12, 16]
    write_archive(saved, manifest, arrays)
    with pytest.raises(SavedModelError, match=rf"{saved}: layer 'dense_1' \(Dense\(17, relu\)\) holds \{{'W': "
                                              r"'float32\[12, 16\]', 'b': 'float32\[16\]'\}, but its configuration "
                                              r"gives \{'W': 'float32\[12, 17\]', 'b': 'float32\[17\]'\}"):
        graphc.load(saved)
    layer["units"] = 16
    del layer["values"]["values"][0]  # no W
    del manifest["arrays"]["dense_1.W"], arrays["dense_1.W"]
    write_archive(saved, manifest, arrays)
    with pytest.raises(SavedModelError, match=rf"{saved}: layer 'dense_1' .* holds \{{'b': 'float32\[16\]'\}}, "
                                              r"but its configuration gives \{'b': 'float32\[16\]', 'W': "):
        graphc.load(saved)
    del layer["units"]
    write_archive(saved, manifest, arrays)
    with pytest.raises(SavedModelError, match=rf"{saved}: its content is malformed \(AttributeError: .*'units'"):
        graphc.load(saved)


def test_load_refuses_a_well_sealed_graph_whose_values_do_not_fit_its_nodes(tmp_path):
    path = graphc.save(swish_graph(), str(tmp_path / "g.graphc"))
    manifest, arrays = read_archive(path)
    w = next(k for k, n in enumerate(manifest["content"]["nodes"]) if n["name"] == "w")
    arrays[f"n{w}"] = arrays[f"n{w}"][:1]
    manifest["arrays"][f"n{w}"].update(shape=[1, 1, 3, 3], sha256=hashlib.sha256(arrays[f"n{w}"].tobytes()).hexdigest())
    write_archive(path, manifest, arrays)
    with pytest.raises(SavedModelError, match=rf"{path}: node %{w} \(param\) w is f64\[2,1,3,3\] but holds a value "
                                              r"float64\[1, 1, 3, 3\]"):
        graphc.load(path)


def test_load_refuses_a_file_from_a_newer_format_version(saved):
    manifest, arrays = read_archive(saved)
    manifest.update(version=2, graphc="9.0")
    write_archive(saved, manifest, arrays)
    with pytest.raises(SavedModelError, match=rf"{saved} was written by graphc 9.0 in format version 2; this graphc "
                                              r"\(.*\) reads versions up to 1: upgrade graphc"):
        graphc.load(saved)


def test_load_refuses_a_truncated_file(saved):
    data = Path(saved).read_bytes()
    Path(saved).write_bytes(data[: len(data) // 2])
    with pytest.raises(SavedModelError, match=rf"{saved} is truncated or corrupt \(BadZipFile"):
        graphc.load(saved)


def test_load_refuses_a_flipped_byte(saved):
    data = bytearray(Path(saved).read_bytes())
    _, arrays = read_archive(saved)
    w = arrays["dense_1.W"].tobytes()
    at = bytes(data).index(w) + len(w) // 2  # inside the weights' bytes
    data[at] ^= 0x10
    Path(saved).write_bytes(bytes(data))
    with pytest.raises(SavedModelError, match=rf"{saved} is truncated or corrupt .*CRC"):
        graphc.load(saved)


def test_load_refuses_an_array_that_does_not_match_its_checksum(saved):
    manifest, arrays = read_archive(saved)
    arrays["dense_2.b"] = arrays["dense_2.b"] + np.float32(1e-3)  # a whole, well-formed archive; wrong numbers
    write_archive(saved, manifest, arrays)
    with pytest.raises(SavedModelError, match=rf"{saved}: array 'dense_2.b' \(float32\[10\]\) does not match its "
                                              r"checksum .*damaged"):
        graphc.load(saved)


def test_load_refuses_a_manifest_altered_without_its_checksum(saved):
    manifest, arrays = read_archive(saved)
    manifest["content"]["state"]["layers"]["list"][1]["module"]["state"]["rate"] = 0.5  # the dropout rate
    write_archive(saved, manifest, arrays, reseal=False)
    with pytest.raises(SavedModelError, match=rf"{saved}: its manifest does not match its checksum"):
        graphc.load(saved)


@pytest.mark.parametrize("content, message", [
    (b"def model():\n    pass\n", r"is not a graphc saved model \(not an .npz archive"),
    (b"", r"is not a graphc saved model \(not an .npz archive"),
])
def test_load_refuses_a_file_that_is_not_graphcs(tmp_path, content, message):
    path = tmp_path / "model.py"
    path.write_bytes(content)
    with pytest.raises(SavedModelError, match=rf"{path} {message}"):
        graphc.load(str(path))


def test_load_refuses_an_npz_without_a_manifest_and_a_checkpoint(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(3))
    with pytest.raises(SavedModelError, match=rf"{plain} has no manifest: an .npz archive, but not a graphc saved"):
        graphc.load(str(plain))
    ckpt = str(tmp_path / "ckpt.npz")
    save_checkpoint(ckpt, mlp().named_values(), {"epoch": 1})
    with pytest.raises(SavedModelError, match=rf"{ckpt} is a training checkpoint, not a saved model"):
        graphc.load(ckpt)
    with pytest.raises(SavedModelError, match=rf"{tmp_path / 'none.graphc'} does not exist"):
        graphc.load(str(tmp_path / "none.graphc"))


@pytest.mark.parametrize("expr, message", [
    ("__import__('pathlib')", r"the expression uses '__import__', which is not a SymPy constructor"),
    ("__import__('pathlib').Path({marker!r}).touch()", r"the expression uses 'Attribute', which is not a SymPy"),
    ("Symbol('x').__class__", r"the expression uses 'Attribute', which is not a SymPy constructor"),
    ("sympify({code!r})", r"the expression uses 'sympify', which is not a SymPy constructor"),
    ("exp({code!r})", r"the expression passes the text .* where SymPy would parse it"),
])
def test_load_never_runs_code_hidden_in_an_expression(tmp_path, expr, message):
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    path = graphc.save(swish_graph(), str(tmp_path / "g.graphc"))
    manifest, arrays = read_archive(path)
    manifest["ops"]["saved_swish"]["expr"] = expr.format(marker=str(marker), code=code)
    write_archive(path, manifest, arrays)
    with pytest.raises(SavedModelError, match=rf"{path}: op 'saved_swish': {message}"):
        graphc.load(path)
    assert not marker.exists()


def test_load_refuses_an_op_the_file_defines_otherwise(tmp_path):
    """A file whose relu is not this graphc's relu (another version, a forged file) is refused, not mixed."""
    path = graphc.save(swish_graph(), str(tmp_path / "g.graphc"))
    manifest, arrays = read_archive(path)
    manifest["ops"]["leaky_relu"]["params"] = [["alpha", 0.5]]
    write_archive(path, manifest, arrays)
    with pytest.raises(SavedModelError, match=r"op 'leaky_relu' is .* \(parameters \{'alpha': 0.5\}\) in the file, "
                                              r"but .* \(parameters \{'alpha': 0.01\}\) in this process"):
        graphc.load(path)

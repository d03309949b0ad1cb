"""graphc.export: the shared library, header and executable against the other backends, with only `cc`.

Oracles: the cpu backend (the trained MNIST MLP's logits and predictions, LeNet-5's, a digits training
epoch's losses and parameters), the reference backend (every op's kernel; a float64 training step
compared exactly), graphc's own error messages (label checks), zlib's CRC-32 and Python's reading of
the weights file. Exports are slow (LLVM O3 plus cc): each is made once per module.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.export import ExportError, ExportRunError, WeightsFileError, read_weights, write_weights
from graphc.nn import Dense, Sequential
from graphc.train.loop import build_train_step, predict_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "tests", "c")

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="graphc.export links with the system's cc")


def mnist_or_skip():
    try:
        return graphc.datasets.mnist(download=False)
    except Exception as err:  # noqa: BLE001 - any reason it is not there: the test says which
        pytest.skip(f"MNIST is not cached (the README's main job fetches it): {err}")


def run(cmd, cwd=None, check=True):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def digits_model(seed=0):
    return Sequential([Dense(32, "relu"), Dense(10)], input_shape=(64,), seed=seed)


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """The digits MLP 64-32-10 exported with its training step (batch 32, momentum SGD)."""
    out = tmp_path_factory.mktemp("digits")
    net = digits_model()
    result = graphc.export(net, out, name="digits", batch_size=32, optimizer=optim.Momentum(0.05, 0.9))
    return net, result


# -- what the artifact depends on --------------------------------------------------------------------------

def test_library_and_executable_need_only_libc_and_libm(digits_export):
    _, result = digits_export
    for path in (result.files["library"], result.files["executable"]):
        libs = run(["ldd", path]).stdout
        for banned in ("python", "numpy", "numba", "llvm", "blas"):
            assert banned not in libs.lower(), f"{path} links {banned}:\n{libs}"
        names = {line.split()[0] for line in libs.strip().splitlines()}
        assert {n for n in names if not n.startswith(("linux-vdso", "/lib64/ld-linux"))} <= {"libc.so.6", "libm.so.6"}, libs


def test_library_exports_only_its_api(digits_export):
    """No graphc_sgemm or MT19937 symbol leaks: two exported libraries in one program cannot bind to each other's."""
    _, result = digits_export
    symbols = run(["nm", "-D", "--defined-only", result.files["library"]]).stdout.split()[2::3]
    assert symbols and all(s.startswith("digits_") for s in symbols), symbols
    assert {"digits_create", "digits_predict", "digits_step", "digits_load_weights", "digits_call"} <= set(symbols)


def test_files_and_header(digits_export):
    _, result = digits_export
    assert result.entries == ["predict", "step"]
    header = open(result.files["header"]).read()
    assert "#define DIGITS_BATCH_SIZE 32" in header
    assert "#define DIGITS_PREDICT_X_SHAPE {32, 64}" in header and "#define DIGITS_STEP_Y_TYPE int64_t" in header
    assert "int digits_step(digits_state *state, const float *x, const int64_t *y, float lr, float *loss, " \
           "float *acc_total);" in header
    assert "#define DIGITS_ERR_LABEL 1" in header and "features +" in header  # the native CPU's features
    assert "dense_1.W                float32[64, 32]" in header
    help_text = run([result.files["executable"], "--help"]).stdout
    assert "predict x.npy out.npy" in help_text and "any number N of rows" in help_text


# -- the trained MNIST networks: the executable against the cpu backend -----------------------------------

@pytest.fixture(scope="module")
def mnist():
    return mnist_or_skip()


def executable_predict(result, x, tmp_path):
    images, logits = tmp_path / "images.npy", tmp_path / "logits.npy"
    np.save(images, x)
    run([result.files["executable"], "predict", images, logits])
    return np.load(logits)


def test_mnist_mlp_executable_matches_cpu_backend(mnist, tmp_path):
    """The 784-512-256-10 network trained one epoch with fit (cpu): the executable classifies the 10,000 test
    images (78 full batches of 128 and a padded last one) like the cpu backend, logits within 1e-5."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from graphc.modelfile import load_model_file

    spec = load_model_file(os.path.join(ROOT, "examples", "mnist_mlp.py"))
    net = spec.model
    graphc.fit(net, mnist.train, epochs=1, batch_size=128, optimizer=spec.optimizer, backend="cpu", verbose=False)
    result = graphc.export(net, tmp_path / "out", name="mnist", batch_size=128)
    x_test = mnist.test[0]
    got = executable_predict(result, x_test, tmp_path)
    want = predict_outputs(net, x_test, batch_size=1000, backend="cpu")
    assert got.shape == want.shape == (10_000, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    assert (got.argmax(1) == mnist.test[1]).mean() > 0.9  # it is the trained network


def test_lenet5_executable_matches_cpu_backend(mnist, tmp_path):
    """LeNet-5 forward (examples/mnist_lenet5.py's model with its initial weights: training it on the cpu
    backend would take minutes): the 10,000 test images in batches of 64 (156 full, one padded)."""
    from graphc.modelfile import load_model_file

    net = load_model_file(os.path.join(ROOT, "examples", "mnist_lenet5.py")).model
    result = graphc.export(net, tmp_path / "out", name="lenet5", batch_size=64)
    x = mnist.test[0].reshape(-1, 1, 28, 28)
    got = executable_predict(result, x, tmp_path)
    want = predict_outputs(net, x, batch_size=1000, backend="cpu")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


# -- training from C ------------------------------------------------------------------------------------------

def compile_train_program(result, tmp_path, metric: bool):
    lib, directory = result.name, result.directory
    exe = tmp_path / f"train_{lib}"
    run(["cc", "-O2", f"-DLIB={lib}", f"-DLIBUP={lib.upper()}", f"-DMETRIC={int(metric)}",
         os.path.join(C_DIR, "train_epoch.c"), f"-I{directory}", f"-L{directory}", f"-l{lib}", "-o", exe])
    return exe


def train_in_c(result, tmp_path, batches, lr, metric=True):
    """The test program's epoch over ``batches`` [(x, y)]: its per-step losses and final parameters."""
    exe = compile_train_program(result, tmp_path, metric)
    data, losses, weights = tmp_path / "batches.bin", tmp_path / "losses.bin", tmp_path / "trained.weights"
    with open(data, "wb") as f:
        for x, y in batches:
            f.write(x.tobytes() + y.tobytes() + np.asarray(lr, x.dtype).tobytes())
    proc = subprocess.run([str(exe), str(len(batches)), str(data), str(losses), str(weights)], capture_output=True,
                          text=True, env={**os.environ, "LD_LIBRARY_PATH": result.directory})
    assert proc.returncode == 0, proc.stderr
    return np.fromfile(losses, batches[0][0].dtype), read_weights(str(weights))


def test_c_program_trains_an_epoch_like_the_cpu_backend(digits_export, tmp_path):
    """One epoch of digits (batches of 32 in a fixed permutation) through digits_step from C: the cpu backend's
    step executable fed the same minibatches gives the same losses (1e-5) and parameters (1e-4)."""
    _, result = digits_export
    x, y = graphc.datasets.digits().train
    perm = np.random.default_rng(7).permutation(len(x))
    batches = [(np.ascontiguousarray(x[perm[i:i + 32]], np.float32), np.ascontiguousarray(y[perm[i:i + 32]], np.int64))
               for i in range(0, len(x) - 31, 32)]
    losses, trained = train_in_c(result, tmp_path, batches, 0.05)

    step = graphc.compile(build_train_step(digits_model(), 32, optim.Momentum(0.05, 0.9)), backend="cpu")
    want = [float(step(bx, by, np.float32(0.05))[0]) for bx, by in batches]
    assert len(losses) == len(batches) > 30
    np.testing.assert_allclose(losses, want, rtol=1e-5, atol=1e-5)
    assert set(trained) == set(step.params)
    for name, value in step.params.items():
        np.testing.assert_allclose(trained[name], value, rtol=1e-4, atol=1e-4, err_msg=name)
    assert losses[-1] < losses[0]


def test_c_program_float64_step_equals_reference_exactly(tmp_path):
    """float64, exactly (==): a 1-input, 3-output linear model with MSE, batch 1, plain SGD, exported as written
    (optimize=0: the reference backend runs the graph as written; the passes' fusions round differently, by
    design). Every GEMM has k = 1 and the loss sums 3 terms left to right, so no summation order can differ:
    the reference backend (NumPy) must give the same bits at every step."""
    net = Sequential([Dense(3)], input_shape=(1,), dtype=np.float64, seed=3)
    result = graphc.export(net, tmp_path / "out", name="tiny", batch_size=1, optimizer=optim.SGD(0.1), loss="mse",
                           optimize=0)
    r = np.random.default_rng(0)
    batches = [(r.normal(size=(1, 1)), r.normal(size=(1, 3))) for _ in range(20)]
    losses, trained = train_in_c(result, tmp_path, batches, 0.1, metric=False)
    ref = graphc.compile(build_train_step(net, 1, optim.SGD(0.1), loss="mse"), backend="reference")
    want = [float(ref(bx, by, np.float64(0.1))) for bx, by in batches]
    assert list(losses) == want
    for name, value in ref.params.items():
        assert np.array_equal(trained[name], value), name


def test_predict_after_steps_sees_the_trained_weights(digits_export, tmp_path):
    """The state keeps predict's store in step with step's: predict after two steps equals the cpu backend's
    forward pass with the parameters the steps left (read back through the weights file)."""
    _, result = digits_export
    model = graphc.export.load(result.directory)
    x, y = graphc.datasets.digits().train
    before = model.predict(x[:32])
    for s in range(2):
        model.step(x[32 * s:32 * s + 32], y[32 * s:32 * s + 32], 0.05)
    after = model.predict(x[:32])
    model.save_weights(str(tmp_path / "w.weights"))
    net = digits_model()
    net.load_values({k: v for k, v in read_weights(str(tmp_path / "w.weights")).items() if k in net.named_values()})
    np.testing.assert_allclose(after, predict_outputs(net, x[:32].astype(np.float32), 32, backend="cpu"),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(before, after)
    np.testing.assert_array_equal(model.params["dense_1.b"], read_weights(str(tmp_path / "w.weights"))["dense_1.b"])


# -- every op: the exported kernels against the reference backend ------------------------------------------------

@pytest.fixture(scope="module", params=[(g, d) for g in ("elementwise", "shapes", "nn", "conv")
                                        for d in ("float64", "float32")], ids="-".join)
def op_export(request, tmp_path_factory):
    from test_numba_cpu import GRAPHS

    group, dtype = request.param
    outputs, inputs, feeds, names = GRAPHS[group](dtype)
    out = tmp_path_factory.mktemp(f"ops_{group}_{dtype}")
    graphc.export(outputs, out, name=f"ops_{group}", inputs=inputs, optimize=0 if dtype == "float64" else 2)
    model = graphc.export.load(str(out))
    model.check_finite = False  # some ops' values are legitimately infinite
    ref = graphc.compile(outputs, inputs=inputs)
    return model, ref, feeds, names, dtype


def test_every_op_matches_reference(op_export):
    from test_numba_cpu import assert_same

    model, ref, feeds, names, dtype = op_export
    got = model.run(*feeds)
    got = list(got) if isinstance(got, tuple) else [got]
    assert_same(got, list(ref(*feeds)) if len(got) > 1 else [ref(*feeds)], names, dtype)


# -- errors -------------------------------------------------------------------------------------------------

def test_bad_labels_return_the_label_code_and_graphc_message(digits_export, tmp_path):
    _, result = digits_export
    model = graphc.export.load(result.directory)
    x, y = graphc.datasets.digits().train
    bad = y[:32].astype(np.int64)
    bad[3], bad[9] = 12, -1
    with pytest.raises(ExportRunError) as err:
        model.step(x[:32], bad, 0.05)
    assert err.value.code == 1  # DIGITS_ERR_LABEL
    step = graphc.compile(build_train_step(digits_model(), 32, optim.Momentum(0.05, 0.9)), backend="cpu")
    with pytest.raises(graphc.InputError) as cpu_err:
        step(x[:32].astype(np.float32), bad, np.float32(0.05))
    # graphc's words for the same check (the user's line differs: the two steps were built on two lines)
    assert same_words(str(err.value)) == same_words(f"digits: {cpu_err.value} (error code 1)")
    assert re.search(r"^digits: input 'y': label 12 at index 3 is out of range \[0, 10\) for \w+ \(%\d+ at "
                     r".*test_export\.py:\d+\); 2 of 32 labels are out of range \(error code 1\)$", str(err.value))
    # the executable: the same message, a non-zero exit
    for name, value in (("x", x[:32].astype(np.float32)), ("y", bad), ("lr", np.float32(0.05))):
        np.save(tmp_path / f"{name}.npy", value)
    proc = run([result.files["executable"], "step", tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "lr.npy",
                tmp_path / "loss.npy", tmp_path / "acc.npy"], check=False)
    assert proc.returncode == 1
    assert same_words(proc.stderr.strip()) == same_words(f"digits: error: {cpu_err.value}")


def same_words(message: str) -> str:
    return re.sub(r"test_export\.py:\d+", "test_export.py:LINE", message)


def test_corrupt_weights_are_refused(digits_export, tmp_path):
    net, result = digits_export
    model = graphc.export.load(result.directory)
    path = str(tmp_path / "w.weights")
    model.save_weights(path)
    assert read_weights(path).keys() == set(model.params)
    W = model.params["dense_1.W"]
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 0x40  # one bit of the last parameter
    open(path, "wb").write(bytes(data))
    with pytest.raises(ExportRunError, match=r"the arrays' CRC-32 is [0-9a-f]{8}, the header says [0-9a-f]{8}: the file "
                                             r"is corrupt; its numbers are not read") as err:
        model.load_weights(path)
    assert err.value.code == 3
    np.testing.assert_array_equal(model.params["dense_1.W"], W)  # nothing was loaded
    with pytest.raises(WeightsFileError, match="corrupt"):
        read_weights(path)
    open(path, "wb").write(bytes(data[:100]))
    with pytest.raises(ExportRunError, match="cut short or has bytes appended"):
        model.load_weights(path)
    np.save(tmp_path / "x.npy", np.zeros((3, 64), np.float32))
    proc = run([result.files["executable"], "predict", tmp_path / "x.npy", tmp_path / "o.npy", "--weights", path],
               check=False)
    assert proc.returncode == 1 and "digits: error: weights file" in proc.stderr and "cut short" in proc.stderr
    # a file of another model: named, not read
    write_weights(path, {"dense_1.W": np.zeros((3, 3), np.float32)})
    with pytest.raises(ExportRunError, match="holds 1 arrays; digits has 8 parameters"):
        model.load_weights(path)
    good = {k: np.asarray(v) for k, v in read_weights(result.files["weights"]).items()}
    good["dense_1.W"] = np.zeros((64, 31), np.float32)
    write_weights(path, good)
    with pytest.raises(ExportRunError, match=r"parameter 'dense_1.W' is float32\[64, 31\] in the file, digits has "
                                             r"float32\[64, 32\]"):
        model.load_weights(path)


def test_executable_takes_any_number_of_rows(digits_export, tmp_path):
    net, result = digits_export
    x = graphc.datasets.digits().test[0][:45].astype(np.float32)  # one full batch of 32 and 13 padded rows
    got = executable_predict(result, x, tmp_path)
    np.testing.assert_allclose(got, predict_outputs(net, x, 45, backend="reference"), rtol=1e-5, atol=1e-5)
    np.save(tmp_path / "wrong.npy", np.zeros((4, 63), np.float32))
    proc = run([result.files["executable"], "predict", tmp_path / "wrong.npy", tmp_path / "o.npy"], check=False)
    assert proc.returncode == 1 and "input 'x' of predict must be <f4 (N, 64), got <f4 (4, 63)" in proc.stderr


def test_missing_cc_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match=r"no C compiler 'no-such-cc' on the PATH: graphc.export compiles the C glue"):
        graphc.export(digits_model(), tmp_path, name="x", cc="no-such-cc")
    assert not os.listdir(tmp_path)  # refused before writing anything


def test_names_must_be_c_identifiers(tmp_path):
    with pytest.raises(ExportError, match=r"name '2x' must be a C identifier"):
        graphc.export(digits_model(), tmp_path, name="2x")


# -- targets ----------------------------------------------------------------------------------------------------

def test_generic_target_has_no_avx(tmp_path):
    net = Sequential([Dense(64, "relu"), Dense(10)], input_shape=(128,), seed=0)
    generic = graphc.export(net, tmp_path / "g", name="g", batch_size=16, target="generic")
    asm = run(["objdump", "-d", generic.files["object"]]).stdout
    assert "xmm" in asm and "ymm" not in asm and "zmm" not in asm  # SSE2 only: no AVX, AVX2 or AVX-512
    assert "x86-64 (the baseline" in open(generic.files["header"]).read()
    x = np.random.default_rng(0).normal(size=(16, 128)).astype(np.float32)
    np.testing.assert_allclose(graphc.export.load(generic.directory).predict(x),
                               predict_outputs(net, x, 16, backend="reference"), rtol=1e-5, atol=1e-5)
    if "avx512f" in open("/proc/cpuinfo").read():
        native = graphc.export(net, tmp_path / "n", name="n", batch_size=16, target="native")
        assert "zmm" in run(["objdump", "-d", native.files["object"]]).stdout


# -- the command line and the docs ---------------------------------------------------------------------------

TINY_MODEL = '''
from graphc.nn import Dense, Sequential

def model():
    return Sequential([Dense(8, "relu"), Dense(3)], input_shape=(5,), seed=1)
'''


def test_cli_exports_a_model_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(TINY_MODEL)
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "graphc", "export", str(path), "--format", "so", "--out",
                           str(tmp_path / "out"), "--target", "generic", "--train", "--batch-size", "4"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "tiny_predict" in proc.stdout and "tiny_step" in proc.stdout
    for f in ("libtiny.so", "tiny", "tiny.h", "tiny.o", "tiny.weights"):
        assert os.path.exists(tmp_path / "out" / f), f
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    from graphc.modelfile import load_model_file

    want = predict_outputs(load_model_file(str(path)).model, x, 4, backend="reference")
    np.testing.assert_allclose(graphc.export.load(str(tmp_path / "out")).predict(x), want, rtol=1e-5, atol=1e-6)
    # --weights: the parameters of a saved model (another seed) instead of the file's
    saved = Sequential([Dense(8, "relu"), Dense(3)], input_shape=(5,), seed=9)
    graphc.save(saved, str(tmp_path / "saved.graphc"))
    proc = subprocess.run([sys.executable, "-m", "graphc", "export", str(path), "--format", "exe", "--out",
                           str(tmp_path / "out2"), "--weights", str(tmp_path / "saved.graphc"), "--batch-size", "4"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert f"executable: {tmp_path / 'out2' / 'tiny'}" in proc.stdout
    np.testing.assert_allclose(graphc.export.load(str(tmp_path / "out2")).predict(x),
                               predict_outputs(saved, x, 4, backend="reference"), rtol=1e-5, atol=1e-6)


def test_two_states_run_in_two_threads(digits_export):
    """No global state: two states of one library, called at once from two threads (ctypes releases the GIL),
    give what each gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    _, result = digits_export
    x = graphc.datasets.digits().test[0][:32].astype(np.float32)
    models = [graphc.export.load(result.directory) for _ in range(2)]
    models[1].params["dense_2.b"] = np.arange(10, dtype=np.float32)
    alone = [m.predict(x) for m in models]

    def many(m):
        return [m.predict(x) for _ in range(200)]

    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(many, models))
    for outs, want in zip(together, alone):
        for out in outs:
            np.testing.assert_array_equal(out, want)
    assert not np.array_equal(alone[0], alone[1])


def docs_c_example() -> str:
    text = open(os.path.join(ROOT, "docs", "export.md")).read()
    blocks = re.findall(r"```c\n(.*?)```", text, re.S)
    example = [b for b in blocks if "int main" in b]
    assert len(example) == 1, "docs/export.md has one complete C example (with main)"
    return example[0]


def test_docs_c_example_compiles_and_classifies(tmp_path):
    """docs/export.md's example, as written, against an export named mnist (784 inputs, batch 1)."""
    net = Sequential([Dense(16, "relu"), Dense(10)], input_shape=(784,), seed=2)
    result = graphc.export(net, tmp_path / "out", name="mnist", batch_size=1)
    source = tmp_path / "classify.c"
    source.write_text(docs_c_example())
    exe = tmp_path / "classify"
    run(["cc", "-O2", source, f"-I{result.directory}", f"-L{result.directory}", "-lmnist", "-o", exe])
    image = np.random.default_rng(5).uniform(size=784).astype(np.float32)
    image.tofile(tmp_path / "image.f32")
    proc = subprocess.run([str(exe), str(tmp_path / "image.f32")], capture_output=True, text=True,
                          env={**os.environ, "LD_LIBRARY_PATH": result.directory})
    assert proc.returncode == 0, proc.stderr
    want = int(predict_outputs(net, image[None], 1, backend="reference").argmax())
    assert proc.stdout.strip() == f"digit {want}"


def test_system_blas_links_openblas_or_says_why(tmp_path):
    """blas="system": GEMM through the system's CBLAS (-lopenblas). With OpenBLAS installed the library links it and
    computes the same forward pass; without, the export fails with the linker's reason, not later at run time."""
    net = Sequential([Dense(8, "relu"), Dense(3)], input_shape=(5,), seed=4)
    has_openblas = "libopenblas.so " in run(["ldconfig", "-p"], check=False).stdout
    if not has_openblas:
        with pytest.raises(ExportError, match=r"linking libsysblas.so failed \(exit \d+\): .*-lopenblas(.|\n)*openblas"):
            graphc.export(net, tmp_path, name="sysblas", batch_size=4, blas="system")
        return
    result = graphc.export(net, tmp_path, name="sysblas", batch_size=4, blas="system")
    assert "openblas" in run(["ldd", result.files["library"]]).stdout
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(graphc.export.load(result.directory).predict(x),
                               predict_outputs(net, x, 4, backend="reference"), rtol=1e-5, atol=1e-6)


def test_nonfinite_values_return_their_code_and_leave_the_parameters(digits_export):
    """check_finite (the C API's default): a NaN input is refused before anything runs; a step that makes the
    parameters non-finite (a huge learning rate) returns NAME_ERR_NONFINITE with the parameters as before it."""
    _, result = digits_export
    model = graphc.export.load(result.directory)
    x, y = graphc.datasets.digits().train
    x = x[:32].astype(np.float32)
    bad = x.copy()
    bad[2, 5] = np.nan
    with pytest.raises(ExportRunError, match=r"digits_predict: input 'x' has NaN at flat index 133 \(check_finite") as err:
        model.predict(bad)
    assert err.value.code == 2
    model.params["dense_1.W"] = np.full((64, 32), 3e38, np.float32)  # finite, but x @ W overflows
    before = {k: model.params[k] for k in model.params}
    with pytest.raises(ExportRunError, match=r"digits_step: output 'loss' has NaN at flat index 0 \(check_finite is "
                                             r"on.*; the parameters are left at their values before the call") as err:
        model.step(x, y[:32], 0.05)
    assert err.value.code == 2
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v, err_msg=k)
    model.check_finite = False  # off: the step runs and the parameters take the non-finite values
    assert np.isnan(model.step(x, y[:32], 0.05)[0])
    assert not all(np.isfinite(model.params[k]).all() for k in model.params)


def test_collectives_are_refused_with_the_users_line(tmp_path):
    """No MPI in an export: a graph with an allreduce is refused when rendered, naming the op and the user's line."""
    from graphc.backends.llvm import UnsupportedCallError

    with graphc.Graph("ar") as g:
        x = graphc.input("x", (4,))
        y = g.output(graphc.allreduce(x * 2.0, "sum"))
    with pytest.raises(UnsupportedCallError, match=r"allreduce_sum \(node %\d+ allreduce, .*test_export\.py:\d+\) needs "
                                                   r"MPI, which the llvm target does not provide"):
        graphc.export(y, tmp_path, name="ar")
    assert not os.path.exists(tmp_path / "libar.so")

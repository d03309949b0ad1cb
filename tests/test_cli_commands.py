"""The `graphc` subcommands end to end: each runs in a subprocess on a small model file (a digits MLP) and the
tests assert on what it prints and writes. One compile cache (a temporary directory) serves the module."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import graphc

ROOT = Path(graphc.__file__).resolve().parents[1]  # the tree whose graphc this process imported

needs_modelfile = pytest.mark.skipif(importlib.util.find_spec("graphc.modelfile") is None,
                                     reason="graphc.modelfile (the model file convention, the 'saved' branch) is not "
                                            "in this tree")
needs_digits = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                  reason="the digits data needs scikit-learn (the dev extra installs it)")


def end_to_end(test):
    """A test that runs commands on the digits model file."""
    return needs_modelfile(needs_digits(test))


needs_saved = pytest.mark.skipif(importlib.util.find_spec("graphc.saved") is None,
                                 reason="graphc.save/graphc.load (graphc/saved.py, the 'saved' branch) is not in this tree")

MODEL_FILE = '''"""A small MLP on digits: a model file for graphc's command."""
from graphc import optim
from graphc.nn import Dense, Sequential

data = "digits"
optimizer = optim.Momentum(0.05, 0.9)


def model():
    return Sequential([Dense(16, "relu"), Dense(10)], input_shape=(64,), seed=0)
'''

BATCH = "32"
DIGITS_TRAIN_ROWS = 1258  # digits(): 1,797 images less 20% test and 10% validation
STEPS = -(-DIGITS_TRAIN_ROWS // int(BATCH))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A directory holding the model file, where the commands run; its cache/ is their compile cache."""
    path = tmp_path_factory.mktemp("cli")
    (path / "digits_mlp.py").write_text(MODEL_FILE)
    return path


def graphc_cmd(work: Path, *args: str, cache: bool = True, path: str | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m graphc ARGS`` in ``work`` with this tree's graphc first on the path; the compile cache is
    ``work/cache`` (``cache=False``: the user's, where the README's main job leaves MNIST)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if cache:
        env["GRAPHC_CACHE_DIR"] = str(work / "cache")
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "graphc", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def code_of(text: str) -> list[str]:
    """A graph text without its comments (where a node was built differs between here and the command)."""
    return [line.split(" # ")[0].rstrip() for line in text.splitlines()]


def model_graph(work: Path, grad: bool, batch: int):
    """The graph the model file describes, built here (the oracle for what `inspect` prints)."""
    from graphc.modelfile import load_model_file
    from graphc.train.loop import build_eval, build_train_step

    found = load_model_file(str(work / "digits_mlp.py"))
    if not grad:
        return build_eval(found.model, batch)
    return build_train_step(found.model, batch, found.optimizer, "softmax_cross_entropy")


# -- --help ----------------------------------------------------------------------------------------------------------

COMMANDS = ("inspect", "compile", "train", "eval", "export", "bench", "cache", "doctor")


def test_every_subcommand_is_listed_and_has_help_with_an_example(work):
    listing = ok(graphc_cmd(work, "--help")).stdout
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", listing, re.M), (command, listing)
        text = ok(graphc_cmd(work, command, "--help")).stdout
        assert text.startswith(f"usage: graphc {command}")
        assert re.search(rf"Example:\n\s+graphc {command}\b", text), text


# -- inspect ---------------------------------------------------------------------------------------------------------

@end_to_end
def test_inspect_prints_the_training_step_with_provenance_the_pass_table_and_kernels(work):
    out = ok(graphc_cmd(work, "inspect", "digits_mlp.py", "--grad", "--passes", "2", "--kernels",
                        "--batch-size", "4")).stdout
    step = model_graph(work, grad=True, batch=4)
    expected = code_of(step.text())
    assert code_of(out)[:len(expected)] == expected  # the training step as built in this process, line for line
    assert "via softmax_cross_entropy-vjp of %" in out and "dL/ddense_1.W via dense-vjp" in out
    assert re.search(r"^update %\d+ <- %\d+ +# dense_1\.W\.velocity$", out, re.M)
    assert "passes (level 2):" in out and re.search(r"^pass +nodes +kernels +ms$", out, re.M)
    assert re.search(r"^01 \w+ +56 -> ", out, re.M)  # the table starts from the 56 nodes of the step
    assert re.search(r"^program 'train_step': 3 inputs, 2 outputs, 8 updates$", out, re.M)


@end_to_end
def test_inspect_without_grad_prints_the_inference_graph(work):
    out = ok(graphc_cmd(work, "inspect", "digits_mlp.py", "--batch-size", "4")).stdout
    assert code_of(out) == code_of(model_graph(work, grad=False, batch=4).text())
    assert "via" not in out


@end_to_end
def test_inspect_only_gradient_prints_only_backward_nodes(work):
    out = ok(graphc_cmd(work, "inspect", "digits_mlp.py", "--only-gradient", "--batch-size", "4")).stdout
    step = model_graph(work, grad=True, batch=4)
    node_lines = [line for line in out.splitlines() if line.startswith("%")]
    assert len(node_lines) == sum(n.provenance is not None for n in step.nodes)
    assert all(" via " in line for line in node_lines)


@end_to_end
def test_inspect_draw_colours_forward_backward_update_and_says_how_to_render(work):
    no_graphviz = os.path.dirname(sys.executable)  # a PATH without Graphviz's dot
    result = ok(graphc_cmd(work, "inspect", "digits_mlp.py", "--grad", "--draw", "step.svg", "--batch-size", "4",
                           path=no_graphviz))
    assert "run: dot -Tsvg step.dot -o step.svg\n" in result.stderr and "Graphviz" in result.stderr
    assert "drawing: step.dot" in result.stdout
    dot = (work / "step.dot").read_text()
    step = model_graph(work, grad=True, batch=4)
    # The oracle: backward nodes carry provenance; update nodes are those no output reads.
    read_by_outputs = {id(n) for n in step.ancestors(step.outputs)}
    backward = {k for k, n in enumerate(step.nodes) if n.provenance is not None}
    update = {k for k, n in enumerate(step.nodes) if id(n) not in read_by_outputs and k not in backward}
    coloured = {colour: {int(k) for k in re.findall(rf'^  n(\d+) \[.*fillcolor="{colour}"', dot, re.M)}
                for colour in ("#fecaca", "#bbf7d0")}
    assert coloured["#fecaca"] == backward and coloured["#bbf7d0"] == update
    number = {id(n): k for k, n in enumerate(step.nodes)}
    velocities = {number[id(p)] for p, _ in step.updates if p.name.endswith(".velocity")}
    assert len(velocities) == 4 and velocities | {number[id(step.find("lr"))]} <= update
    assert {number[id(v)] for _, v in step.updates} <= update
    update_edges = re.findall(r'^  n(\d+) -> n(\d+) \[style=dashed.*label="update"', dot, re.M)
    assert sorted((int(a), int(b)) for a, b in update_edges) == sorted(
        (number[id(v)], number[id(p)]) for p, v in step.updates)
    assert 'label="forward: ' in dot  # the legend


GRAPH_FILE = '''import numpy as np

import graphc


def model():
    with graphc.Graph("perceptron") as g:
        x = graphc.input("x", (4,), "float64")
        w = graphc.param("w", np.array([0.1, 0.5, 2.5, 0.2]))
        g.output(graphc.sum(graphc.sigmoid(x @ w + 3.0)))
    return g
'''


@needs_modelfile
def test_a_graph_model_file_is_inspected_with_its_gradient_and_not_trained(work):
    from graphc.modelfile import load_model_file

    (work / "perceptron.py").write_text(GRAPH_FILE)
    out = ok(graphc_cmd(work, "inspect", "perceptron.py", "--grad")).stdout
    g = load_model_file(str(work / "perceptron.py")).model  # the oracle: graphc.grad of its output, here
    with g:
        g.output(*graphc.grad(graphc.Tensor(g.outputs[0], g), [graphc.Tensor(g.find("w"), g)]))
    assert code_of(out) == code_of(g.text())
    assert re.search(r"^%\d+:f64\[4\] = reshape\[shape=\(4,\)\] %\d+ +# dL/dw via reshape-vjp", out, re.M)
    refused = graphc_cmd(work, "train", "perceptron.py")
    assert refused.returncode == 2
    assert "perceptron.py: `graphc train` needs a graphc.nn model, and this model is a Graph" in refused.stderr


def test_inspect_of_a_missing_file_is_one_line(work):
    result = graphc_cmd(work, "inspect", "nowhere.py")
    assert result.returncode == 2
    assert result.stderr == "graphc inspect: nowhere.py: no such file\n"


# -- compile ---------------------------------------------------------------------------------------------------------

@end_to_end
def test_compile_reports_timings_and_the_cache_entry_and_writes_the_source(work):
    first = ok(graphc_cmd(work, "compile", "digits_mlp.py", "--backend", "cpu", "--batch-size", BATCH,
                          "--source", "step.py")).stdout
    assert re.search(r"^compiled train_step \(56 nodes\) for backend cpu in [\d.]+ s$", first, re.M)
    for stage in ("passes", "code generation", "Numba compile", "total"):
        assert re.search(rf"^  {stage}.* [\d.]+ s$", first, re.M), (stage, first)
    assert re.search(r"^driver: numba$", first, re.M) and "llvm driver" not in first  # a small step: numba
    entry = Path(re.search(r"^cache: (?:miss|hit|numba-miss), entry (\S+)$", first, re.M).group(1))
    assert entry.parent == work / "cache"
    assert (work / "step.py").read_text() == (entry / "graph.py").read_text()  # the cache's module, as compiled
    again = ok(graphc_cmd(work, "compile", "digits_mlp.py", "--batch-size", BATCH)).stdout
    assert f"cache: hit, entry {entry}" in again


# -- train and eval --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(work):
    """`graphc train` of the model file, 2 epochs, with a checkpoint and the curves."""
    return ok(graphc_cmd(work, "train", "digits_mlp.py", "--epochs", "2", "--batch-size", BATCH, "--checkpoint",
                         "ckpt", "--plot", "curves.png", "--save", "digits.graphc"))


def table_rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if re.match(r"^ +\d+ ", line)]


@end_to_end
def test_train_shows_progress_within_each_epoch(trained):
    err = trained.stderr
    for epoch in (1, 2):  # tqdm's bar or the plain lines: batches done of the epoch's, samples/s, running loss
        assert re.search(rf"epoch {epoch}/2\b.*\b{STEPS}/{STEPS}\b.*samples/s.*loss[ =]\d+\.\d+", err), err


@end_to_end
def test_train_prints_a_summary_table_test_scores_and_saves_the_model(trained, work):
    out = trained.stdout
    assert f"training digits_mlp on digits: {DIGITS_TRAIN_ROWS} examples, 2 epochs, batch size 32" in out
    assert re.search(r"^epoch +loss +acc +val_loss +val_acc +lr +seconds$", out, re.M)
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1", "2"]
    losses = [float(r[1]) for r in rows]
    assert losses[1] < losses[0] < np.log(10) + 0.1  # it learns, from about log(10)
    test = re.search(r"^test: loss (\S+)  acc (\S+) \(359 examples\)$", out, re.M)
    assert test and float(test.group(2)) > 0.6
    assert "saved model: digits.graphc" in out and (work / "digits.graphc").is_file()
    assert (work / "ckpt" / "digits_mlp.ckpt.npz").is_file()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (work / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@end_to_end
@needs_saved
def test_eval_of_the_saved_model_in_a_fresh_process_gives_the_same_test_scores(trained, work):
    test_line = re.search(r"^test: .*$", trained.stdout, re.M).group(0)
    out = ok(graphc_cmd(work, "eval", "digits.graphc", "--data", "digits")).stdout
    assert out.strip() == test_line
    out = ok(graphc_cmd(work, "eval", "digits.graphc", "--data", "digits_mlp.py")).stdout  # the model file's data
    assert out.strip() == test_line


@end_to_end
@needs_saved
def test_eval_reads_npz_data(trained, work):
    from graphc import datasets

    x, y = datasets.digits().test
    np.savez(work / "digits_test.npz", x=x[:100], y=y[:100], x_test=x, y_test=y)
    out = ok(graphc_cmd(work, "eval", "digits.graphc", "--data", f"npz:{work / 'digits_test.npz'}")).stdout
    assert out.strip() == re.search(r"^test: .*$", trained.stdout, re.M).group(0)


@end_to_end
def test_train_resumes_from_its_checkpoint(trained, work):
    shutil.copytree(work / "ckpt", work / "ckpt_resume")
    out = ok(graphc_cmd(work, "train", "digits_mlp.py", "--epochs", "3", "--batch-size", BATCH, "--checkpoint",
                        "ckpt_resume", "--resume", "--save", "resumed.graphc")).stdout
    rows, before = table_rows(out), table_rows(trained.stdout)
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert [r[1:5] for r in rows[:2]] == [r[1:5] for r in before]  # epochs 1-2 come from the checkpoint
    assert float(rows[2][1]) < float(rows[1][1])


@end_to_end
def test_train_takes_an_optimizer_and_a_schedule(work):
    out = ok(graphc_cmd(work, "train", "digits_mlp.py", "--epochs", "2", "--batch-size", BATCH, "--optimizer",
                        "adam(lr=1e-3, beta2=0.99)", "--schedule", "step(drop=0.5, every=1)",
                        "--save", "adam.graphc")).stdout
    assert "Adam (lr 0.001)" in out
    assert [r[5] for r in table_rows(out)] == ["0.001", "0.0005"]  # lr0 * 0.5 ** epoch


@pytest.mark.parametrize("option, message", [
    (("--optimizer", "adamm(lr=1)"), "unknown optimizer 'adamm'; one of adadelta, adagrad, adam, adamw, momentum"),
    (("--optimizer", "adam(lr=x)"), "arguments must be numbers"),
    (("--optimizer", "adam(lr=-1)"), "lr"),
    (("--schedule", "cosinus()"), "unknown schedule 'cosinus'; one of constant, step"),
    (("--data", "cifar"), "unknown data 'cifar': use digits, mnist, fashion-mnist, idx:DIR"),
])
@end_to_end
def test_train_refuses_bad_options_in_one_line(work, option, message):
    result = graphc_cmd(work, "train", "digits_mlp.py", "--epochs", "1", *option)
    assert result.returncode == 2
    assert result.stderr.startswith("graphc train: ") and message in result.stderr
    assert "Traceback" not in result.stderr


# -- export, bench ---------------------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("cc") is None, reason="--format exe links with the system's cc")
def test_export_exe_writes_the_executable(work):
    """--format so|exe is graphc.export (tests/test_export.py tests what it writes); here: the command runs."""
    result = graphc_cmd(work, "export", "digits_mlp.py", "--format", "exe", "--out", "aot", "--target", "generic")
    assert result.returncode == 0, result.stderr
    assert f"executable: {work / 'aot' / 'digits_mlp'}" in result.stdout
    help_text = subprocess.run([str(work / "aot" / "digits_mlp"), "--help"], capture_output=True, text=True).stdout
    assert "graphc model 'digits_mlp'" in help_text and "predict x.npy out.npy" in help_text


@end_to_end
@needs_saved
@pytest.mark.skipif(importlib.util.find_spec("graphc.onnx_export") is None,
                    reason="graphc.export_onnx (graphc/onnx_export.py, the 'onnx' branch) is not in this tree")
def test_export_onnx_matches_the_cpu_backend(trained, work):
    ort = pytest.importorskip("onnxruntime")
    out = ok(graphc_cmd(work, "export", "digits.graphc", "--format", "onnx", "-o", "digits.onnx")).stdout
    assert re.match(r"wrote digits\.onnx \(ONNX, \d+ bytes\)", out)
    from graphc import datasets
    from graphc.saved import load

    x = datasets.digits().test[0][:50]
    session = ort.InferenceSession(str(work / "digits.onnx"))
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x})
    expected = graphc.train.predict_outputs(load(str(work / "digits.graphc")), x, backend="cpu")
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-5, atol=1e-5)


@end_to_end
def test_bench_reports_compile_epoch_and_step_times(work):
    out = ok(graphc_cmd(work, "bench", "digits_mlp.py", "--batch-size", BATCH, "--epochs", "2")).stdout
    assert f"bench digits_mlp: {DIGITS_TRAIN_ROWS} examples, batch size 32, {STEPS} steps an epoch, backend cpu" in out
    seconds = {name: float(value) for name, value in
               re.findall(r"^  (compile train step|compile inference|epoch \(best of 2\)) +([\d.e-]+) s", out, re.M)}
    assert len(seconds) == 3 and all(v > 0 for v in seconds.values()), out
    step_ms = float(re.search(r"^  step \(epoch / steps\) +([\d.e-]+) ms$", out, re.M).group(1))
    assert step_ms == pytest.approx(seconds["epoch (best of 2)"] / STEPS * 1e3, rel=0.01)
    throughput = float(re.search(r"^  throughput +([\d,]+) samples/s$", out, re.M).group(1).replace(",", ""))
    assert throughput == pytest.approx(DIGITS_TRAIN_ROWS / seconds["epoch (best of 2)"], rel=0.01)


# -- cache, doctor ---------------------------------------------------------------------------------------------------

@end_to_end
def test_cache_ls_verify_and_clean(trained, work, tmp_path):
    cache = tmp_path / "cache"  # a copy of the module's cache: the other tests keep theirs
    shutil.copytree(work / "cache", cache)
    (cache / "datasets").mkdir(exist_ok=True)
    (cache / "datasets" / "kept.bin").write_bytes(b"data")
    keys = sorted(p.name for p in cache.iterdir() if re.fullmatch(r"[0-9a-f]{64}", p.name))
    assert keys
    env_work = tmp_path  # graphc_cmd's cache is <cwd>/cache
    listing = ok(graphc_cmd(env_work, "cache", "ls")).stdout
    assert listing.startswith(f"compile cache {cache}: {len(keys)} entries\n")
    assert re.search(r"^  [0-9a-f]{16}  train_step_b32 +numba_cpu .* KiB  ok$", listing, re.M), listing
    assert ok(graphc_cmd(env_work, "cache", "verify")).stdout.endswith(
        f"{len(keys)} of {len(keys)} entries verified\n")
    module = cache / keys[0] / "graph.py"
    module.write_bytes(module.read_bytes()[:-1] + b"#")  # one byte changed
    damaged = graphc_cmd(env_work, "cache", "verify")
    assert damaged.returncode == 1
    assert f"  {keys[0][:16]}  graph.py: checksum mismatch" in damaged.stdout
    assert f"{len(keys) - 1} of {len(keys)} entries verified, 1 damaged" in damaged.stdout
    out = ok(graphc_cmd(env_work, "cache", "clean", "--damaged")).stdout
    assert "removed 1 damaged entries" in out and not (cache / keys[0]).exists()
    assert ok(graphc_cmd(env_work, "cache", "verify")).returncode == 0
    out = ok(graphc_cmd(env_work, "cache", "clean")).stdout
    assert f"removed {len(keys) - 1} entries" in out
    assert not [p for p in cache.iterdir() if re.fullmatch(r"[0-9a-f]{64}(\.lock)?", p.name)]
    assert (cache / "datasets" / "kept.bin").read_bytes() == b"data"


def test_doctor_reports_versions_blas_threads_cuda_and_the_cache(work):
    out = ok(graphc_cmd(work, "doctor")).stdout
    assert out.startswith(f"graphc {graphc.__version__} (")
    for package in ("numpy", "numba", "llvmlite", "sympy", "scipy"):
        assert f"{package} {metadata.version(package)}" in out
    assert re.search(r"^BLAS \(NumPy build\): \S+", out, re.M)
    import numba

    assert re.search(rf"^threads: {os.cpu_count()} CPUs, Numba {numba.config.NUMBA_NUM_THREADS} threads "
                     r"\(NUMBA_NUM_THREADS\), threading layer (tbb|omp|workqueue)$", out, re.M), out
    assert re.search(r"^numba-cuda: (ok|no: )", out, re.M)
    assert re.search(r"^ptxas(?: \(PTX to GPU code\))?: ", out, re.M)
    assert re.search(rf"^compile cache: {re.escape(str(work / 'cache'))}, \d+ entries, 0 damaged$", out, re.M)


# -- progress within an epoch does not change the numbers ---------------------------------------------------------

@pytest.mark.parametrize("last_batch", ["partial", "wrap"])
def test_progress_pieces_train_exactly_like_one_native_epoch(last_batch):
    """Trainer.progress runs a native epoch as several native calls: the same steps, bit for bit."""
    from graphc.nn import Dense, Sequential
    from graphc.train.loop import Trainer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    reports = []
    runs = []
    for progress in (None, lambda *a: reports.append(a)):
        model = Sequential([Dense(6, "tanh"), Dense(2)], input_shape=(5,), seed=1)
        trainer = Trainer(model, graphc.optim.Momentum(0.1, 0.9), backend="cpu")
        trainer.progress, trainer.progress_pieces = progress, 3
        history = graphc.fit(model, (x, y), epochs=2, batch_size=8, seed=3, verbose=False, trainer=trainer,
                             last_batch=last_batch)
        runs.append((history["loss"], model.named_values()))
    (loss_a, values_a), (loss_b, values_b) = runs
    assert loss_a == loss_b
    for k in values_a:
        np.testing.assert_array_equal(values_a[k], values_b[k])
    steps = 9  # 70 rows in batches of 8: 8 full and a partial (or wrapped) ninth
    done = (3, 6, 8, 9) if last_batch == "partial" else (3, 6, 9)  # pieces of 3 steps; the partial batch alone
    assert [r[:3] for r in reports] == [(e, d, steps) for e in (1, 2) for d in done]
    assert all(r[3] == min(r[1] * 8, 70 if last_batch == "partial" else 72) for r in reports)


def test_plain_progress_prints_a_line_every_few_seconds_and_at_each_epochs_end(capsys, monkeypatch):
    """Without tqdm and outside a terminal (a CI log), a line at most every EVERY_S seconds and one at the end."""
    from graphc import cli

    progress = cli.BatchProgress(epochs=2)
    progress.tqdm, progress.tty = None, False
    now = iter([0.0, 1.0, 2.5, 3.0, 4.0, 10.0, 11.0, 12.0])  # each epoch's start, then one reading per report
    progress.clock = lambda: next(now)
    for done, rows, loss_sum in ((1, 32, 70.0), (2, 64, 130.0), (3, 96, 180.0), (4, 128, 220.0), (5, 150, 250.0)):
        progress(1, done, 5, rows, loss_sum)
    progress(2, 1, 5, 32, 16.0)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "epoch 1/2  batch 2/5  26 samples/s  loss 2.0312",   # 2.5 s after the start: 64 rows / 2.5 s
        "epoch 1/2  batch 5/5  15 samples/s  loss 1.6667",   # the epoch's end, whatever the time
    ]  # epoch 2's first report comes 1 s after its start: too soon for a line


# -- the README's path: train then eval, on MNIST -----------------------------------------------------------------

def _mnist_cached() -> bool:
    """Whether MNIST is in the dataset cache (the README's main job, python examples/mnist_mlp.py, puts it there)."""
    return os.path.exists(os.path.join(graphc.datasets.cache_dir(), "mnist.pkl.gz"))


@needs_saved
@needs_modelfile
@pytest.mark.skipif(not _mnist_cached(), reason="MNIST is not cached (the README's main job fetches it)")
@pytest.mark.skipif("def model(" not in (ROOT / "examples" / "mnist_mlp.py").read_text(),
                    reason="examples/mnist_mlp.py is not a model file yet (the 'saved' branch makes it one)")
def test_mnist_train_then_eval_in_a_fresh_process_gives_the_same_test_accuracy(tmp_path):
    example = str(ROOT / "examples" / "mnist_mlp.py")
    trained = ok(graphc_cmd(tmp_path, "train", example, "--epochs", "2", "--save", "mnist.graphc", cache=False))
    test_line = re.search(r"^test: loss \S+  acc (\S+) \(10000 examples\)$", trained.stdout, re.M)
    assert test_line and float(test_line.group(1)) > 0.9
    out = ok(graphc_cmd(tmp_path, "eval", "mnist.graphc", "--data", "mnist", cache=False)).stdout
    assert out.strip() == test_line.group(0)

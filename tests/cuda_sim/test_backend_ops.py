"""backend="cuda" in Numba's CUDA simulator: every op and the gradients of small networks against the
reference backend; the random ops against the cpu backend, number for number; how the kernel IR maps
to the device (one kernel per fused chain, block reductions, swapped grid kernels, host loops), with
extents that make the grid-stride loops and the reduction's strided loop run more than once; the
kernels' docstrings naming their node and the user's line.

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda_sim

The simulator runs every CUDA thread as a Python thread (launch sizes are tiny there: runtime.THREADS,
MAX_BLOCKS), so each graph is small and compiled once per module.
"""
from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the shared op graphs and tolerances
from test_numba_cpu import GRAPHS, TOL, assert_same, rng  # noqa: E402

import graphc  # noqa: E402
from graphc.backends.numba_cuda.runtime import MAX_BLOCKS, THREADS  # noqa: E402
from graphc.nn import (  # noqa: E402
    Activation,
    AvgPool2D,
    BatchNorm,
    Context,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    Residual,
    Sequential,
)
from graphc.ops.random import random_flip2d, random_shift2d, random_uniform  # noqa: E402

#: More elements than one grid-stride launch has threads: every lane's loop runs more than once.
LAUNCH = THREADS * MAX_BLOCKS


def line_of(marker: str) -> str:
    """``test_backend_ops.py:<line>`` of the line ending with ``# <marker>`` (as the kernels' docstrings
    name the user's line: the file's name and the line)."""
    lines = inspect.getsource(sys.modules[__name__]).splitlines()
    hits = [k + 1 for k, text in enumerate(lines) if text.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, marker
    return f"{Path(__file__).name}:{hits[0]}"


def kernels_of(source: str) -> dict[str, str]:
    """Each ``@cuda.jit`` kernel of a generated module: name -> its docstring."""
    return dict(re.findall(r'@cuda\.jit\(\*\*JIT\)\ndef (\w+)\(.*?\):\n    """(.*?)"""', source))


# -- 1. every op ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[(name, dtype, conv) for name in GRAPHS for dtype in ("float64", "float32")
                                        for conv in (("im2col", "direct") if name == "conv" else ("auto",))],
                ids=lambda p: "-".join(p[:2] if p[2] == "auto" else p))
def op_case(request, graphc_cache_dir):
    """The op graphs of tests/test_numba_cpu.py on the device. float64: as written (every op through its
    own lowering rule), tight tolerance; float32: optimized at level 2 (fused nodes, GEMM/conv epilogues),
    loose tolerance. The conv graph with each conv2d method (im2col + GEMM, the direct kernel)."""
    name, dtype, conv = request.param
    outputs, inputs, feeds, names = GRAPHS[name](dtype)
    exe = graphc.compile(outputs, inputs=inputs, backend="cuda", cache_dir=graphc_cache_dir,
                         optimize=0 if dtype == "float64" else 2, conv=conv)
    ref = graphc.compile(outputs, inputs=inputs)
    if name == "conv":
        assert ("conv2d_direct(" in exe.source) == (conv == "direct")
        assert ("conv2d_im2col(" in exe.source) == (conv == "im2col")
    return exe, ref, feeds, names, dtype


def test_every_op_and_its_gradient_matches_reference(op_case):
    exe, ref, feeds, names, dtype = op_case
    assert_same(exe(*feeds), ref(*feeds), names, dtype)


# -- 2. gradients of small networks ------------------------------------------------------------------------------

def mlp():
    return Sequential([Dense(6, "relu"), Dense(5, "tanh"), Dense(3)], input_shape=(4,), dtype=np.float64, seed=1)


def cnn():
    """Stride, padding, max pooling with padding, average pooling."""
    return Sequential([Conv2D(2, 3, stride=2, padding=1, activation="relu"),   # 2 x 3 x 3
                       MaxPool2D(3, stride=1, padding=1),                       # 2 x 3 x 3
                       Conv2D(3, 2, padding=1),                                 # 3 x 4 x 4
                       AvgPool2D(2, stride=2, padding=1),                       # 3 x 3 x 3
                       Flatten(), Dense(3)], input_shape=(2, 5, 5), dtype=np.float64, seed=2)


def residual_bn():
    block = Residual([Conv2D(2, 3, padding=1), BatchNorm(), Activation("relu"), Conv2D(2, 3, padding=1), BatchNorm()],
                     activation="relu")
    return Sequential([Conv2D(2, 1), BatchNorm(), block, AvgPool2D(2), Flatten(), Dense(3)],
                      input_shape=(1, 4, 4), dtype=np.float64, seed=3)


NETWORKS = {"mlp": (mlp, 5), "cnn": (cnn, 2), "residual_bn": (residual_bn, 2)}


def gradient_graph(model, batch: int, name: str):
    """The training forward pass of ``model`` (batch statistics; the running statistics as updates),
    its softmax cross-entropy, and the loss's gradient with respect to every parameter and the input."""
    with graphc.Graph(name) as g:
        x = graphc.input("x", (batch,) + tuple(model.in_shape), "float64")
        y = graphc.input("y", (batch,), "int64")
        ctx = Context(training=True)
        out = model(x, ctx)
        loss = graphc.softmax_cross_entropy(out, y)
        params = [t for t in ctx._params.values() if t.node.attrs.get("trainable", True)]
        grads = graphc.grad(loss, params + [x])
        for state, value in ctx.updates:
            g.update(state, graphc.cast(value, state.dtype))
        outputs = [loss, out, *grads]
        g.output(*outputs)
    names = ["loss", "out"] + [f"d{p.name}" for p in params] + ["dx"]
    return outputs, [x, y], names


@pytest.fixture(scope="module", params=list(NETWORKS))
def network(request, graphc_cache_dir):
    """A network's gradient graph on the device (optimized at the default level: fused updates, GEMM and
    conv epilogues) and on the reference backend (as written)."""
    build, batch = NETWORKS[request.param]
    model = build()
    outputs, inputs, names = gradient_graph(model, batch, f"grad_{request.param}")
    exe = graphc.compile(outputs, inputs=inputs, backend="cuda", cache_dir=graphc_cache_dir)
    ref = graphc.compile(outputs, inputs=inputs)
    r = rng(11)
    feeds = [r.standard_normal((batch,) + tuple(model.in_shape)), r.integers(0, 3, batch)]
    return exe, ref, feeds, names


def test_network_gradients_match_reference(network):
    exe, ref, feeds, names = network
    before = {k: v.copy() for k, v in exe.params.items()}
    assert_same(exe(*feeds), ref(*feeds), names, "float64")
    assert exe.params.keys() == ref.params.keys()
    for k in exe.params:
        np.testing.assert_allclose(exe.params[k], ref.params[k], **TOL["float64"], err_msg=k)
    running = [k for k in exe.params if "running" in k]
    assert all(not np.allclose(exe.params[k], before[k]) for k in running)
    assert bool(running) == ("bn" in exe.graph.name)


# -- 4. random ops: the cpu backend's numbers ---------------------------------------------------------------------

def random_graph(dtype: str):
    """random_uniform, dropout (as nn.Dropout builds it), random_shift2d and random_flip2d of one key;
    the uniform samples outnumber one launch's threads."""
    with graphc.Graph(f"random_{dtype}") as g:
        key = graphc.input("key", (), "int64")
        x = graphc.input("x", (3, 2, 5, 4), dtype)
        u = random_uniform(key, (3, 2 * LAUNCH), salt=7, dtype=dtype)
        mask = graphc.greater_equal(random_uniform(key, (3, 2, 5, 4), salt=8, dtype=dtype), 0.4)
        dropped = graphc.where(mask, x * (1.0 / 0.6), 0.0)
        outputs = [u, mask, dropped, random_shift2d(x, key, 2, salt=1), random_flip2d(x, key, salt=2)]
        g.output(*outputs)
    return outputs, [key, x]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_ops_draw_the_cpu_backends_numbers(dtype, graphc_cache_dir):
    outputs, inputs = random_graph(dtype)
    exe = graphc.compile(outputs, inputs=inputs, backend="cuda", cache_dir=graphc_cache_dir)
    cpu = graphc.compile(outputs, inputs=inputs, backend="cpu", cache_dir=graphc_cache_dir)
    x = (rng(12).standard_normal((3, 2, 5, 4)) + 3.0).astype(dtype)  # no zeros: a dropped unit shows as 0
    draws = []
    for key in (0, 12345, 2 ** 40 + 7):
        got, want = exe(np.int64(key), x), cpu(np.int64(key), x)
        for name, g, w in zip(["uniform", "mask", "dropout", "shift", "flip"], got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, name
            np.testing.assert_array_equal(g, w, err_msg=f"{name}, key {key}")
        draws.append(got)
    # The draws are real: the mask drops some units and keeps others, and other keys draw other numbers.
    mask = draws[0][1]
    assert 0 < mask.mean() < 1
    assert not np.array_equal(draws[0][0], draws[1][0]) and not np.array_equal(draws[0][1], draws[2][1])


# -- 7. the mapping onto the device ---------------------------------------------------------------------------------

def test_fused_elementwise_chain_is_one_kernel(graphc_cache_dir):
    n = 3 * LAUNCH + 5
    with graphc.Graph("fused_chain") as g:
        x = graphc.input("x", (n,), "float64")
        y = graphc.input("y", (n,), "float64")
        out = g.output(graphc.tanh(x * 2.0 + y) * graphc.exp(-x) - graphc.sigmoid(y) / 3.0)
    exe = graphc.compile(out, backend="cuda", cache_dir=graphc_cache_dir)
    ref = graphc.compile(out)
    assert [node.op for node in exe.graph.nodes if node.op != "input"] == ["fused"]  # what the passes made of it
    kernels = kernels_of(exe.source)
    assert len(kernels) == exe.source.count("\n@cuda.jit") == 1, exe.source
    (doc,) = kernels.values()
    assert doc.endswith("(grid)") and "fused[" in doc
    r = rng(13)
    a, b = r.standard_normal(n), r.standard_normal(n)
    np.testing.assert_allclose(exe(a, b), ref(a, b), **TOL["float64"])


@pytest.fixture(scope="module")
def reductions(graphc_cache_dir):
    """A full sum, a softmax cross-entropy over more rows than a block has threads, a column sum and a
    batched matmul, each over more elements than one launch has threads."""
    rows, cols = 2 * LAUNCH + 3, 3
    with graphc.Graph("reductions") as g:
        x = graphc.input("x", (rows, cols), "float64")
        y = graphc.input("y", (rows,), "int64")
        a = graphc.input("a", (3, 5, 4), "float64")
        b = graphc.input("b", (3, 4, 6), "float64")
        z = graphc.input("z", (3, 2 * LAUNCH + 1), "float64")
        outputs = [graphc.sum(x),                                 # full-sum
                   graphc.softmax_cross_entropy(x, y),            # cross-entropy
                   graphc.sum(z, 0),                              # column-sum
                   graphc.max(x),                                 # full-max
                   # a lane starts a max at -inf and a min at +inf: these never reach 0
                   graphc.max(-(x * x) - 1.0), graphc.min(x * x + 1.0),
                   graphc.matmul(a, b)]                           # batched-matmul
        g.output(*outputs)
    inputs = [x, y, z, a, b]
    exe = graphc.compile(outputs, inputs=inputs, backend="cuda", cache_dir=graphc_cache_dir, optimize=0)
    ref = graphc.compile(outputs, inputs=inputs)
    r = rng(14)
    feeds = [r.standard_normal((rows, cols)), r.integers(0, cols, rows), r.standard_normal((3, 2 * LAUNCH + 1)),
             r.standard_normal((3, 5, 4)), r.standard_normal((3, 4, 6))]
    return exe, ref, feeds


def test_reductions_and_batched_matmul_match_reference(reductions):
    exe, ref, feeds = reductions
    assert feeds[0].size > LAUNCH and len(feeds[1]) > THREADS and feeds[2].shape[1] > LAUNCH
    got, want = exe(*feeds), ref(*feeds)
    assert_same(got, want, ["sum", "cross-entropy", "column sum", "max", "max of negatives", "min of positives",
                            "batched matmul"], "float64")
    assert got[4] < -1 and got[5] > 1


def test_reductions_render_block_reductions_swapped_kernels_and_host_loops(reductions):
    exe, _, _ = reductions
    docs = list(kernels_of(exe.source).values())

    def kinds(marker: str) -> set:
        return {re.search(r"\((\w+)\)$", d).group(1) for d in docs if line_of(marker) in d}

    assert "reduce" in kinds("full-sum")
    assert "reduce" in kinds("cross-entropy")
    assert "reduce" in kinds("full-max")
    assert "swapped" in kinds("column-sum") and "reduce" not in kinds("column-sum")
    assert kinds("batched-matmul") >= {"gemm"}
    # The block reduction: one block, a strided loop per lane, then the tree over shared memory.
    assert re.search(r"\w+\[1, THREADS\]\(", exe.source) and "a tree over the block's partial results" in exe.source
    # The batched matmul: the host loops over the batch and launches one GEMM per matrix.
    driver = exe.source.split("\ndef step(", 1)[1]
    assert re.search(r"\n    for i\d+ in range\(3\):\n        \w+\[gemm_launch\(5, 6\)\]\(", driver), driver


def test_integer_reductions_are_exact_past_two_to_the_53(graphc_cache_dir):
    # A full reduction's total goes from the block-reduction kernel to the next through a small device
    # array: integers must travel as int64, not float64 (exact only up to 2**53).
    with graphc.Graph("int_reductions") as g:
        x = graphc.input("x", (2 * LAUNCH + 3,), "int64")
        outputs = [graphc.sum(x), graphc.max(x), graphc.min(x)]
        g.output(*outputs)
    exe = graphc.compile(outputs, backend="cuda", cache_dir=graphc_cache_dir, optimize=0)
    assert all(re.search(r"\((reduce)\)$", doc) or doc.endswith("(serial)") for doc in kernels_of(exe.source).values())
    values = rng(15).integers(2 ** 55, 2 ** 56, 2 * LAUNCH + 3)
    values[3] += 1  # an odd number: float64 cannot hold it
    got = exe(values)
    assert [int(v) for v in got] == [int(values.sum()), int(values.max()), int(values.min())]
    assert all(v.dtype == np.int64 for v in got)


# -- 8. the kernels name their node and the user's line --------------------------------------------------------------

def test_every_kernel_names_its_node_and_the_users_line(reductions):
    exe, _, _ = reductions
    kernels = kernels_of(exe.source)
    assert len(kernels) == exe.source.count("\n@cuda.jit") and set(kernels) == set(exe.module.SIGNATURES)
    nodes = {f"%{k}" for k, _ in enumerate(exe.graph.nodes)}
    for name, doc in kernels.items():
        node = re.match(r"(labels of )?(%\d+) \w+", doc)
        assert node and node.group(2) in nodes, (name, doc)
        assert re.search(rf"{Path(__file__).name}:\d+ \(\w+\)$", doc), (name, doc)
    # ...and the line is the one that built the node: the column sum's kernels name its line.
    column_sum = [doc for doc in kernels.values() if re.match(r"%\d+ sum ", doc) and "(swapped)" in doc]
    assert column_sum and all(doc.endswith(f"{line_of('column-sum')} (swapped)") for doc in column_sum)
    # The driver heads each kernel's launches with the same words.
    for doc in kernels.values():
        heading = re.sub(r" [(]\w+[)]$", "", doc)
        assert f"    # {heading}\n" in exe.source

"""The llvm target (graphc/backends/llvm): Programs rendered as LLVM IR, compiled at O3, linked by cc and run
through the entry ABI, against the reference backend (every op and its gradient), NumPy's legacy Mersenne
Twister (bit for bit) and the cpu backend (label checks, dropout masks).

LLVM's O3 dominates the run time: graphs are tiny and each is compiled once per module.
"""
from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/: the shared op graphs and tolerances
from test_numba_cpu import GRAPHS, assert_same  # noqa: E402

import graphc  # noqa: E402
from graphc.backends import llvm, lower_for, numba_cpu  # noqa: E402
from graphc.backends.lowering.interpret import Interpreter  # noqa: E402
from graphc.backends.lowering.ir import Assign, walk  # noqa: E402
from graphc.backends.native import aligned_bytes  # noqa: E402
from graphc.ops.random import random_uniform  # noqa: E402


def program_of(outputs, inputs=None, optimize=0, **options):
    """The Program the llvm target renders for ``outputs`` (cut and optimized as graphc.compile does)."""
    return lower_for(outputs, inputs, backend="llvm", optimize=optimize, **options)


class Step:
    """A Program compiled by the llvm target, with its memory, called through the entry ABI."""

    def __init__(self, program, symbol="graphc_step"):
        self.program = program
        self.entry = llvm.jit_entry(llvm.render_module(program, symbol), symbol)
        self.state = aligned_bytes(program.state_bytes)
        self.state[:] = Interpreter(program).state[:self.state.size]  # parameters and constants, as the cpu's
        self.workspace = aligned_bytes(program.workspace_bytes)
        self.workspace[:] = 0xFF  # garbage: a kernel reading memory nobody wrote shows in the numbers
        self.status = np.zeros(4, np.int64)
        self.rng = np.zeros(llvm.MT_WORDS, np.uint32)

    def __call__(self, *feeds):
        inputs = [np.ascontiguousarray(np.asarray(f, dtype=n.dtype.np)) for f, n in zip(feeds, self.program.inputs)]
        outputs = [np.empty(buf.shape, buf.dtype) for buf in self.program.outputs]
        self.code = self.entry(self.state, self.workspace, inputs, outputs, self.status, self.rng)
        return tuple(outputs)


# -- every op and its gradient against the reference backend ---------------------------------------------

@pytest.fixture(scope="module", params=[(name, dtype, conv) for name in GRAPHS for dtype in ("float64", "float32")
                                        for conv in (("im2col", "direct") if name == "conv" else ("im2col",))],
                ids=lambda p: "-".join(p if p[0] == "conv" else p[:2]))
def op_case(request):
    """The op graphs of tests/test_numba_cpu.py: float64 as written (every op through its own rule), tight
    tolerance; float32 optimized at level 2 (fused nodes, GEMM/conv epilogues), loose tolerance."""
    name, dtype, conv = request.param
    outputs, inputs, feeds, names = GRAPHS[name](dtype)
    program = program_of(outputs, inputs, optimize=0 if dtype == "float64" else 2, conv=conv)
    ref = graphc.compile(outputs, inputs=inputs)
    return Step(program), ref, feeds, names, dtype


def test_every_op_and_its_gradient_matches_reference(op_case):
    step, ref, feeds, names, dtype = op_case
    got = step(*feeds)
    assert step.code == 0
    assert_same(got, ref(*feeds), names, dtype)


def test_training_step_updates_parameters_in_place_as_the_reference():
    """An MLP SGD step (GEMMs with the update inside, an accumulated first-layer update): outputs and
    parameters after three steps equal the reference backend's."""
    r = np.random.default_rng(5)
    with graphc.Graph("llvm_sgd") as g:
        x = graphc.input("x", (4, 3), "float64")
        y = graphc.input("y", (4,), "int64")
        w1 = graphc.param("w1", r.standard_normal((3, 5)))
        w2 = graphc.param("w2", r.standard_normal((5, 2)))
        loss = graphc.softmax_cross_entropy(graphc.tanh(x @ w1) @ w2, y)
        d1, d2 = graphc.grad(loss, [w1, w2])
        g.update(w1, w1 - 0.1 * d1)
        g.update(w2, w2 - 0.1 * d2)
        g.output(loss)
    step = Step(program_of([loss], optimize=2))
    ref = graphc.compile([loss])
    for _ in range(3):
        xs, ys = r.standard_normal((4, 3)), r.integers(0, 2, 4)
        (got,), want = step(xs, ys), ref(xs, ys)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    for node in step.program.graph.params:
        slot = step.program.state[id(node)]
        np.testing.assert_allclose(slot.view(step.state), ref.params[node.name], rtol=1e-12, err_msg=node.name)


@pytest.fixture(scope="module", params=["mlp", "cnn", "residual_bn"])
def network(request):
    """tests/cuda_sim's small networks (dense, conv with stride/padding, pooling, batch norm, a residual
    block): the loss's gradient with respect to every parameter and the input, optimized at the default
    level (fused updates, GEMM and conv epilogues), against the reference backend as written."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda_sim"))
    from test_backend_ops import NETWORKS, gradient_graph

    build, batch = NETWORKS[request.param]
    model = build()
    outputs, inputs, names = gradient_graph(model, batch, f"llvm_grad_{request.param}")
    program = program_of(outputs, inputs, optimize=None)
    r = np.random.default_rng(11)
    feeds = [r.standard_normal((batch,) + tuple(model.in_shape)), r.integers(0, 3, batch)]
    return Step(program), graphc.compile(outputs, inputs=inputs), feeds, names


def test_network_gradients_match_reference(network):
    step, ref, feeds, names = network
    assert_same(step(*feeds), ref(*feeds), names, "float64")


def test_fast_math_flags_go_on_float_instructions_only():
    """A conv network with fast-math flags (the cpu backend's default): its expanded im2col, pooling and index
    arithmetic are integer instructions, which LLVM rejects with the flags; the flagged step still matches
    the reference to a float tolerance (reassociation changes rounding only)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda_sim"))
    from test_backend_ops import NETWORKS, gradient_graph

    build, batch = NETWORKS["cnn"]
    model = build()
    outputs, inputs, names = gradient_graph(model, batch, "llvm_fast_cnn")
    program = program_of(outputs, inputs, optimize=None, fastmath=("contract", "reassoc"))
    text = llvm.render_text(program, "graphc_fast")
    assert re.search(r"= f(add|mul) contract reassoc double", text)
    assert not re.search(r"= (add|mul|sub|sdiv|srem|icmp)[^=]*\b(contract|reassoc)\b", text)
    r = np.random.default_rng(12)
    feeds = [r.standard_normal((batch,) + tuple(model.in_shape)), r.integers(0, 3, batch)]
    got, want = Step(program)(*feeds), graphc.compile(outputs, inputs=inputs)(*feeds)
    for a, b, name in zip(got, want, names):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)


# -- the Mersenne Twister ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mt():
    """graphc_mt_seed / graphc_mt_uniform of a module, callable from Python."""
    import llvmlite.ir as ir

    module = ir.Module("mt")
    llvm.define_mt19937(module)
    entry = llvm.jit_entry(module, "graphc_mt_seed")
    u32p = ctypes.c_void_p
    seed = entry.symbol("graphc_mt_seed", None, [u32p, ctypes.c_uint32])
    uniform = entry.symbol("graphc_mt_uniform", ctypes.c_double, [u32p])
    return seed, uniform


@pytest.mark.parametrize("seed", [0, 1, 12345, 2 ** 32 - 1])
def test_mt19937_equals_numpy_legacy_random_sample_bit_for_bit(mt, seed):
    seed_fn, uniform = mt
    words = np.zeros(llvm.MT_WORDS, np.uint32)
    seed_fn(words.ctypes.data, seed)
    n = 700  # two words a draw: 1400 words cross the 624-word regeneration twice
    got = np.array([uniform(words.ctypes.data) for _ in range(n)])
    np.random.seed(seed)
    want = np.random.random_sample(n)
    assert got.tobytes() == want.tobytes()


def test_dropout_mask_equals_the_cpu_backends(graphc_cache_dir):
    with graphc.Graph("llvm_dropout") as g:
        x = graphc.input("x", (5, 40), "float32")
        key = graphc.input("key", (), "int64")
        u = random_uniform(key, (5, 40), salt=9, dtype="float32")  # nn.Dropout's mask, as the layer draws it
        y = g.output(graphc.where(graphc.greater_equal(u, 0.3), x * (1.0 / 0.7), 0.0))
    step, exe = Step(program_of([y])), graphc.compile(y, backend="cpu", cache_dir=graphc_cache_dir)
    for key in (77, -123456789, 2 ** 40 + 3):  # the seed is (key mod 2**32) * 1000003 + salt mod 2**32: Python's mod
        feeds = [np.ones((5, 40), np.float32), np.array(key, np.int64)]
        (got,) = step(*feeds)
        assert 0 < np.count_nonzero(got) < got.size
        np.testing.assert_array_equal(got, exe(*feeds), err_msg=f"key {key}")


# -- checks ------------------------------------------------------------------------------------------------

def test_failed_label_check_returns_the_code_and_status_words_the_cpu_backend_reports(graphc_cache_dir):
    with graphc.Graph("llvm_labels") as g:
        logits = graphc.input("logits", (4, 3), "float64")
        labels = graphc.input("labels", (4,), "int64")
        loss = g.output(graphc.softmax_cross_entropy(logits, labels))
    program = program_of([loss])
    step = Step(program)
    bad = np.array([0, 2, 5, 1])
    step(np.zeros((4, 3)), bad)
    assert step.code != 0 and step.code == step.status[0]
    assert list(step.status[1:3]) == [2, 5]  # the first bad label: index 2, value 5
    exe = numba_cpu.build_program(program, cache_dir=str(graphc_cache_dir))  # the same Program on the cpu
    with pytest.raises(graphc.InputError, match=r"labels"):
        exe(np.zeros((4, 3)), bad)
    exe._call_step([np.zeros((4, 3)), bad])  # the native call alone: its status words stay
    assert list(exe._status[:3]) == list(step.status[:3])
    site = next(e for e in program.errors if e.code == step.code)
    assert site.kind == "label" and site.input == "labels"
    step(np.zeros((4, 3)), np.array([0, 2, 1, 1]))
    assert step.code == 0


# -- IEEE semantics of the scalar code --------------------------------------------------------------------

@pytest.fixture(scope="module", params=["float64", "float32"])
def ieee(request):
    dtype = request.param
    with graphc.Graph(f"llvm_ieee_{dtype}") as g:
        a = graphc.input("a", (8,), dtype)
        b = graphc.input("b", (8,), dtype)
        outs = [graphc.maximum(a, b), graphc.minimum(a, b), graphc.pow(a, b), graphc.pow(a, 0.5 * b),
                graphc.sign(a), a * b, graphc.relu(a), graphc.clip(a, -1.0, 1.0), graphc.max(a), graphc.min(b),
                graphc.sqrt(a), graphc.log(a), graphc.exp(a), graphc.tanh(a), graphc.sigmoid(a),
                graphc.softplus(a), graphc.step(a), graphc.where(graphc.less(a, b), a, b)]
        g.output(*outs)
    step = Step(program_of(outs, optimize=0))
    ref = graphc.compile(outs)
    return step, ref, dtype


def test_nan_and_inf_semantics_match_reference(ieee):
    step, ref, dtype = ieee
    nan, inf = np.nan, np.inf
    a = np.array([nan, 1.0, -2.0, 0.0, inf, -inf, 3.0, -0.5], dtype)
    b = np.array([1.0, nan, 0.5, inf, 0.0, 2.5, -inf, 3.0], dtype)
    got, want = step(a, b), ref(a, b)
    for k, (x, y) in enumerate(zip(got, want)):
        np.testing.assert_allclose(x, y, rtol=1e-6 if dtype == "float32" else 1e-15, err_msg=f"output {k}")
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=f"output {k}")


def test_user_functions_through_libm_and_rounding_match_reference(scratch_registry):
    """User-defined elementwise ops with what no built-in op uses: frac, Mod, floor, ceiling, erf, Max/Min,
    sin, atan, non-integer and negative powers, on negative, NaN and infinite values, in float64 and float32."""
    import math

    import sympy

    fns = {"frac": sympy.frac, "mod": lambda v: sympy.Mod(v, 1.5), "floor": sympy.floor, "ceil": sympy.ceiling,
           "max3": lambda v: sympy.Max(v, 0.5, -v), "min2": lambda v: sympy.Min(v, 1),
           "trig": lambda v: sympy.sin(v) + sympy.atan(v) * sympy.cos(v), "pow": lambda v: v ** 1.5 + v ** -3}
    for dtype in ("float64", "float32"):
        with graphc.Graph(f"llvm_user_{dtype}") as g:
            x = graphc.input("x", (9,), dtype)
            outs = [graphc.elementwise(f"llvm_{name}_{dtype}", fn)(x) for name, fn in fns.items()]
            g.output(*outs)
        step, ref = Step(program_of(outs)), graphc.compile(outs)
        x = np.array([-2.75, -1.5, -0.25, 0.0, 0.4, 1.5, 3.25, np.nan, -np.inf], dtype)
        for name, got, want in zip(fns, step(x), ref(x)):
            np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == "float32" else 1e-14, err_msg=f"{name} {dtype}")
        # erf: libm's erf/erff (the reference backend cannot run it on arrays: SymPy prints math.erf); Python's
        # math.erf is the oracle.
        with graphc.Graph(f"llvm_erf_{dtype}") as g:
            v = graphc.input("x", (9,), dtype)
            out = g.output(graphc.elementwise(f"llvm_erf_{dtype}", sympy.erf)(v))
        (got,) = Step(program_of([out]))(x)
        want = np.array([math.erf(float(t)) for t in x], dtype)
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == "float32" else 1e-15, err_msg=f"erf {dtype}")


# -- the text ----------------------------------------------------------------------------------------------

def tiny_graph():
    with graphc.Graph("llvm_tiny") as g:
        x = graphc.input("x", (4,), "float32")  # tiny input
        w = graphc.param("w", np.full(4, 0.5, np.float32))
        y = g.output(graphc.relu(x * w) + 1.0)  # tiny output
    return y


def test_render_text_has_a_header_and_each_kernels_title(golden):
    program = program_of([tiny_graph()], optimize=0)
    text = llvm.render_text(program, "graphc_tiny")
    assert text.startswith("; graphc ") and "llvm backend: graph llvm_tiny" in text.splitlines()[0]
    for kernel in program.kernels:
        at = text.index(f"; {kernel.title}\n")
        assert re.match(r'"?k\d+_\w+"?:', text[at:].splitlines()[1]), kernel.title
    assert "test_llvm_render.py:" in text
    text = re.sub(r"graphc \S+ llvm backend", "graphc VERSION llvm backend", text)
    golden("llvm/tiny.ll", re.sub(r"test_llvm_render\.py:\d+", "test_llvm_render.py:LINE", text))


def test_object_needs_only_libc_and_libm_for_native_and_generic_targets(tmp_path):
    """A step with a GEMM, random draws and libm functions: the object of each target links into a shared
    library with every symbol resolved by libc and libm (``--no-undefined``), and defines the ABI's symbols."""
    import subprocess

    with graphc.Graph("llvm_object") as g:
        x = graphc.input("x", (3, 4), "float32")
        key = graphc.input("key", (), "int64")
        w = graphc.param("w", np.full((4, 2), 0.5, np.float32))
        y = g.output(graphc.tanh(x @ w) + random_uniform(key, (3, 2), salt=1) + graphc.exp(graphc.sum(x)))
    module = llvm.render_module(program_of([y]), "graphc_object")
    for target in ("native", "generic"):
        obj = tmp_path / f"{target}.o"
        obj.write_bytes(llvm.compile_object(module, target))
        assert obj.read_bytes()[:4] == b"\x7fELF"
        lib = tmp_path / f"{target}.so"
        done = subprocess.run(["cc", "-shared", "-Wl,--no-undefined", "-o", str(lib), str(obj), "-lm"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        defined = subprocess.run(["nm", "--defined-only", "-g", str(obj)], capture_output=True, text=True).stdout
        for symbol in ("graphc_object", "graphc_mt_seed", "graphc_mt_uniform", "graphc_sgemm"):
            assert re.search(rf" T {symbol}$", defined, re.M), (target, symbol)
    with pytest.raises(llvm.LLVMTargetError, match="unknown target 'arm'"):
        llvm.target_machine("arm")


def test_float_code_is_ieee_unless_the_program_names_fast_math_flags():
    y = tiny_graph()
    ieee = llvm.render_text(program_of([y], optimize=0), "graphc_tiny")
    assert re.search(r"= f(add|mul|cmp) ", ieee) and not re.search(r"\b(reassoc|contract|fast|nnan|ninf)\b", ieee)
    fast = llvm.render_text(program_of([y], optimize=0, fastmath=("contract", "reassoc")), "graphc_tiny")
    assert re.search(r"= fmul contract reassoc float", fast)


def test_allreduce_is_refused_naming_the_op_and_the_users_line():
    from graphc.backends.lowering.ir import Call, Kernel, Ref

    program = program_of([tiny_graph()], optimize=0)
    buf = program.outputs[0]
    program.kernels.append(Kernel(node=99, op="allreduce_mean", rule="collective", where="train.py:12",
                                  body=[Call("allreduce_mean", (Ref(buf), Ref(buf), buf.size))]))
    with pytest.raises(llvm.UnsupportedCallError, match=r"allreduce_mean.*%99.*train\.py:12.*MPI"):
        llvm.render_module(program, "graphc_tiny")


def test_equality_of_two_comparisons_matches_reference():
    """fit's binary accuracy, ``(z > 0) == (y > 0.5)``: fused, SymPy makes the comparison of two truth values an
    if-then-else of them (``ITE``), on which the scalar builder recursed until Python's limit."""
    with graphc.Graph("llvm_boolean_equal") as g:
        z = graphc.input("z", (8,), "float64")
        y = graphc.input("y", (8,), "float64")
        g.output(graphc.cast(graphc.equal(graphc.greater(z, 0.0), graphc.greater(y, 0.5)), "float32"))
    program = program_of(g, optimize=None)
    assert any(s.value.atoms(sp.ITE) for k in program.kernels for s in walk(k.body) if isinstance(s, Assign))
    zs, ys = np.array([1.0, -1.0, 1.0, -1.0, 0.0, -0.0, np.nan, 2.0]), np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, np.nan])
    got, want = Step(program)(zs, ys)[0], graphc.compile(g)(zs, ys)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, [1, 1, 0, 0, 1, 0, 0, 0])

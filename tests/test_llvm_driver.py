"""The cpu backend's llvm driver (``graphc.compile(..., driver="llvm")``): the step's kernels compiled by the llvm
target and loaded in process. Oracles: the reference backend (every op and gradient, training), the Numba
driver (the same Program, so the same numbers to rounding; the same MT19937 draws exactly). GEMM sharing through
the llvm driver: tests/test_gemm_sharing.py."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_numba_cpu import DTYPES, GRAPHS, assert_same, assert_steps_match, compile_both, mlp_step, rng  # noqa: E402

import graphc  # noqa: E402
from graphc.backends import numba_cpu  # noqa: E402
from graphc.backends.numba_cpu import llvm_driver  # noqa: E402


@pytest.fixture(scope="module", params=[(name, dtype) for name in GRAPHS for dtype in DTYPES],
                ids=lambda p: "-".join(p))
def op_case(request, graphc_cache_dir):
    """tests/test_numba_cpu.py's op graphs (random draws, conv and pooling library calls included): float64 as
    written, float32 optimized at level 2 (fused nodes, epilogues)."""
    name, dtype = request.param
    outputs, inputs, feeds, names = GRAPHS[name](dtype)
    exe, ref = compile_both(outputs, inputs, graphc_cache_dir, optimize=0 if dtype == "float64" else 2,
                            driver="llvm")
    return exe, ref, feeds, names, dtype


def test_ops_and_gradients_match_reference(op_case):
    exe, ref, feeds, names, dtype = op_case
    assert exe.program.options["driver"] == "llvm" and "ENTRY(" in exe.source
    assert_same(exe(*feeds), ref(*feeds), names, dtype)


def test_a_draw_is_the_numba_drivers_draw(graphc_cache_dir):
    outputs, inputs, feeds, names = GRAPHS["conv"]("float32")
    k = names.index("random_uniform")
    x, key = inputs[0], inputs[-1]  # the random ops read x (its shape) and the key
    got = [graphc.compile(outputs[k:k + 3], inputs=[x, key], backend="cpu", cache_dir=graphc_cache_dir, driver=d)
           for d in ("llvm", "numba")]
    for a, b in zip(got[0](feeds[0], feeds[-1]), got[1](feeds[0], feeds[-1])):
        np.testing.assert_array_equal(a, b)
    # exe.llvm_ir shows what was loaded: the generator's functions internal to the object, as each object's own
    defined = re.findall(r"^define (.*?)@\"?(graphc_\w+)", got[0].llvm_ir, re.M)
    assert {name for linkage, name in defined if "graphc_mt_" in name and "internal" in linkage} >= {"graphc_mt_next"}
    exported = [name for linkage, name in defined if "internal" not in linkage]
    assert len(exported) == 1 and exported[0].startswith("graphc_step_")  # the entry alone


@pytest.fixture(scope="module")
def llvm_mlp(graphc_cache_dir):
    loss, inputs = mlp_step(dtype="float64", name="llvm_driver_mlp")
    return compile_both(loss, inputs, graphc_cache_dir, optimize=2, driver="llvm")


def test_training_steps_and_a_failed_check_match_reference(llvm_mlp):
    exe, ref = llvm_mlp
    x, y = assert_steps_match(exe, ref, rng(3), 3)
    before = {k: v.copy() for k, v in exe.params.items()}
    with pytest.raises(graphc.InputError, match="label 7 at index 0 is out of range"):
        exe(x, np.r_[7, y[1:]])  # the entry's status, as the Numba driver's
    for k in exe.params:
        np.testing.assert_array_equal(exe.params[k], before[k])


def test_an_epoch_runs_the_entry_and_matches_reference_steps(graphc_cache_dir):
    """``run_epoch`` (the module's Numba ``epoch`` calling the entry by its symbol) against the reference backend
    stepping through the same minibatches."""
    loss, inputs = mlp_step(dtype="float64", name="llvm_driver_epoch")
    exe, ref = compile_both(loss, inputs, graphc_cache_dir, optimize=2, driver="llvm")
    r = rng(4)
    X, Y, perm = r.standard_normal((40, 4)), r.integers(0, 3, 40), r.permutation(40)
    want = [ref(X[perm[s * 8:(s + 1) * 8]], Y[perm[s * 8:(s + 1) * 8]]) for s in range(5)]
    np.testing.assert_allclose(exe.run_epoch(X, Y, perm=perm), want, rtol=1e-12)
    for k in exe.params:
        np.testing.assert_allclose(exe.params[k], ref.params[k], rtol=1e-12, atol=1e-15)


def test_the_kernels_ir_and_assembly_are_inspectable(llvm_mlp):
    exe, _ = llvm_mlp
    ir_text = exe.llvm_ir
    assert ir_text.startswith("; graphc ") and re.search(r"define i32 @\"?graphc_step_", ir_text)
    for kernel in exe.program.kernels:
        assert f"; {kernel.title}\n" in ir_text  # each kernel headed by its node and the user's line
    assert "test_numba_cpu.py:" in ir_text
    assert "graphc_step_" in exe.asm and "call" in exe.asm


def test_a_cache_hit_in_a_new_process_loads_the_object_and_skips_every_compile(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import numpy as np, graphc
        from test_numba_cpu import mlp_step
        loss, inputs = mlp_step(dtype="float32", name="llvm_driver_hit")
        exe = graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir={str(tmp_path)!r}, driver="llvm")
        r = np.random.default_rng(0)
        out = [float(exe(r.standard_normal((8, 4)), r.integers(0, 3, 8))) for _ in range(3)]
        print(json.dumps({{"cache": exe.stats["cache"], "stages": sorted(exe.stats["stages"]), "out": out}}))
    """)

    def run():
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        import json
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["cache"] == "miss" and "llvm" in first["stages"]
    assert second["cache"] == "hit" and "llvm" not in second["stages"] and "passes" not in second["stages"]
    assert "load" in second["stages"]
    assert second["out"] == first["out"]


def test_a_damaged_object_is_rebuilt(tmp_path):
    loss, inputs = mlp_step(dtype="float32", name="llvm_driver_damaged")
    exe = graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir=tmp_path, driver="llvm")
    obj = exe._entry.kernels_path
    data = bytearray(obj.read_bytes())
    data[-100] ^= 0xFF
    obj.write_bytes(bytes(data))
    loss, inputs = mlp_step(dtype="float32", name="llvm_driver_damaged")
    again = graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir=tmp_path, driver="llvm")
    assert again.stats["cache"] == "rebuilt" and any("kernels.o" in p for p in again.stats["cache_problems"])
    x, y = rng(1).standard_normal((8, 4)).astype(np.float32), rng(1).integers(0, 3, 8)
    fresh = graphc.compile(loss, inputs=inputs)
    np.testing.assert_allclose(again(x, y), fresh(x, y), rtol=1e-5)


def test_an_object_that_passes_its_checksums_but_does_not_load_is_rebuilt(tmp_path):
    """As for Numba's cached code: a hit whose files check out but whose object LLVM cannot load is rebuilt."""
    from graphc.backends.cache import sha256_file, write_record

    loss, inputs = mlp_step(dtype="float32", name="llvm_driver_unloadable")
    exe = graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir=tmp_path, driver="llvm")
    entry = exe._entry
    write_record(entry.kernels_path, b"not an object file")
    entry.write_manifest(sha256_file(entry.module_path), {"graph": exe.program.graph.name})
    assert entry.problems() == []
    loss, inputs = mlp_step(dtype="float32", name="llvm_driver_unloadable")
    again = graphc.compile(loss, inputs=inputs, backend="cpu", cache_dir=tmp_path, driver="llvm")
    assert again.stats["cache"] == "rebuilt"
    assert again.stats["cache_problems"][0].startswith("the llvm driver could not load the cached code")
    x, y = rng(2).standard_normal((8, 4)).astype(np.float32), rng(2).integers(0, 3, 8)
    np.testing.assert_allclose(again(x, y), graphc.compile(loss, inputs=inputs)(x, y), rtol=1e-5)


def test_a_collective_call_and_an_unknown_driver_are_refused_by_name():
    from graphc.backends.lowering.ir import Call, Kernel, Ref

    loss, inputs = mlp_step(dtype="float32", name="llvm_driver_refused")
    with pytest.raises(graphc.GraphcError, match="driver must be one of 'auto', 'numba', 'llvm', got 'llvmlite'"):
        graphc.compile(loss, inputs=inputs, backend="cpu", driver="llvmlite")
    program = numba_cpu.lower_program(loss.graph, [t.node for t in inputs], driver="llvm")
    buf = program.outputs[0]
    program.kernels.append(Kernel(node=99, op="allreduce_mean", rule="collective", where="train.py:12",
                                  body=[Call("allreduce_mean", (Ref(buf), Ref(buf), buf.size))]))
    with pytest.raises(llvm_driver.LLVMDriverError, match=r"allreduce_mean.*%99.*train\.py:12.*driver='numba'"):
        numba_cpu.build_program(program)


def test_float32_exp_and_tanh_are_inline_and_compute_the_numba_drivers_numbers(graphc_cache_dir):
    """The llvm target builds float32 exp and tanh inline (llvm/mathf.py, as the cpu runtime's intrinsics):
    no libm call in the kernels, the Numba driver's numbers exactly, NumPy's to a few ulp, and the special
    values NumPy gives (exp: inf, 0, a subnormal; tanh: exactly +-1 from 9.02 on; NaN stays NaN)."""
    with graphc.Graph("llvm_driver_f32_math") as g:
        x = graphc.input("x", (16,), "float32")
        outs = [g.output(graphc.exp(x)), g.output(graphc.tanh(x))]
    values = np.array([0.0, -0.5, 1.0, 3.0, -7.95, 9.1, -9.1, 20.0, 88.7, 89.0, -87.0, -100.0, -104.0, np.inf,
                       -np.inf, np.nan], np.float32)
    got, numba = (graphc.compile(outs, inputs=[x], backend="cpu", cache_dir=graphc_cache_dir, driver=d)
                  for d in ("llvm", "numba"))
    assert not re.search(r"@\"?(llvm\.(exp|tanh)\.f32|expf|tanhf)\"?\(", got.llvm_ir)
    with np.errstate(over="ignore"):
        wants = (np.exp(values), np.tanh(values))
    for a, b, want in zip(got(values), numba(values), wants):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, want, rtol=4e-7, atol=1e-44)


def test_fit_trains_through_the_llvm_driver_as_the_reference_backend():
    """fit(..., driver="llvm"): its native epochs (the module's epoch calling the entry) give the reference
    backend's losses and weights; the option is refused for another backend and for data-parallel fit."""
    from graphc.nn import Dense, Sequential

    r = np.random.default_rng(7)
    x = r.standard_normal((96, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)

    def trained(**options):
        model = Sequential([Dense(8, "tanh"), Dense(3)], input_shape=(4,))
        history = graphc.fit(model, (x, y), epochs=3, batch_size=16, optimizer=graphc.optim.SGD(0.2), seed=3,
                             verbose=False, **options)
        return history, model

    (got, got_model), (want, want_model) = trained(backend="cpu", driver="llvm"), trained(backend="reference")
    assert got.executable.program.options["driver"] == "llvm" and "ENTRY(" in got.executable.source
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    got_values, want_values = got_model.named_values(), want_model.named_values()
    assert sorted(got_values) == sorted(want_values)
    for name, value in want_values.items():
        np.testing.assert_allclose(got_values[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    with pytest.raises(graphc.HyperparameterError, match="driver='llvm' applies to backend 'cpu', not 'reference'"):
        trained(backend="reference", driver="llvm")


# -- driver="auto", the default: the llvm driver where a step does enough work to hide its call's overhead --------

def test_step_work_counts_gemm_products_library_calls_and_loop_statements():
    """Closed forms: a GEMM's m*n*k; a convolution's N*O*Ho*Wo*C*kh*kw multiply-adds and a pooling's
    planes*Ho*Wo*kh*kw window reads; a loop's extent times its statements (an unfused elementwise op: a load
    and a store per element)."""
    from graphc.backends.lowering import lower
    from graphc.backends.lowering.ir import step_work

    with graphc.Graph("work_matmul") as g:
        x = graphc.input("x", (8, 16))
        g.output(graphc.matmul(x, graphc.param("w", np.ones((16, 4), np.float32))))
    assert step_work(lower(g)) == 8 * 4 * 16
    with graphc.Graph("work_conv_pool") as g:
        x = graphc.input("x", (2, 3, 10, 10))
        conv = graphc.conv2d(x, graphc.param("w", np.ones((5, 3, 3, 3), np.float32)))
        g.output(graphc.max_pool2d(conv, 2))
    assert step_work(lower(g)) == 2 * 5 * 8 * 8 * 3 * 3 * 3 + 2 * 5 * 4 * 4 * 2 * 2
    with graphc.Graph("work_elementwise") as g:
        x = graphc.input("x", (6, 5))
        g.output(graphc.relu(-x))
    assert step_work(lower(g)) == 2 * 6 * 5 * 2


def test_auto_compiles_a_large_step_with_the_llvm_driver_and_a_small_one_with_numba(graphc_cache_dir):
    """The default driver: the llvm driver from LLVM_MIN_WORK of work per step, with the reference backend's
    numbers; a step under it, and what only the Numba driver runs (bounds checks, prange loops, a collective
    call), with Numba. A cache hit (the entry keyed by "auto") keeps the driver chosen."""
    from graphc.backends.lowering.ir import Call, Kernel, Ref, step_work

    small, small_inputs = mlp_step(dtype="float32", name="auto_small")
    large, large_inputs = mlp_step(batch=64, sizes=(256, 128, 10), dtype="float64", name="auto_large")
    exe, ref = compile_both(large, large_inputs, graphc_cache_dir, optimize=2)
    assert exe.stats["driver"] == exe.program.options["driver"] == "llvm"
    assert step_work(exe.program) >= numba_cpu.LLVM_MIN_WORK
    r = rng(5)
    x, y = r.standard_normal((64, 256)), r.integers(0, 10, 64)
    np.testing.assert_allclose(exe(x, y), ref(x, y), rtol=1e-12)
    for k in exe.params:
        np.testing.assert_allclose(exe.params[k], ref.params[k], rtol=1e-12, atol=1e-15)
    hit = graphc.compile(large, inputs=large_inputs, backend="cpu", cache_dir=graphc_cache_dir, optimize=2)
    assert hit.stats["cache"] == "hit" and hit.stats["driver"] == "llvm"

    tiny = graphc.compile(small, inputs=small_inputs, backend="cpu", cache_dir=graphc_cache_dir)
    assert tiny.stats["driver"] == "numba" and step_work(tiny.program) < numba_cpu.LLVM_MIN_WORK
    nodes = [t.node for t in large_inputs]
    for options in ({"boundscheck": True}, {"parallel_loops": True}):
        assert numba_cpu.lower_program(large.graph, nodes, **options).options["driver"] == "numba", options
    program = numba_cpu.lower_program(large.graph, nodes, driver="numba")
    assert numba_cpu.choose_driver(program) == "llvm"
    buf = program.outputs[0]
    program.kernels.append(Kernel(node=99, op="allreduce_mean", rule="collective", where="train.py:12",
                                  body=[Call("allreduce_mean", (Ref(buf), Ref(buf), buf.size))]))
    assert numba_cpu.choose_driver(program) == "numba"


# -- a convolution's chunks: outlined, and shared with the helper thread ------------------------------------------

def test_a_convolutions_chunks_run_on_the_helper_thread_and_give_the_same_bits(graphc_cache_dir):
    """The chunk loops of the convolutions (the forward's chunks of images, the weight gradient's chunks of
    channels, the input gradient's chunks of images) become internal functions called through
    graphc_parallel_for; an export (no driver runtime) keeps them inline. With two threads the helper takes chunks
    (BLAS at one thread); the step equals the reference backend's, and one thread's steps give the same bits (a
    chunk's partial sums do not depend on the thread that ran it)."""
    from graphc.backends import llvm as llvm_target
    from graphc.backends import threads
    from graphc.backends.lowering.library import runs_in_parallel_chunks
    from graphc.backends.numba_cpu import sharing

    r = rng(8)
    w0 = (r.standard_normal((8, 3, 5, 5)) * 0.2).astype(np.float32)
    x0 = r.standard_normal((8, 3, 24, 24)).astype(np.float32)

    def step(backend, **options):
        with graphc.Graph("llvm_conv_chunks") as g:
            x = graphc.input("x", x0.shape, "float32")
            w = graphc.param("w", w0)
            h = graphc.relu(graphc.conv2d(x, w, padding=2))
            loss = g.output(graphc.sum(h * h) * 1e-3)
            dx, dw = graphc.grad(loss, [x, w])
            outs = [loss, g.output(dx)]
            g.update(w, w - 1e-3 * dw)
        return graphc.compile(outs, inputs=[x], backend=backend, **options)

    exe = step("cpu", cache_dir=graphc_cache_dir, driver="llvm", threads=2)
    chunked = [k.op for k in exe.program.kernels if any(runs_in_parallel_chunks(s, llvm_driver.CHUNK_MIN_WORK)
                                                        for s in k.body)]
    assert chunked == ["conv2d_epilogue[conv2d, relu]", "conv_transpose2d", "conv2d"]  # forward, input and weight
    assert llvm_driver.shares_chunks(exe.program)                                   # gradients
    defined = re.findall(r"^define internal void @\"?graphc_step_\w+?\.(range\d+(?:\.\w+)?)\"?\(", exe.llvm_ir, re.M)
    # the chunk loops (the forward's images, the input gradient's images, the weight gradient's channels: its
    # "images" are the 3 input channels), and a function per image of a chunk
    assert defined == ["range0", "range0.lib_m", "range1", "range1.m", "range2", "range2.lib_n"]
    assert exe.llvm_ir.count('call void @"graphc_parallel_for"') == 3
    assert exe.llvm_ir.count("iterations lo..hi-1 of") == 3  # each outlined loop is headed by its kernel
    assert "graphc_parallel_for" not in llvm_target.render_text(exe.program, "exported")
    want = step("reference")(x0)
    try:
        assert exe.stats["threads"] == 2 and exe.stats["gemm_helper"]
        before = sharing.helped()
        steps = [exe(x0)]
        while sharing.helped() == before and len(steps) < 500:  # the helper may miss a step's chunks while it
            steps.append(exe(x0))                                 # wakes (a futex: ~20-50 us)
        # the helper shares the chunks (and GEMMs outside them), BLAS runs at one thread
        assert sharing.active() and threads.current() == 1 and sharing.helped() > before
        alone = step("cpu", cache_dir=graphc_cache_dir, driver="llvm", threads=1)
        assert not alone.stats["gemm_helper"]
        alone_steps = [alone(x0) for _ in steps]
        assert not sharing.active()  # on one thread, the helper stops
    finally:
        sharing.stop()
    assert_same(steps[0], want, ["loss", "dx"], "float32")
    for a, b in zip(alone_steps[-1], steps[-1]):  # after as many updates, the last with the helper's chunks
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(alone.params["w"], exe.params["w"])

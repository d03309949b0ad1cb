"""Parallel loops and the thread policy (issue 16): the cpu renderer's prange cost rule, the runtime
kernels' parallel ranges, one thread count for Numba's pool and OpenBLAS, and the policy that falls back
to one thread when another process keeps a core busy.

Oracles: the reference backend (NumPy) for compiled graphs, NumPy loops written here for the runtime
kernels, OpenBLAS's own getter for its thread count, hand-made /proc/stat readings for the policy.
Results at 1 and 2 threads are compared bit for bit where the order of every sum is the same at both
counts: the prange loops split independent iterations, never a sum (GEMMs, whose OpenBLAS splitting
may change with the thread count, are compared with a tolerance).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import graphc
from graphc.backends import threads as T
from graphc.backends.lowering.ir import Loop, Store
from graphc.backends.numba_cpu import runtime

TWO_CORES = T.available_cores() >= 2


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    T.apply(T.available_cores())


# -- the cost rule --------------------------------------------------------------------------------------------

def _render_module():
    import sys as _sys

    import graphc.backends.numba_cpu  # noqa: F401 - the package binds the name `render` to the function

    return _sys.modules["graphc.backends.numba_cpu.render"]


def test_cost_rule_counts_statements_and_refuses_what_cannot_run_in_parallel():
    import sympy as sp

    R = _render_module()
    i, j = sp.Symbol("i"), sp.Symbol("j")
    buf = type("B", (), {})()
    inner = Loop(j, 500, [Store(buf, j, sp.Integer(0)), Store(buf, j, sp.Integer(1))])
    big = Loop(i, 100, [inner])  # 100 * 500 * 2 = 100,000 statements
    assert R.nest_work([big]) == 100_000
    assert R.runs_parallel(big, 40_000) and not R.runs_parallel(big, 100_001)
    assert not R.runs_parallel(Loop(i, 100, [inner], parallel=False), 1)  # a sequential (reduction) range
    assert not R.runs_parallel(Loop(i, 1, [inner]), 1)  # one iteration: nothing to split
    from graphc.backends.lowering.ir import Call
    assert not R.runs_parallel(Loop(i, 100, [inner, Call("max_pool", ())]), 1)  # a library call has its threads
    # a sum over the rows (sequential i) into columns j: split into column blocks, each row in order
    column_sum = Loop(i, 100, [Loop(j, 500, [Store(buf, j, sp.Integer(1), reduce="add")])], parallel=False)
    assert R.splits_columns(column_sum, 40_000) and not R.splits_columns(column_sum, 50_001)
    by_row = Loop(i, 100, [Loop(j, 500, [Store(buf, i + j, sp.Integer(1), reduce="add")])], parallel=False)
    assert not R.splits_columns(by_row, 1)  # the outer range chooses the element: blocks would overlap


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """relu(x) * w, x [256, 300]: an elementwise nest of ~300k statements (parallel), a row sum whose outer
    range is independent (parallel) and a column sum whose outer range is the reduced one (column
    blocks); no GEMM."""
    rng = np.random.default_rng(0)
    with graphc.Graph("wide") as g:
        x = graphc.input("x", (256, 300))
        w = graphc.param("w", rng.standard_normal(300).astype(np.float32))
        h = graphc.relu(x) * w
        g.output(h)
        g.output(graphc.sum(h * h, axis=1))
        g.output(graphc.sum(h, axis=0))
    cache = str(tmp_path_factory.mktemp("cache"))
    exe = graphc.compile(g, backend="cpu", cache_dir=cache, threads=1, parallel_loops=True)
    ref = graphc.compile(g, backend="reference")
    return exe, ref, rng.standard_normal((256, 300)).astype(np.float32)


def test_large_independent_loops_render_as_prange(wide):
    exe, _, _ = wide
    assert "parallel=True" in exe.source
    assert exe.source.count("in prange(") >= 2
    assert "from numba import njit, prange" in exe.source
    # the column sum (a reduction over the sequential row range): blocks of columns in parallel
    assert "for block" in exe.source and "blocks, each summing over" in exe.source


def test_a_parallel_module_loads_from_numbas_cache_in_another_process(wide, tmp_path):
    """parallel=True keeps cache=True working: a second process loads the compiled step (no recompile)."""
    exe, _, _ = wide
    code = ("import graphc, numpy as np\n"
            "with graphc.Graph('wide') as g:\n"
            "    x = graphc.input('x', (256, 300))\n"
            "    w = graphc.param('w', np.random.default_rng(0).standard_normal(300).astype(np.float32))\n"
            "    h = graphc.relu(x) * w\n"
            "    g.output(h)\n"
            "    g.output(graphc.sum(h * h, axis=1))\n"
            "    g.output(graphc.sum(h, axis=0))\n"
            f"exe = graphc.compile(g, backend='cpu', parallel_loops=True, "
            f"cache_dir={exe.stats['cache_dir'].rsplit('/', 1)[0]!r})\n"
            "print(exe.stats['cache'], exe.stats['numba_cache_hit'])\n")
    # Two processes run the same code (the entry's key includes the graph's source lines): the first
    # compiles (or finds the entry), the second loads the machine code.
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.split() == ["hit", "True"], out.stdout + out.stderr


def test_tiny_step_keeps_the_serial_pipeline(tmp_path):
    """The 64-32-10 step of batch 32 has no loop above the rule: no prange, parallel=False (its compile
    and its ~7 us call stay as they were)."""
    rng = np.random.default_rng(1)
    with graphc.Graph("tiny") as g:
        x = graphc.input("x", (32, 64))
        y = graphc.input("y", (32,), "int64")
        W0 = graphc.param("W0", rng.standard_normal((64, 32)).astype(np.float32) * 0.1)
        W1 = graphc.param("W1", rng.standard_normal((32, 10)).astype(np.float32) * 0.1)
        loss = g.output(graphc.softmax_cross_entropy(graphc.tanh(x @ W0) @ W1, y))
        for p, d in zip((W0, W1), graphc.grad(loss, [W0, W1])):
            g.update(p, p - 0.1 * d)
    exe = graphc.compile(loss, inputs=[x, y], backend="cpu", cache_dir=str(tmp_path))
    assert "prange" not in exe.source and "parallel=True" not in exe.source


def test_parallel_loops_equal_the_reference_and_each_other_at_1_and_2_threads(wide):
    exe, ref, x = wide
    expected = ref(x)
    exe.use_threads(T.ThreadPolicy(1))
    one = exe(x)
    exe.use_threads(T.ThreadPolicy(2))
    two = exe(x)
    for a, b, r in zip(one, two, expected):
        np.testing.assert_array_equal(a, b)  # independent iterations split: the same sums in the same order
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


# -- the runtime kernels: NumPy oracles --------------------------------------------------------------------
# Regression guards (they pass on main too, but for T.apply): the runtime kernels stay serial on this
# branch (parallel=True versions made the LeNet step 45% slower at 1 thread; see docs/performance.md), and
# these pin their results at both thread counts against NumPy for whoever parallelizes them next.

def _im2col_oracle(x, kh, kw, ph, pw):
    C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    Ho, Wo = H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
    rows = [xp[c, i:i + Ho, j:j + Wo].reshape(-1) for c in range(C) for i in range(kh) for j in range(kw)]
    return np.stack(rows), Ho, Wo


@pytest.mark.parametrize("threads", [1, 2])
def test_im2col_and_col2im_equal_numpy(threads):
    T.apply(threads)
    rng = np.random.default_rng(2)
    C, H, W, k, p = 8, 30, 30, 3, 1  # 72 rows of 900: above the rule
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    want, Ho, Wo = _im2col_oracle(x, k, k, p, p)
    col = np.full(want.size + 3, 7.0, np.float32)
    runtime.im2col(x.reshape(-1), 0, C, H, W, k, k, 1, 1, p, p, 1, 1, Ho, Wo, col, 3)
    np.testing.assert_array_equal(col[3:].reshape(want.shape), want)
    assert (col[:3] == 7.0).all()
    # col2im is im2col's adjoint: <im2col(x), c> == <x, col2im(c)> (float64 oracle)
    c = rng.standard_normal(want.shape).astype(np.float32)
    out = np.zeros(C * H * W, np.float32)
    runtime.col2im_add(c.reshape(-1), 0, C, k, k, Ho, Wo, 1, 1, p, p, 1, 1, H, W, out, 0)
    lhs = float(np.dot(want.astype(np.float64).ravel(), c.astype(np.float64).ravel()))
    rhs = float(np.dot(x.astype(np.float64).ravel(), out.astype(np.float64)))
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs) + 1e-3


@pytest.mark.parametrize("threads", [1, 2])
def test_pooling_kernels_and_gradient_equal_numpy(threads):
    T.apply(threads)
    rng = np.random.default_rng(3)
    planes, H, W = 64, 32, 32  # 64 planes of 16x16 windows of 4: above the rule
    x = rng.standard_normal((planes, H, W)).astype(np.float32)
    windows = x.reshape(planes, 16, 2, 16, 2).transpose(0, 1, 3, 2, 4).reshape(planes, 16, 16, 4)
    out = np.empty(planes * 256, np.float32)
    runtime.max_pool(x.reshape(-1), 0, planes, H, W, 2, 2, 2, 2, 0, 0, 16, 16, out, 0)
    np.testing.assert_array_equal(out.reshape(planes, 16, 16), windows.max(-1))
    runtime.avg_pool(x.reshape(-1), 0, planes, H, W, 2, 2, 2, 2, 0, 0, 16, 16, out, 0)
    np.testing.assert_allclose(out.reshape(planes, 16, 16), windows.astype(np.float64).mean(-1), rtol=1e-6,
                               atol=1e-6)
    g = rng.standard_normal((planes, 16, 16)).astype(np.float32)
    dx = np.full(planes * H * W, 5.0, np.float32)  # zeroed by the kernel
    runtime.max_pool_backward(x.reshape(-1), 0, g.reshape(-1), 0, planes, H, W, 2, 2, 2, 2, 0, 0, 16, 16, dx, 0)
    first = windows.argmax(-1)  # NumPy's argmax: the first maximum, as the kernel's
    want = np.zeros((planes, 16, 16, 4), np.float32)
    np.put_along_axis(want, first[..., None], g[..., None], axis=-1)
    want = want.reshape(planes, 16, 16, 2, 2).transpose(0, 1, 3, 2, 4).reshape(planes, H, W)
    np.testing.assert_array_equal(dx.reshape(planes, H, W), want)
    v = rng.standard_normal((planes, H, W)).astype(np.float32)
    runtime.max_pool_gather(x.reshape(-1), 0, v.reshape(-1), 0, planes, H, W, 2, 2, 2, 2, 0, 0, 16, 16, out, 0)
    vw = v.reshape(planes, 16, 2, 16, 2).transpose(0, 1, 3, 2, 4).reshape(planes, 16, 16, 4)
    np.testing.assert_array_equal(out.reshape(planes, 16, 16), np.take_along_axis(vw, first[..., None], -1)[..., 0])


def test_direct_convolution_equals_numpy_and_itself_at_1_and_2_threads():
    rng = np.random.default_rng(4)
    N, C, H, W, Co, k = 4, 6, 20, 20, 8, 3
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((Co, C, k, k)).astype(np.float32)
    Ho = Wo = H - k + 1
    results = []
    for threads in (1, 2):
        T.apply(threads)
        out = np.empty(N * Co * Ho * Wo, np.float32)
        runtime.conv2d_direct(x.reshape(-1), 0, w.reshape(-1), 0, N, C, H, W, Co, k, k, 1, 1, 0, 0, 1, 1, Ho, Wo,
                              out, 0)
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])
    want = np.stack([w.reshape(Co, -1).astype(np.float64) @ _im2col_oracle(x[n], k, k, 0, 0)[0] for n in range(N)])
    np.testing.assert_allclose(results[0].reshape(N, Co, Ho * Wo), want, rtol=1e-4, atol=1e-4)


# -- one thread count for both pools ---------------------------------------------------------------------------

@pytest.mark.skipif(not TWO_CORES, reason="needs 2 cores")
def test_apply_sets_numba_and_openblas_to_one_count():
    import numba

    for n in (1, 2, 1):
        T.apply(n)
        assert numba.get_num_threads() == n
        assert T.blas_threads() == n  # OpenBLAS's own getter, in the library Numba's BLAS calls
        assert T.current() == n


def test_spin_defaults_are_set_before_the_pools_start():
    for var in T.SPIN_DEFAULTS:
        assert var in os.environ
    # OpenBLAS reads its timeout once, when it loads: a fresh process that imports graphc first has it
    env = {k: v for k, v in os.environ.items() if k not in T.SPIN_DEFAULTS}
    code = ("import ctypes, graphc\nfrom graphc.backends import threads as T\n"
            "get = T._scipy_openblas().openblas_thread_timeout\nget.restype = ctypes.c_int\nprint(get())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == int(T.SPIN_DEFAULTS["OPENBLAS_THREAD_TIMEOUT"]) == 20


# -- the policy --------------------------------------------------------------------------------------------

STAT = "cpu  {user} 0 {system} {idle} 0 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\nintr 1 2 3\n"


def test_proc_stat_is_read_as_busy_and_total_seconds():
    busy, total = T.parse_proc_stat(STAT.format(user=300, system=100, idle=600), ticks_per_s=100)
    assert (busy, total) == (4.0, 10.0)
    with pytest.raises(T.ThreadsError, match="no aggregate 'cpu' line"):
        T.parse_proc_stat("intr 1\n")


def test_others_load_is_the_machines_busy_time_less_this_process():
    before = T.CpuTimes(busy_s=10.0, total_s=20.0, own_s=1.0, wall_s=100.0)
    # 1 s of wall time on 2 cores: 1.9 core-seconds busy, 0.9 of them ours -> others kept 1.0 core busy
    after = T.CpuTimes(busy_s=11.9, total_s=22.0, own_s=1.9, wall_s=101.0)
    assert T.others_busy(before, after) == pytest.approx(1.0)
    assert T.others_busy(before, T.CpuTimes(10.0, 20.0, 1.0, 100.001)) == 0.0  # too short to say


@pytest.mark.parametrize("cores, others, expected", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 3.0, 1),
    (8, 0.0, 8), (8, 2.2, 6), (8, 2.7, 5), (1, 0.0, 1)])
def test_choose_threads_takes_off_each_core_others_keep_busy(cores, others, expected):
    assert T.choose_threads(cores, others) == expected


def test_policy_decides_from_fake_proc_readings():
    readings = iter([STAT.format(user=0, system=0, idle=0)] + [STAT.format(user=1000, system=0, idle=0)] * 3)
    policy = T.ThreadPolicy(None, read=lambda: next(readings), cores=2)
    # the fake machine was fully busy with others (10 s of busy time in ~60 ms): one thread
    assert policy.settle(0.06) == 1 and policy.others > 1.0
    fixed = T.ThreadPolicy(2, read=lambda: pytest.fail("a fixed count reads nothing"), cores=2)
    assert fixed.settle() == fixed.recheck() == 2


def test_a_policy_settles_on_a_load_measured_within_the_last_second_without_waiting(monkeypatch):
    monkeypatch.setattr(T, "_last_load", [(time.monotonic(), 1.0, frozenset({1}))])  # others kept one core busy, just now
    monkeypatch.setattr(T, "others_running", lambda text: 1)  # and one is running now
    policy = T.ThreadPolicy(None, cores=2)
    t0 = time.monotonic()
    assert policy.settle(0.5) == 1 and policy.others == 1.0
    assert time.monotonic() - t0 < 0.25  # it did not wait out its 0.5 s window
    monkeypatch.setattr(T, "_last_load", [(time.monotonic() - T.RECENT_S - 0.1, 1.0, frozenset({1}))])  # too old: measured anew
    policy = T.ThreadPolicy(None, cores=2)
    t0 = time.monotonic()
    policy.settle(0.1)
    assert time.monotonic() - t0 >= 0.09
    assert T._last_load[0][0] >= t0  # and its own window is what the next policy reuses


def test_a_recent_load_is_not_trusted_when_more_of_others_is_running_now(monkeypatch):
    monkeypatch.setattr(T, "_last_load", [(time.monotonic(), 0.0, frozenset())])  # an idle machine, just now
    monkeypatch.setattr(T, "others_running", lambda text: 1)  # a busy process has started since
    policy = T.ThreadPolicy(None, cores=2)
    t0 = time.monotonic()
    policy.settle(0.1)
    assert time.monotonic() - t0 >= 0.09  # it measured a window of its own


def test_others_running_is_procs_running_less_the_reader():
    assert T.others_running("cpu  1 2 3 4\nprocs_running 3\nprocs_blocked 0\n") == 2
    assert T.others_running("procs_running 1\n") == 0
    assert T.others_running("cpu  1 2 3 4\n") == 0


def test_a_policy_with_its_own_readings_neither_leaves_nor_uses_a_recent_load(monkeypatch):
    monkeypatch.setattr(T, "_last_load", [(time.monotonic(), 0.0, frozenset())])
    readings = iter([STAT.format(user=0, system=0, idle=0)] + [STAT.format(user=1000, system=0, idle=0)] * 3)
    policy = T.ThreadPolicy(None, read=lambda: next(readings), cores=2)
    assert policy.settle(0.06) == 1  # from its own readings, not the recent idle machine
    assert T._last_load[0][1] == 0.0  # the fake machine's load is not left for the real policies


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_threads_must_be_a_positive_int(bad):
    with graphc.Graph("t") as g:
        x = graphc.input("x", (3,))
        y = g.output(graphc.relu(x))
    with pytest.raises(T.ThreadsError, match=r"compile: threads must be None .* or a positive int, got"):
        graphc.compile(y, backend="cpu", threads=bad)
    from graphc.nn import Dense, Sequential

    model = Sequential([Dense(2)], input_shape=(3,))
    with pytest.raises(T.ThreadsError, match=r"fit: threads must be None"):
        graphc.fit(model, (np.zeros((4, 3), np.float32), np.zeros(4, np.int64)), epochs=1, threads=bad,
                   verbose=False)


# serial: it keeps a core busy on purpose (a pinned `while True: pass`) and its subject is the machine's load; next
# to another pytest worker it would slow that worker, and the load it measures would not be only its own busy process.
@pytest.mark.serial
@pytest.mark.skipif(not TWO_CORES or not hasattr(os, "sched_setaffinity"), reason="needs 2 cores and affinity")
def test_fit_falls_back_to_one_thread_with_a_busy_process_on_a_core(tmp_path, monkeypatch):
    """A busy process pinned to one core (`while True: pass`): the default policy trains on 1 thread and
    shares its GEMMs with a helper thread on the busy core, which takes panels; the weights are those of a
    fit with threads=1 (the user's count wins: no helper). Decisions and values are checked, not timings."""
    from graphc.backends.numba_cpu import sharing
    from graphc.nn import Dense, Sequential

    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    core = sorted(os.sched_getaffinity(0))[-1]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2048, 256)).astype(np.float32)  # 16 steps an epoch: chances for a helper on a busy core
    y = (x[:, 0] > 0).astype(np.int64)
    # 128 x 256 x 512 multiply-adds: above SHARE_MIN_MACS, so the first layer's GEMMs are shared
    assert 128 * 256 * 512 >= sharing.SHARE_MIN_MACS

    def model_like(first=None):
        model = Sequential([Dense(512, "relu"), Dense(2)], input_shape=(256,))
        if first is not None:
            for layer, other in zip(model.layers, first.layers):
                layer.values.update({k: v.copy() for k, v in other.values.items()})
        return model

    shared, alone = model_like(), None
    alone = model_like(shared)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    try:
        time.sleep(0.3)  # it runs
        helped = sharing.helped()
        h = graphc.fit(shared, (x, y), epochs=2, batch_size=128, backend="cpu", verbose=False)
        assert h.threads == [1, 1]
        assert h.executable.threads_policy.others >= T.FREED_SHARE
        # the helper on the core(s) the policy found busy: the busy process's, and the other one too when the
        # window measured others' load there as well (a CI run saw {0, 1}; the assertion was == {core})
        policy = h.executable.threads_policy
        assert h.executable.share_gemm and sharing.active() and core in policy.busy_cores
        assert sharing.cores() == sharing.helper_cores(policy.busy_cores)
        assert sharing.helped() > helped  # the helper took panels
        h2 = graphc.fit(alone, (x, y), epochs=2, batch_size=128, backend="cpu", verbose=False, threads=1)
        assert h2.threads == [1, 1] and not h2.executable.share_gemm and not sharing.active()
        h3 = graphc.fit(model_like(), (x, y), epochs=1, batch_size=128, backend="cpu", verbose=False, threads=2)
        assert h3.threads == [2]
    finally:
        busy.kill()
        busy.wait()
    for a, b in zip(shared.layers, alone.layers):
        for k in a.values:
            np.testing.assert_allclose(a.values[k], b.values[k], rtol=1e-5, atol=1e-6)


def test_fit_on_cpu_equals_the_reference_at_1_and_2_threads():
    """No change of results: the same model trained on cpu (threads 1 and 2) and on the reference backend."""
    from graphc.nn import Dense, Sequential

    rng = np.random.default_rng(6)
    x = rng.standard_normal((128, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    losses = {}
    for backend, threads in (("reference", None), ("cpu", 1), ("cpu", 2)):
        model = Sequential([Dense(16, "relu"), Dense(2)], input_shape=(8,), seed=0)
        h = graphc.fit(model, (x, y), epochs=2, batch_size=32, backend=backend, verbose=False, threads=threads)
        losses[backend, threads] = h["loss"]
        if backend == "cpu":
            assert h.threads == [threads] * 2
    np.testing.assert_allclose(losses["cpu", 1], losses["reference", None], rtol=1e-5)
    np.testing.assert_allclose(losses["cpu", 2], losses["reference", None], rtol=1e-5)

"""GEMM work sharing (graphc.backends.numba_cpu.sharing): the driver's GEMMs cut into panels that the caller and a
helper thread claim. Oracle: float64 NumPy, and the same compiled step with plain BLAS calls."""
from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from numba import njit

import graphc
from graphc.backends import threads as T
from graphc.backends.numba_cpu import sharing
from graphc.backends.numba_cpu.runtime import gemm

pytestmark = pytest.mark.skipif(not sharing.SUPPORTED, reason="GEMM sharing needs Linux on x86-64 or aarch64")
TWO_CORES = len(os.sched_getaffinity(0)) >= 2 if hasattr(os, "sched_getaffinity") else False


@njit(nogil=True)
def _gemm_offsets(ta, tb, m, n, k, alpha, a, b, beta, c, reps):
    """C (from element 7) = alpha op(A) (from element 3) @ op(B) (from element 5) + beta C, ``reps`` times."""
    for _ in range(reps):
        gemm(ta, tb, m, n, k, alpha, a, 3, m if ta else k, b, 5, k if tb else n, beta, c, 7, n)


def _operands(rng, ta, tb, m, n, k, dtype=np.float32):
    a = rng.standard_normal(3 + m * k).astype(dtype)
    b = rng.standard_normal(5 + k * n).astype(dtype)
    c = rng.standard_normal(7 + m * n).astype(dtype)
    A = a[3:].reshape((k, m) if ta else (m, k))
    B = b[5:].reshape((n, k) if tb else (k, n))
    return a, b, c, (A.T if ta else A).astype(np.float64), (B.T if tb else B).astype(np.float64)


@pytest.fixture
def shared():
    sharing.start()
    try:
        yield
    finally:
        sharing.stop()


# (m, n, k): split along n (col-major rows) or m, panels that do not divide evenly, one below the threshold
SHAPES = [(128, 512, 784), (784, 512, 128), (301, 257, 100), (5, 1000, 2000), (64, 64, 64)]


@pytest.mark.parametrize("ta", [0, 1])
@pytest.mark.parametrize("tb", [0, 1])
@pytest.mark.parametrize("m, n, k", SHAPES)
def test_a_shared_gemm_equals_numpy_for_every_transpose_and_split(shared, ta, tb, m, n, k):
    rng = np.random.default_rng(m + n + k)
    a, b, c, A, B = _operands(rng, ta, tb, m, n, k)
    expected = 0.5 * (A @ B) + 0.25 * c[7:].reshape(m, n)
    out = c.copy()
    _gemm_offsets(ta, tb, m, n, k, 0.5, a, b, 0.25, out, 1)
    np.testing.assert_allclose(out[7:].reshape(m, n), expected, rtol=2e-5, atol=2e-4)
    assert out[:7].tolist() == c[:7].tolist()  # nothing before C's offset is written


def test_a_shared_float64_gemm_equals_numpy(shared):
    rng = np.random.default_rng(1)
    a, b, c, A, B = _operands(rng, 0, 1, 200, 300, 150, np.float64)
    out = c.copy()
    _gemm_offsets(0, 1, 200, 300, 150, -1.5, a, b, 1.0, out, 1)
    np.testing.assert_allclose(out[7:].reshape(200, 300), -1.5 * (A @ B) + c[7:].reshape(200, 300), rtol=1e-12)


@pytest.mark.skipif(not TWO_CORES, reason="the helper needs a core of its own to be sure to take a panel")
def test_the_helper_takes_panels(shared):
    rng = np.random.default_rng(2)
    a, b, c, A, B = _operands(rng, 0, 0, 128, 512, 784)
    before = sharing.helped()
    _gemm_offsets(0, 0, 128, 512, 784, 1.0, a, b, 0.0, c, 200)
    assert sharing.helped() > before
    np.testing.assert_allclose(c[7:].reshape(128, 512), A @ B, rtol=2e-5, atol=2e-4)


def test_gemms_of_two_threads_at_once_are_both_right(shared):
    """One thread shares its GEMM (the control block is taken), the other's runs alone meanwhile."""
    rng = np.random.default_rng(3)
    jobs = [_operands(rng, 0, 0, 128, 512, 784) for _ in range(2)]
    outs = [job[2].copy() for job in jobs]

    def run(i):
        a, b, _, _, _ = jobs[i]
        _gemm_offsets(0, 0, 128, 512, 784, 1.0, a, b, 0.0, outs[i], 50)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for (_, _, _, A, B), out in zip(jobs, outs):
        np.testing.assert_allclose(out[7:].reshape(128, 512), A @ B, rtol=2e-5, atol=2e-4)


def test_stop_ends_the_helper_and_gemms_go_to_blas_again():
    sharing.start()
    assert sharing.active() and sharing.BLOCK[sharing.ENTRY] != 0
    helper = [t for t in threading.enumerate() if t.name == "graphc-helper"]
    assert len(helper) == 1
    sharing.stop()
    assert not sharing.active() and sharing.BLOCK[sharing.ENTRY] == 0 and not helper[0].is_alive()
    sharing.stop()  # idempotent
    rng = np.random.default_rng(4)
    a, b, c, A, B = _operands(rng, 1, 0, 128, 512, 784)
    before = sharing.helped()
    _gemm_offsets(1, 0, 128, 512, 784, 1.0, a, b, 0.0, c, 3)
    assert sharing.helped() == before
    np.testing.assert_allclose(c[7:].reshape(128, 512), A @ B, rtol=2e-5, atol=2e-4)


@pytest.mark.skipif(not TWO_CORES, reason="needs two cores")
def test_the_helper_runs_on_the_busy_cores_else_off_the_callers():
    cores = os.sched_getaffinity(0)
    busy = {max(cores)}
    assert sharing.helper_cores(frozenset(busy)) == busy
    assert len(sharing.helper_cores(frozenset())) == len(cores) - 1
    assert sharing.helper_cores(frozenset({10_000})) == sharing.helper_cores(frozenset())  # not ours: ignored
    sharing.start(frozenset(busy))
    try:
        helper = next(t for t in threading.enumerate() if t.name == "graphc-helper")
        assert sharing.cores() == busy
        others = cores - busy
        sharing.start(frozenset(others))  # the busy core moved: so does the helper
        assert sharing.cores() == others and os.sched_getaffinity(helper.native_id) == others
    finally:
        sharing.stop()


@pytest.mark.parametrize("driver", ["numba", "llvm"])
def test_a_compiled_step_with_shared_gemms_equals_the_step_without(driver):
    """With the helper on, the step's GEMMs are shared (the helper takes panels: the Numba driver's runtime.gemm
    and the llvm driver's graphc_sgemm both read the control block), and the losses and weights equal the
    unshared step's."""
    rng = np.random.default_rng(6)
    w1 = (rng.standard_normal((512, 256)) * 0.05).astype(np.float32)
    w2 = (rng.standard_normal((256, 10)) * 0.05).astype(np.float32)
    x = rng.standard_normal((128, 512)).astype(np.float32)
    y = rng.integers(0, 10, 128)

    def trained(share: bool):
        with graphc.Graph("sharing_step") as g:
            p1, p2 = graphc.param("w1", w1), graphc.param("w2", w2)
            xi, yi = graphc.input("x", (128, 512)), graphc.input("y", (128,), "int64")
            loss = g.output(graphc.softmax_cross_entropy(graphc.relu(xi @ p1) @ p2, yi))
            for p, d in zip((p1, p2), graphc.grad(loss, [p1, p2])):
                g.update(p, p - 0.1 * d)
        exe = graphc.compile(loss, inputs=[xi, yi], backend="cpu", threads=1, driver=driver)
        exe.share_gemm = share
        exe._decide_helper()
        before = sharing.helped()
        losses = [float(exe(x, y)) for _ in range(12)]  # the helper may miss the first GEMMs while it starts
        assert sharing.active() == share and (sharing.helped() > before) == share
        return losses, exe.params["w1"].copy(), exe.params["w2"].copy()

    try:
        with_helper, without = trained(True), trained(False)
    finally:
        sharing.stop()
    np.testing.assert_allclose(with_helper[0], without[0], rtol=1e-5)
    np.testing.assert_allclose(with_helper[1], without[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(with_helper[2], without[2], rtol=1e-5, atol=1e-7)


# -- the policy's side -----------------------------------------------------------------------------------------

STAT = ("cpu  {u} 0 0 {i} 0 0 0 0 0 0\ncpu0 {u0} 0 0 {i0} 0 0 0 0 0 0\ncpu1 {u1} 0 0 {i1} 0 0 0 0 0 0\n"
        "procs_running 1\n")


def test_busy_time_per_core_and_a_threads_core_and_time_are_read_from_proc_text():
    text = STAT.format(u=300, i=100, u0=100, i0=100, u1=200, i1=0)
    assert T.parse_core_busy(text, ticks_per_s=100) == {0: 1.0, 1: 2.0}
    task = "123 (a (b) c) R " + " ".join(str(v) for v in range(4, 53))  # utime 14, stime 15, processor 39
    assert T.parse_task_stat(task, ticks_per_s=1) == (39, 14.0 + 15.0)


def test_others_by_core_leaves_out_this_process_threads_on_their_cores():
    before = T.CpuTimes(0, 0, 0, wall_s=10.0, core_busy_s={0: 0.0, 1: 0.0}, own_threads={1: (0, 0.0), 2: (1, 0.0)})
    # 1 s: core 0 was busy all of it with our thread 1; core 1 all of it, 0.4 s of that our thread 2 (a helper)
    after = T.CpuTimes(0, 0, 0, wall_s=11.0, core_busy_s={0: 1.0, 1: 1.0}, own_threads={1: (0, 1.0), 2: (1, 0.4)})
    assert T.others_by_core(before, after) == pytest.approx({0: 0.0, 1: 0.6})


def _fake_machine(loads):
    """/proc/stat readings of a 2-core machine whose other processes keep ``loads[i]`` cores busy in window i
    (100 ticks per window; this process's own CPU time is a few ms)."""
    u = [0]

    def texts():
        yield STAT.format(u=0, i=0, u0=0, i0=0, u1=0, i1=0)
        for load in loads:
            u[0] += int(100 * load)
            yield STAT.format(u=u[0], i=0, u0=0, i0=0, u1=u[0], i1=0)
    return texts()


def test_the_policy_shares_only_its_own_decision_of_one_thread_and_keeps_it_until_the_load_is_gone(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(T, "time", SimpleNamespace(monotonic=lambda: clock[0], process_time=time.process_time,
                                                   sleep=time.sleep))
    readings = _fake_machine([1.0, 0.45, 0.3, 0.1])  # a busy process; then it gets what a helper leaves it
    policy = T.ThreadPolicy(None, read=lambda: next(readings), cores=2)
    assert not policy.share  # undecided: all cores
    decisions = []
    for _ in range(4):
        clock[0] += 1.0
        decisions.append((policy.recheck(), policy.share, policy.busy_cores))
    # 0.45 and 0.3 would be 2 threads for a policy that does not share; this one keeps the core until < FREED_SHARE,
    # and core 1 (where the fake load is) stays the busy one, where the helper goes
    assert decisions == [(1, True, {1}), (1, True, {1}), (1, True, {1}), (2, False, set())]
    assert T.ThreadPolicy(1, cores=2).share is False  # the user's count: no helper
    readings = _fake_machine([1.0])
    ranks = T.ThreadPolicy(None, read=lambda: next(readings), cores=2, may_share=False)  # a data-parallel fit's
    clock[0] += 1.0
    assert ranks.recheck() == 1 and ranks.share is False  # one thread, no helper on the other rank's core
    assert T.ThreadPolicy(None, cores=1).share is False

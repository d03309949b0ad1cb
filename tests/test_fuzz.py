"""Fuzzing as part of the suite: seeded random graphs (tests/fuzzgraphs.py) through the passes and the cpu
backend, each compared with the reference evaluation of the unoptimized graph.

* 1,000 graphs through ``graphc.optimize`` at every level 0..3, the optimized graph evaluated by the reference
  backend (``test_optimize_agrees_with_reference_at_every_level``);
* 60 graphs through ``backend="cpu"``, half at its default level 2 and half at level 0, one native call (outputs
  and in-place parameter updates) each (``test_cpu_agrees_with_reference``).

The graphs mix the registry's ops in float32 and float64, dense and conv families, with gradients and SGD or
momentum updates; a quarter of them get inputs with NaN, +-Inf, 0 and -0.0. Agreement (fuzzgraphs.compare):
NaN where the reference has NaN and the same infinities, position by position; finite values within 1e-9
(float64) or the float32 tolerance derived in ``fuzzgraphs.tolerance`` (16 * u * rounding steps, u = 2**-24
the unit roundoff, the steps counted along the case's longest path: one per elementwise op, n per n-term
reduction, the backward pass again), relative to the output's largest finite magnitude. Cases that compute
values by cancellation (batch norm, whose gradients are analytically zero in places; the rounding error of a
cast round trip; pow(a, 0.5) - sqrt(a)) also accept an absolute floor of tolerance * (the largest magnitude
the case computes), see ``fuzzgraphs.floor``: there a correct result is the rounding noise of terms that
large. Cases with NaN/Inf inputs leave out the stabilize pass's patterns (``fuzzgraphs.STABILIZED_FORMS``: the pass gives the finite answer where the written
form overflows, by design).

A disagreement fails with the seed, the level or backend, the first differing element, the graph's text and a
reproducer, ``python bench/fuzz.py --seed S --only K``. The counts are printed at the end of the run
(tests/conftest.py). ``GRAPHC_FUZZ_SEED`` changes the campaign (the default is fixed: the suite is
deterministic); ``python bench/fuzz.py --fuzz-graphs N`` runs a larger one.

Budget (2 cores): the cpu part compiles one module per case. Several cases in one module would share Numba's
fixed cost, but the compile time of a module grows faster than its size (measured: 12 cases cost 16.6 s CPU
one per module, 18.9 s two per module, 24.2 s four per module), so one case per module is the cheapest; the
compiles (about 1.5 s each) run in two worker processes.
"""
from __future__ import annotations

import importlib.util
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fuzzgraphs import (
    build_case,
    check_cpu,
    check_optimize,
    compare,
    cpu_reports,
    crash,
    disagreements,
    expected,
    record,
    report,
    tolerance,
)

import graphc

SEED = int(os.environ.get("GRAPHC_FUZZ_SEED", "20261129"))
OPTIMIZE_GRAPHS = 1000
CPU_GRAPHS = 60
CHUNK = 100
#: Worker processes for the cpu cases (at most the cores this process may use).
CPU_WORKERS = 2


@pytest.mark.parametrize("chunk", range(OPTIMIZE_GRAPHS // CHUNK),
                         ids=lambda k: f"graphs{k * CHUNK}-{k * CHUNK + CHUNK - 1}")
def test_optimize_agrees_with_reference_at_every_level(chunk):
    cases, findings = [], []
    for index in range(chunk * CHUNK, (chunk + 1) * CHUNK):
        case = build_case(SEED, index)
        cases.append(case)
        findings += check_optimize(case)
    record("optimize", len(cases), len({f.case.index for f in findings}))
    if findings:
        pytest.fail(f"{len({f.case.index for f in findings})} of {len(cases)} graphs disagree:\n" + report(findings))


@pytest.fixture
def cpu_cache(graphc_cache_dir, monkeypatch):
    """The session's compile cache (a warm rerun loads the 60 modules instead of compiling them)."""
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    return graphc_cache_dir


def cpu_level(index: int) -> int:
    """Even cases at the cpu backend's default level 2 (fused kernels, GEMM/conv epilogues), odd ones at level 0
    (every op through its own lowering rule)."""
    return 2 if index % 2 == 0 else 0


@pytest.fixture(scope="module")
def cpu_verdicts(graphc_cache_dir) -> dict[int, list[str]]:
    """Each cpu case checked on its own (its own module, its own comparison), in worker processes: Numba's
    compiles are 3/4 of this file's time and each uses one core, so two workers on two cores halve that."""
    jobs = [(SEED, k, cpu_level(k), str(graphc_cache_dir)) for k in range(CPU_GRAPHS)]
    workers = max(1, min(CPU_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    if workers == 1:
        return {job[1]: cpu_reports(*job) for job in jobs}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip((job[1] for job in jobs), pool.map(cpu_reports, *zip(*jobs))))


@pytest.mark.parametrize("index", range(CPU_GRAPHS))
def test_cpu_agrees_with_reference(index, cpu_verdicts):
    reports = cpu_verdicts[index]
    record("cpu", 1, bool(reports))
    if reports:
        pytest.fail("\n\n".join(reports))


def test_the_cpu_cases_cover_what_the_issue_asks():
    """The 60 cpu cases (also the first 60 of the 1,000) span float32 and float64, dense and conv, gradients and
    optimizer updates, NaN/Inf/zero inputs, and the op families (checked on the graphs, not assumed)."""
    cases = [build_case(SEED, k) for k in range(CPU_GRAPHS)]
    assert {c.dtype for c in cases} == {"float32", "float64"}
    assert {c.family for c in cases} == {"dense", "conv"}
    assert {(c.family, c.dtype) for c in cases if c.special} == {(f, d) for f in ("dense", "conv")
                                                                 for d in ("float32", "float64")}
    ops = {n.op for c in cases for n in c.graph.nodes}
    wanted = {"conv2d", "max_pool2d", "avg_pool2d", "matmul", "dense", "softmax", "log_softmax",
              "softmax_cross_entropy", "batch_norm", "cast", "sum", "mean", "max", "min", "reshape", "transpose",
              "concatenate", "broadcast_to", "relu", "tanh", "sigmoid", "elu", "selu", "softplus", "exp", "log",
              "where", "maximum", "div", "pow"}
    assert wanted <= ops, f"never generated: {sorted(wanted - ops)}"
    rules = {n.provenance.rule for c in cases for n in c.graph.nodes if n.provenance is not None}
    assert {"conv2d-vjp", "batch_norm-vjp", "softmax_cross_entropy-vjp", "max_pool2d-vjp"} <= rules, sorted(rules)
    assert {c.rule for c in cases} == {"grad", "sgd", "momentum"}
    assert all(c.updates for c in cases)
    assert any(p.name.endswith(".velocity") for c in cases for p, _ in c.updates)  # Momentum's state, updated too


def test_a_disagreement_names_the_seed_the_graph_the_place_and_the_reproducer():
    """The harness itself: a value off by 10x the tolerance, a NaN where a number belongs, an infinity where
    the reference has another value are each found at their position and reported with what is needed to
    reproduce them (the oracle here is the reference evaluation, perturbed); so is a crash."""
    case = next(c for c in map(lambda k: build_case(SEED, k), range(20)) if not c.cancellation and not c.special)
    want, largest = expected(case, case.graph)
    assert disagreements(case, want, want, largest, "optimize level 2") == []
    for change in ["off", "nan", "inf"]:
        got = [w.copy() for w in want]
        flat = got[0].reshape(-1)  # the loss
        flat[0] = {"off": flat[0] + 10 * tolerance(case) * (abs(flat[0]) + 1), "nan": np.nan,
                   "inf": np.inf if flat[0] != np.inf else -np.inf}[change]
        (finding,) = disagreements(case, got, want, largest, "optimize level 2")
        text = finding.report()
        assert f"seed {SEED} case {case.index}" in text and "at optimize level 2" in text
        assert "output 0: first difference at ()" in text
        assert f"python bench/fuzz.py --seed {SEED} --only {case.index}" in text
        assert str(case.graph).splitlines()[-1] in text  # the graph's text
    assert "crash: ZeroDivisionError: boom" in str(crash(ZeroDivisionError("boom")))


def test_float32_tolerance_follows_the_rounding_steps():
    """float64 cases: the issue's 1e-9; float32 (or float32 math inside float64): 16 * u * steps
    (fuzzgraphs.tolerance), larger for deeper cases."""
    cases = [build_case(SEED, k) for k in range(20)]
    for c in cases:
        want = 16 * c.rounding_steps * 2.0 ** -24 if c.computes_float32 else 1e-9
        assert tolerance(c) == pytest.approx(want)
    assert compare(np.array([1.0, np.nan, -np.inf, -0.0]), np.array([1.0 + 5e-10, np.nan, -np.inf, 0.0]), 1e-9) is None
    assert compare(np.array([1.0, 0.0]), np.array([1.0, np.nan]), 1e-9)[0] == (1,)
    assert compare(np.array([np.inf]), np.array([-np.inf]), 1e-9)[0] == (0,)
    assert compare(np.array([1.0, 1e-12]), np.array([1.0, 0.0]), 1e-9) is None  # within 1e-9 of the output's scale
    assert compare(np.array([1.0, 3e-9]), np.array([1.0, 0.0]), 1e-9)[0] == (1,)


def test_the_reproducer_runs_one_case(capsys, cpu_cache):
    """``python bench/fuzz.py --seed S --only K`` prints case K's graph and its verdict at every level and on cpu."""
    path = Path(__file__).resolve().parents[1] / "bench" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("bench_fuzz", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    status = bench.main(["--seed", str(SEED), "--only", "0", "--cache-dir", str(cpu_cache)])
    out = capsys.readouterr().out
    assert f"graph fuzz_{SEED}_0" in out and "return %" in out
    assert status == 0 and "agrees at optimize levels 0-3 and on cpu" in out


# -- regressions: bugs the fuzzer found ---------------------------------------------------------------------------

def test_cpu_float32_tanh_is_exactly_one_where_numpy_rounds_to_one(cpu_cache):
    """Found as seed 20261129 case 102 (bench/fuzz.py): the inline float32 tanh of the cpu backend saturated at
    0.99999976, so tanh(inf) was not 1, tanh'(inf) = 1 - tanh^2 was 4.8e-7 instead of 0, and the conv weight
    gradient inf * tanh'(inf) was inf where NumPy gives NaN. Oracle: the reference backend (NumPy float32)."""
    z = np.array([np.inf, -np.inf, 9.02, 20.0, -20.0, np.nan, 0.5, -0.0, 3.0], np.float32)
    with graphc.Graph("tanh_saturation") as g:
        x = graphc.input("x", z.shape, "float32")
        t = graphc.tanh(x)
        (d,) = graphc.grad(graphc.sum(t), [x])
        g.output(t, d, x * d)
    for level in (0, 2):
        got = graphc.compile([t, d, x * 1.0], backend="cpu", optimize=level)(z)[:2]
        want = graphc.compile([t, d])(z)
        assert got[0][:5].tolist() == [1.0, -1.0, 1.0, 1.0, -1.0] and got[1][:5].tolist() == [0.0] * 5
        for a, b in zip(got, want):
            assert compare(a, b, 16 * 4 * 2.0 ** -24) is None, (level, a, b)
    exe = graphc.compile(graphc.Tensor(g.outputs[2], g), backend="cpu")
    assert np.isnan(exe(z)[:2]).all()  # inf * 0 is NaN, as NumPy computes it
    assert check_cpu(SEED, [102], level=2)[1] == []  # the case that found it

"""Data-parallel training over MPI (graphc.train.distributed) and the allreduce op (graphc.ops.collective).

The multi-rank tests start ``mpiexec -n 2 python tests/distributed_worker.py SCENARIO OUTDIR`` (the
mpiexec of the ``mpich`` wheel, next to this Python, or on PATH) with a timeout, and compare what each
rank wrote against an independent oracle: the single-process run of the same fit (the existing, tested
path), NumPy sums of the ranks' operands, or a straight single-process run for resumed training.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.backends.lowering import lower
from graphc.backends.lowering.interpret import interpret
from graphc.ir import DTypeError, ShapeError
from graphc.ops.collective import WORLD_SIZE_VARIABLES, allreduce
from graphc.optim.hyperparams import HyperparameterError
from graphc.train import distributed
from graphc.train.loop import build_train_step

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
MPI_TIMEOUT_S = 240  # a hang is what these tests exist to catch; the runs take ~20-60 s on the 2-core machine


def _mpiexec() -> str | None:
    """The mpiexec of this Python's environment (the mpich wheel puts it beside python), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
_skip_without_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'graphc[mpi]': mpi4py, "
                                                                "mpich, numba-mpi)")


def needs_mpi(test):
    """A test that runs an ``mpiexec -n 2`` job (itself or through its fixture): skipped without mpiexec, and
    ``serial``: its two ranks need the two cores (MPICH's ranks poll while they wait in a collective), so next to
    another pytest worker the job ran 1.7-2.4 times as long, on its way to the 240 s hang timeout."""
    return _skip_without_mpi(pytest.mark.serial(test))


def _env(cache_dir: Path) -> dict[str, str]:
    """The worker's environment: this checkout's graphc, one BLAS thread per rank, the tests' compile cache;
    no launcher variables inherited (a single-process run must not think it is a rank)."""
    env = {k: v for k, v in os.environ.items() if k not in WORLD_SIZE_VARIABLES}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", GRAPHC_CACHE_DIR=str(cache_dir))
    return env


def _run(scenario: str, outdir: Path, cache_dir: Path, ranks: int | None,
         launch: list[str] | None = None) -> subprocess.CompletedProcess:
    """The worker's ``scenario`` on ``ranks`` MPI ranks (None: one plain process, no mpiexec); ``launch``:
    another launch command than ``mpiexec -n ranks``."""
    launch = launch if launch is not None else [MPIEXEC, "-n", str(ranks)] if ranks else []
    return subprocess.run(launch + [sys.executable, str(WORKER), scenario, str(outdir)], env=_env(cache_dir),
                          capture_output=True, text=True, timeout=MPI_TIMEOUT_S)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _load(outdir: Path, name: str, rank: int = 0) -> dict[str, np.ndarray]:
    with np.load(outdir / f"{name}.rank{rank}.npz") as f:
        return {k: f[k] for k in f.files}


# -- 2 ranks x 64 rows == 1 process x 128 rows ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def equivalence(tmp_path_factory, graphc_cache_dir):
    """``runs(model)``: the model's equivalence scenario run alone (the oracle) and on 2 ranks, once per model
    (one mpiexec job each, to keep each under a minute)."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec")
    done: dict[str, tuple[Path, Path]] = {}

    def runs(model: str) -> tuple[Path, Path]:
        if model not in done:
            one, two = tmp_path_factory.mktemp(f"one-{model}"), tmp_path_factory.mktemp(f"two-{model}")
            _ok(_run(f"equivalence-{model}", one, graphc_cache_dir, None))
            _ok(_run(f"equivalence-{model}", two, graphc_cache_dir, 2))
            done[model] = one, two
        return done[model]
    return runs


CASES = [f"{m}-{o}-{d}" for m in worker.MODELS for o in worker.OPTIMIZERS for d in ("float64", "float32")]


@needs_mpi
@pytest.mark.parametrize("case", CASES)
def test_two_ranks_of_64_train_the_parameters_of_one_process_of_128(equivalence, case):
    """After 20 steps, the parameters (and each epoch's loss) of 2 ranks x 64 rows are those of 1 process x 128
    rows: MLP and CNN with dropout, SGD with momentum and Adam (float64 to 1e-12, float32 to 1e-5)."""
    one, two = equivalence(case.split("-")[0])
    alone, rank0 = _load(one, case), _load(two, case)
    tol = 1e-12 if case.endswith("float64") else 1e-5
    assert alone.keys() == rank0.keys()
    for k in alone:
        np.testing.assert_allclose(rank0[k], alone[k], rtol=0, atol=tol, err_msg=f"{case}: {k}")
    assert not np.array_equal(alone["loss"][0], alone["loss"][1])  # it trained


@needs_mpi
@pytest.mark.parametrize("case", CASES)
def test_every_rank_holds_the_same_parameters(equivalence, case):
    _, two = equivalence(case.split("-")[0])
    rank0, rank1 = _load(two, case, 0), _load(two, case, 1)
    for k in rank0:
        np.testing.assert_array_equal(rank1[k], rank0[k], err_msg=f"{case}: {k}")


# -- the allreduce op, checkpoints, evaluation, resume (one 2-rank run) ---------------------------------------------

def _straight_and_checkpoint(tmp: Path) -> tuple[dict[str, np.ndarray], Path]:
    """One process: 2 epochs straight (the resume oracle), and a checkpoint after epoch 1 of the same run."""
    x, y = worker.data((12,), 4, 320, "float64")
    straight = worker.mlp("float64")
    graphc.fit(straight, (x, y), epochs=2, batch_size=worker.GLOBAL_BATCH, optimizer=optim.Adam(0.01), seed=5,
               verbose=False)
    ckpt = tmp / "ckpt1.npz"
    graphc.fit(worker.mlp("float64"), (x, y), epochs=1, batch_size=worker.GLOBAL_BATCH, optimizer=optim.Adam(0.01),
               seed=5, verbose=False, checkpoint=str(ckpt))
    return straight.named_values(), ckpt


@pytest.fixture(scope="module")
def misc(tmp_path_factory, graphc_cache_dir):
    if MPIEXEC is None:
        pytest.skip("no mpiexec")
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    try:
        two, one = tmp_path_factory.mktemp("misc2"), tmp_path_factory.mktemp("misc1")
        straight, ckpt1 = _straight_and_checkpoint(one)
        shutil.copy(ckpt1, two / "ckpt1.npz")  # resumed on 2 ranks by the worker
        started = time.perf_counter()
        proc = _run("misc", two, graphc_cache_dir, 2)
        _ok(proc)
        _ok(_run("misc", one, graphc_cache_dir, None))  # the same fit on one process (its checkpoint: misc1)
        yield {"two": two, "one": one, "straight": straight, "stderr": proc.stderr,
               "seconds": time.perf_counter() - started}
    finally:
        mp.undo()


@needs_mpi
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", ["reference", "interpreter", "cpu"])
def test_allreduce_on_two_ranks_is_numpys_sum_and_mean(misc, backend, dtype):
    x0, x1 = worker.allreduce_inputs(0, dtype), worker.allreduce_inputs(1, dtype)
    for rank in (0, 1):
        got = _load(misc["two"], "misc", rank)
        got_sum, got_mean = got[f"{dtype}-{backend}-sum"], got[f"{dtype}-{backend}-mean"]
        assert got_sum.dtype == got_mean.dtype == np.dtype(dtype)
        total = x0.astype(np.float64) + x1.astype(np.float64)
        np.testing.assert_allclose(got_sum, total, rtol=1e-15 if dtype == "float64" else 1e-7)
        np.testing.assert_allclose(got_mean, (2 * total) / 2, rtol=1e-15 if dtype == "float64" else 1e-7)


@needs_mpi
def test_rank_0_alone_writes_checkpoints_and_prints(misc):
    rank0, rank1 = _load(misc["two"], "misc", 0), _load(misc["two"], "misc", 1)
    # two fits, one epoch trained each (the second resumes ckpt1 at epoch 2): one checkpoint per epoch, on rank 0
    assert int(rank0["saves"]) == 2 and int(rank1["saves"]) == 0
    # the first fit is verbose=True, the second verbose=False: rank 1 never prints
    assert list(rank0["verbose"]) == [True, False] and list(rank1["verbose"]) == [False, False]
    assert misc["stderr"].count("epoch 1/1") == 1  # one progress line (tqdm's or the plain one), rank 0's
    assert (misc["two"] / "ckpt2.npz").exists()


@needs_mpi
def test_history_and_sharded_validation_equal_one_process(misc):
    """The loss is summed over the ranks' rows (the partial last batch of 64 included: 32 per rank); the
    validation set (101 rows: 51 + 50) is predicted in shares and gathered."""
    alone, rank0 = _load(misc["one"], "misc"), _load(misc["two"], "misc", 0)
    rank1 = _load(misc["two"], "misc", 1)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(rank0[key], alone[key], rtol=1e-12)
        np.testing.assert_array_equal(rank1[key], rank0[key])
    for k in alone:
        if k.startswith("epoch1."):
            np.testing.assert_allclose(rank0[k], alone[k], rtol=0, atol=1e-12)


@needs_mpi
def test_resume_on_two_ranks_from_a_one_process_checkpoint(misc):
    got = _load(misc["two"], "misc", 0)
    for k, v in misc["straight"].items():
        np.testing.assert_allclose(got["resumed." + k], v, rtol=0, atol=1e-12, err_msg=k)


@needs_mpi
def test_resume_on_one_process_from_a_two_rank_checkpoint(misc):
    x, y = worker.data((12,), 4, 320, "float64")
    model = worker.mlp("float64")
    history = graphc.fit(model, (x, y), epochs=2, batch_size=worker.GLOBAL_BATCH, optimizer=optim.Adam(0.01), seed=5,
                         verbose=False, checkpoint=str(misc["two"] / "ckpt2.npz"), resume=True)
    assert history.epochs == [1, 2]
    for k, v in misc["straight"].items():
        np.testing.assert_allclose(model.named_values()[k], v, rtol=0, atol=1e-12, err_msg=k)


@needs_mpi
def test_a_rank_that_raises_aborts_the_job_with_its_rank_and_error(tmp_path, graphc_cache_dir):
    started = time.perf_counter()
    proc = _run("abort", tmp_path, graphc_cache_dir, 2)
    assert proc.returncode != 0
    assert time.perf_counter() - started < MPI_TIMEOUT_S
    assert "graphc: rank 1 of 2 failed, aborting the MPI job" in proc.stderr
    assert "graphc: rank 1: InputError" in proc.stderr and "out of range" in proc.stderr
    assert "rank 0: " not in proc.stderr  # rank 0 did nothing wrong: it was waiting for rank 1


# -- one process: the op, its lowering, the step's graph -------------------------------------------------------------

def _allreduce_graph(dtype="float64"):
    with graphc.Graph("allreduce") as g:
        x = graphc.input("x", (3, 4), dtype)
        outs = [allreduce(x, "sum"), allreduce(x * 2.0, "mean")]
        g.output(*outs)
    return g, outs


@pytest.fixture(scope="module")
def allreduce_cpu(graphc_cache_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    try:
        g, outs = _allreduce_graph()
        yield g, graphc.compile(outs, backend="cpu")
    finally:
        mp.undo()


def test_allreduce_on_one_process_is_the_identity_on_every_backend(allreduce_cpu):
    g, exe = allreduce_cpu
    x = np.arange(12.0).reshape(3, 4) - 4.5
    expected = (x, 2 * x)
    for got in (interpret(lower(g), x)[0], graphc.compile([graphc.dsl.Tensor(o, g) for o in g.outputs],
                                                          backend="reference")(x), exe(x)):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


def test_allreduce_is_a_library_call_and_the_module_imports_numba_mpi_only_then(allreduce_cpu):
    g, exe = allreduce_cpu
    text = str(lower(g))
    assert "allreduce_sum(&v0[0], &" in text and "allreduce_mean(&" in text
    assert "from graphc.backends.numba_cpu.collective import allreduce_mean, allreduce_sum" in exe.source
    assert "NJIT = dict(cache=False," in exe.source
    with graphc.Graph("plain") as plain:
        x = graphc.input("x", (3,))
        plain.output(x * 2.0)
    from graphc.backends.numba_cpu import render

    source = render(lower(plain), "test")
    assert "numba_mpi" not in source and "collective" not in source and "NJIT = dict(cache=True," in source


def test_allreduce_vjp_is_the_allreduce_of_the_cotangent():
    with graphc.Graph("vjp") as g:
        x = graphc.input("x", (3,), "float64")
        w = graphc.param("w", np.array([1.0, -2.0, 0.5]))
        loss = graphc.sum(allreduce(x * w, "mean") * x)
        (gw,) = graphc.grad(loss, [w])
        g.output(gw)
    assert sum(n.op == "allreduce" for n in g.nodes) == 2  # forward, and the cotangent's
    x_value = np.array([0.3, -1.2, 2.0])
    got = graphc.compile([gw], backend="reference")(x_value)
    np.testing.assert_allclose(got, x_value * x_value)  # one process: d/dw sum((x w) x) = x^2


def test_allreduce_is_never_constant_folded():
    with graphc.Graph("fold") as g:
        y = allreduce(graphc.constant(np.array([1.0, 2.0])), "sum")
        g.output(y)
    optimized = graphc.passes.optimize(g).graph
    assert any(n.op == "allreduce" for n in optimized.nodes)


def test_allreduce_errors_name_the_op_the_operand_and_the_line():
    with graphc.Graph("bad"):
        i = graphc.input("i", (3,), "int64")
        with pytest.raises(DTypeError, match=r"(?s)allreduce: needs a float operand.*got i64\[3\].*test_distributed\.py:\d+"):
            allreduce(i)
        x = graphc.input("x", (3,))
        with pytest.raises(ShapeError, match=r"(?s)allreduce: reduce must be one of \['mean', 'sum'\], got 'max'"
                                             r".*test_distributed\.py:\d+"):
            allreduce(x, "max")


def _mlp_step(distributed_step: bool):
    model = worker.mlp("float64")
    model_graph = build_train_step(model, 8, optim.SGD(0.1), distributed=distributed_step)
    return graphc.passes.optimize(model_graph).graph


def test_sgd_updates_ride_in_the_gradient_gemm_only_without_an_allreduce_between():
    """lowering/layout.py accumulates p <- p - lr * (A @ B) inside the weight gradient's GEMM; with the
    gradient all-reduced between the GEMM and the update, that would skip the allreduce: it must not match."""
    plain, dp = lower(_mlp_step(False)), lower(_mlp_step(True))
    assert "accumulate" in plain.plan.values()  # the pattern this guards against is there without MPI
    assert "accumulate" not in dp.plan.values()
    calls = str(dp).count("allreduce_mean(")
    assert calls == 4  # W1, b1, W2, b2


def test_one_process_data_parallel_step_computes_the_plain_step(graphc_cache_dir, monkeypatch):
    """distributed='mpi' on one process (allreduces are identities): the same parameters as a plain fit."""
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    x, y = worker.data((12,), 4, 64, "float64")
    plain, dp = worker.mlp("float64"), worker.mlp("float64")
    graphc.fit(plain, (x, y), epochs=2, batch_size=16, optimizer=optim.Momentum(0.05), verbose=False,
               distributed="none", backend="reference")
    monkeypatch.setattr(distributed, "mpi_world", lambda: _OneRank())
    graphc.fit(dp, (x, y), epochs=2, batch_size=16, optimizer=optim.Momentum(0.05), verbose=False,
               distributed="mpi", backend="reference")
    for k, v in plain.named_values().items():
        np.testing.assert_allclose(dp.named_values()[k], v, rtol=0, atol=1e-12, err_msg=k)


class _OneRank:
    """A communicator of one process (what mpi4py's COMM_WORLD is without mpiexec)."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1


# -- random ops: row_offset --------------------------------------------------------------------------------------

def test_random_uniform_with_a_row_offset_draws_the_later_rows(graphc_cache_dir, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(graphc_cache_dir))
    with graphc.Graph("rows") as g:
        key = graphc.input("key", (), "int64")
        whole = graphc.random_uniform(key, (6, 5), salt=3, dtype="float64")
        tail = graphc.random_uniform(key, (2, 5), salt=3, dtype="float64", row_offset=4)
        g.output(whole, tail)
    oracle = np.random.RandomState(graphc.ops.random.seed_of(11, 3)).random_sample((6, 5))
    for got_whole, got_tail in (graphc.compile([whole, tail], backend="reference")(np.int64(11)),
                                interpret(lower(g), np.int64(11))[0],
                                graphc.compile([whole, tail], backend="cpu")(np.int64(11))):
        np.testing.assert_array_equal(got_whole, oracle)
        np.testing.assert_array_equal(got_tail, oracle[4:])


@pytest.mark.parametrize("op", ["random_shift2d", "random_flip2d"])
def test_augmentation_with_a_row_offset_transforms_the_later_images_alike(op):
    images = np.random.default_rng(0).normal(size=(5, 2, 4, 4))
    build = getattr(graphc.ops.random, op)
    with graphc.Graph("aug") as g:
        key = graphc.input("key", (), "int64")
        x = graphc.input("x", (5, 2, 4, 4), "float64")
        tail = graphc.input("tail", (2, 2, 4, 4), "float64")
        g.output(build(x, key, salt=9), build(tail, key, salt=9, row_offset=3))
    for whole, part in (graphc.compile([graphc.dsl.Tensor(o, g) for o in g.outputs], backend="reference")(
            np.int64(4), images, images[3:]), interpret(lower(g), np.int64(4), images, images[3:])[0]):
        np.testing.assert_array_equal(part, whole[3:])
        assert not np.array_equal(whole, images)


def test_random_uniform_refuses_a_row_offset_without_rows():
    with graphc.Graph("scalar"):
        key = graphc.input("key", (), "int64")
        with pytest.raises(ShapeError, match=r"(?s)random_uniform.*row_offset=2 needs a leading \(row\) axis"):
            graphc.random_uniform(key, (), row_offset=2)


# -- choosing the world ---------------------------------------------------------------------------------------------

def test_without_a_launcher_fit_trains_alone_and_never_imports_mpi4py(tmp_path, graphc_cache_dir):
    code = ("import sys, numpy as np, graphc\n"
            "from graphc.nn import Dense, Sequential\n"
            "from graphc.train.distributed import world_of\n"
            "assert world_of(None) is graphc.train.distributed.SINGLE\n"
            "x = np.zeros((8, 2), np.float32); y = np.zeros(8, np.int64)\n"
            "graphc.fit(Sequential([Dense(2)], input_shape=(2,)), (x, y), epochs=1, batch_size=4, verbose=False,"
            " backend='reference')\n"
            "assert 'mpi4py' not in sys.modules and 'numba_mpi' not in sys.modules, sorted(sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(graphc_cache_dir), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_launcher_of_several_processes_is_detected(monkeypatch):
    monkeypatch.setattr(distributed, "mpi_world", lambda: _TwoRanks())
    for var in WORLD_SIZE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert distributed.world_of(None) is distributed.SINGLE
    monkeypatch.setenv("PMI_SIZE", "2")
    world = distributed.world_of(None)
    assert (world.rank, world.size, world.distributed) == (1, 2, True)
    assert distributed.world_of("none") is distributed.SINGLE


class _TwoRanks(_OneRank):
    def Get_rank(self):
        return 1

    def Get_size(self):
        return 2


def test_distributed_errors_say_what_to_do():
    world = distributed.World(1, 2, _TwoRanks())
    with pytest.raises(HyperparameterError, match=r"a minibatch of 7 rows does not split across 2 MPI ranks"):
        world.local_batch(7)
    with pytest.raises(HyperparameterError, match=r"distributed='gloo' must be None \(detect mpiexec\), 'mpi' or "
                                                  r"'none'(?s:.*)test_distributed\.py:\d+"):
        distributed.world_of("gloo")
    from graphc.train.loop import _check_shares

    with pytest.raises(HyperparameterError, match=r"last minibatch of an epoch has 3 rows \(67 rows, batch_size 8\), "
                                                  r"which do not split across 2 MPI ranks: use last_batch='drop'"):
        _check_shares(world, 67, 8, "partial")
    _check_shares(world, 67, 8, "drop")  # the partial batch is not trained on: nothing to split


# -- two "hosts": two network namespaces joined by a veth pair -------------------------------------------------------

FAKE_SSH = """#!/bin/sh
# Hydra's ssh launcher runs: ssh [options] HOST COMMAND...; here COMMAND runs in HOST's network namespace.
while [ "${1#-}" != "$1" ]; do shift; done
host=$1; shift
case "$host" in
  %(a_ip)s) ns=%(a)s ;;
  %(b_ip)s) ns=%(b)s ;;
  *) echo "fake_ssh: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" sh -c "$*"
"""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts(tmp_path):
    """Network namespaces A (10.231.<k>.1) and B (.2) joined by a veth pair (interface ``gceth`` in each), and a
    fake ``ssh`` that runs a command in the namespace of its host: mpiexec in A starts one rank in each, and
    everything between them (Hydra's proxies, MPI's traffic) goes over the veth."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2): the test across network namespaces needs it")
    tag = f"{os.getpid() % 100000}"
    a, b = f"gcA{tag}", f"gcB{tag}"
    subnet = f"10.231.{os.getpid() % 250}"
    made = _ip("netns", "add", a)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` is not permitted here ({made.stderr.strip()}): not tested across hosts")
    try:
        _ip("netns", "add", b)
        steps = [("link", "add", f"{a}v", "type", "veth", "peer", "name", f"{b}v"),
                 ("link", "set", f"{a}v", "netns", a), ("link", "set", f"{b}v", "netns", b),
                 ("-n", a, "link", "set", f"{a}v", "name", "gceth"), ("-n", b, "link", "set", f"{b}v", "name", "gceth"),
                 ("-n", a, "addr", "add", f"{subnet}.1/24", "dev", "gceth"),
                 ("-n", b, "addr", "add", f"{subnet}.2/24", "dev", "gceth")]
        steps += [("-n", ns, "link", "set", dev, "up") for ns in (a, b) for dev in ("lo", "gceth")]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"`ip {' '.join(step)}` failed ({done.stderr.strip()}): not tested across hosts")
        ssh = tmp_path / "fake_ssh"
        ssh.write_text(FAKE_SSH % {"a": a, "b": b, "a_ip": f"{subnet}.1", "b_ip": f"{subnet}.2"})
        ssh.chmod(0o755)
        yield ["ip", "netns", "exec", a, MPIEXEC, "-hosts", f"{subnet}.1,{subnet}.2", "-n", "2", "-ppn", "1",
               "-launcher", "ssh", "-launcher-exec", str(ssh), "-iface", "gceth"]
    finally:
        _ip("netns", "del", a)
        _ip("netns", "del", b)


@needs_mpi
def test_two_ranks_in_two_network_namespaces_train_like_one_process(two_hosts, tmp_path, graphc_cache_dir):
    """Ranks on two "hosts" (network namespaces: no shared network stack, only the veth between them) give
    the single-process parameters, as on one machine."""
    one = tmp_path / "one"
    one.mkdir()
    _ok(_run("small", one, graphc_cache_dir, None))
    _ok(_run("small", tmp_path, graphc_cache_dir, 2, launch=two_hosts))
    alone = _load(one, "mlp-momentum-float64")
    for rank in (0, 1):
        got = _load(tmp_path, "mlp-momentum-float64", rank)
        for k in alone:
            np.testing.assert_allclose(got[k], alone[k], rtol=0, atol=1e-12, err_msg=k)


def test_graphc_train_has_a_distributed_flag():
    from graphc.cli import build_parser

    assert build_parser().parse_args(["train", "mnist", "--distributed"]).distributed is True
    assert build_parser().parse_args(["train", "mnist"]).distributed is False


def test_clipping_measures_the_norm_of_the_all_reduced_gradients():
    """clip_by_global_norm squares each gradient for the global norm: in a data-parallel step, each of those is
    an allreduce's output (the averaged gradient, the same on every rank), never a rank's local gradient."""
    from graphc.nn import Dense, Sequential

    model = Sequential([Dense(5, "relu"), Dense(3)], input_shape=(4,), seed=1, dtype="float64")
    step = build_train_step(model, 8, optim.SGD(0.1, clip_norm=1.0), distributed=True)
    squared = [n.inputs[0] for n in step.nodes if n.op == "square"]
    reduced = [n for n in step.nodes if n.op == "allreduce"]
    assert len(reduced) == 4 and {id(n) for n in squared} == {id(n) for n in reduced}

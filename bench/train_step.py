"""Training-step benchmark: graphc's numba_cpu backend against PyTorch (eager) and JAX (jit).

    python bench/train_step.py --workload mlp|tiny|cnn|resnet --frameworks graphc,torch,jax --json OUT
                               [--procs 3] [--threads 1,2] [--contended]

Every measurement runs in its own fresh process, the frameworks interleaved round by round, at
least ``--procs`` processes per framework and thread count. All frameworks start from the same
float32 weights and train on the same batch; the parent checks that their losses agree after 10
SGD steps. Reported per framework: median ms/step (median over processes of each process's median
block), the ratio to graphc, compile times, and for ``mlp`` one epoch of 60,000 samples (469
minibatches of 128, the last one wrapped around the permutation, the same in every framework).

graphc runs twice per round: ``graphc-cold`` compiles into an empty cache directory, then
``graphc-warm`` is a new process that loads the same cache (its ``compile_s`` is the warm start).
``first_result_s`` is the time from process start to the first step's loss.

``--baseline DIR`` adds ``graphc-base``: graphc from another checkout (a ``git worktree`` of the commit
before a change), run by that checkout's own copy of this script, interleaved with the others in the
same rounds, so that "no step got slower" is measured in one run on one machine.

Workloads: mlp 784-512-256-10 ReLU, softmax cross-entropy, SGD lr 0.01, batch 128; tiny 64-32-10
tanh, batch 32; cnn 1x28x28 -> conv 6@5x5 pad 2 -> ReLU -> maxpool 2 -> conv 16@5x5 -> ReLU ->
maxpool 2 -> dense 400-120-84-10 (ReLU), batch 64; resnet: examples/fashion_resnet.py's residual CNN
(conv-BN-ReLU, residual blocks, max and global average pooling, dropout; Adam 2e-3, batch 64) against the
same network in PyTorch (graphc and torch only; each framework initializes its own weights and draws its own
dropout masks, so their losses are not compared). Threads: OPENBLAS/OMP/MKL_NUM_THREADS, torch's
set_num_threads and XLA's intra-op threads are all set to the count, and each worker process is
pinned to that many cores (sched_setaffinity); ``cpu_per_wall`` in the JSON shows the cores kept busy.
graphc gets ``threads=`` the count (compile and fit), so that its policy does not override the benchmark's;
under ``--contended`` it runs its default policy instead (``threads=None``: the pinned cores, less those
another process keeps busy, and then GEMMs shared with a helper thread on the busy core), which is what a
user on a shared machine gets.

``--contended``: one busy process (``while True: pass``) pinned to the last core runs during every
framework's measurement (started before the worker, killed after it): the shared machine of issue 16. For
the mlp workload it adds ``graphc-idle``: graphc as the idle benchmark runs it (``threads=`` the count, no
busy process), interleaved with the others in the same rounds, so that graphc's contended epoch over its
own idle epoch is a ratio from one run (printed under the table, and ``epoch_ratio_to_idle`` in the JSON).

Core placement: before and after every worker the parent measures the round trip of a cache line between
cores 0 and 1 (bench/core_latency.py), ``core_to_core_ns`` in the JSON. On a virtual machine it says whether
the host ran the two cores in one L3 cache (~50-100 ns on the AMD EPYC VM of docs/benchmarks.md) or in two
(~310-400 ns), which the host changes while processes run. Each worker's ``placement`` is "one L3" or
"two L3s" by the round trip right after it; the table counts them per framework, and gives the mlp epoch's
medians per placement too (``epoch_s_by_placement``).

Roofline: ``gemm_mflop`` is the workload's GEMM work per step (forward and backward GEMMs, convolutions as
their GEMMs, the first layer's input gradient not computed), ``blas_gflops`` the float32 GEMM peak measured
in the same run at the same thread count (SciPy's sgemm, 1024^3, best of 5, pinned like the workers), and
``roofline_ms`` their ratio: the step's time if it were all GEMM at the peak. For the dense workloads (mlp,
tiny) ``gemm_ms_at_blas`` is sharper: the step's own GEMM shapes (forward, weight and input gradients), each
timed with SciPy's sgemm at the same thread count in the same run, summed: what the step's GEMMs take at
OpenBLAS's speed for those shapes, the least a step of OpenBLAS calls can take (operands untransposed and
already in cache, so a little less than the step's GEMMs get).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # graphc from this checkout
sys.path.insert(0, str(ROOT / "bench"))
import core_latency  # noqa: E402  (bench/core_latency.py)

#: A core-to-core round trip above this (ns) means the host ran the two cores in two L3 caches
#: (core_latency.py: ~50-100 ns in one, ~310-400 ns in two).
FAR_ROUND_TRIP_NS = 150
LR = 0.01
WORKLOADS = {
    "mlp": dict(batch=128, layers=(784, 512, 256, 10), act="relu", block=50, blocks=7),
    "tiny": dict(batch=32, layers=(64, 32, 10), act="tanh", block=3000, blocks=7),
    "cnn": dict(batch=64, block=20, blocks=7),
    "resnet": dict(batch=64, block=5, blocks=5),
}
EPOCH_SAMPLES = 60_000


# -- the shared problem: weights and batch -----------------------------------------------------------------

def problem(workload: str):
    """float32 initial weights (a list of arrays in a fixed order) and one batch (x, y)."""
    import numpy as np

    spec = WORKLOADS[workload]
    rng = np.random.default_rng(0)
    weights = []

    def dense(fan_in, fan_out):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32))
        weights.append(np.zeros(fan_out, np.float32))

    if workload == "resnet":  # each framework initializes the network itself (see the module's docstring)
        x = rng.standard_normal((spec["batch"], 1, 28, 28)).astype(np.float32)
    elif workload == "cnn":
        for shape in ((6, 1, 5, 5), (16, 6, 5, 5)):
            fan_in = shape[1] * shape[2] * shape[3]
            limit = np.sqrt(6.0 / (fan_in + shape[0] * shape[2] * shape[3]))
            weights.append(rng.uniform(-limit, limit, shape).astype(np.float32))
            weights.append(np.zeros(shape[0], np.float32))
        for a, b in ((400, 120), (120, 84), (84, 10)):
            dense(a, b)
        x = rng.standard_normal((spec["batch"], 1, 28, 28)).astype(np.float32)
    else:
        for a, b in zip(spec["layers"][:-1], spec["layers"][1:]):
            dense(a, b)
        x = rng.standard_normal((spec["batch"], spec["layers"][0])).astype(np.float32)
    y = rng.integers(0, 10, spec["batch"]).astype(np.int64)
    return weights, x, y


def gemm_mflop(workload: str) -> float:
    """The GEMM work of one training step (MFLOP): each dense layer and each convolution (as the GEMM of
    its im2col) three times (forward, input gradient, weight gradient), less the input gradient of the
    first layer, which nobody asks for."""
    spec = WORKLOADS[workload]
    B = spec["batch"]
    if workload == "cnn":  # (Co, C*kh*kw, Ho*Wo) of each conv, then the dense layers
        convs = [(6, 25, 784), (16, 150, 100)]
        dense = [(400, 120), (120, 84), (84, 10)]
    elif workload == "resnet":
        convs = [(16, 9, 784)] + [(16, 144, 784)] * 2 + [(32, 144, 196)] + [(32, 288, 196)] * 2
        dense = [(32, 10)]
    else:
        convs, dense = [], list(zip(spec["layers"][:-1], spec["layers"][1:]))
    products = [B * co * k * p for co, k, p in convs] + [B * a * b for a, b in dense]
    return 2 * (3 * sum(products) - products[0]) / 1e6


def sgemm_process(code: str, threads: int) -> float:
    """The number ``code`` prints, run in a fresh process pinned to ``threads`` cores with SciPy's ``sgemm`` (the
    BLAS Numba calls), ``np`` and ``time`` imported and the benchmark's thread environment."""
    preamble = ("import os, time, numpy as np\n"
                f"os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:{threads}])\n"
                "from scipy.linalg.blas import sgemm\n")
    out = subprocess.run([sys.executable, "-c", preamble + code], capture_output=True, text=True,
                         env=thread_env(threads), timeout=300, check=True)
    return float(out.stdout.strip())


def blas_peak_gflops(threads: int) -> float:
    """float32 GEMM GF/s of SciPy's BLAS (the one Numba calls) at ``threads``, in a fresh pinned process."""
    return sgemm_process("a = np.ones((1024, 1024), np.float32, order='F'); sgemm(1.0, a, a)\n"
                         "best = min(((lambda t: (sgemm(1.0, a, a), time.perf_counter() - t)[1])(time.perf_counter()))"
                         " for _ in range(5))\n"
                         "print(2 * 1024 ** 3 / best / 1e9)\n", threads)


def dense_gemm_shapes(workload: str) -> list[tuple[int, int, int]]:
    """(m, n, k) of each GEMM of a dense workload's step: per layer a -> b at batch B the forward (B, b, a), the
    weight gradient (a, b, B) and, but for the first layer, the input gradient (B, a, b); [] for the others."""
    spec = WORKLOADS[workload]
    if "layers" not in spec:
        return []
    B, layers = spec["batch"], spec["layers"]
    shapes = []
    for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
        shapes += [(B, b, a), (a, b, B)] + ([(B, a, b)] if i else [])
    return shapes


def blas_shapes_ms(workload: str, threads: int) -> float | None:
    """The step's GEMMs (``dense_gemm_shapes``) at the speed SciPy's sgemm runs each shape at ``threads`` (ms,
    the sum of each shape's fastest of 7 loops of ~20 ms in a fresh pinned process, the least of 3 such processes:
    the host's placement of the cores changes 2-thread GEMMs' speed): the least a step made
    of these OpenBLAS calls can take. None for workloads without dense shapes."""
    shapes = dense_gemm_shapes(workload)
    if not shapes:
        return None
    code = ("total = 0.0\n"
            f"for m, n, k in {shapes!r}:\n"
            "    a = np.ones((m, k), np.float32, order='F'); b = np.ones((k, n), np.float32, order='F')\n"
            "    reps = max(3, int(0.02 / (2 * m * n * k / 1e11)))\n"
            "    sgemm(1.0, a, b)\n"
            "    times = []\n"
            "    for _ in range(7):\n"
            "        t = time.perf_counter()\n"
            "        for _ in range(reps):\n"
            "            sgemm(1.0, a, b)\n"
            "        times.append((time.perf_counter() - t) / reps)\n"
            "    total += min(times)\n"
            "print(total * 1e3)\n")
    return min(sgemm_process(code, threads) for _ in range(3))


def epoch_data():
    import numpy as np

    rng = np.random.default_rng(1)
    X = rng.standard_normal((EPOCH_SAMPLES, 784)).astype(np.float32)
    Y = rng.integers(0, 10, EPOCH_SAMPLES).astype(np.int64)
    return X, Y, rng.permutation(EPOCH_SAMPLES)


def epoch_indices(perm, batch):
    """Minibatch row indices: ceil(N / batch) steps, the last one wrapped around the permutation."""
    import numpy as np

    steps = -(-len(perm) // batch)
    return np.concatenate([perm, perm])[: steps * batch].reshape(steps, batch)


# -- workers: one framework in this process --------------------------------------------------------------------

def graphc_threads() -> int | None:
    """graphc's ``threads=``: the benchmark's count, or its default policy when contended."""
    return None if args.contended else args.threads


def driver_option() -> dict:
    """graphc's ``driver=`` from --graphc-driver; none for "auto", so that a baseline checkout older than "auto"
    (bench/compile_time.py's workers pass their own) compiles with its default."""
    driver = getattr(args, "graphc_driver", "auto")
    return {} if driver == "auto" else {"driver": driver}


def graphc_step(workload: str, weights, cache_dir: str):
    import graphc

    spec = WORKLOADS[workload]
    if workload == "resnet":
        return graphc_resnet_step(cache_dir)
    with graphc.Graph(f"bench_{workload}") as g:
        params = [graphc.param(f"p{k}", w) for k, w in enumerate(weights)]
        if workload == "cnn":
            x = graphc.input("x", (spec["batch"], 1, 28, 28))
            h = graphc.max_pool2d(graphc.relu(graphc.conv2d(x, params[0], padding=2)
                                              + graphc.reshape(params[1], (1, 6, 1, 1))), 2)
            h = graphc.max_pool2d(graphc.relu(graphc.conv2d(h, params[2]) + graphc.reshape(params[3], (1, 16, 1, 1))), 2)
            h = graphc.reshape(h, (spec["batch"], 400))
            dense_params = params[4:]
            act = graphc.relu
        else:
            x = graphc.input("x", (spec["batch"], spec["layers"][0]))
            h, dense_params = x, params
            act = graphc.relu if spec["act"] == "relu" else graphc.tanh
        y = graphc.input("y", (spec["batch"],), "int64")
        n_dense = len(dense_params) // 2
        for k in range(n_dense):
            h = graphc.dense(h, dense_params[2 * k], dense_params[2 * k + 1])
            if k < n_dense - 1:
                h = act(h)
        loss = g.output(graphc.softmax_cross_entropy(h, y))
        for p, d in zip(params, graphc.grad(loss, params)):
            g.update(p, p - LR * d)
    t0 = time.perf_counter()
    exe = graphc.compile(loss, inputs=[x, y], backend="cpu", cache_dir=cache_dir, threads=graphc_threads(),
                         parallel_loops=getattr(args, "parallel_loops", False),
                         **driver_option())
    compile_s = time.perf_counter() - t0

    def step(xb, yb):
        return float(exe(xb, yb))

    def epoch(X, Y, perm):
        return exe.run_epoch(X, Y, perm=perm)

    if workload == "mlp" and args.graphc_epoch == "fit":
        epoch = graphc_fit_epoch(weights, cache_dir)
    stats = {k: exe.stats.get(k) for k in ("cache", "cache_problems", "cache_key", "codegen_s", "numba_compile_s", "driver",
                                           "threads_others_busy")}
    stats["graphc_threads"] = exe.stats.get("threads")  # the count graphc chose (``threads`` is the benchmark's)
    return step, epoch, compile_s, stats


def graphc_fit_epoch(weights, cache_dir: str):
    """One epoch through ``graphc.fit``: the same MLP as graphc.nn layers holding the same weights,
    SGD at LR, batch 128, no validation; the last batch wrapped around the permutation
    (``last_batch="wrap"``), the same 469 full batches as the PyTorch and JAX loops."""
    import graphc
    from graphc.nn import Dense, Sequential

    os.environ["GRAPHC_CACHE_DIR"] = cache_dir
    model = Sequential([Dense(512, "relu"), Dense(256, "relu"), Dense(10)], input_shape=(784,))
    for layer, w, b in zip(model.layers, weights[0::2], weights[1::2]):
        layer.values["W"], layer.values["b"] = w.copy(), b.copy()
    trainer = graphc.train.Trainer(model, graphc.optim.SGD(LR), backend="cpu")

    def epoch(X, Y, perm):
        return graphc.fit(model, (X, Y), epochs=1, batch_size=128, trainer=trainer, verbose=False,
                          last_batch="wrap", threads=graphc_threads())["loss"]

    return epoch


def resnet_module():
    sys.path.insert(0, str(ROOT / "examples"))
    import fashion_resnet

    return fashion_resnet


def graphc_resnet_step(cache_dir: str):
    """examples/fashion_resnet.py's model and optimizer: one compiled training step through the Trainer."""
    import numpy as np

    import graphc

    os.environ["GRAPHC_CACHE_DIR"] = cache_dir
    example = resnet_module()
    net = example.model(seed=0)
    trainer = graphc.train.Trainer(net, example.optimizer, backend="cpu", **driver_option())
    t0 = time.perf_counter()
    exe = trainer.step_executable(WORKLOADS["resnet"]["batch"])
    compile_s = time.perf_counter() - t0
    from graphc.backends.threads import ThreadPolicy

    exe.use_threads(ThreadPolicy(graphc_threads()))

    keys = iter(range(10 ** 9))

    def step(xb, yb):  # the step's inputs as fit feeds them: lr (float64) and a dropout key (int64) per step
        feeds = trainer._feeds(xb, yb, np.float64(2e-3), np.int64(next(keys)))
        return float(trainer.run_step(exe, feeds)[0])

    stats = {k: exe.stats.get(k) for k in ("cache", "cache_problems", "cache_key", "codegen_s", "numba_compile_s", "driver")}
    return step, None, compile_s, stats


def torch_resnet(threads: int):
    """examples/fashion_resnet.py's network in PyTorch (Adam 2e-3, dropout 0.2, BN in training mode)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

        def forward(self, x):
            return F.relu(x + self.body(x))

    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), Block(16), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), Block(32), nn.MaxPool2d(2),
                        nn.AvgPool2d(7), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 2e-3)

    def step(xb, yb):
        opt.zero_grad()
        loss = F.cross_entropy(net(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return float(loss)

    return step, None, None, {"version": torch.__version__}


def torch_step(workload: str, weights, threads: int):
    if workload == "resnet":
        return torch_resnet(threads)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    params = [torch.tensor(w, requires_grad=True) for w in weights]

    def forward(x):
        if workload == "cnn":
            h = F.max_pool2d(F.relu(F.conv2d(x, params[0], params[1], padding=2)), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, params[2], params[3])), 2)
            h = h.reshape(x.shape[0], 400)
            dense, act = params[4:], F.relu
        else:
            h, dense = x, params
            act = F.relu if WORKLOADS[workload]["act"] == "relu" else torch.tanh
        n = len(dense) // 2
        for k in range(n):
            h = h @ dense[2 * k] + dense[2 * k + 1]
            if k < n - 1:
                h = act(h)
        return h

    def step_t(x, y):
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= LR * p.grad
                p.grad = None
        return loss

    def step(xb, yb):
        return float(step_t(torch.from_numpy(xb), torch.from_numpy(yb)))

    def epoch(X, Y, perm):
        Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
        losses = []
        for rows in epoch_indices(perm, WORKLOADS[workload]["batch"]):
            idx = torch.from_numpy(rows)
            losses.append(step_t(Xt[idx], Yt[idx]).detach())
        return torch.stack(losses).numpy()

    return step, epoch, None, {"version": torch.__version__}  # eager: "compile" is the first step


def jax_step(workload: str, weights):
    import jax
    import jax.numpy as jnp

    params = [jnp.asarray(w) for w in weights]

    def forward(ps, x):
        if workload == "cnn":
            dn = ("NCHW", "OIHW", "NCHW")
            h = jax.lax.conv_general_dilated(x, ps[0], (1, 1), ((2, 2), (2, 2)), dimension_numbers=dn)
            h = jax.nn.relu(h + ps[1].reshape(1, 6, 1, 1))
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
            h = jax.lax.conv_general_dilated(h, ps[2], (1, 1), "VALID", dimension_numbers=dn)
            h = jax.nn.relu(h + ps[3].reshape(1, 16, 1, 1))
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
            h = h.reshape(x.shape[0], 400)
            dense, act = ps[4:], jax.nn.relu
        else:
            h, dense = x, ps
            act = jax.nn.relu if WORKLOADS[workload]["act"] == "relu" else jnp.tanh
        n = len(dense) // 2
        for k in range(n):
            h = h @ dense[2 * k] + dense[2 * k + 1]
            if k < n - 1:
                h = act(h)
        return h

    def loss_fn(ps, x, y):
        logp = jax.nn.log_softmax(forward(ps, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def train(ps, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(ps, x, y)
        return [p - LR * g for p, g in zip(ps, grads)], loss

    @jax.jit
    def train_rows(ps, X, Y, rows):
        return train(ps, X[rows], Y[rows])

    state = {"params": params}

    def step(xb, yb):
        state["params"], loss = train(state["params"], xb, yb)
        return float(loss)

    def epoch(X, Y, perm):
        Xd, Yd = jnp.asarray(X), jnp.asarray(Y)
        losses = []
        for rows in epoch_indices(perm, WORKLOADS[workload]["batch"]):
            state["params"], loss = train_rows(state["params"], Xd, Yd, rows)
            losses.append(loss)
        return jnp.stack(losses).block_until_ready()

    # The first call traces and compiles: time it as the compile.
    return step, epoch, None, {"version": jax.__version__}


def worker(args) -> dict:
    # Pin the process to `threads` cores, so that a framework cannot use more than it was told to.
    if hasattr(os, "sched_setaffinity") and args.threads <= len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    import numpy as np

    weights, x, y = problem(args.workload)
    framework = args.worker
    if framework.startswith("graphc"):
        step, epoch, compile_s, extra = graphc_step(args.workload, weights, args.cache_dir)
    elif framework == "torch":
        step, epoch, compile_s, extra = torch_step(args.workload, weights, args.threads)
    else:
        step, epoch, compile_s, extra = jax_step(args.workload, weights)
    t = time.perf_counter()
    losses = [step(x, y)]
    first_step_s = time.perf_counter() - t
    first_result_s = time.perf_counter() - START
    if compile_s is None:
        compile_s = first_step_s  # JAX: tracing and XLA compilation happen in the first call
    losses += [step(x, y) for _ in range(9)]
    spec = WORKLOADS[args.workload]
    blocks = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(spec["blocks"]):
        t = time.perf_counter()
        for _ in range(spec["block"]):
            last = step(x, y)
        blocks.append((time.perf_counter() - t) / spec["block"] * 1e3)
    cpu_per_wall = (time.process_time() - cpu0) / (time.perf_counter() - wall0)  # ~ cores kept busy
    result = {"framework": framework, "workload": args.workload, "threads": args.threads, "losses": losses,
              "ms_per_step": statistics.median(blocks), "blocks_ms": blocks, "compile_s": compile_s,
              "first_result_s": first_result_s, "last_loss": last, "cpu_per_wall": cpu_per_wall,
              "load_average": os.getloadavg()[0], "contended": args.contended, **extra}
    if args.workload == "mlp":
        X, Y, perm = epoch_data()
        times = []
        for _ in range(2):  # the first epoch also compiles (graphc: the epoch function; JAX: the gather)
            t = time.perf_counter()
            out = np.asarray(epoch(X, Y, perm))
            times.append(time.perf_counter() - t)
        result.update(epoch_s=times[-1], epoch_first_s=times[0], epoch_steps=-(-len(X) // spec["batch"]),
                      epoch_via=args.graphc_epoch if framework.startswith("graphc") else "python loop",
                      epoch_last_loss=float(out[-1]))
    return result


# -- the parent: processes, interleaving, the table ------------------------------------------------------------------

def thread_env(threads: int, root: Path = ROOT) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = (flags + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                        f"intra_op_parallelism_threads={threads}").strip()
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def busy_core(on: bool):
    """``--contended``: a ``while True: pass`` process pinned to the last core while the body runs."""
    if not on:
        yield
        return
    core = sorted(os.sched_getaffinity(0))[-1]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    try:
        time.sleep(0.2)  # it runs before the worker starts
        yield
    finally:
        busy.kill()
        busy.wait()


def run_worker(framework: str, workload: str, threads: int, cache_dir: str) -> dict:
    """One measurement in a fresh process; ``graphc-base-*`` runs the baseline checkout's script and graphc;
    ``graphc-idle-*`` (``--contended`` only) runs graphc as the idle benchmark does, with no busy process."""
    root = Path(args.baseline).resolve() if framework.startswith("graphc-base") else ROOT
    name = framework.replace("graphc-base", "graphc").replace("graphc-idle", "graphc")
    contended = args.contended and not framework.startswith("graphc-idle")
    cmd = [sys.executable, str(root / "bench" / "train_step.py"), "--worker", name, "--workload", workload,
           "--threads", str(threads), "--cache-dir", cache_dir, "--graphc-epoch", args.graphc_epoch]
    if contended:
        cmd.append("--contended")
    if args.parallel_loops:
        cmd.append("--parallel-loops")
    if args.graphc_driver != "auto" and not framework.startswith("graphc-base"):
        cmd += ["--graphc-driver", args.graphc_driver]
    before = core_latency.round_trip_ns()  # on the idle machine: the busy process is not running yet
    with busy_core(contended):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads, root), timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["framework"] = framework
    result["core_to_core_ns"] = [before, core_latency.round_trip_ns()]
    result["placement"] = placement(result["core_to_core_ns"][-1])
    return result


def placement(round_trip_ns: float | None) -> str:
    """Where the host ran the two cores, by a round trip between them: "one L3" or "two L3s", or "-" where it
    could not be measured. A worker's is the round trip right after it (the busy process just killed; the host
    moved the cores apart mostly while both were busy)."""
    return "-" if round_trip_ns is None else "two L3s" if round_trip_ns > FAR_ROUND_TRIP_NS else "one L3"


def summarize(results: list[dict], frameworks: list[str], peaks: dict[int, float] | None = None,
              gemm_ms: dict[int, float | None] | None = None) -> dict:
    table = {}
    for threads in sorted({r["threads"] for r in results}):
        rows = {}
        peak = (peaks or {}).get(threads)
        shapes_ms = (gemm_ms or {}).get(threads)
        for fw in frameworks:
            names = [f"{fw}-cold", f"{fw}-warm"] if fw.startswith("graphc") else [fw]
            runs = [r for r in results if r["threads"] == threads and r["framework"] in names]
            if not runs:
                continue
            row = {"processes": len(runs), "ms_per_step": statistics.median(r["ms_per_step"] for r in runs),
                   "ms_per_step_all": [round(r["ms_per_step"], 4) for r in runs]}
            if fw.startswith("graphc"):
                cold = [r for r in runs if r["framework"] == f"{fw}-cold"]
                warm = [r for r in runs if r["framework"] == f"{fw}-warm"]
                row["compile_cold_s"] = statistics.median(r["compile_s"] for r in cold)
                row["compile_warm_s"] = statistics.median(r["compile_s"] for r in warm)
                row["first_result_warm_s"] = statistics.median(r["first_result_s"] for r in warm)
                row["cache"] = sorted({r["cache"] for r in runs})
            else:
                row["compile_s"] = statistics.median(r["compile_s"] for r in runs)
                row["first_result_s"] = statistics.median(r["first_result_s"] for r in runs)
            if "epoch_s" in runs[0]:
                row["epoch_s"] = statistics.median(r["epoch_s"] for r in runs)
                row["epoch_steps"] = runs[0]["epoch_steps"]
                for where in ("one L3", "two L3s"):
                    epochs = [r["epoch_s"] for r in runs if r.get("placement") == where]
                    if epochs:
                        row.setdefault("epoch_s_by_placement", {})[where] = statistics.median(epochs)
            row["placements"] = {p: sum(r.get("placement") == p for r in runs)
                                 for p in sorted({r.get("placement", "-") for r in runs})}
            row["losses"] = runs[0]["losses"]
            if peak and fw != "graphc-idle":  # the peak was measured under the run's load, not idle
                row["gemm_mflop"] = gemm_mflop(runs[0]["workload"])
                row["blas_gflops"] = peak
                row["roofline_ms"] = row["gemm_mflop"] / peak
                row["x_roofline"] = row["ms_per_step"] / row["roofline_ms"]
                if shapes_ms:
                    row["gemm_ms_at_blas"] = shapes_ms
                    row["x_gemm_ms_at_blas"] = row["ms_per_step"] / shapes_ms
            rows[fw] = row
        base, idle = rows.get("graphc"), rows.get("graphc-idle")
        if base and idle and "epoch_s" in base:  # --contended: the contended epoch over the idle one, same run
            base["epoch_ratio_to_idle"] = base["epoch_s"] / idle["epoch_s"]
            for where, epoch in base.get("epoch_s_by_placement", {}).items():
                if where in idle.get("epoch_s_by_placement", {}):
                    base.setdefault("epoch_ratio_to_idle_by_placement", {})[where] = (
                        epoch / idle["epoch_s_by_placement"][where])
        for row in rows.values():
            if base:
                row["ratio_to_graphc"] = row["ms_per_step"] / base["ms_per_step"]
                if "epoch_s" in row:
                    row["epoch_ratio_to_graphc"] = row["epoch_s"] / base["epoch_s"]
                if row is not base and runs[0]["workload"] == "resnet":
                    continue  # own weights and dropout masks per framework: losses not comparable
                diff = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(row["losses"], base["losses"]))
                row["loss_rel_diff_vs_graphc"] = diff
        table[threads] = rows
    return table


def print_table(workload: str, table: dict) -> None:
    for threads, rows in table.items():
        contended = ", contended (a busy process on the last core)" if args.contended else ""
        print(f"\n== {workload}, {threads} thread{'s' if threads > 1 else ''}{contended}")
        first = next(iter(rows.values()), {})
        if "roofline_ms" in first:
            print(f"roofline: {first['gemm_mflop']:.1f} MFLOP of GEMM at {first['blas_gflops']:.0f} GF/s "
                  f"= {first['roofline_ms']:.3f} ms/step")
        if "gemm_ms_at_blas" in first:
            print(f"the step's GEMMs at OpenBLAS's speed for their shapes: {first['gemm_ms_at_blas']:.3f} ms/step "
                  f"(graphc's step: {first['x_gemm_ms_at_blas']:.2f}x that)")
        print(f"{'framework':11s} {'ms/step':>10s} {'x graphc':>9s} {'x roofline':>10s} {'compile s':>22s} "
              f"{'epoch s':>9s} {'loss diff':>10s}  procs (core placement)")
        for fw, row in rows.items():
            if fw.startswith("graphc"):
                comp = f"{row['compile_cold_s']:.2f} cold/{row['compile_warm_s']:.3f} warm"
            else:
                comp = f"{row['compile_s']:.2f} first step"
            epoch = f"{row['epoch_s']:.3f}" if "epoch_s" in row else "-"
            roof = f"{row['x_roofline']:.2f}" if "x_roofline" in row else "-"
            where = ", ".join(f"{n} {p}" for p, n in row["placements"].items())
            print(f"{fw:11s} {row['ms_per_step']:10.4f} {row.get('ratio_to_graphc', 1):9.2f} {roof:>10s} {comp:>22s} "
                  f"{epoch:>9s} {row.get('loss_rel_diff_vs_graphc', 0):10.1e}  {row['processes']} ({where})")
        base = rows.get("graphc", {})
        if "epoch_ratio_to_idle" in base:
            by = "; ".join(f"{where}: {base['epoch_s_by_placement'][where]:.3f} / "
                           f"{rows['graphc-idle']['epoch_s_by_placement'][where]:.3f} s = {ratio:.2f}x"
                           for where, ratio in base.get("epoch_ratio_to_idle_by_placement", {}).items())
            print(f"graphc's contended epoch / its idle epoch (graphc-idle), this run: {base['epoch_s']:.3f} / "
                  f"{rows['graphc-idle']['epoch_s']:.3f} s = {base['epoch_ratio_to_idle']:.2f}x" + (f" ({by})" if by else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="mlp")
    parser.add_argument("--frameworks", default="graphc,torch,jax")
    parser.add_argument("--procs", type=int, default=3, help="processes per framework and thread count (>= 3)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--graphc-epoch", choices=("fit", "run_epoch"), default="fit",
                        help="mlp epoch: through graphc.fit (the default) or one bare Executable.run_epoch call")
    parser.add_argument("--contended", action="store_true",
                        help="a busy process pinned to the last core during every measurement")
    parser.add_argument("--graphc-driver", default="auto", choices=("auto", "numba", "llvm"),
                        help="graphc's compile(driver=): how the step's kernels are compiled (auto: compile's "
                             "default; the baseline keeps its default)")
    parser.add_argument("--parallel-loops", action="store_true",
                        help="graphc's step with parallel_loops=True (prange loops; off by default)")
    parser.add_argument("--baseline", help="another checkout of graphc, measured as framework graphc-base")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    global args  # the workers' helpers and run_worker read the options
    args = parser.parse_args()
    if args.worker:
        args.threads = int(args.threads)
        print(json.dumps(worker(args)))
        return
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if args.workload == "resnet" and "jax" in frameworks:
        parser.error("the resnet workload runs graphc and torch only (--frameworks graphc,torch)")
    if args.baseline:
        frameworks.insert(1, "graphc-base")
    if args.contended and "graphc" in frameworks and args.workload == "mlp":
        frameworks.insert(frameworks.index("graphc") + 1, "graphc-idle")  # the own-idle ratio from this run
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for round_ in range(args.procs):
            with tempfile.TemporaryDirectory(prefix="graphc-bench-cache-") as cache_dir:
                order = frameworks[round_ % len(frameworks):] + frameworks[:round_ % len(frameworks)]
                for fw in order:
                    names = [f"{fw}-cold", f"{fw}-warm"] if fw.startswith("graphc") else [fw]
                    for name in names:
                        r = run_worker(name, args.workload, threads, cache_dir)
                        epoch = f", epoch {r['epoch_s']:.3f} s" if "epoch_s" in r else ""
                        trips = "/".join("-" if ns is None else f"{ns:.0f}" for ns in r["core_to_core_ns"])
                        print(f"  {threads} thr, round {round_ + 1}: {name:12s} {r['ms_per_step']:.4f} ms/step, "
                              f"compile {r['compile_s']:.3f} s{epoch}, core-to-core {trips} ns before/after",
                              file=sys.stderr, flush=True)
                        results.append(r)
    peaks, gemm_ms = {}, {}
    for threads in sorted({r["threads"] for r in results}):
        with busy_core(args.contended):
            peaks[threads] = blas_peak_gflops(threads)
            gemm_ms[threads] = blas_shapes_ms(args.workload, threads)
    trips = core_latency.round_trip_ns()
    if trips is not None:
        print(f"\nafter SciPy's sgemm was timed the cores ran in {placement(trips)} (core-to-core {trips:.0f} ns)")
    table = summarize(results, frameworks, peaks, gemm_ms)
    agree = all(row.get("loss_rel_diff_vs_graphc", 0) < 1e-3 for rows in table.values() for row in rows.values())
    print_table(args.workload, table)
    print(f"\nlosses after 10 steps agree across frameworks (relative difference < 1e-3): {agree}")
    if args.json:
        info = {"workload": args.workload, "contended": args.contended, "blas_gflops": peaks, "gemm_ms_at_blas": gemm_ms,
                "command": " ".join(sys.argv), "python": platform.python_version(),
                "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "losses_agree": agree, "table": table, "runs": results}
        Path(args.json).write_text(json.dumps(info, indent=1, default=str))
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()

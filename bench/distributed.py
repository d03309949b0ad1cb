"""Data-parallel training benchmark: MNIST MLP epoch time on 1 rank x 2 threads, 2 MPI ranks x 1 thread
(graphc, the gradient all-reduce inside the native step) and PyTorch DDP (gloo) 2 ranks x 1 thread.

    python bench/distributed.py --rounds 3 --epochs 3 --json bench/results/distributed/mlp.json

Run it with a Python that has graphc's ``mpi`` extra and torch (``pip install -e '.[mpi]' torch``). Every
measurement is a fresh process (or a fresh ``mpiexec``/DDP job), the three configurations interleaved
round by round; each job trains ``--epochs`` epochs of the course's 784-512-256-10 ReLU MLP (float32,
global batch 128, SGD momentum 0.9, lr 0.05, 60,000 MNIST rows when available) and reports the median of
its epochs after the first (the first includes compiling the epoch). Reported: the median over rounds of
each configuration's epoch time, ratios, and, from the 2-rank graphc job, the all-reduce bytes per step
and the time per step of those all-reduces alone (the step's calls replayed ``--allreduce-reps`` times),
with a latency/bandwidth fit (a 4-byte and a 4 MiB all-reduce) for the scaling model:

    step(N) = compute(B / N) + allreduce(N),   compute(B / N) ~ compute(B) / N,
    allreduce(N) ~ 2 (N - 1) * latency + 2 (N - 1) / N * bytes / bandwidth     (ring all-reduce)

with compute(B) from the 1-rank step time at one thread (the 2-rank epoch's step time minus its
all-reduce time, times 2). Assumptions are printed with the model: batch-linear compute (no loss of GEMM
efficiency at small local batches), one rank per core, and the measured shared-memory latency and
bandwidth (another interconnect: put its numbers in ``--bandwidth``/``--latency``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # graphc from this checkout
BATCH, LR, MOMENTUM = 128, 0.05, 0.9
LAYERS = (784, 512, 256, 10)
CONFIGS = ("graphc-1x2", "graphc-2x1", "torch-ddp-2x1")


def mnist_rows():
    """float32 MNIST training rows and labels (graphc.datasets; 60,000 when the full set is there)."""
    import numpy as np

    from graphc import datasets

    data = datasets.mnist()
    x, y = data.train
    if data.val is not None:
        x, y = np.concatenate([x, data.val[0]]), np.concatenate([y, data.val[1]])
    return np.ascontiguousarray(x, np.float32), y.astype(np.int64)


def threads_env(n: int) -> dict[str, str]:
    return {k: str(n) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


# -- workers ---------------------------------------------------------------------------------------------------

def graphc_worker(epochs: int, reps: int) -> dict | None:
    """One graphc job (1 process or one rank of mpiexec): epoch seconds, and on rank 0 of several ranks the
    all-reduce bytes and seconds per step; None on the other ranks (rank 0 reports)."""

    import graphc
    from graphc import optim
    from graphc.nn import Dense, Sequential

    x, y = mnist_rows()
    model = Sequential([Dense(512, "relu", init="he_normal"), Dense(256, "relu", init="he_normal"), Dense(10)],
                       input_shape=(784,), seed=0)
    history = graphc.fit(model, (x, y), epochs=epochs, batch_size=BATCH, optimizer=optim.Momentum(LR, MOMENTUM),
                         verbose=False, last_batch="wrap")
    world = model._trainer.world
    out = {"epoch_s": history["seconds"], "steps_per_epoch": -(-len(x) // BATCH), "rows": len(x),
           "final_loss": history["loss"][-1], "ranks": world.size}
    if world.distributed and world.size > 1:
        sizes = [v.size for v in model.named_values().values()]
        out.update(allreduce_timing(sizes, reps))
    return out if world.is_root else None


def allreduce_timing(sizes: list[int], reps: int) -> dict:
    """The step's all-reduces (one per gradient, float32, through the compiled runtime kernel) timed alone,
    and a latency / bandwidth fit from a 4-byte and a 4 MiB all-reduce."""
    import numpy as np

    from graphc.backends.numba_cpu.collective import allreduce_mean

    def timed(arrays: list, count: int) -> float:
        outs = [np.empty_like(a) for a in arrays]
        for a, o in zip(arrays, outs):  # compile, warm up
            allreduce_mean(a, 0, o, 0, a.size)
        from mpi4py import MPI

        MPI.COMM_WORLD.Barrier()
        t0 = time.perf_counter()
        for _ in range(count):
            for a, o in zip(arrays, outs):
                allreduce_mean(a, 0, o, 0, a.size)
        return (time.perf_counter() - t0) / count

    grads = [np.ones(n, np.float32) for n in sizes]
    step_s = timed(grads, reps)
    small = timed([np.ones(1, np.float32)], reps * 10)
    big_n = 1 << 20
    big = timed([np.ones(big_n, np.float32)], max(reps // 5, 5))
    bandwidth = 4 * big_n / max(big - small, 1e-12)
    return {"allreduce_bytes_per_step": 4 * sum(sizes), "allreduce_calls_per_step": len(sizes),
            "allreduce_s_per_step": step_s, "latency_s": small, "bandwidth_Bps": bandwidth}


def torch_worker(rank: int, world: int, port: int, epochs: int, queue) -> None:
    """One DDP rank (gloo): its share of each global minibatch of 128, the same model and optimizer."""
    import numpy as np
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x, y = mnist_rows()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(LAYERS, LAYERS[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(LAYERS) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(*layers))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    local = BATCH // world
    steps = -(-len(x) // BATCH)
    seconds = []
    for epoch in range(epochs):
        perm = np.resize(np.random.default_rng(epoch).permutation(len(x)), steps * BATCH).reshape(steps, BATCH)
        mine = torch.from_numpy(np.ascontiguousarray(perm[:, rank * local:(rank + 1) * local]))
        dist.barrier()
        t0 = time.perf_counter()
        for s in range(steps):
            idx = mine[s]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
    if rank == 0:
        queue.put({"epoch_s": seconds, "final_loss": float(loss), "ranks": world})
    dist.destroy_process_group()


def torch_job(epochs: int) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(torch_worker, args=(2, port, epochs, queue), nprocs=2, join=True, start_method="spawn")
    return queue.get()


# -- the parent ------------------------------------------------------------------------------------------------

def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        raise SystemExit("bench/distributed.py needs mpiexec: pip install -e '.[mpi]'")
    return found


def run_config(config: str, args) -> dict:
    """One fresh job of ``config``; its rank 0's JSON."""
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--epochs", str(args.epochs), "--allreduce-reps", str(args.allreduce_reps)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    if config == "graphc-1x2":
        cmd, env = me + ["--worker", "graphc"] + common, {**env, **threads_env(2)}
    elif config == "graphc-2x1":
        cmd, env = [mpiexec(), "-n", "2"] + me + ["--worker", "graphc"] + common, {**env, **threads_env(1)}
    else:
        cmd, env = me + ["--worker", "torch"] + common, {**env, **threads_env(1)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1])
    result["job_s"] = time.perf_counter() - t0
    return result


def scaling_model(compute_1: float, bytes_: int, calls: int, latency: float, bandwidth: float,
                  ranks=(1, 2, 4, 8, 16, 32)) -> list[dict]:
    """Predicted step time and speedup for N ranks (see the module docstring for the model)."""
    rows = []
    for n in ranks:
        comm = 0.0 if n == 1 else calls * 2 * (n - 1) * latency + 2 * (n - 1) / n * bytes_ / bandwidth
        step = compute_1 / n + comm
        rows.append({"ranks": n, "compute_s": compute_1 / n, "allreduce_s": comm, "step_s": step,
                     "speedup": compute_1 / step})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--allreduce-reps", type=int, default=200)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--json", default=None)
    p.add_argument("--bandwidth", type=float, default=None, help="bytes/s of another interconnect (model only)")
    p.add_argument("--latency", type=float, default=None, help="seconds per message of another interconnect")
    p.add_argument("--worker", choices=("graphc", "torch"), default=None)
    args = p.parse_args()
    if args.worker == "graphc":
        result = graphc_worker(args.epochs, args.allreduce_reps)
        if result is not None:
            print(json.dumps(result), flush=True)
        return
    if args.worker == "torch":
        print(json.dumps(torch_job(args.epochs)), flush=True)
        return
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for config in CONFIGS:
            result = run_config(config, args)
            runs[config].append(result)
            epoch = statistics.median(result["epoch_s"][1:] or result["epoch_s"])
            print(f"round {r + 1}/{args.rounds} {config:<14} epoch {epoch:.3f} s  (job {result['job_s']:.1f} s, "
                  f"loss {result['final_loss']:.4f})", file=sys.stderr, flush=True)
        load.append(os.getloadavg()[0])
    summary = {c: statistics.median(statistics.median(x["epoch_s"][1:] or x["epoch_s"]) for x in runs[c])
               for c in CONFIGS}
    two = runs["graphc-2x1"]
    steps = two[0]["steps_per_epoch"]
    comm = {k: statistics.median(x[k] for x in two) for k in ("allreduce_s_per_step", "latency_s", "bandwidth_Bps")}
    bytes_, calls = two[0]["allreduce_bytes_per_step"], two[0]["allreduce_calls_per_step"]
    step_2 = summary["graphc-2x1"] / steps
    compute_1 = 2 * max(step_2 - comm["allreduce_s_per_step"], 1e-9)
    latency = args.latency if args.latency is not None else comm["latency_s"]
    bandwidth = args.bandwidth if args.bandwidth is not None else comm["bandwidth_Bps"]
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": sys.version.split()[0], "load_average_1min": load},
        "workload": {"layers": LAYERS, "global_batch": BATCH, "dtype": "float32", "optimizer": "momentum 0.9, lr 0.05",
                     "rows": two[0]["rows"], "steps_per_epoch": steps, "epochs_per_job": args.epochs,
                     "rounds": args.rounds},
        "epoch_s_median": summary,
        "ratios": {"graphc-2x1 / graphc-1x2": summary["graphc-2x1"] / summary["graphc-1x2"],
                   "torch-ddp-2x1 / graphc-2x1": summary["torch-ddp-2x1"] / summary["graphc-2x1"]},
        "allreduce": {"bytes_per_step": bytes_, "calls_per_step": calls, **comm,
                      "share_of_2x1_step": comm["allreduce_s_per_step"] / step_2},
        "scaling_model": {"assumptions": ["compute is linear in the local batch (GEMM efficiency at B/N rows "
                                          "taken as at B rows)", "one rank per core, no other load",
                                          "ring all-reduce: 2(N-1) latencies per call, 2(N-1)/N of the bytes",
                                          f"latency {latency:.3g} s, bandwidth {bandwidth:.3g} B/s "
                                          f"({'given' if args.bandwidth or args.latency else 'measured, shared memory'})"],
                          "compute_1_rank_s_per_step": compute_1,
                          "predictions": scaling_model(compute_1, bytes_, calls, latency, bandwidth)},
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

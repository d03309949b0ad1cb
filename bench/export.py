"""Forward latency of the exported MLP and LeNet-5 (graphc.export) against the cpu backend and PyTorch.

    python bench/export.py [--models mlp,cnn] [--batches 1,128] [--threads 1,2] [--procs 3]
                           [--json bench/results/export.json] [--torch-python /work/benchenv/bin/python]

Peers, each measured in its own fresh process, interleaved round by round (bench/train_step.py's
conventions and its thread_env: OPENBLAS/OMP/MKL_NUM_THREADS and torch's threads set to the count, the
process pinned to that many cores):

- ``export``: libNAME.so called through ctypes (``NAME_call`` with prepared pointer arrays: the least
  Python there can be around a C call; check_finite on, the library's default);
- ``exe``: the executable's own ``--bench N`` timing (C's clock around ``NAME_call``, no Python at all);
- ``cpu``: graphc's numba_cpu backend (OpenBLAS GEMMs), the compiled inference graph called on an array;
- ``torch``: PyTorch eager under ``torch.inference_mode()``.

All start from the same float32 weights (bench/train_step.py's ``problem``); the parent checks that the
outputs agree. Exports are made once in the parent (their LLVM + cc time is reported, not timed in the
workers). Reported: the median over processes of each process's median block (microseconds per forward
call), and the ratio to the cpu backend. The exported code is single-threaded: at 2 threads only the cpu
backend's OpenBLAS and torch may use the second core.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from train_step import problem, thread_env  # noqa: E402  (the shared problem and thread settings)

MODELS = {"mlp": "mlp", "cnn": "cnn"}  # bench name -> train_step workload (its weights)
BLOCK_SECONDS = 0.2
BLOCKS = 7


def graphc_model(model: str):
    """The graphc.nn model with train_step's weights (examples/mnist_mlp.py's and mnist_lenet5.py's shapes)."""
    from graphc.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential

    if model == "mlp":
        net = Sequential([Dense(512, "relu"), Dense(256, "relu"), Dense(10)], input_shape=(784,))
    else:
        net = Sequential([Conv2D(6, 5, padding=2, activation="relu"), MaxPool2D(2), Conv2D(16, 5, activation="relu"),
                          MaxPool2D(2), Flatten(), Dense(120, "relu"), Dense(84, "relu"), Dense(10)],
                         input_shape=(1, 28, 28))
    weights, _, _ = problem(MODELS[model])
    names = list(net.named_values())
    assert [net.named_values()[n].shape for n in names] == [w.shape for w in weights], names
    net.load_values(dict(zip(names, weights)))
    return net


def inputs(model: str, batch: int):
    import numpy as np

    shape = (batch, 784) if model == "mlp" else (batch, 1, 28, 28)
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


# -- workers: one framework, one model, one batch size, in a fresh process --------------------------------------------

def timed(call) -> tuple[float, list[float]]:
    """The median of BLOCKS blocks of about BLOCK_SECONDS each (microseconds per call), and the blocks."""
    call()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.05:
        call()
        n += 1
    per_block = max(1, int(n * BLOCK_SECONDS / 0.05))
    blocks = []
    for _ in range(BLOCKS):
        t = time.perf_counter()
        for _ in range(per_block):
            call()
        blocks.append((time.perf_counter() - t) / per_block * 1e6)
    return statistics.median(blocks), blocks


def export_caller(directory: str, name: str, x):
    """``NAME_call(state, 0, inputs, outputs)`` through ctypes with everything prepared once."""
    import ctypes

    import numpy as np

    manifest = json.loads(Path(directory, f"{name}.json").read_text())
    out = np.empty(manifest["entries"][0]["outputs"][0]["shape"], np.float32)
    lib = ctypes.CDLL(str(Path(directory, f"lib{name}.so")))
    state = ctypes.c_void_p()
    assert lib[f"{name}_create"](ctypes.byref(state)) == 0
    call = getattr(lib, f"{name}_call")
    call.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    ins = (ctypes.c_void_p * 1)(x.ctypes.data)
    outs = (ctypes.c_void_p * 1)(out.ctypes.data)

    def run():
        call(state, 0, ins, outs)
        return out
    return run


def worker(args) -> dict:
    if hasattr(os, "sched_setaffinity") and args.threads <= len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    import numpy as np

    x = inputs(args.model, args.batch)
    extra = {}
    if args.worker == "export":
        run = export_caller(args.directory, args.name, x)
    elif args.worker == "exe":
        path = Path(args.directory, "x.npy")
        np.save(path, x)
        proc = subprocess.run([str(Path(args.directory, args.name)), "predict", str(path), str(path) + ".out.npy",
                               "--bench", "200"], capture_output=True, text=True, check=True)
        us = float(proc.stdout.split("median ")[1].split(" us")[0])
        return {"framework": "exe", "us": us, "blocks_us": [us], "out": np.load(str(path) + ".out.npy")[:1].tolist(),
                "load_average": os.getloadavg()[0]}
    elif args.worker == "cpu":
        import graphc
        from graphc.train.loop import build_eval

        graph = build_eval(graphc_model(args.model), args.batch)
        exe = graphc.compile(graph, backend="cpu")

        def run():
            return exe(x)
    else:
        import torch

        torch.set_num_threads(args.threads)
        weights, _, _ = problem(MODELS[args.model])
        W = [torch.from_numpy(w) for w in weights]
        xt = torch.from_numpy(x)
        F = torch.nn.functional

        def forward():
            if args.model == "mlp":
                h = F.relu(xt @ W[0] + W[1])
                h = F.relu(h @ W[2] + W[3])
                return h @ W[4] + W[5]
            h = F.max_pool2d(F.relu(F.conv2d(xt, W[0], W[1], padding=2)), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, W[2], W[3])), 2).flatten(1)
            h = F.relu(h @ W[4] + W[5])
            h = F.relu(h @ W[6] + W[7])
            return h @ W[8] + W[9]

        def run():
            with torch.inference_mode():
                return forward().numpy()
    us, blocks = timed(run)
    out = np.asarray(run())
    return {"framework": args.worker, "us": us, "blocks_us": blocks, "out": out[:1].tolist(),
            "load_average": os.getloadavg()[0], **extra}


# -- the parent ---------------------------------------------------------------------------------------------------------

def run_worker(framework: str, model: str, batch: int, threads: int, directory: str, name: str) -> dict:
    python = args.torch_python if framework == "torch" else sys.executable
    cmd = [python, str(ROOT / "bench" / "export.py"), "--worker", framework, "--model", model, "--batch", str(batch),
           "--threads", str(threads), "--directory", directory, "--name", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads), timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--batches", default="1,128")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--procs", type=int, default=3)
    parser.add_argument("--frameworks", default="export,exe,cpu,torch")
    parser.add_argument("--torch-python", default="/work/benchenv/bin/python")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "export.json"))
    for hidden in ("--worker", "--model", "--directory", "--name"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    global args
    args = parser.parse_args()
    if args.worker:
        args.threads = int(args.threads)
        print(json.dumps(worker(args)))
        return
    import numpy as np

    import graphc

    frameworks = [f for f in args.frameworks.split(",") if f]
    load_before = os.getloadavg()
    rows, exports = [], {}
    with tempfile.TemporaryDirectory(prefix="graphc-bench-export-") as tmp:
        for model in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                name = f"{model}_b{batch}"
                t = time.perf_counter()
                graphc.export(graphc_model(model), Path(tmp, name), name=name, batch_size=batch)
                exports[name] = time.perf_counter() - t
                for threads in (int(t) for t in args.threads.split(",")):
                    runs: dict[str, list[dict]] = {f: [] for f in frameworks}
                    for round_ in range(args.procs):
                        order = frameworks[round_ % len(frameworks):] + frameworks[:round_ % len(frameworks)]
                        for fw in order:
                            r = run_worker(fw, model, batch, threads, str(Path(tmp, name)), name)
                            runs[fw].append(r)
                            print(f"  {name} {threads} thr round {round_ + 1}: {fw:7s} {r['us']:10.1f} us",
                                  file=sys.stderr, flush=True)
                    ref = np.array(runs["cpu"][0]["out"]) if "cpu" in runs else None
                    for fw, rs in runs.items():
                        us = statistics.median(r["us"] for r in rs)
                        diff = float(np.max(np.abs(np.array(rs[0]["out"]) - ref))) if ref is not None else None
                        rows.append({"model": model, "batch": batch, "threads": threads, "framework": fw, "us": us,
                                     "us_all": [round(r["us"], 2) for r in rs], "max_abs_diff_vs_cpu": diff,
                                     "load_average": [r["load_average"] for r in rs]})
    for row in rows:
        cpu = next(r["us"] for r in rows if (r["model"], r["batch"], r["threads"], r["framework"]) ==
                   (row["model"], row["batch"], row["threads"], "cpu"))
        row["ratio_to_cpu"] = row["us"] / cpu
    print(f"\n{'model':5s} {'batch':>5s} {'thr':>3s} {'framework':9s} {'us/call':>10s} {'x cpu':>7s} {'max|diff|':>10s}")
    for row in rows:
        diff = "-" if row["max_abs_diff_vs_cpu"] is None else f"{row['max_abs_diff_vs_cpu']:.1e}"
        print(f"{row['model']:5s} {row['batch']:5d} {row['threads']:3d} {row['framework']:9s} {row['us']:10.1f} "
              f"{row['ratio_to_cpu']:7.2f} {diff:>10s}")
    print("export (LLVM O3 + cc) seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in exports.items()))
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (the machine is shared)")
    info = {"command": " ".join(sys.argv), "python": platform.python_version(), "machine": platform.processor()
            or platform.machine(), "cpus": os.cpu_count(), "load_average_before": load_before,
            "load_average_after": os.getloadavg(), "export_s": exports, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()

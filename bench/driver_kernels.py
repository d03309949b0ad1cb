"""Per kernel: the Numba driver against the llvm driver, on one workload's training step.

    python bench/driver_kernels.py [--workload cnn] [--top 12] [--two-threads] [--json OUT]

Builds ``bench/train_step.py``'s step of the workload (the Numba driver, one thread), then for each of its
kernels a Program holding only that kernel (the same buffers, the step's parameter store and workspace, the
same batch), compiled by each driver; times each (median of 5 blocks of 50 calls) and prints the ``--top``
kernels by the llvm driver's time: where the llvm driver's step spends its time, and its gap to the Numba
driver's runtime kernels (docs/performance.md, "The llvm driver"). Pinned to one core, one BLAS thread; run it
on an idle machine. ``--two-threads`` adds the llvm driver's kernel on two threads (unpinned; BLAS still at one
thread, the helper thread taking chunks: docs/performance.md, "Convolutions and pooling in chunks").
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def step_once(exe, x, y):
    return exe._step(x, y, exe._state, exe._ws, exe._status)


def per_call_ms(fn, calls: int = 50, blocks: int = 5) -> float:
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="cnn", choices=("tiny", "mlp", "cnn"))
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--two-threads", action="store_true", help="add the llvm driver on two threads")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None

    def pin(one: bool) -> None:  # the calling thread only: a helper thread takes the cores it finds then
        if cores:
            os.sched_setaffinity(0, {min(cores)} if one else cores)

    pin(True)

    import train_step

    import graphc
    from graphc.backends import numba_cpu

    train_step.args = type("Args", (), {"graphc_epoch": "step", "contended": False, "threads": 1,
                                        "graphc_driver": "numba"})()
    weights, x, y = train_step.problem(args.workload)
    built = {}
    compile_ = graphc.compile

    def keep(*a, **k):
        built["exe"] = compile_(*a, **k)
        return built["exe"]

    graphc.compile = keep
    with tempfile.TemporaryDirectory() as cache:
        train_step.graphc_step(args.workload, weights, cache)
    exe = built["exe"]
    program = exe.program
    rows = []
    for kernel in program.kernels:
        times = {}
        for driver in ("numba", "llvm"):
            one = dataclasses.replace(program, kernels=[kernel], checks=[], options=dict(program.options, driver=driver))
            with tempfile.TemporaryDirectory() as cache:  # the entry is keyed by the graph: one directory each
                single = numba_cpu.build_program(one, cache_dir=cache)
            single._state[:] = exe._state
            single._ws[:] = exe._ws
            times[driver] = per_call_ms(functools.partial(step_once, single, x, y))
            if driver == "llvm" and args.two_threads:
                pin(False)
                single.threads = 2
                single._decide_helper()
                single._apply_threads()  # step_once calls the entry itself: the helper starts here
                times["llvm_2t"] = per_call_ms(functools.partial(step_once, single, x, y))
                single.threads = 1
                single._decide_helper()
                single._apply_threads()  # the helper stops
                pin(True)
        rows.append({"kernel": kernel.title, **times})
    rows.sort(key=lambda r: -r["llvm"])
    print(f"{args.workload}: {len(rows)} kernels; sums: numba {sum(r['numba'] for r in rows):.3f} ms, "
          f"llvm {sum(r['llvm'] for r in rows):.3f} ms (each kernel alone, so the sums are not a step's time)\n")
    two = args.two_threads
    print("| kernel | numba driver ms | llvm driver ms | llvm / numba |" + (" llvm, 2 threads ms |" if two else "")
          + "\n|---|---|---|---|" + ("---|" if two else ""))
    for r in rows[:args.top]:
        print(f"| {r['kernel'][:90]} | {r['numba']:.3f} | {r['llvm']:.3f} | {r['llvm'] / r['numba']:.2f} |"
              + (f" {r['llvm_2t']:.3f} |" if two else ""))
    if two:
        print(f"\nllvm driver sums: {sum(r['llvm'] for r in rows):.3f} ms on one thread, "
              f"{sum(r['llvm_2t'] for r in rows):.3f} ms on two")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

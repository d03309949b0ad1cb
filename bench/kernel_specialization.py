"""What the cpu backend's runtime kernels cost generic, inlined at a call site, and split over threads.

    python bench/kernel_specialization.py [--repeats 41] [--json OUT]

The LeNet-like CNN step of bench/train_step.py calls the runtime kernels (graphc/backends/numba_cpu/runtime.py)
with literal shapes: ``max_pool(wf32, V12, 384, 28, 28, 2, 2, ...)``. Numba links each kernel's LLVM IR into
the driver, where LLVM inlines it and folds those constants. This script times each of the step's calls
four ways, in one process (float32, OpenBLAS on one thread, medians of ``--repeats`` calls):

- ``generic``: the kernel compiled once for any shape and called with the shapes as values. This is what
  any separately compiled kernel runs: one called through a symbol, or one compiled with Numba's parallel
  pipeline.
- ``inlined``: a jitted function calling it with the shapes as literals, like the generated driver.
- ``prange 1 thr`` / ``prange 2 thr``: the same call split into two halves along its independent axis
  (planes, images) by ``prange(2)`` in a ``parallel=True`` function, on 1 and 2 Numba threads.

It prints a markdown table, with each time as a ratio to ``inlined``. The findings are in
docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numba  # noqa: E402
import numpy as np  # noqa: E402

from graphc.backends.numba_cpu import runtime  # noqa: E402

# (name, kernel, arguments with the shapes as in the generated CNN step; ``split``: which argument is the
# independent count to halve, and the offsets (argument index, elements per unit) that move with it)
CASES = [
    ("max_pool 384x28x28 -> 14x14", "max_pool",
     ["x", 0, 384, 28, 28, 2, 2, 2, 2, 0, 0, 14, 14, "out", 0], dict(count=2, offsets={1: 784, 14: 196})),
    ("max_pool 1024x10x10 -> 5x5", "max_pool",
     ["x", 0, 1024, 10, 10, 2, 2, 2, 2, 0, 0, 5, 5, "out", 0], dict(count=2, offsets={1: 100, 14: 25})),
    ("max_pool_backward 384x28x28", "max_pool_backward",
     ["x", 0, "g", 0, 384, 28, 28, 2, 2, 2, 2, 0, 0, 14, 14, "out", 0],
     dict(count=4, offsets={1: 784, 3: 196, 16: 784})),
    ("max_pool_backward 1024x10x10", "max_pool_backward",
     ["x", 0, "g", 0, 1024, 10, 10, 2, 2, 2, 2, 0, 0, 5, 5, "out", 0],
     dict(count=4, offsets={1: 100, 3: 25, 16: 100})),
    ("conv2d_im2col 64x1x28x28, 6x5x5, pad 2", "conv2d_im2col",
     ["x", 0, "w", 0, 64, 1, 28, 28, 6, 5, 5, 1, 1, 2, 2, 1, 1, 28, 28, "col", 0, "out", 0],
     dict(count=4, offsets={1: 784, 22: 4704}, scratch=(20, 19600))),
    ("conv2d_im2col 64x6x14x14, 16x5x5", "conv2d_im2col",
     ["x", 0, "w", 0, 64, 6, 14, 14, 16, 5, 5, 1, 1, 0, 0, 1, 1, 10, 10, "col", 0, "out", 0],
     dict(count=4, offsets={1: 1176, 22: 1600}, scratch=(20, 15000))),
]

ARRAY_SIZE = 1 << 21  # elements of each operand: enough for every case (and a second scratch)


def source(name: str, kernel: str, args: list, split: dict | None) -> str:
    """A jitted function calling ``kernel`` with these literal arguments (halved over prange(2) with ``split``)."""
    arrays = sorted({a for a in args if isinstance(a, str)})
    if split is None:
        call = ", ".join(str(a) for a in args)
        body = f"    runtime.{kernel}({call})"
    else:
        half = list(args)
        half[split["count"]] = args[split["count"]] // 2
        for index, per_unit in split["offsets"].items():
            half[index] = f"{args[index]} + t * {half[split['count']] * per_unit}"
        if "scratch" in split:  # each half its own scratch
            index, size = split["scratch"]
            half[index] = f"{args[index]} + t * {size}"
        body = f"    for t in prange(2):\n        runtime.{kernel}({', '.join(str(a) for a in half)})"
    return f"def call({', '.join(arrays)}):\n{body}\n"


def jitted(name: str, kernel: str, args: list, split: dict | None, parallel: bool):
    scope = {"runtime": runtime, "prange": numba.prange}
    exec(source(name, kernel, args, split), scope)
    return numba.njit(error_model="numpy", fastmath={"contract"}, parallel=parallel, nogil=True)(scope["call"])


def median_ms(fn, operands, repeats: int) -> float:
    fn(*operands)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*operands)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    pool = {name: rng.standard_normal(ARRAY_SIZE).astype(np.float32) for name in ("x", "g", "w")}
    pool.update({name: np.zeros(ARRAY_SIZE, np.float32) for name in ("out", "col")})
    rows = []
    for name, kernel, args, split in CASES:
        arrays = sorted({a for a in args if isinstance(a, str)})
        operands = [pool[a] for a in arrays]
        generic_args = [pool[a] if isinstance(a, str) else a for a in args]
        generic = getattr(runtime, kernel)
        row = {"call": name,
               "generic": median_ms(lambda *_, f=generic, a=generic_args: f(*a), operands, repeats),
               "inlined": median_ms(jitted(name, kernel, args, None, False), operands, repeats)}
        split_fn = jitted(name, kernel, args, split, True)
        for threads in (1, 2):
            numba.set_num_threads(threads)
            row[f"prange {threads} thr"] = median_ms(split_fn, operands, repeats)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        rows.append(row)
    return rows


COLUMNS = ("generic", "inlined", "prange 1 thr", "prange 2 thr")


def table(rows: list[dict]) -> str:
    lines = ["| call (float32) | " + " | ".join(f"{c} ms" for c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for row in rows:
        cells = [f"{row[c]:.3f} ({row[c] / row['inlined']:.2f}x)" for c in COLUMNS]
        lines.append(f"| {row['call']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    load = os.getloadavg()
    rows = measure(args.repeats)
    print(table(rows))
    print(f"\nMedians of {args.repeats} calls; ratios to 'inlined'; Numba {numba.__version__}, threading layer "
          f"{numba.threading_layer()}, {platform.processor() or platform.machine()}, load average {load[0]:.2f} before.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "repeats": args.repeats, "numba": numba.__version__,
                       "threading_layer": numba.threading_layer(), "loadavg_before": load}, f, indent=1)


if __name__ == "__main__":
    main()

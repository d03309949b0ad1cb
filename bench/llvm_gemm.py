"""GF/s of the LLVM target's generated GEMM (graphc.backends.llvm.gemm) against NumPy/OpenBLAS, one thread.

    python bench/llvm_gemm.py [--dtype float32|float64] [--repeats 15] [--blocking MR,NR,KC] [--json OUT]

The shapes are the MNIST MLP's (784-512-256-10): its forward at batch 128 and batch 1, and the backward's
transposed products (dX = dY @ W^T: trans_b; dW = X^T @ dY: trans_a). Each GEMM is compiled once for the
"native" target (the host's CPU, AVX-512 here) and once for "generic" (x86-64 baseline), linked with
``cc -shared`` and called through ctypes, so both columns include ctypes' call overhead (about a
microsecond, which is what dominates the batch-1 rows; NumPy pays a similar one). Every figure is the
median of ``--repeats`` timings, each of a loop long enough to last ~20 ms, the three columns
timed in turn within each round (so that load from other processes hits them alike); the fastest round
is recorded too (``*_best_s``): on a shared machine it is the least disturbed one. The last row sums the three
forward products at batch 128: the GEMM part of the exported MLP forward against OpenBLAS's.
"""
from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy loads OpenBLAS

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import llvmlite.binding as llvm  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402

from graphc.backends.llvm.gemm import DTYPES, Blocking, default_blocking, define_gemm, gemm_symbol  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: (label, trans_a, trans_b, m, n, k)
SHAPES = [
    ("fwd1 128x784 @ 784x512", 0, 0, 128, 512, 784),
    ("fwd2 128x512 @ 512x256", 0, 0, 128, 256, 512),
    ("fwd3 128x256 @ 256x10", 0, 0, 128, 10, 256),
    ("dX2 128x256 @ (512x256)^T", 0, 1, 128, 512, 256),
    ("dX3 128x10 @ (256x10)^T", 0, 1, 128, 256, 10),
    ("dW1 (128x784)^T @ 128x512", 1, 0, 784, 512, 128),
    ("dW2 (128x512)^T @ 128x256", 1, 0, 512, 256, 128),
    ("dW3 (128x256)^T @ 128x10", 1, 0, 256, 10, 128),
    ("b1 1x784 @ 784x512", 0, 0, 1, 512, 784),
    ("b1 1x512 @ 512x256", 0, 0, 1, 256, 512),
    ("b1 1x256 @ 256x10", 0, 0, 1, 10, 256),
    ("b1 1x784 @ (512x784)^T", 0, 1, 1, 512, 784),
]


def target_machine(target: str) -> llvm.TargetMachine:
    """"native" (host CPU and features) or "generic" (x86-64 baseline); position-independent code."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    t = llvm.Target.from_triple(llvm.get_process_triple())
    if target == "native":
        return t.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                       opt=3, reloc="pic", codemodel="default")
    return t.create_target_machine(cpu="x86-64", features="", opt=3, reloc="pic", codemodel="default")


def compile_library(dtype: str, target: str, directory: str, blocking: Blocking | None) -> ctypes.CDLL:
    """A shared library holding only define_gemm's function, optimized at O3 (new pass manager)."""
    module = ir.Module(name="gemm")
    module.triple = llvm.get_process_triple()
    define_gemm(module, dtype, blocking=blocking)
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    machine = target_machine(target)
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    builder.getModulePassManager().run(parsed, builder)
    obj = Path(directory, f"{dtype}_{target}.o")
    obj.write_bytes(machine.emit_object(parsed))
    so = Path(directory, f"lib{dtype}_{target}.so")
    subprocess.run(["cc", "-shared", "-o", str(so), str(obj)], check=True)
    return ctypes.CDLL(str(so))


def bind(lib: ctypes.CDLL, dtype: str):
    scalar = ctypes.c_float if dtype == "float32" else ctypes.c_double
    fn = getattr(lib, gemm_symbol(dtype))
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [i32, i32, i64, i64, i64, scalar, ptr, i64, ptr, i64, scalar, ptr, i64]
    fn.restype = None
    return fn


def interleaved_seconds(calls: dict, repeats: int) -> dict:
    """Per name, (median, minimum) over ``repeats`` rounds of the mean time of a ~20 ms loop of calls; each round
    times every call once, in turn, so that load from other processes hits them alike."""
    loops = {}
    for name, call in calls.items():
        call()
        start = time.perf_counter()
        call()
        loops[name] = max(1, int(0.02 / max(time.perf_counter() - start, 1e-7)))
    samples = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                call()
            samples[name].append((time.perf_counter() - start) / loops[name])
    return {name: (statistics.median(s), min(s)) for name, s in samples.items()}


def operands(ta: int, tb: int, m: int, n: int, k: int, dtype: str, rng: np.random.Generator):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b, np.zeros((m, n), dtype)


def run(dtype: str, repeats: int, blocking: Blocking | None) -> list[dict]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        gemms = {t: bind(compile_library(dtype, t, d, blocking), dtype) for t in ("native", "generic")}
        rows = []
        for label, ta, tb, m, n, k in SHAPES:
            a, b, c = operands(ta, tb, m, n, k, dtype, rng)
            row = {"shape": label, "trans_a": ta, "trans_b": tb, "m": m, "n": n, "k": k}
            op_a, op_b = (a.T if ta else a), (b.T if tb else b)
            calls = {}
            for target, fn in gemms.items():
                args = (ta, tb, m, n, k, 1.0, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 0.0,
                        c.ctypes.data, c.shape[1])
                calls[target] = lambda fn=fn, args=args: fn(*args)
                c[...] = np.nan
                calls[target]()
                expected = op_a.astype(np.float64) @ op_b.astype(np.float64)
                scale = np.abs(op_a.astype(np.float64)) @ np.abs(op_b.astype(np.float64))
                if not np.all(np.abs(c - expected) <= 1e-5 * scale + 1e-30):
                    raise AssertionError(f"{label}: {target} GEMM disagrees with NumPy")
            calls["numpy"] = lambda op_a=op_a, op_b=op_b, c=c: np.matmul(op_a, op_b, out=c)
            for name, (median, best) in interleaved_seconds(calls, repeats).items():
                row[f"{name}_s"] = median
                row[f"{name}_best_s"] = best
            flops = 2.0 * m * n * k
            for key in ("native", "generic", "numpy"):
                row[f"{key}_gflops"] = flops / row[f"{key}_s"] / 1e9
            rows.append(row)
    forward = [r for r in rows if r["shape"].startswith("fwd")]
    total = {"shape": "MLP forward GEMMs, batch 128"}
    for key in ("native", "generic", "numpy"):
        total[f"{key}_s"] = sum(r[f"{key}_s"] for r in forward)
        total[f"{key}_best_s"] = sum(r[f"{key}_best_s"] for r in forward)
        total[f"{key}_gflops"] = sum(2.0 * r["m"] * r["n"] * r["k"] for r in forward) / total[f"{key}_s"] / 1e9
    rows.append(total)
    return rows


def print_table(rows: list[dict], dtype: str, blocking: Blocking) -> None:
    print(f"{dtype}, MR={blocking.mr} NR={blocking.nr} KC={blocking.kc}, one thread; GF/s (median time per call);"
          " numpy/native: speed of ours relative to OpenBLAS, from the medians and from the fastest rounds")
    print(f"{'shape':32} {'native':>18} {'generic':>18} {'numpy':>18} {'numpy/native':>12} {'(fastest)':>10}")
    for r in rows:
        cells = [f"{r[f'{key}_gflops']:7.1f} ({r[f'{key}_s'] * 1e6:7.1f}us)" for key in ("native", "generic", "numpy")]
        print(f"{r['shape']:32} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18} {r['numpy_s'] / r['native_s']:12.2f}"
              f" {r['numpy_best_s'] / r['native_best_s']:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPES, help="one dtype (default: both)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--blocking", help="MR,NR,KC to try instead of the default (tuning; needs --dtype)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "llvm_gemm.json"))
    args = parser.parse_args()
    if args.blocking and not args.dtype:
        parser.error("--blocking needs --dtype")
    result = {"cpu": llvm.get_host_cpu_name(), "threads": 1, "repeats": args.repeats,
              "load_average": os.getloadavg()}
    for dtype in [args.dtype] if args.dtype else DTYPES:
        blocking = default_blocking(dtype)
        if args.blocking:
            mr, nr, kc = (int(x) for x in args.blocking.split(","))
            blocking = Blocking(mr=mr, nr=nr, kc=kc, lanes=blocking.lanes)
        rows = run(dtype, args.repeats, blocking)
        print_table(rows, dtype, blocking)
        result[dtype] = {"blocking": blocking.__dict__, "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

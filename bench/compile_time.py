"""Cold compile and warm start of the training-step workloads, per stage, in fresh processes.

    python bench/compile_time.py [--workloads tiny,mlp,cnn] [--repeats 5] [--baseline DIR] [--driver auto|numba|llvm]
                                 [--json OUT]

Each measurement is a new process, pinned to one core with one OpenBLAS thread, that builds a workload's
step exactly as bench/train_step.py does (``graphc_step``) and times ``graphc.compile``: its wall time,
its CPU time (``time.process_time``, which a loaded machine inflates less) and each stage's CPU seconds as
``exe.stats["stages"]`` reports them (the passes, the lowering (conv autotuning included), rendering,
importing the module, Numba: its typing and lowering, then LLVM's optimization and code generation in
CPU time, told apart by Numba's ``numba:llvm_lock`` events; loading the Program on a hit). "cold" compiles into an empty cache
directory (the runtime kernels' own Numba cache, once per machine, stays warm); "new model" is a cold compile
into a directory holding only the conv timings this machine's first compile measured (``autotune.json``, once
per machine and conv shape: what a new model with known conv shapes costs); "hit" is a new process
loading the entry a first (discarded) process wrote. Prints the markdown table of docs/benchmarks.md,
medians of ``--repeats`` runs, with the load average it ran under. ``--baseline DIR`` (another checkout,
e.g. a git worktree of the commit before, or ``.``) adds its medians, the two checkouts alternating; the
baseline compiles with ``driver="numba"`` (the default before "auto"). ``--driver`` is this checkout's
``compile(driver=)``: "auto" (the default: the llvm driver from ``numba_cpu.LLVM_MIN_WORK`` of work per step),
"numba" or "llvm". The llvm driver's kernels go through graphc's llvm target (the "llvm" stage) and are loaded
as machine code (the "load" stage) instead of Numba's two halves; the table names the driver each side ran.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
cpu = time.process_time
t_import = cpu()
import graphc
import train_step
t_import = cpu() - t_import
llvm = [0.0, 0, 0.0]  # seconds, nesting depth, start
try:
    from numba.core import event

    class _LLVM(event.Listener):  # Numba's LLVM work (optimization, code generation, linking) in CPU time
        def on_start(self, ev):
            llvm[1] += 1
            if llvm[1] == 1:
                llvm[2] = cpu()

        def on_end(self, ev):
            llvm[1] -= 1
            if llvm[1] == 0:
                llvm[0] += cpu() - llvm[2]

    event.register("numba:llvm_lock", _LLVM())
except Exception:
    pass
train_step.args = type("Args", (), {{"graphc_epoch": "step", "contended": False, "threads": 1,
                                     "graphc_driver": {driver!r}}})()
weights, x, y = train_step.problem({workload!r})
built = {{}}
_compile = graphc.compile


def timed_compile(*args, **kwargs):  # the executable (its stats) and the CPU time of graphc.compile alone
    c0 = cpu()
    built["exe"] = _compile(*args, **kwargs)
    built["cpu"] = cpu() - c0
    return built["exe"]


graphc.compile = timed_compile
_, _, compile_s, stats = train_step.graphc_step({workload!r}, weights, {cache!r})
print(json.dumps({{"compile_s": compile_s, "compile_cpu_s": built["cpu"], "import_cpu_s": t_import,
                  "llvm_cpu_s": llvm[0], "cache": stats.get("cache"), "driver": stats.get("driver", "numba"),
                  "stages": built["exe"].stats.get("stages") or {{}}}}))
"""


def measure(root: Path, workload: str, cache: str, driver: str) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(root))
    code = WORKER.format(root=str(root), bench=str(root / "bench"), workload=workload, cache=cache, driver=driver)
    cmd = [sys.executable, "-c", code]
    if hasattr(os, "sched_getaffinity"):
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{root} {workload}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_side(root: Path, workload: str, warm_cache: str, driver: str) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as cold:
        cold_run = measure(root, workload, cold, driver)
    with tempfile.TemporaryDirectory() as known:  # a new model on a machine whose conv timings are known
        table = Path(warm_cache, "autotune.json")
        if table.exists():
            shutil.copy(table, known)
        new_model = measure(root, workload, known, driver)
    return {"cold": cold_run, "new_model": new_model, "hit": measure(root, workload, warm_cache, driver)}


def median(runs: list[dict], pick) -> float | None:
    values = [v for v in (pick(r) for r in runs) if v is not None]
    return statistics.median(values) if values else None


def row(workload: str, side: str, runs: dict[str, list[dict]]) -> str:
    cold, new_model, hit = runs["cold"], runs["new_model"], runs["hit"]

    def stage(name):  # CPU seconds
        return median(cold, lambda r: r["stages"].get(f"{name}_cpu"))

    numba_total, llvm = stage("numba"), median(cold, lambda r: r.get("llvm_cpu_s"))
    cells = [median(cold, lambda r: r["compile_s"]), median(cold, lambda r: r["compile_cpu_s"]),
             median(new_model, lambda r: r["compile_s"]),
             stage("passes"), stage("lower"), stage("render"), stage("import"),
             None if numba_total is None or llvm is None else max(numba_total - llvm, 0.0),
             None if numba_total is None else llvm, stage("llvm"), stage("load"),
             median(hit, lambda r: r["compile_s"]), median(hit, lambda r: r["compile_cpu_s"]),
             median(hit, lambda r: r["stages"].get("program_load_cpu"))]
    text = ["-" if c is None else f"{c:.3f}" for c in cells]
    ran = "/".join(sorted({r.get("driver", "numba") for r in cold}))
    return f"| {workload} | {side} ({ran}) | " + " | ".join(text) + " |"


HEADER = ("| workload | checkout | cold wall s | cold CPU s | new model wall s | passes | lower (+autotune) | render | "
          "import | Numba typing+lowering | LLVM opt+codegen | llvm driver: kernels | llvm driver: load | hit wall s | "
          "hit CPU s | hit: Program load |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another checkout to compare with (e.g. a git worktree of the commit before)")
    parser.add_argument("--workloads", default="tiny,mlp,cnn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--driver", default="auto", choices=("auto", "numba", "llvm"),
                        help="compile(driver=) of this checkout's steps (a baseline compiles with 'numba')")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    drivers = {"baseline": "numba", "this": args.driver}  # "numba": every checkout's default before "auto"
    roots = {"this": ROOT}
    if args.baseline:
        roots = {"baseline": Path(args.baseline).resolve(), "this": ROOT}
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    results: dict = {}
    lines = [HEADER]
    for workload in args.workloads.split(","):
        runs = {side: {"cold": [], "new_model": [], "hit": []} for side in roots}
        with tempfile.TemporaryDirectory() as warm_root:
            for side, root in roots.items():  # fill each side's warm cache once
                measure(root, workload, os.path.join(warm_root, side), drivers[side])
            for _ in range(args.repeats):
                for side, root in roots.items():
                    got = run_side(root, workload, os.path.join(warm_root, side), drivers[side])
                    for kind in ("cold", "new_model", "hit"):
                        runs[side][kind].append(got[kind])
        results[workload] = runs
        for side in roots:
            lines.append(row(workload, side, runs[side]))
            print(lines[-1], file=sys.stderr, flush=True)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    print(f"Medians of {args.repeats} fresh processes each; stage columns are the cold compile's "
          f"CPU seconds; load average {' '.join(load_before)} before, {' '.join(load_after)} after.\n")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "load": [load_before, load_after],
                                               "runs": results}, indent=1))


if __name__ == "__main__":
    main()

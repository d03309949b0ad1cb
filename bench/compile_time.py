"""Cold compile and warm start of the training-step workloads, this checkout against another, head to head.

    python bench/compile_time.py --baseline DIR [--workloads tiny,mlp,cnn] [--repeats 5] [--json OUT]

One process at a time, pinned to one core with one OpenBLAS thread, the two checkouts alternating:
each process builds a workload's step exactly as bench/train_step.py does (``graphc_step``) and reports
how long ``graphc.compile`` took. "cold" compiles into an empty cache directory; "warm" is a new process
loading the cache a first (discarded) process filled. Medians per checkout; use it when the interleaved
rounds of train_step.py scatter too much to tell compile times apart.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import train_step
train_step.args = type("Args", (), {{"graphc_epoch": "fit"}})()
weights, x, y = train_step.problem({workload!r})
_, _, compile_s, stats = train_step.graphc_step({workload!r}, weights, {cache!r})
print(json.dumps({{"compile_s": compile_s, "codegen_s": stats.get("codegen_s"), "cache": stats.get("cache")}}))
"""


def measure(root: Path, workload: str, cache: str) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(root))
    code = WORKER.format(root=str(root), bench=str(root / "bench"), workload=workload, cache=cache)
    cmd = [sys.executable, "-c", code]
    if hasattr(os, "sched_getaffinity"):
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{root} {workload}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the other checkout (e.g. a git worktree of the commit before)")
    parser.add_argument("--workloads", default="tiny,mlp,cnn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    roots = {"before": Path(args.baseline).resolve(), "after": ROOT}
    results: dict = {}
    for workload in args.workloads.split(","):
        runs: dict[str, dict[str, list[float]]] = {side: {"cold": [], "warm": []} for side in roots}
        with tempfile.TemporaryDirectory() as warm_root:
            for side, root in roots.items():  # fill each side's warm cache once
                measure(root, workload, os.path.join(warm_root, side))
            for _ in range(args.repeats):
                for side, root in roots.items():
                    with tempfile.TemporaryDirectory() as cold:
                        runs[side]["cold"].append(measure(root, workload, cold)["compile_s"])
                    runs[side]["warm"].append(measure(root, workload, os.path.join(warm_root, side))["compile_s"])
        results[workload] = runs
        for kind in ("cold", "warm"):
            before, after = (statistics.median(runs[s][kind]) for s in ("before", "after"))
            print(f"{workload:5s} {kind}: before {before:.3f} s, after {after:.3f} s (median of {args.repeats} each)")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "runs": results}, indent=1))


if __name__ == "__main__":
    main()

"""Random-graph fuzzing campaign: the suite's fuzz tests (tests/test_fuzz.py), larger.

    python bench/fuzz.py --fuzz-graphs N [--cpu-graphs M] [--seed S] [--json bench/results/fuzz.json]
    python bench/fuzz.py --seed S --only K        # reproduce case K of campaign S (prints its graph)

Cases 0..N-1 of campaign S (tests/fuzzgraphs.py) go through ``graphc.optimize`` at every level 0..3, each
optimized graph evaluated by the reference backend and compared with the reference evaluation of the
unoptimized graph; cases 0..M-1 also go through the cpu backend (default optimize level, one module per
case, outputs and in-place parameter updates). Prints a table per family, dtype and input kind, the first
disagreements in full, and ``N graphs, K disagreements``; writes the counts, the disagreements and the
timings as JSON. Exit status 1 when a case disagrees.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # graphc from this checkout; the generator from its tests

from fuzzgraphs import build_case, check_cpu, check_optimize  # noqa: E402

DEFAULT_SEED = 20261129  # the suite's campaign (tests/test_fuzz.py)


def kind(case) -> str:
    return f"{case.family:<5} {case.dtype} {'nan/inf/0' if case.special else 'finite':<9}"


def _sweep(label: str, count: int, check, table, every: int, progress: bool) -> tuple[list, float]:
    """``check(index) -> (case, findings)`` for graphs 0..count-1, counted per kind in ``table`` under
    "<label> graphs" / "<label> disagree" ("graphs" / "disagree" for the optimize sweep); returns the
    findings and the seconds taken."""
    prefix = "" if label == "optimize" else f"{label} "
    findings = []
    t0 = time.perf_counter()
    for index in range(count):
        case, found = check(index)
        row = table[kind(case)]
        row[prefix + "graphs"] += 1
        row[prefix + "disagree"] += bool(found)
        findings += found
        if progress and (index + 1) % every == 0:
            print(f"  {label}: {index + 1}/{count} graphs, {len({f.case.index for f in findings})} disagree "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return findings, time.perf_counter() - t0


def campaign(seed: int, graphs: int, cpu_graphs: int, cache_dir: str | None, progress: bool = True) -> dict:
    """Run the campaign; returns the counts per kind, the findings and the timings."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def optimized(index):
        case = build_case(seed, index)
        return case, check_optimize(case)

    def on_cpu(index):
        (case,), found = check_cpu(seed, [index], cache_dir=cache_dir)
        return case, found

    findings, optimize_s = _sweep("optimize", graphs, optimized, table, 500, progress)
    cpu_findings, cpu_s = _sweep("cpu", cpu_graphs, on_cpu, table, 20, progress)
    return {"table": {k: dict(v) for k, v in sorted(table.items())}, "findings": findings + cpu_findings,
            "optimize_disagreements": len({f.case.index for f in findings}),
            "cpu_disagreements": len({f.case.index for f in cpu_findings}),
            "optimize_s": optimize_s, "cpu_s": cpu_s}


def print_table(table: dict) -> None:
    columns = ["graphs", "disagree", "cpu graphs", "cpu disagree"]
    print(f"{'family dtype   inputs':<26}" + "".join(f"{c:>14}" for c in columns))
    totals = defaultdict(int)
    for name, row in table.items():
        print(f"{name:<26}" + "".join(f"{row.get(c, 0):>14}" for c in columns))
        for c in columns:
            totals[c] += row.get(c, 0)
    print(f"{'total':<26}" + "".join(f"{totals[c]:>14}" for c in columns))


def only(seed: int, index: int, cache_dir: str | None) -> int:
    """Reproduce one case: its graph, its inputs, and every level's and the cpu backend's verdict."""
    case = build_case(seed, index)
    print(case.graph)
    print(f"# {case.name}: {case.family}, {case.dtype}, {'NaN/Inf/zero inputs' if case.special else 'finite inputs'}, "
          f"{case.rule}; tolerance {__import__('fuzzgraphs').tolerance(case):.3g}")
    for name, value in case.feeds.items():
        print(f"# feed {name} = {value.tolist()!r}")
    findings = check_optimize(case)
    findings += check_cpu(seed, [index], cache_dir=cache_dir)[1]
    for f in findings:
        print(f"DISAGREES at {f.where}: {f.disagreement}")
    if not findings:
        print("agrees at optimize levels 0-3 and on cpu")
    return 1 if findings else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz-graphs", type=int, default=1000, help="graphs through optimize levels 0-3")
    parser.add_argument("--cpu-graphs", type=int, default=60, help="of those, graphs through the cpu backend")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--only", type=int, default=None, help="reproduce this one case and stop")
    parser.add_argument("--cache-dir", default=None, help="compile cache (default: a fresh temporary directory)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "fuzz.json"))
    parser.add_argument("--show", type=int, default=5, help="disagreements to print in full")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="graphc-fuzz-")
    if args.only is not None:
        return only(args.seed, args.only, cache_dir)
    t0 = time.perf_counter()
    result = campaign(args.seed, args.fuzz_graphs, min(args.cpu_graphs, args.fuzz_graphs), cache_dir)
    print_table(result["table"])
    for f in result["findings"][:args.show]:
        print("\n" + f.report())
    bad = len({f.case.index for f in result["findings"]})
    print(f"\noptimize levels 0-3: {args.fuzz_graphs} graphs, {result['optimize_disagreements']} disagreements "
          f"({result['optimize_s']:.0f} s); cpu: {min(args.cpu_graphs, args.fuzz_graphs)} graphs, "
          f"{result['cpu_disagreements']} disagreements ({result['cpu_s']:.0f} s)")
    print(f"{args.fuzz_graphs} graphs, {bad} disagreements")
    info = {
        "command": "python bench/fuzz.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed, "graphs": args.fuzz_graphs, "cpu_graphs": min(args.cpu_graphs, args.fuzz_graphs),
        "disagreements": bad, "optimize_disagreements": result["optimize_disagreements"],
        "cpu_disagreements": result["cpu_disagreements"], "table": result["table"],
        "findings": [{"case": f.case.index, "where": f.where, "what": str(f.disagreement),
                      "reproduce": f"python bench/fuzz.py --seed {args.seed} --only {f.case.index}"}
                     for f in result["findings"]],
        "optimize_s": round(result["optimize_s"], 1), "cpu_s": round(result["cpu_s"], 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "python": platform.python_version(), "machine": platform.machine(),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

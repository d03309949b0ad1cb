"""Per-kernel device resources of the course's training steps, compiled offline (no GPU needed).

    python bench/cuda_resources.py [--networks mlp lenet5 resnet] [--cc 80 90] [--jobs 2]
                                   [--json bench/results/cuda/resources.json] [--table full|summary]

Each network's training step is built as ``fit`` builds it (``graphc.train.build_train_step`` with the
example's model, optimizer and batch size), lowered as ``graphc.compile(..., backend="cuda")`` would lower
it (``graphc.backends.lower_for``: the default optimization level, conv as im2col + GEMM), and every kernel
the step launches (the generated phases and the runtime kernels its library calls launch) is compiled
to PTX for each compute capability and assembled by ``ptxas -v``
(``graphc.backends.numba_cuda.kernel_resources``). Printed: one row per kernel (network, kernel, phase
kind, node and op, then registers, shared memory, stack and spill bytes per sm_XX), or with
``--table summary`` a per-network summary and the kernels with the most registers; the JSON holds every row.

Networks (as in examples/): ``mlp`` 784-512-256-10 ReLU, Momentum(0.05, 0.9), batch 128
(mnist_mlp.py); ``lenet5`` LeNet-5, Adam(1e-3), batch 64 (mnist_lenet5.py); ``resnet`` the residual CNN
with batch norm and dropout, Adam(2e-3), batch 64 (fashion_resnet.py). All float32.

``--jobs N`` compiles the (network, compute capability) pairs in N processes (Numba's compiler holds the
GIL; the work is one Numba compile per kernel, about 0.1-0.3 s each, and the residual CNN has ~370).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # graphc from this checkout

DEFAULT_JSON = ROOT / "bench" / "results" / "cuda" / "resources.json"
CCS = ((8, 0), (9, 0))


# -- the networks, as the examples define them ------------------------------------------------------------

def mlp(seed: int = 0):
    """examples/mnist_mlp.py: 784-512-256-10 ReLU, Momentum(0.05, 0.9), batch 128."""
    from graphc import optim
    from graphc.nn import Dense, Sequential

    model = Sequential([Dense(512, "relu", init="he_normal"), Dense(256, "relu", init="he_normal"), Dense(10)],
                       input_shape=(784,), seed=seed)
    return model, optim.Momentum(0.05, 0.9), 128


def lenet5(seed: int = 0):
    """examples/mnist_lenet5.py: LeNet-5, Adam(1e-3), batch 64."""
    from graphc import optim
    from graphc.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential

    model = Sequential([
        Conv2D(6, 5, padding=2, activation="relu"), MaxPool2D(2),
        Conv2D(16, 5, activation="relu"), MaxPool2D(2),
        Flatten(), Dense(120, "relu"), Dense(84, "relu"), Dense(10),
    ], input_shape=(1, 28, 28), seed=seed)
    return model, optim.Adam(1e-3), 64


def resnet(seed: int = 0):
    """examples/fashion_resnet.py: the residual CNN with batch norm and dropout, Adam(2e-3), batch 64."""
    from graphc import nn, optim

    def block(channels):
        return nn.Residual([nn.Conv2D(channels, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                            nn.Conv2D(channels, 3, padding=1), nn.BatchNorm()], activation="relu")

    model = nn.Sequential([
        nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
        block(16), nn.MaxPool2D(2),
        nn.Conv2D(32, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
        block(32), nn.MaxPool2D(2),
        nn.AvgPool2D(7), nn.Flatten(), nn.Dropout(0.2), nn.Dense(10),
    ], input_shape=(1, 28, 28), seed=seed)
    return model, optim.Adam(2e-3), 64


NETWORKS = {"mlp": mlp, "lenet5": lenet5, "resnet": resnet}


def train_step_program(network: str):
    """The lowered training step of ``network`` (a ``lowering.Program``), as ``fit(..., backend="cuda")``
    would build it."""
    from graphc.backends import lower_for
    from graphc.train.loop import build_train_step

    model, optimizer, batch = NETWORKS[network]()
    return lower_for(build_train_step(model, batch, optimizer, name=f"{network}_train_step_b{batch}"), backend="cuda")


# -- one (network, compute capability) --------------------------------------------------------------------

def network_rows(network: str, cc: tuple[int, int], cache_dir: str | None = None) -> dict:
    """Every kernel of ``network``'s step assembled for ``cc``: {"network", "arch", "seconds", "rows": [...]},
    a row per kernel in launch-module order (runtime kernels last)."""
    from graphc.backends.numba_cuda import kernel_resources

    t0 = time.perf_counter()
    program = train_step_program(network)
    rows = []
    for k in kernel_resources(program, cc, cache_dir):
        r = k.resources
        rows.append({"kernel": k.kernel, "kind": k.kind, "node": k.title, "registers": r.registers,
                     "smem": r.smem, "stack": r.stack, "spill_stores": r.spill_stores, "spill_loads": r.spill_loads})
    return {"network": network, "arch": f"sm_{cc[0]}{cc[1]}", "seconds": round(time.perf_counter() - t0, 1),
            "rows": rows}


def collect(networks: list[str], ccs: list[tuple[int, int]], jobs: int = 1, cache_dir: str | None = None) -> dict:
    """The resources of every (network, cc), in ``jobs`` processes (the biggest network first); the
    result as written to the JSON."""
    tasks = [(n, cc) for n in sorted(networks, key=lambda n: -list(NETWORKS).index(n)) for cc in ccs]
    if jobs <= 1:
        parts = [network_rows(n, cc, cache_dir) for n, cc in tasks]
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(network_rows, *zip(*tasks), [cache_dir] * len(tasks)))
    return merge(parts, networks)


def merge(parts: list[dict], networks: list[str]) -> dict:
    """One row per (network, kernel) with each architecture's figures side by side."""
    rows: dict[tuple[str, str], dict] = {}
    seconds: dict[str, float] = {}
    for part in parts:
        seconds[f"{part['network']} {part['arch']}"] = part["seconds"]
        for r in part["rows"]:
            row = rows.setdefault((part["network"], r["kernel"]), {
                "network": part["network"], "kernel": r["kernel"], "kind": r["kind"], "node": r["node"]})
            row[part["arch"]] = {k: r[k] for k in ("registers", "smem", "stack", "spill_stores", "spill_loads")}
    ordered = [rows[key] for key in sorted(rows, key=lambda key: networks.index(key[0]))]
    return {"meta": meta(), "compile_seconds": seconds, "rows": ordered}


def meta() -> dict:
    from importlib.metadata import version

    from graphc.backends.numba_cuda.ptx import find_ptxas

    ptxas = find_ptxas()
    ptxas_version = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True).stdout.strip()
    release = [line for line in ptxas_version.splitlines() if "release" in line] or ptxas_version.splitlines()[-1:]
    return {"numba_cuda": version("numba-cuda"), "ptxas": release[0],
            "dtype": "float32", "conv": "im2col", "date": time.strftime("%Y-%m-%d")}


# -- the table ----------------------------------------------------------------------------------------------

def arches(result: dict) -> list[str]:
    return sorted({k for row in result["rows"] for k in row if k.startswith("sm_")})


def table(result: dict) -> str:
    """Every kernel: network, kernel, kind, node/op, then registers/smem/stack/spills per architecture."""
    archs = arches(result)
    head = f"{'network':<8} {'kernel':<34} {'kind':<8} " + " ".join(f"{a + ' regs smem stack spill':>30}" for a in archs)
    lines = [head + "  node / op", "-" * len(head)]
    for row in result["rows"]:
        figures = " ".join(_figures(row.get(a)) for a in archs)
        lines.append(f"{row['network']:<8} {row['kernel']:<34} {row['kind']:<8} {figures}  {_node(row['node'])}")
    return "\n".join(lines)


def _figures(r: dict | None) -> str:
    if r is None:
        return f"{'-':>30}"
    return f"{r['registers']:>14} {r['smem']:>5} {r['stack']:>5} {r['spill_stores'] + r['spill_loads']:>3}"


def _node(title: str, width: int = 70) -> str:
    """The node and op of a title (``%12 sum  dL/db via ...  file:line``), cut to ``width``."""
    return title if len(title) <= width else title[:width - 3] + "..."


def summary(result: dict, top: int = 12) -> str:
    """Per network and architecture: kernels, kinds, registers (max, median), smem max, stack max, spilling
    kernels; then the ``top`` kernels with the most registers."""
    import statistics

    archs = arches(result)
    lines = [f"{'network':<8} {'arch':<6} {'kernels':>7}  {'by kind':<52} {'regs max':>8} {'median':>6} "
             f"{'smem max':>8} {'stack max':>9} {'spilling':>8}"]
    for network in dict.fromkeys(r["network"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["network"] == network]
        kinds: dict[str, int] = {}
        for r in rows:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        by_kind = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        for a in archs:
            figs = [r[a] for r in rows if a in r]
            regs = [f["registers"] for f in figs]
            spilling = sum(1 for f in figs if f["spill_stores"] or f["spill_loads"])
            lines.append(f"{network:<8} {a:<6} {len(figs):>7}  {by_kind:<52} {max(regs):>8} "
                         f"{statistics.median(regs):>6g} {max(f['smem'] for f in figs):>8} "
                         f"{max(f['stack'] for f in figs):>9} {spilling:>8}")
    first = archs[0]
    biggest = sorted(result["rows"], key=lambda r: -r[first]["registers"])[:top]
    lines += ["", f"The {top} kernels with the most registers ({first}):",
              table({"rows": biggest})]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    p.add_argument("--cc", nargs="+", default=["80", "90"], help="compute capabilities (default: 80 90)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compiling processes")
    p.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the rows (default: %(default)s)")
    p.add_argument("--table", choices=("full", "summary"), default="full")
    p.add_argument("--cache-dir", default=None, help="graphc's compile cache (default: a temporary directory)")
    args = p.parse_args(argv)
    ccs = [(int(c[:-1]), int(c[-1])) for c in args.cc]
    with tempfile.TemporaryDirectory(prefix="graphc-cuda-resources-") as tmp:
        result = collect(args.networks, ccs, args.jobs, args.cache_dir or tmp)
    print(table(result) if args.table == "full" else summary(result))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out} ({len(result['rows'])} kernels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

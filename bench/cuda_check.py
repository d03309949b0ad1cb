"""The one prepared check of the cuda backend on a GPU: the op suite on the device, the MNIST MLP trained
for 3 epochs, and its training step and epoch timed against PyTorch CUDA in the same run.

    python bench/cuda_check.py [--idx DIR] [--epochs 3] [--json bench/results/cuda/check.json]
    python bench/cuda_check.py --tiny        # the same code paths at tiny sizes (works under the simulator)
    NUMBA_ENABLE_CUDASIM=1 python bench/cuda_check.py --tiny

1. **Op suite**: the op graphs of tests/test_numba_cpu.py (``GRAPHS``: every elementwise op, reductions
   and shape ops, linear algebra, the nn ops, convolution and pooling, the random ops; each with its
   gradients) compiled with ``backend="cuda"`` against the reference backend (the NumPy oracle): float64 as
   written (tight tolerance), float32 optimized at level 2 (fused nodes and epilogues; loose tolerance),
   the conv graph with each conv method. Needs the test dependencies (pytest, hypothesis).
2. **Training**: the course's 784-512-256-10 MLP (examples/mnist_mlp.py: Momentum(0.05, 0.9), cosine
   schedule, batch 128) fitted with ``backend="cuda"`` for ``--epochs`` epochs on MNIST (``--idx DIR`` with
   the IDX files, else graphc's cached copy; the GPU machine may have no network), then its test accuracy.
3. **Timing**, graphc against PyTorch in the same process, the same float32 weights, the same batch:
   *step*: one training step as a caller runs it (the batch uploaded from the host, the loss and the
   number of correct predictions read back), the median over blocks of each block's mean;
   *epoch*: one pass over the training set in minibatches of 128 with the data already on the device
   (graphc: ``Trainer.train_epoch``, one native call; PyTorch: index the permuted device tensors), with
   ``last_batch="wrap"`` so that every step is a full batch; the median of ``--epoch-repeats`` epochs.
   ``ratio`` is graphc / PyTorch (above 1: graphc is slower).

``--tiny``: op graphs elementwise and nn (float64 and float32), a 16-8-4 MLP on 64 random rows with
batch 32 for 1 epoch, two timing blocks of one step; PyTorch only where ``torch.cuda`` is available
(the script says when it is not). Under ``NUMBA_ENABLE_CUDASIM=1`` the timings measure the simulator.

Without a GPU and without the simulator the script stops at once with graphc's CudaUnavailable message
(exit status 2). The results are printed as a table and written as JSON (``--json``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # graphc from this checkout

DEFAULT_JSON = ROOT / "bench" / "results" / "cuda" / "check.json"
LR, MOMENTUM = 0.05, 0.9

FULL = dict(layers=(784, 512, 256, 10), batch=128, epochs=3, blocks=7, block_steps=50, epoch_repeats=3,
            op_graphs=("elementwise", "shapes", "nn", "conv"))
TINY = dict(layers=(16, 8, 4), batch=32, rows=64, epochs=1, blocks=2, block_steps=1, epoch_repeats=1,
            op_graphs=("elementwise", "nn"))


# -- 1. the op suite ----------------------------------------------------------------------------------------

def load_op_graphs():
    """tests/test_numba_cpu.py as a module: its GRAPHS, tolerances and comparison (the cpu backend's suite)."""
    path = ROOT / "tests" / "test_numba_cpu.py"
    spec = importlib.util.spec_from_file_location("graphc_op_graphs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def op_cases(names: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(graph, dtype, conv method) as tests/test_numba_cpu.py's op_case: float64 and float32, conv both ways."""
    return [(name, dtype, conv) for name in names for dtype in ("float64", "float32")
            for conv in (("im2col", "direct") if name == "conv" else ("auto",))]


def run_op_suite(names: tuple[str, ...], cache_dir: str) -> list[dict]:
    """Each case compiled for the device and for the reference backend, run on the same inputs and compared
    (integers exactly; floats within the suite's tolerance): {"case", "passed", "max_abs_err", "error", ...}."""
    import graphc

    suite = load_op_graphs()
    results = []
    for name, dtype, conv in op_cases(names):
        case = "-".join((name, dtype) if conv == "auto" else (name, dtype, conv))
        t0 = time.perf_counter()
        row = {"case": case, "passed": False, "max_abs_err": None, "error": None}
        try:
            outputs, inputs, feeds, labels = suite.GRAPHS[name](dtype)
            exe = graphc.compile(outputs, inputs=inputs, backend="cuda", cache_dir=cache_dir,
                                 optimize=0 if dtype == "float64" else 2, conv=conv)
            ref = graphc.compile(outputs, inputs=inputs)
            got, want = exe(*feeds), ref(*feeds)
            row["max_abs_err"] = max_abs_error(got, want)
            suite.assert_same(got, want, labels, dtype)
            row["passed"] = True
        except Exception as err:  # a failing case is a result to report, not the end of the check
            row["error"] = f"{type(err).__name__}: {err}"[:2000]
            row["traceback"] = traceback.format_exc()[-4000:]
        row["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"  ops {case:<28} {'pass' if row['passed'] else 'FAIL'}  max |err| {fmt(row['max_abs_err'])}  "
              f"{row['seconds']:.1f} s", flush=True)
        results.append(row)
    return results


def max_abs_error(got, want) -> float:
    """The largest absolute difference over every float output (0 when they are all integers)."""
    worst = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape == w.shape and g.size and g.dtype.kind == "f":
            worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))))
    return worst


# -- 2. training ----------------------------------------------------------------------------------------------

def mlp(layers: tuple[int, ...], seed: int = 0):
    """The course's MLP (ReLU hidden layers, He-normal init, linear output) of the given widths."""
    from graphc.nn import Dense, Sequential

    hidden = [Dense(n, "relu", init="he_normal") for n in layers[1:-1]]
    return Sequential(hidden + [Dense(layers[-1])], input_shape=(layers[0],), seed=seed)


def load_data(cfg: dict, tiny: bool, idx: str | None):
    """(x, y) to train on and (x, y) to test on: MNIST, or ``cfg['rows']`` random rows (tiny)."""
    if tiny:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((cfg["rows"], cfg["layers"][0])).astype(np.float32)
        y = (x[:, :cfg["layers"][-1]].argmax(1)).astype(np.int64)  # learnable: the largest of the first columns
        return (x, y), (x, y), f"{cfg['rows']} random rows"
    from graphc import datasets

    try:
        data = datasets.mnist(path=idx)
    except Exception as err:
        raise SystemExit(f"cuda_check: MNIST is not available here ({type(err).__name__}: {err}); pass --idx DIR "
                         f"with the four IDX files (the GPU machine may have no network)") from err
    return data.train, data.test, "MNIST"


def train(cfg: dict, train_data, test_data, backend: str = "cuda") -> dict:
    """fit(..., backend="cuda") as examples/mnist_mlp.py runs it, then the test accuracy on the device
    (``backend``: the same on another backend, for comparison)."""
    import graphc
    from graphc import optim

    model = mlp(cfg["layers"])
    t0 = time.perf_counter()
    history = graphc.fit(model, train_data, epochs=cfg["epochs"], batch_size=cfg["batch"],
                         optimizer=optim.Momentum(LR, MOMENTUM),
                         schedule=graphc.train.schedules.cosine(LR, T=cfg["epochs"]),
                         backend=backend, seed=0, verbose=False)
    seconds = time.perf_counter() - t0
    test_loss, test_acc = graphc.train.evaluate(model, test_data, backend=backend)
    return {"network": "-".join(map(str, cfg["layers"])), "rows": len(train_data[0]), "epochs": cfg["epochs"],
            "batch_size": cfg["batch"], "loss": [float(v) for v in history["loss"]],
            "acc": [float(v) for v in history["acc"]], "seconds_per_epoch": [float(s) for s in history["seconds"]],
            "fit_seconds": round(seconds, 2), "test_loss": float(test_loss), "test_accuracy": float(test_acc)}


# -- 3. timing ------------------------------------------------------------------------------------------------

def median_block_ms(run_step, blocks: int, block_steps: int) -> float:
    """The median over ``blocks`` of each block's mean milliseconds per call (each call synchronizes)."""
    means = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(block_steps):
            run_step()
        means.append((time.perf_counter() - t0) * 1e3 / block_steps)
    return statistics.median(means)


def graphc_timing(cfg: dict, x: np.ndarray, y: np.ndarray, weights: dict) -> dict:
    """graphc's step (host batch in, loss and correct count out) and epoch (Trainer.train_epoch on the device)."""
    import graphc
    from graphc import optim
    from graphc.train.loop import Trainer, build_train_step

    batch = cfg["batch"]
    model = mlp(cfg["layers"])
    model.load_values(weights)
    t0 = time.perf_counter()
    exe = graphc.compile(build_train_step(model, batch, optim.Momentum(LR, MOMENTUM)), backend="cuda")
    xb, yb, lr = x[:batch], y[:batch], np.float32(LR)
    exe(xb, yb, lr)  # the kernels compile at their first launch
    compile_s = time.perf_counter() - t0
    step_ms = median_block_ms(lambda: exe(xb, yb, lr), cfg["blocks"], cfg["block_steps"])

    trainer = Trainer(mlp(cfg["layers"]), optim.Momentum(LR, MOMENTUM), backend="cuda")
    trainer.model.load_values(weights)
    rng = np.random.default_rng(0)

    def epoch() -> None:
        trainer.train_epoch(x, y, batch, lambda step: LR, rng, seed=0, last_batch="wrap")

    epoch()  # compile and warm up
    epoch_s = statistics.median(timed(epoch) for _ in range(cfg["epoch_repeats"]))
    return {"step_ms": step_ms, "epoch_s": epoch_s, "compile_s": round(compile_s, 2)}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def torch_unavailable() -> str | None:
    """Why PyTorch CUDA cannot be timed here, or None."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed: no PyTorch timings"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False): no PyTorch timings"
    return None


def torch_timing(cfg: dict, x: np.ndarray, y: np.ndarray, weights: dict) -> dict:
    """The same network, weights, optimizer and batches in PyTorch on the GPU, measured as graphc is."""
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    layers = []
    n = len(cfg["layers"]) - 1
    for k in range(n):
        linear = torch.nn.Linear(cfg["layers"][k], cfg["layers"][k + 1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weights[f"dense_{k + 1}.W"].T.copy()))
            linear.bias.copy_(torch.from_numpy(weights[f"dense_{k + 1}.b"]))
        layers += [linear] + ([torch.nn.ReLU()] if k < n - 1 else [])
    net = torch.nn.Sequential(*layers).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    batch = cfg["batch"]

    def step(xb, yb):
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), (logits.argmax(1) == yb).sum()

    xb_host, yb_host = torch.from_numpy(x[:batch]), torch.from_numpy(y[:batch])

    def host_step():
        loss, correct = step(xb_host.to(dev), yb_host.to(dev))
        return loss.item(), correct.item()  # read back, as graphc's step returns them

    for _ in range(3):
        host_step()
    step_ms = median_block_ms(host_step, cfg["blocks"], cfg["block_steps"])

    xd, yd = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    rng = np.random.default_rng(0)
    steps = math.ceil(len(x) / batch)

    def epoch():
        perm = torch.from_numpy(np.resize(rng.permutation(len(x)), steps * batch)).to(dev)  # "wrap", as graphc's
        total = torch.zeros((), device=dev)
        for s in range(steps):
            idx = perm[s * batch:(s + 1) * batch]
            loss, _ = step(xd[idx], yd[idx])
            total += loss
        return total.item()

    epoch()
    epoch_s = statistics.median(timed(epoch) for _ in range(cfg["epoch_repeats"]))
    return {"step_ms": step_ms, "epoch_s": epoch_s, "torch": torch.__version__}


def timing(cfg: dict, x: np.ndarray, y: np.ndarray) -> dict:
    weights = mlp(cfg["layers"]).named_values()  # one set of initial weights for both
    out = {"batch_size": cfg["batch"], "steps_per_epoch": math.ceil(len(x) / cfg["batch"]),
           "graphc": graphc_timing(cfg, x, y, weights), "torch": None, "ratio": None}
    out["torch_note"] = torch_unavailable()
    if out["torch_note"] is None:
        out["torch"] = torch_timing(cfg, x, y, weights)
        out["ratio"] = {k: out["graphc"][k] / out["torch"][k] for k in ("step_ms", "epoch_s")}
    return out


# -- the report -----------------------------------------------------------------------------------------------

def fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def device_description() -> dict:
    from importlib.metadata import version

    from graphc.backends.numba_cuda import simulated

    info = {"simulator": simulated(), "numba_cuda": version("numba-cuda"), "python": platform.python_version()}
    if simulated():
        info["device"] = "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    else:
        from numba import cuda

        dev = cuda.get_current_device()
        info["device"] = f"{dev.name.decode() if isinstance(dev.name, bytes) else dev.name} (cc {dev.compute_capability})"
    return info


def report(result: dict) -> str:
    ops = result["ops"]
    lines = [f"cuda_check ({result['mode']}) on {result['env']['device']}", "",
             f"op suite: {ops['passed']}/{ops['total']} cases pass against the reference backend" if ops["total"]
             else "op suite: not run (--parts)"]
    lines += [f"  FAIL {c['case']}: {c['error']}" for c in ops["cases"] if not c["passed"]]
    if "training" in result:
        lines += _training_lines(result["training"])
    if "timing" in result:
        lines += _timing_lines(result["timing"])
    if result["env"]["simulator"]:
        lines.append("  (under the simulator these times measure Python threads, not a GPU)")
    return "\n".join(lines)


def _training_lines(t: dict) -> list[str]:
    lines = ["", f"training {t['network']} on {t['data']} ({t['rows']} rows, batch {t['batch_size']}), backend='cuda':"]
    for k, (loss, acc, s) in enumerate(zip(t["loss"], t["acc"], t["seconds_per_epoch"]), 1):
        lines.append(f"  epoch {k}: loss {loss:.4f}  acc {acc * 100:.2f}%  {s:.2f} s")
    lines.append(f"  test accuracy {t['test_accuracy'] * 100:.2f}%  (test loss {t['test_loss']:.4f})")
    return lines


def _timing_lines(tm: dict) -> list[str]:
    g, p, r = tm["graphc"], tm["torch"] or {}, tm["ratio"] or {}
    lines = ["", f"timing (batch {tm['batch_size']}, {tm['steps_per_epoch']} steps an epoch; medians):",
             f"  {'':<14} {'graphc cuda':>12} {'PyTorch cuda':>13} {'ratio':>7}",
             f"  {'step (ms)':<14} {g['step_ms']:>12.3f} {fmt(p.get('step_ms'), '.3f'):>13} {fmt(r.get('step_ms'), '.2f'):>7}",
             f"  {'epoch (s)':<14} {g['epoch_s']:>12.3f} {fmt(p.get('epoch_s'), '.3f'):>13} {fmt(r.get('epoch_s'), '.2f'):>7}"]
    if tm["torch_note"]:
        lines.append(f"  {tm['torch_note']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes: the simulator's check of this script")
    p.add_argument("--idx", default=None, help="directory with the MNIST IDX files (default: graphc's cached copy)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 3; tiny: 1)")
    p.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the results (default: %(default)s)")
    p.add_argument("--cache-dir", default=None, help="graphc's compile cache for the op suite (default: temporary)")
    p.add_argument("--parts", default="ops,train,timing",
                   help="which parts to run, comma-separated (default: %(default)s): a lease's device time is short, "
                        "so the parts can run as separate, separately time-limited commands")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= {"ops", "train", "timing"}:
        p.error(f"--parts takes ops, train and timing, not {args.parts!r}")
    cfg = dict(TINY if args.tiny else FULL)
    if args.epochs is not None:
        cfg["epochs"] = args.epochs

    from graphc.backends.numba_cuda import CudaUnavailable, require_device

    try:
        require_device()
    except CudaUnavailable as err:
        print(f"cuda_check: {err}", file=sys.stderr)
        return 2
    result = {"mode": "tiny" if args.tiny else "full", "env": device_description(), "date": time.strftime("%Y-%m-%d")}
    print(f"cuda_check ({result['mode']}) on {result['env']['device']}", flush=True)
    cases = []
    if "ops" in parts:
        with tempfile.TemporaryDirectory(prefix="graphc-cuda-check-") as tmp:
            cases = run_op_suite(cfg["op_graphs"], args.cache_dir or tmp)
    result["ops"] = {"cases": cases, "passed": sum(c["passed"] for c in cases), "total": len(cases)}
    if parts & {"train", "timing"}:
        train_data, test_data, what = load_data(cfg, args.tiny, args.idx)
        if "train" in parts:
            result["training"] = {"data": what, **train(cfg, train_data, test_data)}
        if "timing" in parts:
            result["timing"] = timing(cfg, *train_data)
    print()
    print(report(result))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0 if result["ops"]["passed"] == result["ops"]["total"] else 1


if __name__ == "__main__":
    sys.exit(main())

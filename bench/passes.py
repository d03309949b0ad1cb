"""Benchmark of the optimization passes on two training steps (forward + backward + SGD update).

    python bench/passes.py [--level 3] [--json bench/passes.json] [--repeat 3] [--models mlp lenet]

For the 784-512-256-10 ReLU MLP with softmax cross-entropy (batch 128) and LeNet-5 (batch 64),
prints the nodes and kernels before/after each pass, the time of each pass, and the intermediate
memory: every intermediate in its own buffer (the unoptimized graph) versus the buffer plan of
the optimized graph. The first optimize call in a process is "cold" (SymPy caches empty); the
table shows it, and the summary also gives the fastest of ``--repeat`` further calls.
A kernel is a node that is not an input, a parameter, a constant or a reshape.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphc  # noqa: E402

LR = 0.01


def _sgd(graph: graphc.Graph, loss: graphc.Tensor, params: list[graphc.Tensor], lr: float = LR) -> None:
    """p <- p - lr * dloss/dp for each parameter, as in-place graph updates."""
    grads = graphc.grad(loss, params)
    for p, g in zip(params, grads):
        graph.update(p, p - g * lr)


def mlp_step(batch: int = 128, layers: tuple[int, ...] = (784, 512, 256, 10), seed: int = 0) -> graphc.Graph:
    """One SGD training step of the ReLU MLP with softmax cross-entropy; output: the loss."""
    rng = np.random.default_rng(seed)
    with graphc.Graph("mlp_step") as g:
        h = graphc.input("x", (batch, layers[0]))
        y = graphc.input("y", (batch,), "int64")
        params = []
        for k, (fan_in, fan_out) in enumerate(zip(layers[:-1], layers[1:]), start=1):
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            W = graphc.param(f"W{k}", rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32))
            b = graphc.param(f"b{k}", np.zeros(fan_out, np.float32))
            params += [W, b]
            z = graphc.dense(h, W, b)
            h = graphc.relu(z) if k < len(layers) - 1 else z
        loss = g.output(graphc.softmax_cross_entropy(h, y))
        _sgd(g, loss, params)
    return g


def lenet_step(batch: int = 64, seed: int = 0) -> graphc.Graph:
    """One SGD training step of LeNet-5 (1x28x28 -> conv 6@5x5 pad 2 -> relu -> maxpool 2 -> conv 16@5x5
    -> relu -> maxpool 2 -> dense 400-120-84-10, ReLU between dense layers); output: the loss."""
    rng = np.random.default_rng(seed)

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    with graphc.Graph("lenet_step") as g:
        x = graphc.input("x", (batch, 1, 28, 28))
        y = graphc.input("y", (batch,), "int64")
        params = []
        h = x
        for k, (cin, cout, pad) in enumerate([(1, 6, 2), (6, 16, 0)], start=1):
            w = graphc.param(f"conv{k}.w", he((cout, cin, 5, 5), cin * 25))
            b = graphc.param(f"conv{k}.b", np.zeros(cout, np.float32))
            params += [w, b]
            h = graphc.conv2d(h, w, padding=pad) + graphc.reshape(b, (1, cout, 1, 1))
            h = graphc.max_pool2d(graphc.relu(h), 2)
        h = graphc.reshape(h, (batch, 400))
        for k, (fan_in, fan_out) in enumerate([(400, 120), (120, 84), (84, 10)], start=1):
            W = graphc.param(f"fc{k}.W", he((fan_in, fan_out), fan_in))
            b = graphc.param(f"fc{k}.b", np.zeros(fan_out, np.float32))
            params += [W, b]
            h = graphc.dense(h, W, b)
            if k < 3:
                h = graphc.relu(h)
        loss = g.output(graphc.softmax_cross_entropy(h, y))
        _sgd(g, loss, params)
    return g


def bench(name: str, build, level: int, repeat: int) -> dict:
    graph = build()
    result = graphc.optimize(graph, level=level)
    warm = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        graphc.optimize(graph, level=level)
        warm.append(time.perf_counter() - t0)
    plan = result.buffer_plan
    print(f"== {name}: level {level}")
    print(result.table(), end="")
    print(f"optimize: {result.seconds * 1e3:.1f} ms cold (first call in the process), "
          f"{min(warm) * 1e3:.1f} ms warm (fastest of {repeat})" if warm else "")
    print(f"kernels {result.passes[0].kernels_before} -> {result.passes[-1].kernels_after}; "
          f"intermediate bytes {result.input_intermediate_bytes:,} -> {plan.arena_bytes:,} "
          f"({plan.arena_bytes / max(result.input_intermediate_bytes, 1):.1%}); "
          f"{len(plan.slot_bytes)} slots, {len(plan.inplace_updates)} of {len(graph.updates)} updates in place\n")
    data = result.to_json()
    data.update(name=name, cold_seconds=result.seconds, warm_seconds=min(warm) if warm else None)
    return data


MODELS = {"mlp": ("mlp_784_512_256_10_step_b128", mlp_step), "lenet": ("lenet5_step_b64", lenet_step)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=int, default=3, choices=sorted(graphc.passes.LEVELS))
    parser.add_argument("--repeat", type=int, default=3, help="warm optimize calls timed after the first")
    parser.add_argument("--json", default=None, help="also write the statistics to this JSON file")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["mlp", "lenet"],
                        help="which training steps, in this order (the first one's optimize call is the cold one)")
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()}, numpy {np.__version__}, sympy {__import__('sympy').__version__}, "
          f"{platform.machine()}\n")
    results = [bench(MODELS[m][0], MODELS[m][1], args.level, args.repeat) for m in args.models]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

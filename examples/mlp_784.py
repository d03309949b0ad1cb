"""The course's 784-512-256-10 network: build it, print its graph and parameter count, evaluate it.

The network by hand, from graphc's DSL ops, before any training:

    python examples/mlp_784.py

To train it on MNIST (graphc.nn layers and graphc.fit, about 98.3% test accuracy), run
``python examples/mnist_mlp.py``.

The network is the course's MNIST classifier: 784 inputs (28x28 pixels), two ReLU hidden layers of
512 and 256 units, and a softmax over 10 classes. Weights start Glorot-uniform (seeded), biases at 0.
It is evaluated with the NumPy reference backend on a random batch (no data set is downloaded), so
the predicted classes mean nothing yet: the point is that the graph is built, checked and runs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import graphc

LAYERS = (784, 512, 256, 10)


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot/Xavier uniform initialisation: U(-l, l) with l = sqrt(6 / (fan_in + fan_out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


def build_mlp(batch: int, layers: tuple[int, ...] = LAYERS, seed: int = 0) -> tuple[graphc.Graph, graphc.Tensor]:
    """The MLP as a graphc graph: ReLU hidden layers, softmax output. Returns (graph, probabilities)."""
    rng = np.random.default_rng(seed)
    with graphc.Graph("mlp_784") as graph:
        h = graphc.input("x", (batch, layers[0]))
        for k, (fan_in, fan_out) in enumerate(zip(layers[:-1], layers[1:]), start=1):
            W = graphc.param(f"W{k}", glorot_uniform(rng, fan_in, fan_out))
            b = graphc.param(f"b{k}", np.zeros(fan_out, np.float32))
            z = graphc.dense(h, W, b)
            h = graphc.relu(z) if k < len(layers) - 1 else z
        probs = graph.output(graphc.softmax(h, axis=-1))
    return graph, probs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="rows in the random evaluation batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    graph, probs = build_mlp(args.batch, seed=args.seed)
    print(graph.text().rstrip())
    print()

    n_params = graph.parameter_count()
    n_weights = sum(int(np.prod(p.shape)) for p in graph.params if len(p.shape) == 2)
    print(f"layers:     {'-'.join(map(str, LAYERS))}")
    print(f"parameters: {n_params:,} ({n_params})  = {n_weights:,} weights + {n_params - n_weights:,} biases")

    rng = np.random.default_rng(args.seed + 1)
    x = rng.random((args.batch, LAYERS[0]), dtype=np.float32)  # stand-in for pixel intensities in [0, 1)
    start = time.perf_counter()
    p = graphc.evaluate(probs, {"x": x})
    elapsed = time.perf_counter() - start

    row_sums = p.sum(axis=1)
    print(f"evaluated on a random batch with the reference backend in {elapsed * 1e3:.1f} ms")
    print(f"output probabilities: shape {p.shape}, dtype {p.dtype}")
    print(f"rows sum to 1:        {bool(np.allclose(row_sums, 1.0, atol=1e-5))} "
          f"(max |sum - 1| = {np.abs(row_sums - 1).max():.1e})")
    print(f"predicted classes:    {p.argmax(axis=1).tolist()}")
    print("(untrained weights on random inputs: python examples/mnist_mlp.py trains this network on MNIST)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

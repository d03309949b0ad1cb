"""Runs under ``mpiexec -n N`` (or alone, as the single-process oracle) for tests/test_distributed.py.

    python tests/distributed_worker.py SCENARIO OUTDIR [ARGS...]

Each scenario trains small models with ``graphc.fit`` and writes what the test compares to
``OUTDIR/<name>.rank<r>.npz`` (one file per rank). Not collected by pytest (no test_ prefix).
"""
from __future__ import annotations

import os
import sys

import numpy as np

import graphc
from graphc import optim
from graphc.nn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, Sequential

GLOBAL_BATCH = 128
STEPS = 20


def rank() -> int:
    return int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))


def data(shape: tuple[int, ...], classes: int, rows: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows,) + shape).astype(dtype)
    return x, rng.integers(0, classes, rows).astype(np.int64)


def mlp(dtype) -> Sequential:
    return Sequential([Dense(16, "tanh"), Dense(4)], input_shape=(12,), seed=3, dtype=dtype)


def cnn(dtype) -> Sequential:
    return Sequential([Conv2D(3, 3, activation="relu"), MaxPool2D(2), Flatten(), Dropout(0.3), Dense(4)],
                      input_shape=(1, 6, 6), seed=3, dtype=dtype)


OPTIMIZERS = {"momentum": lambda: optim.Momentum(0.05, 0.9), "adam": lambda: optim.Adam(0.01)}


def equivalence(outdir: str) -> None:
    """20 steps of 128 rows (on every rank: its share) for each model, optimizer and dtype."""
    for model_name, build, shape in (("mlp", mlp, (12,)), ("cnn", cnn, (1, 6, 6))):
        for dtype in ("float64", "float32"):
            x, y = data(shape, 4, GLOBAL_BATCH * 10, dtype)
            for opt_name, make in OPTIMIZERS.items():
                model = build(dtype)
                history = graphc.fit(model, (x, y), epochs=2, batch_size=GLOBAL_BATCH, optimizer=make(),
                                     verbose=False, seed=5)
                name = f"{model_name}-{opt_name}-{dtype}"
                np.savez(os.path.join(outdir, f"{name}.rank{rank()}.npz"), loss=np.array(history["loss"]),
                         **model.named_values())


if __name__ == "__main__":
    scenario, outdir, *rest = sys.argv[1:]
    {"equivalence": equivalence}[scenario](outdir, *rest)

"""Runs under ``mpiexec -n N`` (or alone, as the single-process oracle) for tests/test_distributed.py.

    python tests/distributed_worker.py SCENARIO OUTDIR

Each scenario writes what the test compares to ``OUTDIR/<name>.rank<r>.npz`` (one file per rank).
Not collected by pytest (no test_ prefix).
"""
from __future__ import annotations

import os
import sys

import numpy as np

import graphc
from graphc import optim
from graphc.nn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, Sequential

GLOBAL_BATCH = 128
EPOCHS, STEPS_PER_EPOCH = 2, 10  # 20 steps


def rank() -> int:
    from graphc.ops.collective import launcher_world_size

    return graphc.train.distributed.world_of(None).rank if launcher_world_size() > 1 else 0


def save(outdir: str, name: str, **arrays) -> None:
    np.savez(os.path.join(outdir, f"{name}.rank{rank()}.npz"), **arrays)


def data(shape: tuple[int, ...], classes: int, rows: int, dtype, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows,) + shape).astype(dtype)
    return x, rng.integers(0, classes, rows).astype(np.int64)


def mlp(dtype) -> Sequential:
    return Sequential([Dense(16, "tanh"), Dense(4)], input_shape=(12,), seed=3, dtype=dtype)


def cnn(dtype) -> Sequential:
    return Sequential([Conv2D(3, 3, activation="relu"), MaxPool2D(2), Flatten(), Dropout(0.3), Dense(4)],
                      input_shape=(1, 6, 6), seed=3, dtype=dtype)


MODELS = {"mlp": (mlp, (12,)), "cnn": (cnn, (1, 6, 6))}
OPTIMIZERS = {"momentum": lambda: optim.Momentum(0.05, 0.9), "adam": lambda: optim.Adam(0.01)}


def equivalence(outdir: str, models=tuple(MODELS), dtypes=("float64", "float32"), optimizers=tuple(OPTIMIZERS)) -> None:
    """20 steps of 128-row minibatches (each rank: its share) for each model, optimizer and dtype."""
    for model_name in models:
        build, shape = MODELS[model_name]
        for dtype in dtypes:
            x, y = data(shape, 4, GLOBAL_BATCH * STEPS_PER_EPOCH, dtype)
            for opt_name in optimizers:
                make = OPTIMIZERS[opt_name]
                model = build(dtype)
                history = graphc.fit(model, (x, y), epochs=EPOCHS, batch_size=GLOBAL_BATCH, optimizer=make(),
                                     verbose=False, seed=5)
                save(outdir, f"{model_name}-{opt_name}-{dtype}", loss=np.array(history["loss"]),
                     **model.named_values())


def small(outdir: str) -> None:
    """One case of :func:`equivalence`: the MLP, float64, momentum (the test across network namespaces)."""
    equivalence(outdir, ("mlp",), ("float64",), ("momentum",))


def allreduce_inputs(r: int, dtype) -> np.ndarray:
    """Rank r's operand of the allreduce checks (the test computes the expected sums from it)."""
    return (np.arange(12.0).reshape(3, 4) * (r + 1) + r / 3).astype(dtype)


def allreduce_results(dtype: str) -> dict[str, np.ndarray]:
    """allreduce(x, "sum") and allreduce(2 x, "mean") on the reference, interpreter and cpu backends."""
    from graphc.backends.lowering import lower
    from graphc.backends.lowering.interpret import interpret
    from graphc.ops.collective import allreduce

    with graphc.Graph(f"allreduce_{dtype}") as g:
        x = graphc.input("x", (3, 4), dtype)
        outs = [allreduce(x, "sum"), allreduce(x * 2.0, "mean")]
        g.output(*outs)
    value = allreduce_inputs(rank(), dtype)
    results = {"interpreter": interpret(lower(g), value)[0]}
    for backend in ("reference", "cpu"):
        results[backend] = graphc.compile(outs, backend=backend)(value)
    return {f"{dtype}-{backend}-{k}": np.asarray(out) for backend, outs in results.items()
            for k, out in zip(("sum", "mean"), outs)}


def misc(outdir: str) -> None:
    """The allreduce op on every backend; a fit that writes a checkpoint and validates; a resumed fit."""
    from graphc.train import loop

    results = {**allreduce_results("float64"), **allreduce_results("float32")}
    saves, verbose = [], []
    real_save, real_progress = loop.save_checkpoint, loop._progress
    loop.save_checkpoint = lambda *a, **k: (saves.append(a[0]), real_save(*a, **k))[1]
    loop._progress = lambda total, on: (verbose.append(on), real_progress(total, on))[1]
    x, y = data((12,), 4, 320, "float64")  # 2 minibatches of 128, then one of 64 (32 per rank)
    val = data((12,), 4, 101, "float64", seed=8)  # sharded 51 + 50
    model = mlp("float64")
    history = graphc.fit(model, (x, y), epochs=1, batch_size=GLOBAL_BATCH, optimizer=optim.Adam(0.01), seed=5,
                         validation_data=val, checkpoint=os.path.join(outdir, "ckpt2.npz"), verbose=True)
    resumed = mlp("float64")
    graphc.fit(resumed, (x, y), epochs=2, batch_size=GLOBAL_BATCH, optimizer=optim.Adam(0.01), seed=5,
               checkpoint=os.path.join(outdir, "ckpt1.npz"), resume=True, verbose=False)
    save(outdir, "misc", saves=np.array(len(saves)), verbose=np.array(verbose), val_loss=np.array(history["val_loss"]),
         loss=np.array(history["loss"]), **results, **{"epoch1." + k: v for k, v in model.named_values().items()},
         **{"resumed." + k: v for k, v in resumed.named_values().items()})


def abort(outdir: str) -> None:
    """Rank 1 gets labels out of range and raises; rank 0 would wait for it in the first allreduce."""
    x, y = data((12,), 4, 256, "float64")
    if rank() == 1:
        y = y + 10
    graphc.fit(mlp("float64"), (x, y), epochs=1, batch_size=GLOBAL_BATCH, verbose=False)


if __name__ == "__main__":
    scenario, outdir = sys.argv[1:3]
    scenarios = {"equivalence": equivalence, "small": small, "misc": misc, "abort": abort}
    scenarios.update({f"equivalence-{m}": (lambda out, m=m: equivalence(out, (m,))) for m in MODELS})
    scenarios[scenario](outdir)

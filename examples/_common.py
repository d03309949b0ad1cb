"""Shared by the examples: argument parsing, the CUDA simulator's cut-down run, and a results line."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

#: Where MPI launchers put this process's rank (MPICH's and Intel MPI's Hydra, Open MPI, PMIx).
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def quiet_other_ranks() -> None:
    """Under ``mpiexec -n N`` (data-parallel fit), only rank 0 prints: the other ranks' stdout is discarded."""
    rank = next((os.environ[v] for v in RANK_VARIABLES if os.environ.get(v, "").isdigit()), "0")
    if rank != "0":
        sys.stdout = open(os.devnull, "w")


def parser(description: str, epochs: int, batch_size: int = 128) -> argparse.ArgumentParser:
    quiet_other_ranks()
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--backend", default=None,
                   help="cpu (Numba, the default when available), cuda (Numba CUDA: a GPU, or the simulator under "
                        "NUMBA_ENABLE_CUDASIM=1) or reference (NumPy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    return p


def simulated(args) -> bool:
    """Whether this run uses the cuda backend in Numba's simulator (every CUDA thread a Python thread)."""
    return args.backend == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def limited(data, n: int | None):
    """``data`` (datasets.Splits) with only the first ``n`` images of each split."""
    if n is None:
        return data
    cut = {k: (v[0][:n], v[1][:n]) if v is not None else None for k, v in
           (("train", data.train), ("val", data.val), ("test", data.test))}
    return dataclasses.replace(data, **cut)


def report(name: str, history, test_loss: float, test_acc: float, started: float) -> None:
    per_epoch = sum(history["seconds"]) / len(history["seconds"])
    print(f"\n{name}: test accuracy {test_acc * 100:.2f}%  (test loss {test_loss:.4f})")
    print(f"  {len(history.epochs)} epochs, {per_epoch:.2f} s per epoch, {time.perf_counter() - started:.1f} s in all")

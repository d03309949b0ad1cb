"""Collective ops: values combined across the processes (MPI ranks) of a data-parallel job.

``allreduce(x, reduce="mean" | "sum")`` is, on every rank, the element-wise sum (or the mean: the sum
divided by the world size) of the same-shaped ``x`` of every rank; on one process it is ``x``. Data-
parallel training (:mod:`graphc.train.distributed`) puts one on every gradient, before the optimizer
update, so that every rank updates identical parameters.

Its derivative: the objective of a data-parallel step is the sum of the ranks' objectives, and
``y = reduce_r x_r`` is seen by every rank, so ``d(sum_s L_s)/d x_r = reduce_s g_s``: the VJP of an
allreduce is the allreduce (same ``reduce``) of the cotangent.

The world is MPI's ``COMM_WORLD``. Whether there is more than one process is read from the launcher's
environment first (``PMI_SIZE`` from MPICH's ``mpiexec``, ``OMPI_COMM_WORLD_SIZE`` from Open MPI's),
so a process started without ``mpiexec`` never imports mpi4py (an extra: ``pip install 'graphc[mpi]'``);
only under a launcher saying more than one process is mpi4py imported (which initializes MPI).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..ir import Attrs, DTypeError, GraphcError, Node, ShapeError
from . import checks
from .registry import OpDef, register
from .tensor import Tensor, apply

REDUCTIONS = ("mean", "sum")

#: Environment variables in which MPI launchers give the number of processes of the whole job (MPICH and
#: Intel MPI's Hydra, Slurm's srun with PMI; Open MPI; PMIx-based launchers).
WORLD_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


class CollectiveError(GraphcError, RuntimeError):
    """A collective op that cannot run: mpi4py missing under a multi-process launcher."""


def launcher_world_size() -> int:
    """The number of processes the MPI launcher started, from its environment (1 without a launcher);
    mpi4py is not imported."""
    for var in WORLD_SIZE_VARIABLES:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def mpi_world():
    """mpi4py's ``COMM_WORLD`` (imports mpi4py, which initializes MPI); a CollectiveError without it."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise CollectiveError("graphc: running under an MPI launcher needs mpi4py: pip install 'graphc[mpi]' "
                              "(mpi4py, mpich, numba-mpi)") from None
    return MPI.COMM_WORLD


def world_size() -> int:
    """The number of processes of this job: 1 without an MPI launcher (mpi4py not imported), else
    ``COMM_WORLD``'s size."""
    return 1 if launcher_world_size() == 1 else mpi_world().Get_size()


def allreduce_array(value: np.ndarray, reduce: str) -> np.ndarray:
    """The element-wise ``reduce`` ("sum" or "mean") of ``value`` over every process (a new array);
    ``value`` itself on one process. The mean is the sum divided by the world size, as compiled code does."""
    value = np.array(value, order="C")  # not ascontiguousarray, which makes a 0-d value 1-d
    size = world_size()
    if size == 1:
        return value
    from mpi4py import MPI

    total = np.empty_like(value)
    mpi_world().Allreduce(value, total, op=MPI.SUM)
    if reduce == "mean":
        total /= value.dtype.type(size)
    return total


def _rule(inputs: Sequence[Node], attrs: Attrs):
    (x,) = inputs
    if attrs["reduce"] not in REDUCTIONS:
        raise ShapeError(f"reduce must be one of {list(REDUCTIONS)}, got {attrs['reduce']!r}")
    if not x.dtype.is_float:
        raise DTypeError(f"needs a float operand (MPI sums floats here), got {x.type_str}")
    return x.shape, x.dtype


def _reference(arrays, attrs):
    return allreduce_array(arrays[0], attrs["reduce"])


def _vjp(node, g, inputs):
    return [allreduce(g, node.attrs["reduce"])]


register(OpDef("allreduce", "collective", "the element-wise sum (reduce='sum') or mean (reduce='mean') of x over "
               "every MPI rank; x itself on one process", _rule, _reference, _vjp,
               notes="VJP: the allreduce of the cotangent (the job's objective is the sum of the ranks'); "
                     "never constant-folded", collective=True))


def allreduce(x: Any, reduce: str = "mean") -> Tensor:
    """The element-wise ``reduce`` ("mean" or "sum") of ``x`` over every MPI rank (``x`` on one process)."""
    with checks.located("allreduce", [x]):
        if not isinstance(reduce, str) or reduce not in REDUCTIONS:
            raise ShapeError(f"reduce must be one of {list(REDUCTIONS)}, got {checks.show(reduce)}")
    return apply("allreduce", [x], {"reduce": reduce})

"""The collective library calls (``ir.LIBRARY``'s ``allreduce_sum`` and ``allreduce_mean``) for the numba_cpu
renderer: MPI_Allreduce through numba-mpi, called inside the compiled step, so that a data-parallel
epoch stays one native call per rank.

A generated module imports this module only when its program has an allreduce: numba-mpi (an extra,
``pip install 'graphc[mpi]'``) is never imported otherwise. Numba cannot cache code that calls numba-mpi
(it holds MPI's handles as ctypes pointers, which differ from one process to the next), so these kernels,
and a step that calls them, are compiled in every process (``cache=False``: no warning per function).
"""
from __future__ import annotations

import numba_mpi
from numba import njit

_COLLECTIVE = dict(cache=False, error_model="numpy", nogil=True)


@njit(**_COLLECTIVE)
def allreduce_sum(x, xo, y, yo, size):
    """y[yo:yo+size] = the sum over every rank of x[xo:xo+size] (y does not overlap x)."""
    if size == 0:
        return
    status = numba_mpi.allreduce(x[xo:xo + size], y[yo:yo + size], numba_mpi.Operator.SUM)
    if status != 0:  # MPI's default error handler aborts the job first; this is the handler-less case
        raise RuntimeError("graphc: MPI_Allreduce failed")


@njit(**_COLLECTIVE)
def allreduce_mean(x, xo, y, yo, size):
    """y[yo:yo+size] = the sum over every rank of x[xo:xo+size], divided by the number of ranks."""
    allreduce_sum(x, xo, y, yo, size)
    ranks = numba_mpi.size()
    if ranks != 1:
        for i in range(size):
            y[yo + i] = y[yo + i] / ranks

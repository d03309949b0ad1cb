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
import numpy as np
from numba import njit
from numba_mpi import common as _numba_mpi_common


def _register_float32() -> None:
    """numba-mpi 1.3.1 maps ``np.dtype("float")`` (which is float64) to MPI_FLOAT, and then float64 again to
    MPI_DOUBLE: float32 arrays have no MPI datatype ("NotImplementedError: Type: float32"). Its typing reads
    this table, so float32 is added to it, as MPI_FLOAT (a no-op once numba-mpi has it)."""
    from mpi4py import MPI

    _numba_mpi_common._MPI_DTYPES.setdefault(np.dtype("float32"), MPI._addressof(MPI.FLOAT))


_register_float32()

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

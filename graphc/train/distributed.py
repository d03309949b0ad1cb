"""Data-parallel training over MPI: every rank holds a full replica and trains on its share of each minibatch.

``fit(..., distributed="mpi")``, or ``fit`` started under ``mpiexec -n N`` (detected, see :func:`world_of`):

- the global minibatch (``batch_size``) is split across the ranks: rank r takes rows
  ``[r * B/N, (r + 1) * B/N)`` of it, B/N rows each (B must divide; so must the partial last batch with
  ``last_batch="partial"``). Every rank draws the same permutation (same seed), so the shares partition it;
- each rank's compiled step computes its local gradients, then an ``allreduce(mean)`` of each gradient
  (an op in the graph: :mod:`graphc.ops.collective`, through numba-mpi inside the native step), then the
  optimizer update: weight decay, clipping and the moments all see the global gradient, so every rank
  updates identical parameters. A native epoch stays one native call per rank;
- random layers (dropout, augmentation) draw, on rank r, the numbers that rows of rank r's share draw in a
  single-process step (``row_offset``: the draws of the rows before the share are skipped), so that
  N ranks x B/N rows train exactly like 1 process x B rows;
- batch normalization normalizes with each rank's own batch statistics (per-rank, not synchronized: as
  PyTorch's DDP without SyncBatchNorm); its running statistics are averaged over the ranks at every step
  (an allreduce of the new values), so that the replicas stay identical;
- rank 0 alone prints progress and writes checkpoints; every rank returns the same History (the losses
  and metrics are summed over the ranks); evaluation (validation scores) predicts each rank's contiguous
  share of the rows and gathers the predictions, so the scores are those of a single process;
- a checkpoint is read by rank 0 and broadcast, so resuming works with another number of ranks (where the
  global batch divides) and needs the file on rank 0's machine only;
- an exception on any rank prints the error with the rank and calls ``MPI_Abort``: the job ends, no rank
  waits forever in a collective.
"""
from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..ops.collective import launcher_world_size, mpi_world
from ..optim.hyperparams import HyperparameterError, user_line_text

#: fit's ``distributed`` values: None (detect), "mpi", or "none"/False (one process even under mpiexec).
MODES = (None, "mpi", "none", True, False)


@dataclass(frozen=True)
class World:
    """The processes one training job runs on: this process's ``rank`` of ``size``, and MPI's communicator
    (None for a single process that is not distributed)."""

    rank: int = 0
    size: int = 1
    comm: Any = None

    @property
    def distributed(self) -> bool:
        """Whether the steps are built for data parallelism (their gradients all-reduced)."""
        return self.comm is not None

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that prints, writes checkpoints and reads them."""
        return self.rank == 0

    def local_batch(self, batch_size: int, where: str = "fit") -> int:
        """This rank's rows of a global minibatch of ``batch_size`` (which the world size must divide)."""
        if batch_size % self.size:
            raise HyperparameterError(f"{where}: a minibatch of {batch_size} rows does not split across {self.size} "
                                      f"MPI ranks; use a batch size divisible by {self.size}{user_line_text()}")
        return batch_size // self.size

    def share(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of one global minibatch ``rows``."""
        local = self.local_batch(len(rows))
        return rows[self.rank * local:(self.rank + 1) * local]

    def epoch_rows(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """This rank's share of each consecutive global minibatch of ``batch_size`` rows in ``order``
        (whole minibatches), concatenated: the rows its native epoch visits."""
        local = self.local_batch(batch_size)
        steps = len(order) // batch_size
        shares = order[:steps * batch_size].reshape(steps, batch_size)
        return np.ascontiguousarray(shares[:, self.rank * local:(self.rank + 1) * local].reshape(-1))

    def sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``values`` (float64) over the ranks."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        if self.comm is None or self.size == 1:
            return values.copy()
        from mpi4py import MPI

        total = np.empty_like(values)
        self.comm.Allreduce(values, total, op=MPI.SUM)
        return total

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (every rank gets the same answer)."""
        return bool(self.sum(np.array([float(bool(flag))]))[0] > 0)

    def gather_rows(self, compute: Callable[[slice], np.ndarray], n: int) -> np.ndarray:
        """``compute(rows)`` of every rank's contiguous share of ``n`` rows (``np.array_split``'s), joined
        in row order on every rank: evaluation sharded over the ranks."""
        if self.comm is None or self.size == 1:
            return compute(slice(0, n))
        bounds = np.linspace(0, n, self.size + 1).astype(np.int64)
        mine = compute(slice(int(bounds[self.rank]), int(bounds[self.rank + 1])))
        return np.concatenate(self.comm.allgather(mine))

    def from_root(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` run on rank 0 and its result (or the exception it raised) given to every rank."""
        if self.comm is None or self.size == 1:
            return compute()
        result, error = None, None
        if self.is_root:
            try:
                result = compute()
            except Exception as err:  # noqa: BLE001 - raised on every rank below
                error = err
        result, error = self.comm.bcast((result, error), root=0)
        if error is not None:
            raise error
        return result

    def abort(self, err: BaseException) -> None:
        """Print ``err`` with this rank and end the whole job (MPI_Abort): the other ranks may be waiting in a
        collective this rank will never join."""
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        print(f"graphc: rank {self.rank} of {self.size} failed, aborting the MPI job:\n{text}"
              f"graphc: rank {self.rank}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        self.comm.Abort(1)

    @contextmanager
    def aborting(self) -> Iterator[None]:
        """Inside: an exception on this rank aborts the job (see :meth:`abort`); without MPI, it propagates."""
        if self.comm is None or self.size == 1:
            yield
            return
        try:
            yield
        except (Exception, KeyboardInterrupt) as err:
            self.abort(err)
            raise


SINGLE = World()


def world_of(distributed: Any) -> World:
    """The world ``fit(distributed=...)`` trains on.

    ``None`` (the default): data-parallel when the MPI launcher says there is more than one process
    (``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE`` or ``PMIX_SIZE`` > 1: set by ``mpiexec``), else one process
    (mpi4py is not imported). ``"mpi"`` (or True): data-parallel over MPI's COMM_WORLD, whatever its size
    (1 process: the allreduces are identities). ``"none"`` (or False): one process, even under mpiexec
    (each rank then trains a model of its own)."""
    if distributed not in MODES or isinstance(distributed, (int, float)) and not isinstance(distributed, bool):
        raise HyperparameterError(f"fit: distributed={distributed!r} must be None (detect mpiexec), 'mpi' or "
                                  f"'none'{user_line_text()}")
    if distributed in ("none", False) or (distributed is None and launcher_world_size() == 1):
        return SINGLE
    comm = mpi_world()
    return World(comm.Get_rank(), comm.Get_size(), comm)

"""Collective ops: allreduce, a library call (``ir.LIBRARY``'s ``allreduce_sum`` / ``allreduce_mean``).

The call reads the operand's buffer and writes the node's: every target provides it (numba_cpu calls
MPI through numba-mpi inside the compiled step, so an epoch stays one native call per rank).
"""
from __future__ import annotations

from ...ir import Node
from .context import Lowering, rule
from .ir import Call, Ref


@rule("allreduce")
def lower_allreduce(lw: Lowering, node: Node) -> None:
    (x,) = node.inputs
    source = lw.operand(x)  # never a transposed view: only GEMMs read those
    lw.emit([Call(f"allreduce_{node.attrs['reduce']}", (source.ref(), Ref(lw.buffer(node)), node.size))])

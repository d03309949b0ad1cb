"""CudaExecutable: a Program whose parameters, optimizer state and workspace live on the device.

What crosses the bus, and when:
- a call: the inputs go up, the outputs and the 4 status words come back;
- ``run_epoch``: the data set, the permutation and the per-step values (learning rates, keys) go up
  once; each step gathers its minibatch on the device; the per-step outputs come back at the end;
- ``exe.params``: the parameter store comes back only when a parameter is read after a step that
  updates parameters; once the host copy has been handed out (``exe.params[...]``, ``set_params``), it
  goes back up before the next step, so writing into a returned array works as on the cpu. An array
  kept across a step is not refreshed by it: read ``exe.params[name]`` again after a step.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from ..lowering import Program, aligned
from ..native import NativeExecutable, ParamStore, aligned_bytes
from .runtime import THREADS, blocks_for


@cuda.jit
def gather_rows(data, perm, first, n, row, batch, out):
    """out[r * row + c] = data[perm[(first + r) % n] * row + c]: one minibatch, rows in perm order
    (wrapping around it)."""
    t = cuda.grid(1)
    while t < batch * row:
        r = t // row
        out[t] = data[perm[(first + r) % n] * row + t % row]
        t += cuda.gridsize(1)


@cuda.jit
def copy_span(src, start, size, dst, dst_start):
    """dst[dst_start:dst_start + size] = src[start:start + size]."""
    t = cuda.grid(1)
    while t < size:
        dst[dst_start + t] = src[start + t]
        t += cuda.gridsize(1)


class CudaExecutable(NativeExecutable):
    """A graph compiled by the numba_cuda backend: ``exe(*inputs)`` launches its kernels on the device.

    ``.source`` is the generated module (kernels and the host driver ``step``), ``.ptx`` the PTX of
    each kernel, ``.program`` the kernel IR. Not thread-safe: calls share one workspace.
    """

    backend = "cuda"

    def __init__(self, program: Program, module: Any, stats: dict[str, Any], source: str, entry: Any,
                 check_finite: bool = False, strict: bool = False):
        super().__init__(program, module, stats, source, entry, check_finite=check_finite, strict=strict)
        self._host_state = aligned_bytes(aligned(max(program.state_bytes, 1)))
        self.params = ParamStore(*self._param_views(self._host_state), before_read=self._host_params)
        self._state = cuda.to_device(self._host_state)
        self._ws = cuda.device_array(aligned(max(program.workspace_bytes, 1)), np.uint8)
        self._stale = False  # the host copy of the parameter store is older than the device's
        self._handed_out = False  # the host copy may have been written since it was last sent up
        self._d_status = cuda.to_device(np.zeros(4, np.int64))
        self._carry = cuda.device_array(module.CARRY_SLOTS, np.float64)
        self._icarry = cuda.device_array(module.ICARRY_SLOTS, np.int64)
        self._inputs = [cuda.device_array(max(n.size, 1), n.dtype.np) for n in program.inputs]
        self._outputs = [cuda.device_array(max(o.size, 1), np.dtype(o.dtype)) for o in program.outputs]
        arrays = {"status": self._d_status, "carry": self._carry, "icarry": self._icarry}
        for node, d in zip(program.inputs, self._inputs):
            arrays[program.buffers[program.graph.nodes.index(node)].name] = d
        arrays.update({o.name: d for o, d in zip(program.outputs, self._outputs)})
        for var, (store, dtype) in module.VIEWS.items():
            arrays[var] = (self._state if store == "state" else self._ws).view(np.dtype(dtype))
        self._step_args = [arrays[name] for name in module.STEP_ARGS]
        self._ptx: dict[str, str] | None = None

    # -- the parameter store ---------------------------------------------------------------------------
    def _host_params(self) -> None:
        """Before a parameter is handed out: the host copy brought up to date."""
        if self._stale:
            self._state.copy_to_host(self._host_state)
            self._stale = False
        self._handed_out = True

    def _send_params(self) -> None:
        """Before a run: the host copy sent up if the caller may have written into it."""
        if self._handed_out:
            self._state.copy_to_device(self._host_state)
            self._handed_out = False

    def _ran(self) -> None:
        self._stale = self._stale or bool(self.program.updates)

    # -- running -----------------------------------------------------------------------------------------
    def _call_step(self, arrays: list[np.ndarray]) -> tuple:
        self._send_params()
        for d, a in zip(self._inputs, arrays):
            if a.size:
                d.copy_to_device(a.reshape(-1))
        self.module.step(*self._step_args)
        self._ran()
        self._read_status()
        return tuple(d.copy_to_host()[:o.size].reshape(o.shape) for d, o in zip(self._outputs, self.program.outputs))

    def _read_status(self) -> None:
        self._status[:] = self._d_status.copy_to_host()
        if self._status[0]:
            self._d_status.copy_to_device(np.zeros(4, np.int64))

    def _call_epoch(self, arrays: list[np.ndarray], perm: np.ndarray, steps: int) -> tuple:
        self._send_params()
        batch = self.inputs[0].shape[0]
        n = len(perm)
        data = [cuda.to_device(a.reshape(-1)) for a in arrays]  # the data set (and per-step values) go up once
        d_perm = cuda.to_device(perm)
        sizes = [max(o.size, 1) for o in self.program.outputs]
        results = [cuda.device_array(steps * size, np.dtype(o.dtype)) for size, o in zip(sizes, self.program.outputs)]
        for s in range(steps):
            for k, (node, is_batched) in enumerate(zip(self.inputs, self.program.batched)):
                if not node.size:
                    continue
                if is_batched:
                    row = node.size // batch
                    gather_rows[blocks_for(node.size), THREADS](data[k], d_perm, s * batch, n, row, batch, self._inputs[k])
                else:
                    copy_span[blocks_for(node.size), THREADS](data[k], s * node.size, node.size, self._inputs[k], 0)
            self.module.step(*self._step_args)
            for size, out, res in zip(sizes, self._outputs, results):
                copy_span[blocks_for(size), THREADS](out, 0, size, res, s * size)
        self._ran()
        self._read_status()
        if self._status[0]:
            self._status[3] = -1  # the device does not say which step; labels are checked up front anyway
        return tuple(r.copy_to_host().reshape(steps, size) for r, size in zip(results, sizes))

    # -- inspection ---------------------------------------------------------------------------------
    @property
    def ptx(self) -> dict[str, str]:
        """The PTX of each generated kernel, by name (compiled for this GPU, or for cc 8.0 without one)."""
        from . import compile_ptx_module

        if self._ptx is None:
            self._ptx = compile_ptx_module(self.module)
        return self._ptx

    def __repr__(self) -> str:
        return f"<CudaExecutable {self.graph.name!r}: {len(self.module.SIGNATURES)} kernels>"


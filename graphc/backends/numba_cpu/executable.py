"""NumbaExecutable: the compiled graph. Owns the parameter store and the workspace; one native call per run."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import threads as _threads
from ..lowering import Program, aligned
from ..native import NativeExecutable, ParamStore, aligned_bytes
from . import sharing
from .llvm_driver import shares_chunks

_CURRENT = _threads._current  # the count both pools run with now: read on every call, so bound once
_HELPER = sharing.HELPER  # the helper thread while it shares GEMMs and chunks (likewise)


def _apply(pools: int, policy: "_threads.ThreadPolicy | None") -> None:
    """Both pools at ``pools`` threads; GEMMs and chunks shared with the helper thread when ``policy`` (the policy
    that decided) is given, on the cores it found busy."""
    _threads.apply(pools)
    if policy is not None:
        sharing.start(policy.busy_cores)
    else:
        sharing.stop()


class NumbaExecutable(NativeExecutable):
    """A graph compiled by the numba_cpu backend: ``exe(*inputs)`` is one call of the native driver.

    >>> import graphc, numpy as np
    >>> with graphc.Graph("scale") as g:
    ...     x = graphc.input("x", (3,))
    ...     y = g.output(graphc.relu(x) * 2.0)
    >>> f = graphc.compile(y, backend="cpu")
    >>> f(np.array([-1.0, 0.5, 2.0], np.float32))
    array([0., 1., 4.], dtype=float32)

    ``.source`` is the generated module, ``.llvm_ir``/``.asm`` the driver's LLVM IR and machine code (Numba's
    output, or with ``driver="llvm"`` the kernels as graphc's llvm target renders them), ``.stats`` the time
    per stage. Not thread-safe: calls share one workspace.
    """

    backend = "cpu"

    def __init__(self, program: Program, module: Any, stats: dict[str, Any], source: str, entry: Any,
                 check_finite: bool = False, strict: bool = False, step: Any = None):
        super().__init__(program, module, stats, source, entry, check_finite=check_finite, strict=strict)
        # The parameter store and the workspace are two aligned parts of one buffer, the memory the native
        # code writes: one overlap check per input keeps an input that aliases it from being read half-written.
        state_bytes, ws_bytes = max(program.state_bytes, 1), max(program.workspace_bytes, 1)
        state_end = aligned(state_bytes)
        self._written = aligned_bytes(state_end + ws_bytes)
        self._state, self._ws = self._written[:state_bytes], self._written[state_end:]
        self.params = ParamStore(*self._param_views(self._state))
        #: The native step: the module's Numba ``step``, or the llvm driver's entry (``step``, an EntryStep).
        self._step = module.step if step is None else step
        self._signature = module.step.signatures[0] if step is None else None
        self._inspectable = None
        self.threads_policy = _threads.ThreadPolicy(None)
        self.threads = _threads.usable(self.threads_policy.threads)  # the thread count each call runs with (see use_threads)
        self.share_gemm = False  # whether its GEMMs are shared with a helper thread (the policy's ``share``)
        #: Whether the step has loops of chunks for the helper (the llvm driver's convolutions, shares_chunks).
        self._chunks = program.options.get("driver") == "llvm" and shares_chunks(program)
        #: Whether the helper thread runs for its calls: to share GEMMs (``share_gemm``), or its chunks on two
        #: threads or more; BLAS then runs at one thread (``_pools``), each chunk's GEMMs on the chunk's thread.
        self._decide_helper()

    # -- threads ------------------------------------------------------------------------------------
    def use_threads(self, policy: "_threads.ThreadPolicy") -> int:
        """Run with ``policy``'s thread count (decided now from the load it measured since it started);
        ``graphc.compile(..., threads=)`` hands its policy here. Returns the count."""
        self.threads_policy = policy
        self.recheck_threads()
        self.stats["threads"], self.stats["threads_others_busy"] = self.threads, round(policy.others, 2)
        self.stats["gemm_helper"] = self.helper
        return self.threads

    def recheck_threads(self) -> int:
        """Re-decide the thread count from the load of other processes since the last decision (cheap: two
        reads of /proc/stat); a fixed ``threads=`` stays."""
        self.threads = _threads.usable(self.threads_policy.recheck())
        self.share_gemm = self.threads_policy.share and sharing.SUPPORTED
        self._decide_helper()
        return self.threads

    def _decide_helper(self) -> None:
        """``helper`` and ``_pools`` from ``share_gemm``, the chunks and the thread count."""
        self.helper = self.share_gemm or (self._chunks and self.threads > 1 and sharing.SUPPORTED)
        self._pools = 1 if self.helper else self.threads

    def _apply_threads(self) -> None:
        if _CURRENT[0] != self._pools or bool(_HELPER) != self.helper:  # else the pools already run so
            _apply(self._pools, self.threads_policy if self.helper else None)

    # -- running ----------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any):
        # Fast path: positional arrays that are exactly what the native signature takes (the usual case
        # in a training loop) skip the general binding; anything else goes through bind().
        if not kwargs and not self.check_finite and len(args) == len(self._expected):
            for a, (shape, dtype) in zip(args, self._expected):
                if type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype:
                    break
                flags = a.flags
                if not (flags.c_contiguous and flags.aligned and flags.writeable):
                    break
                if not flags.owndata and np.may_share_memory(a, self._written):  # run() copies it
                    break
            else:
                if _CURRENT[0] != self._pools or bool(_HELPER) != self.helper:
                    _apply(self._pools, self.threads_policy if self.helper else None)
                outs = self._step(*args, self._state, self._ws, self._status)
                if self._status[0]:
                    self._raise_status(list(args))
                return outs[0] if len(outs) == 1 else outs
        return super().__call__(*args, **kwargs)

    def _call_step(self, arrays: list[np.ndarray]) -> tuple:
        self._apply_threads()
        return self._step(*arrays, self._state, self._ws, self._status)

    def _unaliased(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """``arrays``, each one that overlaps the parameter store or the workspace replaced by a copy.

        The native step reads its inputs while it writes its parameters (the weight-gradient GEMM
        accumulates into the weights it reads ``x`` beside): an input that is a view of a parameter would
        be read half-updated. The user means the step on the values passed, so those are copied. The
        arrays are contiguous, so the bounds check of ``numpy.may_share_memory`` is exact and O(1).
        """
        return [np.array(a, order="C") if np.may_share_memory(a, self._written) else a for a in arrays]

    # -- a whole epoch in one native call -------------------------------------------------------------
    def has_epoch(self) -> bool:
        return hasattr(self.module, "epoch")

    def _call_epoch(self, arrays: list[np.ndarray], perm: np.ndarray, steps: int) -> tuple:
        from . import compile_function

        epoch = compile_function(self, "epoch", tuple(_numba_type(a) for a in arrays) + _epoch_tail())
        self.recheck_threads()  # an epoch is long: the load may have changed since the last decision,
        _apply(self._pools, self.threads_policy if self.helper else None)  # and the busy cores may have moved
        return epoch(*arrays, perm, steps, self._state, self._ws, self._status)

    # -- inspection ---------------------------------------------------------------------------------
    @property
    def llvm_ir(self) -> str:
        """The driver's LLVM IR (Numba's ``inspect_llvm``; recompiled without the cache if needed), or the llvm
        driver's kernels as rendered (each kernel headed by its node and the user's line)."""
        if self.program.options.get("driver") == "llvm":
            return self._entry.kernels_text_path.read_text()
        return self._inspect("inspect_llvm")

    @property
    def asm(self) -> str:
        """The driver's machine code as assembly (Numba's ``inspect_asm``, or the llvm driver's kernels')."""
        if self.program.options.get("driver") == "llvm":
            from .llvm_driver import assembly

            return assembly(self.llvm_ir)
        return self._inspect("inspect_asm")

    def _inspect(self, what: str) -> str:
        # Code Numba loaded from its cache (or whose parts it did) carries no IR: compile a fresh copy once.
        if self._inspectable is None:
            from . import fresh_dispatcher

            self._inspectable = fresh_dispatcher(self)
        return getattr(self._inspectable, what)(self._signature)


def _numba_type(a: np.ndarray):
    import numba

    return numba.typeof(a)


def _epoch_tail():
    from numba import types

    return (types.Array(types.int64, 1, "C"), types.int64, types.Array(types.uint8, 1, "C"),
            types.Array(types.uint8, 1, "C"), types.Array(types.int64, 1, "C"))

"""What every native target's executable shares: the parameter store and workspace as bytes, the status
words native code reports a failed check in, and the checks on arguments and epoch data.

A native executable (numba_cpu, numba_cuda) runs a lowered :class:`Program`; its parameters live in a
parameter store laid out by the Program, and a failed run-time check (a label out of range) comes back
as a status ``(code, index, value, step)`` that :meth:`NativeExecutable._raise_status` words. A target
provides how one step and one epoch run (:meth:`_call_step`, :meth:`_call_epoch`); everything a user
can get wrong is checked here, the same way for every target, before any target code runs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, MutableMapping

import numpy as np

from ..ir import InputError, Node
from ..ir.errors import NonFiniteError
from . import finite
from .executable import Executable, param_key, validate
from .lowering import ALIGN, ErrorSite, Program, op_label
from .lowering.status import label_error


def aligned_bytes(nbytes: int) -> np.ndarray:
    """A zeroed uint8 array of ``nbytes`` whose data starts on a 64-byte boundary (cache lines, SIMD)."""
    raw = np.zeros(max(nbytes, 1) + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + max(nbytes, 1)]


class ParamStore(MutableMapping):
    """Parameter name -> array, each a view into the executable's parameter store.

    Assigning ``params[name] = value`` copies into the store (checked like an input): the native
    code keeps reading the same memory, so replacing the array object would silently do nothing.
    A store that lives elsewhere (on a GPU) is a host copy: ``before_read`` brings it up to date
    before a value is handed out (and the target sends it back before its next run, since the caller
    may write into what it got).
    """

    def __init__(self, views: dict[str, np.ndarray], nodes: dict[str, Node],
                 before_read: Callable[[], None] | None = None):
        self._views = views
        self._nodes = nodes
        self._before_read = before_read

    def __getitem__(self, key: str) -> np.ndarray:
        if self._before_read is not None:
            self._before_read()
        return self._views[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._views:
            raise InputError(f"no parameter {key!r}; parameters are {list(self._views)}")
        if self._before_read is not None:
            self._before_read()  # the other values in the host copy must be current before it is sent back
        self._views[key][...] = validate(self._nodes[key], value, "param")

    def __delitem__(self, key: str) -> None:
        raise InputError("parameters of a compiled graph cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __repr__(self) -> str:
        return "ParamStore(" + ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self._views.items()) + ")"


class NativeExecutable(Executable):
    """A Program run by native code: the checks and the epoch around a target's step (see the module doc).

    Subclasses set ``self.params`` (a mapping of parameter views) and implement :meth:`_call_step` and
    :meth:`_call_epoch`, which leave a failed check's words in ``self._status``.
    """

    def __init__(self, program: Program, module: Any, stats: dict[str, Any], source: str, entry: Any,
                 check_finite: bool = False, strict: bool = False):
        super().__init__(program.graph, program.inputs)
        self.program = program
        #: The generated module (imported from its cache entry), its text and the entry.
        self.module = module
        self.source = source
        self._entry = entry
        self.stats.update(stats)
        self.check_finite = check_finite
        #: strict=True: inputs must already have the exact dtype and be C-contiguous (no silent copies).
        self.strict = strict
        self._expected = [(n.shape, n.dtype.np) for n in program.inputs]
        self._status = np.zeros(4, np.int64)
        self._errors = {e.code: e for e in program.errors}

    # -- what a target provides ------------------------------------------------------------------------
    def _call_step(self, arrays: list[np.ndarray]) -> tuple:
        """One step on checked arrays; returns the outputs (host arrays)."""
        raise NotImplementedError

    def _call_epoch(self, arrays: list[np.ndarray], perm: np.ndarray, steps: int) -> tuple:
        """``steps`` minibatches; returns each output as [steps, size] (see :meth:`run_epoch`)."""
        raise NotImplementedError

    def _unaliased(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """``arrays`` made safe to read while the step writes its memory (a target whose memory the
        caller can alias copies those arrays)."""
        return arrays

    # -- running ----------------------------------------------------------------------------------
    def bind(self, args: tuple, kwargs: Mapping[str, Any]) -> list[np.ndarray]:
        if self.strict:
            given = list(zip(self.inputs, args)) + [(n, kwargs[n.name]) for n in self.inputs if n.name in kwargs]
            for node, value in given:
                _check_strict(node, value)
        arrays = super().bind(args, kwargs)
        # Native code needs aligned, writable (its signature's) arrays: copy the rare ones that are not.
        return [a if a.flags.aligned and a.flags.writeable else np.array(a, order="C") for a in arrays]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """One native call on arrays already bound (``exe(...)`` binds them); checked again here because
        native code trusts them: wrong shapes could read out of bounds."""
        if len(arrays) != len(self._expected):
            raise InputError(f"{self.graph.name}: run() expected {len(self._expected)} arrays, got {len(arrays)}")
        for node, a, (shape, dtype) in zip(self.inputs, arrays, self._expected):
            if not (isinstance(a, np.ndarray) and a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
                    and a.flags.aligned and a.flags.writeable):
                raise InputError(f"input {node.name!r}: run() needs a C-contiguous, aligned, writable {dtype} array "
                                 f"of shape {list(shape)}; got {_describe(a)} (call the executable to have it converted)")
        arrays = self._unaliased(arrays)
        before = None
        if self.check_finite:
            finite.check_inputs(self, arrays)
            before = finite.snapshot(self.params)
        outs = self._call_step(arrays)
        if self._status[0]:
            self._raise_status(arrays)
        if self.check_finite:
            finite.check_outputs(self, arrays, outs, before, label=op_label)
        return list(outs)

    def _raise_status(self, arrays: list[np.ndarray] | None, context: str = "", data=None) -> None:
        code, index, value = (int(v) for v in self._status[:3])
        self._status[:] = 0
        site: ErrorSite | None = self._errors.get(code)
        if site is None:
            raise InputError(f"{self.graph.name}: native code reported unknown status {code}")
        labels = None
        if site.input is not None:
            if data is not None:
                labels = data.get(site.input)
            elif arrays is not None:
                labels = arrays[self.input_names.index(site.input)]
        raise label_error(site, index, value, labels, context)

    # -- a whole epoch in one native call -------------------------------------------------------------
    def has_epoch(self) -> bool:
        """Whether :meth:`run_epoch` can run: some input has a batch axis of at least one row."""
        return any(self.program.batched) and self.inputs[0].shape[0] > 0

    def run_epoch(self, *data: Any, seed: int = 0, perm: Any = None, last_batch: str = "wrap",
                  batch_size: int | None = None):
        """Run every minibatch of one shuffled epoch in one native call; returns each output per step.

        ``data`` holds one array per input: [N, ...] for an input [B, ...] with the batch axis (B, the
        first input's leading size, is the batch size the graph was built with), and the value itself
        for any other input (a learning rate, a dropout key): one value for every step, or one per step
        ([steps, *shape]). Rows are visited in ``perm``
        order (default: ``numpy.random.default_rng(seed).permutation(N)``). ``last_batch="wrap"``
        fills the last, partial minibatch with rows from the start of the permutation (ceil(N/B)
        steps, every row at least once); ``"drop"`` skips it (N // B steps). ``perm`` may also hold
        another number M of row indices (a data-parallel rank's share of each minibatch): the steps
        are then ceil(M/B) or M // B. Parameter updates apply
        after every step, as for calls. Outputs come back stacked: [steps, *output shape].

        >>> losses = exe.run_epoch(X_train, y_train, seed=epoch)   # doctest: +SKIP
        """
        batched = self.program.batched
        if not self.has_epoch():
            raise InputError(f"{self.graph.name}: run_epoch needs an input with a batch axis")
        if len(data) != len(self.inputs):
            raise InputError(f"{self.graph.name}: run_epoch expected {len(self.inputs)} data arrays "
                             f"{self.input_names}, got {len(data)}")
        batch = self.inputs[0].shape[0]
        if batch_size is not None and batch_size != batch:
            raise InputError(f"{self.graph.name}: batch_size {batch_size} differs from the batch size {batch} "
                             f"the graph was built with (recompile the graph for another batch size)")
        if last_batch not in ("wrap", "drop"):
            raise InputError(f"run_epoch: last_batch must be 'wrap' or 'drop', got {last_batch!r}")
        arrays: list[np.ndarray] = []
        rows: dict[str, np.ndarray] = {}
        n = None
        for node, d, is_batched in zip(self.inputs, data, batched):
            if not is_batched:
                arrays.append(d)  # one value, or one per step: resolved once the step count is known
                continue
            a = np.asarray(d)
            if a.ndim != node.ndim or a.shape[1:] != node.shape[1:]:
                raise InputError(f"run_epoch: data for input {node.name!r}: expected shape [N, "
                                 f"{', '.join(map(str, node.shape[1:]))}] (rows of {node.type_str}), got {list(a.shape)}")
            if n is not None and a.shape[0] != n:
                raise InputError(f"run_epoch: data for input {node.name!r} has {a.shape[0]} rows, "
                                 f"the first input has {n}")
            n = a.shape[0]
            arrays.append(self._native(validate(_rows_node(node, n), a)))
            rows[node.name] = arrays[-1]
        if not n:
            raise InputError("run_epoch: no data rows")
        for site in self.program.errors:  # labels are checked for the whole data set up front
            a = rows.get(site.input) if site.input is not None else None
            if a is not None and a.size and (a.min() < 0 or a.max() >= site.classes):
                flat = a.reshape(-1)
                bad = np.flatnonzero((flat < 0) | (flat >= site.classes))
                raise InputError(f"run_epoch: input {site.input!r}: label {int(flat[bad[0]])} at row "
                                 f"{int(bad[0]) // max(a.size // n, 1)} is out of range [0, {site.classes}) for "
                                 f"{site.op} (%{site.node}{' at ' + site.where if site.where else ''}); "
                                 f"{bad.size} of {a.size} labels are out of range")
        if perm is None:
            perm = np.random.default_rng(seed).permutation(n)
        perm = np.ascontiguousarray(perm, dtype=np.int64)
        if perm.ndim != 1 or not perm.size or perm.min() < 0 or perm.max() >= n:
            raise InputError(f"run_epoch: perm must be {n} row indices in [0, {n}), got shape {list(perm.shape)}"
                             + (f" with values in [{perm.min()}, {perm.max()}]" if perm.size else ""))
        steps = -(-perm.size // batch) if last_batch == "wrap" else perm.size // batch
        for k, (node, is_batched) in enumerate(zip(self.inputs, batched)):
            if not is_batched:
                arrays[k] = self._per_step(node, arrays[k], steps)
        arrays = self._unaliased(arrays)  # data that aliases the parameters is read as passed
        before = None
        if self.check_finite:
            finite.check_inputs(self, arrays)
            before = finite.snapshot(self.params)
        outs = self._call_epoch(arrays, perm, steps)
        if self._status[0]:
            self._raise_status(None, context=f" of minibatch {int(self._status[3])}", data={})
        results = [o.reshape((steps,) + shape) for o, shape in zip(outs, (b.shape for b in self.program.outputs))]
        if self.check_finite and not finite.all_finite(results + list(self.params.values())):
            self._find_nonfinite_step(arrays, batched, perm, steps, before)
        return results[0] if len(results) == 1 else tuple(results)

    def _find_nonfinite_step(self, arrays: list[np.ndarray], batched: list[bool], perm: np.ndarray, steps: int,
                             before: dict[str, np.ndarray]) -> None:
        """check_finite: an epoch left a NaN or Inf. Re-run it from its start one checked call per step (same
        rows and per-step values), so that the failing step's NonFiniteError names the node it came from."""
        finite.restore(self.params, before)
        for s, rows in enumerate(finite.minibatches(perm, steps, self.inputs[0].shape[0], "wrap")):
            step_arrays = [np.array(a[rows] if is_batched else a[s], order="C") for a, is_batched in zip(arrays, batched)]
            try:
                self.run(step_arrays)
            except NonFiniteError as err:
                raise NonFiniteError(f"run_epoch: step {s + 1} of {steps} (rows {finite.rows_text(rows)}): {err}",
                                     node=err.node, index=err.index, value=err.value, step=s + 1) from None
        finite.restore(self.params, before)
        raise NonFiniteError(f"{self.graph.name}: run_epoch left a NaN or Inf, but its steps run one call at a time "
                             f"stayed finite; the parameters are left at their values before the epoch "
                             f"(compiled with check_finite=True)")

    def _per_step(self, node: Node, value: Any, steps: int) -> np.ndarray:
        """[steps, *shape] values of an input without a batch axis: given per step, or one value for all."""
        a = np.asarray(value)
        if a.shape == node.shape:
            a = np.broadcast_to(a, (steps,) + node.shape)
        elif a.shape != (steps,) + node.shape:
            raise InputError(f"run_epoch: input {node.name!r} takes one value {node.type_str} or one per step "
                             f"{list((steps,) + node.shape)}, got shape {list(a.shape)}")
        return self._native(validate(dataclasses.replace(node, shape=(steps,) + node.shape), a))

    @staticmethod
    def _native(a: np.ndarray) -> np.ndarray:
        return a if a.flags.aligned and a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C")

    def _param_views(self, store: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Node]]:
        """Each parameter's view into ``store`` (a host copy of the parameter store), by name, with its node;
        constants are written into ``store`` too, parameters take their current values."""
        views: dict[str, np.ndarray] = {}
        nodes: dict[str, Node] = {}
        keys = {id(p): param_key(p, k) for k, p in enumerate(self.graph.params)}
        for node in self.graph.nodes:
            slot = self.program.state.get(id(node))
            if slot is None:
                continue
            view = slot.view(store)
            view[...] = node.value if node.op == "constant" else self.params[keys[id(node)]]
            if node.op == "param":
                views[keys[id(node)]] = view
                nodes[keys[id(node)]] = node
        return views, nodes


def _describe(value: Any) -> str:
    if not isinstance(value, np.ndarray):
        return type(value).__name__
    flags = [f for f, ok in (("non-contiguous", not value.flags.c_contiguous), ("read-only", not value.flags.writeable),
                             ("unaligned", not value.flags.aligned)) if ok]
    return f"{' '.join(flags + [str(value.dtype)])} array of shape {list(value.shape)}"


def _check_strict(node: Node, value: Any) -> None:
    """strict=True: the exact dtype, C order; shapes are checked by validate() for everyone."""
    label = f"input {node.name!r}"
    if isinstance(value, np.generic):  # a NumPy scalar is a 0-d array with a dtype
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise InputError(f"{label}: expected a NumPy array {node.type_str} (strict=True), got {type(value).__name__}")
    if value.dtype != node.dtype.np:
        raise InputError(f"{label}: expected dtype {node.dtype.name}, got {value.dtype} (strict=True: no conversion)")
    if not value.flags.c_contiguous:
        raise InputError(f"{label}: expected a C-contiguous array, got strides {value.strides} for shape "
                         f"{list(value.shape)} (strict=True: no copy; use numpy.ascontiguousarray)")


def _rows_node(node: Node, n: int) -> Node:
    return dataclasses.replace(node, shape=(n,) + node.shape[1:])

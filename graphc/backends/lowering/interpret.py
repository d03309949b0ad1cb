"""The kernel-IR interpreter: runs a :class:`~.ir.Program` with NumPy, statement by statement.

It is the oracle for lowering itself (tinygrad's Python device is the model): every op's Program and
random training steps must compute what the reference backend computes *before* any renderer is
involved. So it is strict where a renderer would be silently wrong:

* every index is checked against its buffer (a negative or too large index is an
  :class:`InterpretError`, never a neighbour's element); a guarded load with a false guard reads nothing;
* the workspace and the outputs start as garbage (all bits set: NaN for floats, -1 for integers), so
  a kernel that reads memory nobody wrote, or a GEMM with ``beta == 0`` that reads C, shows in the numbers;
* inputs are read-only; a store into one is an error;
* the iterations of a ``parallel`` loop run as NumPy vectors (one lane per iteration); two iterations
  writing one element, one reading what another writes, a value carried from one iteration to the next
  and random draws are errors (races and schedule-dependent results on a real target, which vectorized
  NumPy, loading every lane before storing any, would hide); an iteration's variables die with it;
* a GEMM or library call whose result overlaps another of its operands is an error: NumPy reads
  copies, a target reads memory it is overwriting.

Scalars follow the IR's rules: a Load gives the buffer's dtype, an Assign converts its value to its
dtype, a Store converts to the buffer's (``!= 0`` for bool) and combines with ``reduce`` ("max"/"min"
propagate NaN). Expressions are compiled once each with graphc's NumPy printer
(:func:`graphc.ops.elementwise.numpy_function`), the reference backend's scalar semantics.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import sympy as sp

from ...ir import GraphcError, InputError
from ..executable import param_key, validate
from .ir import Assign, Buffer, Call, Check, Draw, Gemm, Kernel, Load, Loop, Program, Ref, Seed, Store, is_condition
from .status import label_error


class InterpretError(GraphcError):
    """A Program that breaks the kernel IR's contract (an index outside its buffer, a variable read before
    it is assigned, parallel iterations writing one element, ...): a lowering bug, reported with the kernel."""


def interpret(program: Program, *inputs: Any, params: Mapping[str, Any] | None = None
              ) -> tuple[tuple[np.ndarray, ...], dict[str, np.ndarray]]:
    """Run ``program`` once on ``inputs``: ``(outputs, params)``, the parameters after the step's updates.

    ``params`` (name -> array) replaces the graph's initial parameter values; the ones not given start
    from ``graph.params[k].value``. For several steps in a row, keep an :class:`Interpreter`.

    >>> import graphc, numpy as np
    >>> from graphc.backends.lowering import lower
    >>> with graphc.Graph("sgd") as g:
    ...     x = graphc.input("x", (2,))
    ...     w = graphc.param("w", np.ones(2, np.float32))
    ...     y = g.output(x * w)
    ...     g.update(w, w - 0.5 * x)
    >>> (out,), params = interpret(lower(g), np.array([1.0, 2.0], np.float32))
    >>> out, params["w"]
    (array([1., 2.], dtype=float32), array([0.5, 0. ], dtype=float32))
    """
    machine = Interpreter(program, params)
    outputs = machine(*inputs)
    return outputs, {k: v.copy() for k, v in machine.params.items()}


class Interpreter:
    """A Program with its memory: the parameter store (parameters and constants, updated in place by
    every call, like a compiled executable's) and the workspace. ``machine(*inputs)`` runs one step and
    returns its outputs as a tuple; ``machine.params`` are the parameters' current values (views into
    the store)."""

    def __init__(self, program: Program, params: Mapping[str, Any] | None = None):
        self.program = program
        graph = program.graph
        self.state = np.zeros(max(program.state_bytes, 1), np.uint8)
        nodes = {param_key(p, k): p for k, p in enumerate(graph.params)}
        unknown = set(params or ()) - set(nodes)
        if unknown:
            raise InputError(f"{graph.name}: no parameter(s) {sorted(unknown)}; parameters are {list(nodes)}")
        self.params: dict[str, np.ndarray] = {}
        for key, node in nodes.items():
            given = (params or {}).get(key)
            value = node.value if given is None else validate(node, given, "param")
            self.params[key] = self._slot(node)
            self.params[key][...] = value
        for node in graph.nodes:
            if node.op == "constant" and id(node) in program.state:
                self._slot(node)[...] = node.value
        #: id(loop) -> whether its iterations can run as lanes, and what its body assigns (the program's
        #: loops live as long as it does).
        self.vectorizable: dict[int, bool] = {}
        self.loop_facts: dict[int, tuple[set, bool]] = {}

    def _slot(self, node) -> np.ndarray:
        return self.program.state[id(node)].view(self.state)

    def __call__(self, *inputs: Any) -> tuple[np.ndarray, ...]:
        program = self.program
        if len(inputs) != len(program.inputs):
            names = [n.name for n in program.inputs]
            raise InputError(f"{program.name}: expected {len(names)} inputs {names}, got {len(inputs)}")
        arrays = [validate(node, value) for node, value in zip(program.inputs, inputs)]
        run = _Run(self, arrays)
        with np.errstate(all="ignore"):  # IEEE results (inf, NaN) are values here, as in the reference backend
            for kernel in program.checks + program.kernels:
                run.kernel(kernel)
        return tuple(out.reshape(buf.shape) for out, buf in zip(run.outputs, program.outputs))


# -- one run: the memory of a step and the statements' meaning -----------------------------------------

#: All bits set: NaN in every float, -1 in every integer, True in bool: memory nobody wrote shows.
GARBAGE = 0xFF


class _Run:
    """The stores of one step (inputs read-only, fresh garbage outputs and workspace) and the executor."""

    def __init__(self, machine: Interpreter, arrays: list[np.ndarray]):
        program = machine.program
        self.machine = machine
        self.program = program
        self.arrays = arrays
        self.inputs = []
        for a in arrays:
            flat = np.array(a, order="C").reshape(-1)
            flat.flags.writeable = False
            self.inputs.append(flat)
        self.outputs = [_garbage(buf.size, buf.dtype) for buf in program.outputs]
        self.stores = {"state": machine.state,
                       "workspace": np.full(max(program.workspace_bytes, 1), GARBAGE, np.uint8)}
        self.views: dict[int, np.ndarray] = {}
        self.rng: np.random.RandomState | None = None
        self.current: Kernel | None = None
        #: The memory accesses of the vectorized loops being run (see ``access``), None outside them.
        self.accesses: list[tuple] | None = None
        #: The library call being run and the operands it read: (buffer name, region).
        self.call_name = ""
        self.call_reads: list[tuple[str, tuple]] = []

    def vectorizable(self, loop: Loop) -> bool:
        known = self.machine.vectorizable.get(id(loop))
        if known is None:
            known = self.machine.vectorizable[id(loop)] = _vectorizable(loop.body)
        return known

    # -- memory ------------------------------------------------------------------------------------
    def view(self, buf: Buffer) -> np.ndarray:
        """The buffer's elements as a flat array of its dtype (inputs: read-only)."""
        found = self.views.get(id(buf))
        if found is not None:
            return found
        if buf.store == "input":
            if not 0 <= buf.arg < len(self.inputs):
                raise self.error(f"{buf.name} is input {buf.arg}, but the step takes {len(self.inputs)} inputs")
            view = self.inputs[buf.arg]
        elif buf.store == "output":
            view = self.outputs[buf.arg]
        elif buf.store in self.stores:
            store = self.stores[buf.store]
            itemsize = np.dtype(buf.dtype).itemsize
            typed = store[:store.size // itemsize * itemsize].view(buf.dtype)
            if buf.offset < 0 or buf.offset + buf.size > typed.size:
                raise self.error(f"{buf.name} ({buf.dtype}[{buf.offset}:{buf.offset + buf.size}]) lies outside the "
                                 f"{buf.store} ({store.size} bytes)")
            view = typed[buf.offset:buf.offset + buf.size]
        else:
            raise self.error(f"{buf.name} is in an unknown store {buf.store!r}")
        if view.size != buf.size or view.dtype != np.dtype(buf.dtype):
            raise self.error(f"{buf.name} is {buf.dtype}[{buf.size}], its memory is {view.dtype}[{view.size}]")
        self.views[id(buf)] = view
        return view

    def checked(self, buf: Buffer, index: Any, what: str) -> Any:
        """``index`` (an int or an int array), after checking it lies inside ``buf``."""
        low, high = (int(np.min(index)), int(np.max(index))) if np.ndim(index) else (int(index), int(index))
        if low < 0 or high >= buf.size:
            bad = low if low < 0 else high
            raise self.error(f"{what} {buf.name}[{bad}], outside its {buf.size} elements ({buf.note})")
        return index

    def region(self, buf: Buffer, start: int, count: int) -> tuple:
        """(memory, first byte, end byte) of ``count`` elements of ``buf`` from element ``start``: where they
        lie, to tell whether two operands of one GEMM or call overlap (buffers of reused workspace slots do)."""
        memory = (buf.store, buf.arg) if buf.store in ("input", "output") else (buf.store,)
        itemsize = np.dtype(buf.dtype).itemsize
        return memory, (buf.offset + start) * itemsize, (buf.offset + start + count) * itemsize

    def span(self, buf: Buffer, index: np.ndarray) -> tuple:
        """The region from the lowest to the highest element of ``index`` (not empty) in ``buf``."""
        low, high = int(index.min()), int(index.max())
        return self.region(buf, low, high + 1 - low)

    def overlapping(self, written: tuple, read: tuple) -> bool:
        return written[0] == read[0] and written[1] < read[2] and read[1] < written[2]

    def error(self, message: str) -> InterpretError:
        title = self.current.title if self.current is not None else "the layout"
        return InterpretError(f"{self.program.name}: kernel {title}: {message}")

    # -- kernels and statements --------------------------------------------------------------------
    def kernel(self, kernel: Kernel) -> None:
        self.current = kernel
        self.block(kernel.body, {}, None)

    def block(self, body: Sequence, env: dict, lanes: int | None) -> None:
        """Run ``body``. ``lanes``: None outside vectorized loops, else the number of parallel iterations
        run at once; a variable then holds a scalar (the same in every lane) or an array of ``lanes``."""
        for s in body:
            kind = type(s)
            if kind is Loop:
                self.loop(s, env, lanes)
            elif kind is Load:
                env[s.var] = self.load(s, env, lanes)
            elif kind is Assign:
                # A condition stays a truth value whatever dtype the kernel computes in (cse_assignments
                # names shared conditions of Piecewise expressions with the kernel's float dtype).
                dtype = "bool" if is_condition(s.value) else s.dtype
                env[s.var] = _convert(self.value(s.value, env), dtype)
            elif kind is Store:
                self.store(s, env, lanes)
            elif kind is Check:
                self.check(s, env)
            elif kind is Gemm:
                self.gemm(s, env)
            elif kind is Call:
                self.call(s, env)
            elif kind is Seed:
                seed = self.index(s.value, env)
                if not 0 <= seed < 2 ** 32:
                    raise self.error(f"seed {seed} is outside [0, 2**32)")
                self.rng = np.random.RandomState(seed)
            elif kind is Draw:
                if self.rng is None:
                    raise self.error(f"{s.var} = uniform() before any seed()")
                env[s.var] = np.float64(self.rng.random_sample())
            else:
                raise self.error(f"unknown statement {s!r}")

    def loop(self, s: Loop, env: dict, lanes: int | None) -> None:
        if s.extent <= 0:
            return
        if not s.parallel:
            for t in range(s.extent):
                env[s.var] = t
                self.block(s.body, env, lanes)
            return
        why = self.dependence(s, env)
        if why:
            raise self.error(f"the iterations of parallel loop {s.var} are not independent: {why}")
        before = dict(env)
        if not self.vectorizable(s):  # GEMMs and library calls: one iteration at a time
            for t in range(s.extent):
                env[s.var] = t
                self.block(s.body, env, lanes)
        else:  # as lanes; in a vectorized loop already, lane (outer, t) is outer*extent + t
            if lanes is None:
                env[s.var] = np.arange(s.extent)
                inner = s.extent
            else:
                for var, value in before.items():
                    if isinstance(value, np.ndarray):
                        env[var] = np.repeat(value, s.extent)
                env[s.var] = np.tile(np.arange(s.extent), lanes)
                inner = lanes * s.extent
            outermost = self.accesses is None
            if outermost:
                self.accesses = []
            first = len(self.accesses)
            self.block(s.body, env, inner)
            self.check_races(s, self.accesses[first:], inner)
            if outermost:
                self.accesses = None
        # Variables of the iterations do not outlive a parallel loop (each iteration has its own).
        env.clear()
        env.update(before)

    def dependence(self, loop: Loop, env: dict) -> str:
        """Why one iteration of parallel ``loop`` depends on another ("" if none): it draws random numbers
        (their order is the stream's), or it reads a variable defined before the loop that it also assigns
        before assigning it (a value carried from iteration to iteration)."""
        facts = self.machine.loop_facts.get(id(loop))
        if facts is None:
            facts = self.machine.loop_facts[id(loop)] = _assignments(loop.body)
        assigned, draws = facts
        if draws:
            return "it seeds or draws random numbers, whose order is the stream's"
        carried = _read_before_assigned(loop.body, assigned & env.keys())
        if carried:
            return f"it updates {', '.join(sorted(map(str, carried)))}, defined before the loop"
        return ""

    def access(self, buf: Buffer, index: Any, lanes: int | None, write: bool, which: np.ndarray | None = None) -> None:
        """Record that lanes ``which`` (default: all ``lanes``) of the vectorized loops read or write
        ``buf[index]``, for :meth:`check_races`."""
        if lanes is None or self.accesses is None:
            return
        which = np.arange(lanes) if which is None else which
        memory, start, _ = self.region(buf, 0, 0)
        addresses = start + np.broadcast_to(index, which.shape) * np.dtype(buf.dtype).itemsize
        self.accesses.append((memory, addresses, which, lanes, write, buf))

    def check_races(self, loop: Loop, accesses: list[tuple], lanes: int) -> None:
        """The iterations of parallel ``loop`` (``lanes`` of them, counting those of the parallel loops around
        it) write disjoint elements, and read none that another writes. Vectorized, NumPy loads every lane
        before it stores any, which would hide such a race; a target does not."""
        by_memory: dict[tuple, list] = {}
        for memory, addresses, which, space, write, buf in accesses:
            # A lane of a deeper parallel loop belongs to iteration lane // (deeper extents) of this one.
            by_memory.setdefault(memory, []).append((addresses, which // (space // lanes), write, buf))
        for entries in by_memory.values():
            writes = [(a, i) for a, i, w, _ in entries if w]
            if not writes:
                continue
            # (address, writing iteration), sorted by address: an address twice is written by two iterations.
            written, writer = np.unique(np.stack([np.concatenate([a for a, _ in writes]),
                                                  np.concatenate([i for _, i in writes])]), axis=1)
            twice = np.flatnonzero(written[1:] == written[:-1])
            if twice.size:
                self.race(loop, entries, int(written[twice[0]]))
            for addresses, which, write, _ in entries:
                if write:
                    continue
                at = np.minimum(np.searchsorted(written, addresses), written.size - 1)
                other = (written[at] == addresses) & (writer[at] != which)
                if other.any():
                    self.race(loop, entries, int(addresses[np.argmax(other)]))

    def race(self, loop: Loop, entries: list, address: int) -> None:
        buf = next(b for a, _, _, b in entries if (a == address).any())
        element = (address - self.region(buf, 0, 0)[1]) // np.dtype(buf.dtype).itemsize
        raise self.error(f"the iterations of parallel loop {loop.var} are not independent: one writes "
                         f"{buf.name}[{element}], another reads or writes it")

    def value(self, expr: sp.Basic, env: dict) -> Any:
        """``expr`` evaluated on the current variables (scalars or lane arrays)."""
        if expr.is_Symbol:
            return self.variable(expr, env)
        if expr.is_Number:
            return int(expr) if expr.is_Integer else float(expr)
        symbols, fn = _compiled(expr)
        args = [self.variable(v, env) for v in symbols]
        lanes = [isinstance(a, np.ndarray) for a in args]
        if any(lanes) and not all(lanes):
            # Lane arrays beside scalars: broadcast them all, as the reference backend does its operands
            # (a compound Piecewise condition is a logical_or.reduce over a tuple, which needs one shape).
            args = np.broadcast_arrays(*args)
        return fn(*args)

    def variable(self, var: sp.Symbol, env: dict) -> Any:
        try:
            return env[var]
        except KeyError:
            raise self.error(f"reads variable {var} before it is assigned") from None

    def index(self, expr: sp.Basic, env: dict) -> Any:
        """An integer expression: a Python int, or an int64 array of lanes."""
        value = self.value(expr, env)
        if isinstance(value, np.ndarray) and value.ndim:
            return value if value.dtype.kind in "iu" else value.astype(np.int64)
        return int(value)

    def load(self, s: Load, env: dict, lanes: int | None) -> Any:
        view = self.view(s.buffer)
        index = self.index(s.index, env)
        guard = True if s.guard is None else self.value(s.guard, env)
        if np.ndim(guard) == 0:
            if not guard:
                return view.dtype.type(0)
            self.access(s.buffer, index, lanes, False)
            return view[self.checked(s.buffer, index, "reads")]
        guard = np.asarray(guard, bool)
        index = np.broadcast_to(index, guard.shape)
        out = np.zeros(guard.shape, view.dtype)
        if guard.any():
            inside = self.checked(s.buffer, index[guard], "reads")
            self.access(s.buffer, inside, lanes, False, np.flatnonzero(guard))
            out[guard] = view[inside]
        return out

    def store(self, s: Store, env: dict, lanes: int | None) -> None:
        view = self.view(s.buffer)
        if not view.flags.writeable:
            raise self.error(f"writes into {s.buffer.name}, an input ({s.buffer.note})")
        index = self.index(s.index, env)
        value = _convert(self.value(s.value, env), s.buffer.dtype)
        if lanes is not None and lanes > 1:
            index = np.broadcast_to(index, (lanes,))
            if np.unique(index).size != lanes:
                raise self.error(f"parallel iterations write the same element of {s.buffer.name} "
                                 f"(index {s.index}): the loop is not parallel")
            value = np.broadcast_to(value, (lanes,))
        index = self.checked(s.buffer, index, "writes")
        self.access(s.buffer, index, lanes, True)
        if s.reduce is None:
            view[index] = value
        elif s.reduce in _COMBINE:
            view[index] = _COMBINE[s.reduce](view[index], value)
        else:
            raise self.error(f"unknown reduction {s.reduce!r}")

    def check(self, s: Check, env: dict) -> None:
        failed = np.asarray(self.value(s.failed, env), bool)
        if not failed.any():
            return
        lane = int(np.argmax(failed.reshape(-1))) if failed.ndim else None  # the first failing iteration
        index, value = (np.asarray(self.value(e, env)) for e in (s.index, s.value))
        index = int(index.reshape(-1)[lane] if lane is not None and index.ndim else index)
        value = value.reshape(-1)[lane] if lane is not None and value.ndim else value[()]
        if s.site.kind != "label":
            raise self.error(f"check {s.site.kind} #{s.site.code} failed at index {index} (value {value})")
        labels = None
        names = [n.name for n in self.program.inputs]
        if s.site.input in names:
            labels = self.arrays[names.index(s.site.input)]
        raise label_error(s.site, index, int(value), labels)

    # -- library calls -------------------------------------------------------------------------------
    def operand(self, ref: Ref, env: dict, count: int, what: str) -> tuple[np.ndarray, int]:
        """(the buffer's flat view, the start) of ``count`` elements from ``ref``, checked to lie inside."""
        start = self.index(ref.offset, env)
        if count:
            self.checked(ref.buffer, np.array([start, start + count - 1]), what)
        return self.view(ref.buffer), start

    def read(self, ref: Ref, env: dict, shape: Sequence[int]) -> np.ndarray:
        """A copy of the operand at ``ref`` (of ``shape``), recorded as read by the current call."""
        count = int(np.prod(shape))
        view, start = self.operand(ref, env, count, "reads")
        self.call_reads.append((ref.buffer.name, self.region(ref.buffer, start, count)))
        return view[start:start + count].reshape(shape).copy()

    def write(self, ref: Ref, env: dict, value: np.ndarray) -> None:
        """Write a call's result at ``ref``. A target writes while it reads: a result that overlaps another
        operand of the call (anything but exactly the operand it accumulates into) is a lowering error."""
        view, start = self.operand(ref, env, value.size, "writes")
        if not view.flags.writeable:
            raise self.error(f"writes into {ref.buffer.name}, an input ({ref.buffer.note})")
        written = self.region(ref.buffer, start, value.size)
        for name, read in self.call_reads:
            if read != written and self.overlapping(written, read):
                raise self.error(f"{self.call_name} writes {ref.buffer.name} over its operand {name}")
        view[start:start + value.size] = value.reshape(-1)

    def strided(self, ref: Ref, env: dict, rows: int, cols: int, ld: int) -> np.ndarray:
        """Flat indices of the row-major [rows, cols] matrix at ``ref`` with leading dimension ``ld``."""
        if cols > ld and rows > 1:
            raise self.error(f"leading dimension {ld} is less than the row length {cols}")
        start = self.index(ref.offset, env)
        flat = start + np.arange(rows)[:, None] * ld + np.arange(cols)[None, :]
        if flat.size:
            self.checked(ref.buffer, flat, "GEMM reaches")
        return flat

    def gemm(self, s: Gemm, env: dict) -> None:
        """``C = alpha * op(A) @ op(B) + beta * C``; with ``beta == 0``, C is not read (BLAS's contract)."""
        dtypes = {s.a.buffer.dtype, s.b.buffer.dtype, s.c.buffer.dtype}
        if len(dtypes) != 1 or s.c.buffer.dtype not in ("float32", "float64"):
            raise self.error(f"GEMM operands must share one float dtype, got A {s.a.buffer.dtype}, "
                             f"B {s.b.buffer.dtype}, C {s.c.buffer.dtype}")
        dtype = np.dtype(s.c.buffer.dtype)
        if s.m == 0 or s.n == 0:
            return
        a_shape = (s.k, s.m) if s.trans_a else (s.m, s.k)
        b_shape = (s.n, s.k) if s.trans_b else (s.k, s.n)
        a_index = self.strided(s.a, env, *a_shape, s.lda)
        b_index = self.strided(s.b, env, *b_shape, s.ldb)
        c_index = self.strided(s.c, env, s.m, s.n, s.ldc)
        a, b = self.view(s.a.buffer)[a_index], self.view(s.b.buffer)[b_index]
        c = self.view(s.c.buffer)
        if not c.flags.writeable:
            raise self.error(f"GEMM writes into {s.c.buffer.name}, an input")
        written = self.span(s.c.buffer, c_index)
        for name, ref, index in (("A", s.a, a_index), ("B", s.b, b_index)):
            if index.size and self.overlapping(written, self.span(ref.buffer, index)):  # BLAS reads what it wrote
                raise self.error(f"GEMM writes C ({s.c.buffer.name}) over its operand {name} ({ref.buffer.name})")
        alpha, beta = (dtype.type(self.value(e, env)) for e in (s.alpha, s.beta))
        product = (a.T if s.trans_a else a) @ (b.T if s.trans_b else b)
        result = alpha * product
        if beta != 0:
            result = result + beta * c[c_index]
        c[c_index] = result.astype(dtype, copy=False)

    def call(self, s: Call, env: dict) -> None:
        implementation = LIBRARY_IMPLEMENTATIONS.get(s.name)
        if implementation is None:
            raise self.error(f"no NumPy implementation of library call {s.name!r}")
        self.call_name, self.call_reads = s.name, []
        implementation(self, env, *s.args)


def _garbage(size: int, dtype: str) -> np.ndarray:
    return np.full(max(size, 0) * np.dtype(dtype).itemsize, GARBAGE, np.uint8).view(dtype)


def _convert(value: Any, dtype: str) -> Any:
    """``value`` in ``dtype``: bool is ``value != 0``; scalars stay scalars, lane arrays arrays."""
    target = np.dtype(dtype)
    array = np.asarray(value)
    if array.dtype != target:
        array = (array != 0) if target == np.bool_ else array.astype(target)
    return array[()] if array.ndim == 0 else array


_COMBINE: dict[str, Callable] = {"add": np.add, "max": np.maximum, "min": np.minimum}  # max/min: NaN wins


def _vectorizable(body: Sequence) -> bool:
    """Whether ``body`` is only loops, loads, assignments, stores and checks (no GEMM, library call or
    random draw), so that the iterations of a parallel loop around it can run as NumPy lanes."""
    return all(isinstance(s, (Load, Assign, Store, Check)) or (isinstance(s, Loop) and _vectorizable(s.body))
               for s in body)


def _assignments(body: Sequence) -> tuple[set, bool]:
    """(the variables ``body`` assigns, loop variables included; whether it seeds or draws)."""
    assigned: set = set()
    draws = False
    for s in body:
        if isinstance(s, (Load, Assign, Draw)):
            assigned.add(s.var)
        if isinstance(s, (Seed, Draw)):
            draws = True
        if isinstance(s, Loop):
            inner, inner_draws = _assignments(s.body)
            assigned |= inner | {s.var}
            draws = draws or inner_draws
    return assigned, draws


def _reads(s) -> set:
    """The variables statement ``s`` reads (not those of the statements inside a loop)."""
    if isinstance(s, Load):
        exprs = [s.index] + ([s.guard] if s.guard is not None else [])
    elif isinstance(s, Assign):
        exprs = [s.value]
    elif isinstance(s, Store):
        exprs = [s.index, s.value]
    elif isinstance(s, Check):
        exprs = [s.failed, s.index, s.value]
    elif isinstance(s, Gemm):
        exprs = [s.alpha, s.beta, s.a.offset, s.b.offset, s.c.offset]
    elif isinstance(s, Call):
        exprs = [a.offset if isinstance(a, Ref) else a for a in s.args]
    elif isinstance(s, Seed):
        exprs = [s.value]
    else:
        exprs = []
    return set().union(*(sp.sympify(e).free_symbols for e in exprs))


def _read_before_assigned(body: Sequence, watched: set) -> set:
    """The variables of ``watched`` that an iteration of ``body`` reads before it assigns them."""
    if not watched:
        return set()
    found: set = set()
    assigned: set = set()

    def walk(statements: Sequence) -> None:
        for s in statements:
            if isinstance(s, Loop):
                assigned.add(s.var)
                walk(s.body)
                continue
            found.update((_reads(s) & watched) - assigned)
            if isinstance(s, (Load, Assign, Draw)):
                assigned.add(s.var)

    walk(body)
    return found


class _FloorDiv(sp.Function):
    """``floor(p / q)`` of integers as ``p // q``: exact, where NumPy's ``floor((1/q)*p)`` rounds."""

    nargs = 2

    def _numpycode(self, printer) -> str:
        return f"(({printer._print(self.args[0])}) // ({printer._print(self.args[1])}))"


def _exact_floor(expr: sp.Basic) -> sp.Basic:
    numerator, denominator = sp.fraction(sp.together(expr.args[0]))
    if denominator.is_Integer and denominator != 1 and numerator.is_integer:
        return _FloorDiv(numerator, denominator)
    return expr


@functools.lru_cache(maxsize=8192)
def _compiled(expr: sp.Basic) -> tuple[tuple[sp.Symbol, ...], Callable]:
    """(the variables ``expr`` reads, its NumPy function): compiled once per distinct expression."""
    from ...ops.elementwise import numpy_function

    symbols = tuple(sorted(expr.free_symbols, key=lambda v: v.name))
    if expr.has(sp.floor):
        with sp.evaluate(False):  # rebuilding must not simplify what the rules left alone (x*0 is NaN for inf)
            expr = expr.replace(lambda e: isinstance(e, sp.floor), _exact_floor)
    return symbols, numpy_function(symbols, expr)


# -- the library calls (ir.LIBRARY), from their definitions -----------------------------------------------
# Written with NumPy from what each kernel computes, not from the cpu versions (numba_cpu/runtime.py):
# the interpreter is their oracle. Images are NCHW, pooling planes [planes, H, W], all flat from a Ref.

def windows(x: np.ndarray, fill: float, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int,
            Ho: int, Wo: int) -> np.ndarray:
    """[..., Ho, Wo, kh*kw]: element (ho, wo, i*kw + j) is x[..., ho*sh - ph + i*dh, wo*sw - pw + j*dw],
    ``fill`` where that lies outside x (the padding)."""
    H, W = x.shape[-2:]
    if Ho <= 0 or Wo <= 0 or kh * kw == 0:
        return np.zeros(x.shape[:-2] + (max(Ho, 0), max(Wo, 0), kh * kw), x.dtype)
    below = max(0, (Ho - 1) * sh + (kh - 1) * dh - ph - (H - 1))
    right = max(0, (Wo - 1) * sw + (kw - 1) * dw - pw - (W - 1))
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(ph, below), (pw, right)], constant_values=fill)
    parts = [padded[..., i * dh:i * dh + (Ho - 1) * sh + 1:sh, j * dw:j * dw + (Wo - 1) * sw + 1:sw]
             for i in range(kh) for j in range(kw)]
    return np.stack(parts, axis=-1)


def _ints(run: _Run, env: dict, values: Sequence) -> list[int]:
    return [run.index(sp.sympify(v), env) for v in values]


def _conv2d(run: _Run, env: dict, x: Ref, w: Ref, sizes: Sequence, col: Ref | None, y: Ref) -> None:
    """y[n, o, ho, wo] = sum over c, i, j of w[o, c, i, j] * x[n, c, ho*sh - ph + i*dh, wo*sw - pw + j*dw]."""
    N, C, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = _ints(run, env, sizes)
    dtype = np.dtype(y.buffer.dtype)
    xs = run.read(x, env, (N, C, H, W)).astype(dtype)
    ws = run.read(w, env, (Co, C, kh * kw)).astype(dtype)
    patches = windows(xs, 0, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)  # [N, C, Ho, Wo, kh*kw]
    run.write(y, env, np.einsum("nchwk,ock->nohw", patches, ws).astype(dtype))
    if col is not None and N:  # the scratch holds the last image's columns, as after the cpu kernel
        last = patches[-1].transpose(0, 3, 1, 2).reshape(C * kh * kw, Ho * Wo)
        run.write(col, env, last.astype(col.buffer.dtype))


def conv2d_im2col(run: _Run, env: dict, x: Ref, w: Ref, *rest) -> None:
    _conv2d(run, env, x, w, rest[:15], rest[15], rest[16])


def conv2d_direct(run: _Run, env: dict, x: Ref, w: Ref, *rest) -> None:
    _conv2d(run, env, x, w, rest[:15], None, rest[15])


def col2im_add(run: _Run, env: dict, cols: Ref, *rest) -> None:
    """The adjoint of im2col: y[o, h*sh - ph + i*dh, q*sw - pw + j*dw] += cols[(o*kh + i)*kw + j, h*W + q]
    for the (h, q) of an H x W grid whose target lies inside y [Co, Ho, Wo]."""
    Co, kh, kw, H, W, sh, sw, ph, pw, dh, dw, Ho, Wo = _ints(run, env, rest[:13])
    y = rest[13]
    dtype = np.dtype(y.buffer.dtype)
    cs = run.read(cols, env, (Co, kh, kw, H, W)).astype(dtype)
    rows = max(ph + Ho, (H - 1) * sh + (kh - 1) * dh + 1)
    columns = max(pw + Wo, (W - 1) * sw + (kw - 1) * dw + 1)
    total = np.zeros((Co, rows, columns), dtype)  # in padded coordinates: target + (ph, pw)
    for i in range(kh):
        for j in range(kw):
            total[:, i * dh:i * dh + (H - 1) * sh + 1:sh, j * dw:j * dw + (W - 1) * sw + 1:sw] += cs[:, i, j]
    run.write(y, env, run.read(y, env, (Co, Ho, Wo)) + total[:, ph:ph + Ho, pw:pw + Wo])


def max_pool(run: _Run, env: dict, x: Ref, *rest) -> None:
    """y = the max of each window, padding -inf; a NaN in a window makes its max NaN."""
    planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo = _ints(run, env, rest[:11])
    xs = run.read(x, env, (planes, H, W))
    run.write(rest[11], env, windows(xs, -np.inf, kh, kw, sh, sw, ph, pw, 1, 1, Ho, Wo).max(axis=-1, initial=-np.inf))


def avg_pool(run: _Run, env: dict, x: Ref, *rest) -> None:
    """y = the sum of each window / (kh*kw): zero padding counts (PyTorch's count_include_pad)."""
    planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo = _ints(run, env, rest[:11])
    xs = run.read(x, env, (planes, H, W))
    total = windows(xs, 0, kh, kw, sh, sw, ph, pw, 1, 1, Ho, Wo).sum(axis=-1)
    run.write(rest[11], env, (total / (kh * kw)).astype(xs.dtype))


def _first_max(xs: np.ndarray, kh, kw, sh, sw, ph, pw, Ho, Wo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(h, q, inside) [planes, Ho, Wo] of each window's first maximum in row-major window order, the
    padding counting as -inf and the first NaN winning (NumPy's argmax); ``inside``: not padding."""
    first = np.argmax(windows(xs, -np.inf, kh, kw, sh, sw, ph, pw, 1, 1, Ho, Wo), axis=-1)
    ho = np.arange(Ho)[:, None]
    wo = np.arange(Wo)[None, :]
    h = ho * sh - ph + first // kw
    q = wo * sw - pw + first % kw
    H, W = xs.shape[-2:]
    return h, q, (h >= 0) & (h < H) & (q >= 0) & (q < W)


def _window_maxima(run: _Run, env: dict, x: Ref, geometry) -> tuple:
    """((planes, H, W, Ho, Wo), (p, h, q) of each window's first maximum, inside) for a pooling call."""
    planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo = _ints(run, env, geometry)
    h, q, inside = _first_max(run.read(x, env, (planes, H, W)), kh, kw, sh, sw, ph, pw, Ho, Wo)
    p = np.broadcast_to(np.arange(planes)[:, None, None], h.shape)
    return (planes, H, W, Ho, Wo), (p, h, q), inside


def max_pool_backward(run: _Run, env: dict, x: Ref, g: Ref, *rest) -> None:
    """y [planes, H, W] = 0, then y[p, h, q] += g[p, ho, wo] at the first maximum (h, q) of each window."""
    (planes, H, W, Ho, Wo), (p, h, q), inside = _window_maxima(run, env, x, rest[:11])
    gs = run.read(g, env, (planes, Ho, Wo))
    out = np.zeros((planes, H, W), rest[11].buffer.dtype)
    np.add.at(out, (p[inside], h[inside], q[inside]), gs[inside])  # in (p, ho, wo) order, overlaps summed
    run.write(rest[11], env, out)


def max_pool_gather(run: _Run, env: dict, x: Ref, v: Ref, *rest) -> None:
    """y[p, ho, wo] = v[p, h, q] at the first maximum (h, q) of window (ho, wo) of x; 0 where it is padding."""
    (planes, H, W, Ho, Wo), (p, h, q), inside = _window_maxima(run, env, x, rest[:11])
    vs = run.read(v, env, (planes, H, W))
    out = np.zeros((planes, Ho, Wo), rest[11].buffer.dtype)
    out[inside] = vs[p[inside], h[inside], q[inside]]
    run.write(rest[11], env, out)


def _allreduce(reduce: str) -> Callable:
    """y = the ``reduce`` of x over every MPI rank (mpi4py; x itself on one process)."""
    def call(run: _Run, env: dict, x: Ref, y: Ref, size) -> None:
        from ...ops.collective import allreduce_array

        (n,) = _ints(run, env, [size])
        run.write(y, env, allreduce_array(run.read(x, env, (n,)), reduce).astype(y.buffer.dtype))
    return call


#: ir.LIBRARY name -> its NumPy implementation ``fn(run, env, *args)``.
LIBRARY_IMPLEMENTATIONS: dict[str, Callable] = {
    "conv2d_im2col": conv2d_im2col, "conv2d_direct": conv2d_direct, "col2im_add": col2im_add,
    "max_pool": max_pool, "avg_pool": avg_pool, "max_pool_backward": max_pool_backward,
    "max_pool_gather": max_pool_gather, "allreduce_sum": _allreduce("sum"), "allreduce_mean": _allreduce("mean"),
}

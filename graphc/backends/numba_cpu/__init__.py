"""The Numba CPU backend: a renderer of lowered Programs -> one Python module -> one native call per run.

    lowering.lower(graph, inputs) -> Program     the kernel IR (target-independent)
    render(program) -> str                       the module's source (render.py)
    build_program(program) -> Executable         cache lookup; on a miss render and write; import, Numba compile

:func:`build` does all three; ``graphc.compile(outputs, backend="cpu")`` calls it. Compile options:
``check_finite`` (NaN/Inf checks on inputs, parameters and outputs), ``boundscheck`` (Numba's
index checks, for debugging the generator), ``fastmath`` (LLVM flags; default reassociation and
contraction, which keep NaN/Inf semantics), ``cache_dir`` (default ``$GRAPHC_CACHE_DIR`` or
``~/.cache/graphc``), ``conv`` (conv2d as "im2col" + GEMM, a "direct" loop nest, or "auto": the
faster on this machine for each node's shapes, measured once and remembered in the cache directory),
``driver`` ("numba": the kernels in the generated Python, compiled by Numba; "llvm": compiled by graphc's
llvm target, which skips Numba's typing: a cold compile several times faster, see llvm_driver.py; "auto",
the default: :func:`choose_driver` picks one per Program).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import pickle
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ...io import atomic_write
from ...ir import Graph, GraphcError, Node
from ..cache import (
    MODULE_FILE,
    PROGRAM_FILE,
    Entry,
    RecordError,
    cache_key,
    cache_root,
    locked,
    op_definitions,
    read_record,
    writable_root,
    write_record,
)
from ..lowering import Program, has_rule, lower
from ..lowering.ir import COLLECTIVES, library_calls, step_work
from .executable import NumbaExecutable
from .render import render

#: LLVM fast-math flags used by default: reassociate (vectorized reductions) and contract (FMA);
#: not nnan/ninf, which would break the overflow-free branches of sigmoid and softplus.
DEFAULT_FASTMATH = ("contract", "reassoc")

_CODEGEN_OPTIONS = ("boundscheck", "fastmath", "part_lines", "conv_methods", "driver")
#: How a step's kernels are compiled (see the module docstring).
DRIVERS = ("auto", "numba", "llvm")

#: driver="auto" picks the llvm driver for a Program doing at least this much work per step (ir.step_work).
#: Its call costs ~3 us more than Numba's dispatcher (ctypes, the arrays' addresses: the 64-32-10 step, 178K,
#: takes 10.8 us against 8.2); from 2M, ~100 us at that step's rate, the difference is under 3%, and the
#: cold compile several times faster (docs/performance.md, "The llvm driver").
LLVM_MIN_WORK = 2_000_000


def build(graph: Graph | Program, inputs: Sequence[Node] | None = None, *, check_finite: bool = False,
          strict: bool = False, boundscheck: bool = False, fastmath: Sequence[str] | None = None,
          cache_dir: str | None = None, part_lines: int | None = None, conv: str = "auto",
          parallel_loops: bool = False, driver: str = "auto", plan=None) -> NumbaExecutable:
    """Lower ``graph`` and build it (see :func:`build_program`).

    ``check_finite``: raise on NaN/Inf in inputs and parameters (before the call) and in outputs
    (after). ``strict``: inputs must have the exact dtype and be C-contiguous (otherwise they are
    converted/copied). ``boundscheck``: Numba's index checks in the generated code (debugging).
    ``fastmath``: LLVM fast-math flags. ``cache_dir``: the compile cache. ``part_lines``: split
    the driver into functions of about this many lines (compile time of very large graphs).
    ``conv``: how conv2d nodes are computed ("auto", "im2col" or "direct"; see ``autotune``).
    ``parallel_loops``: run the large independent loops on all threads (``prange``, see docs/performance.md);
    off by default: Numba's parallel pipeline doubles the cold compile (MLP step 2.1 -> 4.2 s measured).
    ``driver``: "auto", "numba" or "llvm" (see the module docstring and :func:`choose_driver`; "llvm" runs no
    collective calls).
    ``plan``: the graph's buffer plan when the passes made one (else it is made here).
    """
    if isinstance(graph, Program):
        return build_program(graph, check_finite=check_finite, strict=strict, cache_dir=cache_dir)
    t0 = time.perf_counter()
    program = lower_program(graph, inputs, boundscheck=boundscheck, fastmath=fastmath, cache_dir=cache_dir,
                            part_lines=part_lines, conv=conv, parallel_loops=parallel_loops, driver=driver, plan=plan)
    codegen_s = time.perf_counter() - t0
    exe = build_program(program, check_finite=check_finite, strict=strict, cache_dir=cache_dir)
    exe.stats["codegen_s"] = codegen_s
    return exe


def lower_program(graph: Graph, inputs: Sequence[Node] | None = None, *, boundscheck: bool = False,
                  fastmath: Sequence[str] | None = None, cache_dir: str | None = None, part_lines: int | None = None,
                  conv: str = "auto", parallel_loops: bool = False, driver: str = "auto", plan=None) -> Program:
    """The Program this target renders for ``graph`` (the options as in :func:`build`; ``conv="auto"``
    autotunes each conv2d's method on this machine; ``driver="auto"`` is decided here, from the Program)."""
    options = {"boundscheck": bool(boundscheck), "part_lines": part_lines, "parallel_loops": bool(parallel_loops),
               "fastmath": tuple(sorted(DEFAULT_FASTMATH if fastmath is None else fastmath)),
               "driver": _checked_driver(driver)}
    program = lower(graph, inputs, options, plan=plan, choose_conv=conv_chooser(conv, cache_dir))
    if driver == "auto":
        program.options["driver"] = choose_driver(program)
    return program


def choose_driver(program: Program) -> str:
    """``driver="auto"``: "llvm" for a Program with at least LLVM_MIN_WORK of work per step (ir.step_work), else
    "numba"; "numba" also for what only the Numba driver does: collective calls (data-parallel steps),
    ``boundscheck`` and ``parallel_loops`` (its index checks and prange loops are Numba's)."""
    opts = program.options
    if opts.get("boundscheck") or opts.get("parallel_loops") or any(
            c.name in COLLECTIVES for c in library_calls(program)):
        return "numba"
    return "llvm" if step_work(program) >= LLVM_MIN_WORK else "numba"


def _checked_driver(driver: str) -> str:
    if driver not in DRIVERS:
        raise GraphcError(f"compile: driver must be one of {', '.join(map(repr, DRIVERS))}, got {driver!r}")
    return driver


def conv_chooser(conv: str, cache_dir: str | None):
    """How this target computes a conv2d node: ``conv`` ("im2col", "direct"), or "auto": the faster
    of the two runtime kernels for the node's shapes on this machine (autotune, remembered on disk)."""
    from .autotune import conv2d_method

    found: list[str] = []  # the autotune directory, looked up (a probe write) for the first conv only

    def choose(node: Node, geometry) -> str:
        if not found:
            found.append(str(writable_root(cache_root(cache_dir))[0]))
        return conv2d_method(geometry, node.dtype.name, found[0], conv)
    return choose


def build_program(program: Program, *, check_finite: bool = False, strict: bool = False,
                  cache_dir: str | None = None) -> NumbaExecutable:
    """Render ``program``, compile it through the on-disk cache and wrap it in an Executable.

    The entry is named by the Program (its graph's structural hash, inputs and codegen options); the
    cache entry is looked up and written under an exclusive file lock; an entry whose files do not
    match their manifest checksums is wiped and rebuilt (``stats["cache"] == "rebuilt"``).
    """
    graph = program.graph
    positions = [graph.nodes.index(n) for n in program.inputs]
    options = {k: program.options.get(k) for k in _CODEGEN_OPTIONS}
    key = cache_key(graph.structural_hash(), positions, options, op_definitions(graph))
    return _build_entry(key, lambda stages: program, None, check_finite=check_finite, strict=strict,
                        cache_dir=cache_dir)


class Stages(dict):
    """Seconds per compile stage that ran (passes, lower, render, program_load, import, numba), in wall time,
    and the same stage's CPU time of this process under ``<stage>_cpu`` (a loaded machine inflates wall time)."""

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - wall
            self[f"{name}_cpu"] = self.get(f"{name}_cpu", 0.0) + time.process_time() - cpu


def source_key(graph: Graph, inputs: Sequence[Node], level: int | None, fast_math: bool,
               options: dict[str, Any]) -> str:
    """The cache key :func:`build_graph` files a compile under: everything that determines its Program, known
    before any pass runs. The graph as built (structural hash, the ops' definitions), its node names and
    source lines (they are in the Program: error messages, kernel headings), the inputs' order, the
    optimize level, ``fast_math``, the codegen options and the environment (versions, CPU, the sources of
    the passes, the IR, the lowering and this renderer)."""
    names = hashlib.sha256(repr([graph.name] + [(n.name, n.loc) for n in graph.nodes]).encode()).hexdigest()
    material = {"optimize": level, "fast_math": bool(fast_math), "names": names,
                **{k: options.get(k) for k in _SOURCE_OPTIONS}}
    return cache_key(graph.structural_hash(), [graph.nodes.index(n) for n in inputs], material,
                     op_definitions(graph), before_passes=True)


#: build()'s options that change the Program (check_finite, strict and cache_dir do not).
_SOURCE_OPTIONS = ("boundscheck", "fastmath", "part_lines", "conv", "parallel_loops", "driver")
#: The options lower_program takes.
LOWER_OPTIONS = _SOURCE_OPTIONS + ("cache_dir",)


def build_graph(built: Graph, key: str, make_program: Callable[[Stages], Program], *,
                check_finite: bool = False, strict: bool = False, cache_dir: str | None = None,
                boundscheck: bool = False, fastmath: Sequence[str] | None = None, part_lines: int | None = None,
                conv: str = "auto", parallel_loops: bool = False, driver: str = "auto") -> NumbaExecutable:
    """``graphc.compile``'s path: the entry ``key`` (:func:`source_key` of ``built``, the graph as the user
    built it) holds the Program; a hit unpickles it and loads the machine code, skipping the passes, the
    lowering and the rendering. On a miss (or a damaged entry) ``make_program(stages)`` runs the passes and
    the lowering (recording their seconds in ``stages``), and the Program is stored with the module. The
    codegen options (as for :func:`build`) are in ``key`` and in what ``make_program`` lowers."""
    _checked_driver(driver)  # before the lookup: a hit lowers nothing that would check it
    return _build_entry(key, make_program, built, check_finite=check_finite, strict=strict, cache_dir=cache_dir)


def _build_entry(key: str, make_program: Callable[[Stages], Program], built: Graph | None, *,
                 check_finite: bool, strict: bool, cache_dir: str | None) -> NumbaExecutable:
    """The entry ``key``, loaded or (re)built under its lock. ``built`` is not None when the entry holds
    the Program (its parameters take their current values from ``built``)."""
    from ..._version import __version__

    stats: dict[str, Any] = {"cache_key": key}
    stages = Stages()
    # A read-only or missing home: compile into a per-user temporary cache.
    root, unusable = writable_root(cache_root(cache_dir))
    if unusable:
        stats["cache_dir_unusable"] = unusable
    entry = Entry(root, key)
    stats["cache_dir"] = str(entry.dir)
    t0 = time.perf_counter()

    def rebuild(program: Program) -> str:
        symbol = _entry_symbol(key) if program.options.get("driver") == "llvm" else None
        with stages.timed("render"):
            source = render(program, __version__, entry=symbol)
        if symbol is not None:
            from .llvm_driver import kernels_object

            with stages.timed("llvm"):
                obj, text = kernels_object(program, symbol)
        source_sha = entry.reset(source)
        if symbol is not None:
            write_record(entry.kernels_path, obj)
            atomic_write(entry.kernels_text_path, text.encode())
        if built is not None:
            try:
                payload = dump_program(program)
            except Exception as err:  # noqa: BLE001 - a value pickle cannot write: the entry goes without it
                stats["program_not_stored"] = f"{type(err).__name__}: {err}"  # a hit then lowers the graph again
            else:
                write_record(entry.program_path, payload)
        return source_sha

    with locked(entry.lock_path):
        problems = entry.problems()
        program = None
        if not problems and built is not None and PROGRAM_FILE in entry.read_manifest()["files"]:
            with stages.timed("program_load"):
                try:
                    program = load_program(read_record(entry.program_path), built)
                except RecordError as err:
                    problems = [str(err)]
        if any(PROGRAM_FILE in p for p in problems):
            warnings.warn(f"graphc: the compile cache entry {entry.dir} holds a damaged Program ({'; '.join(problems)}); "
                          f"rebuilding it", RuntimeWarning, stacklevel=4)
        if problems:
            stats["cache"] = "miss" if problems == ["absent"] else "rebuilt"
            stats["cache_problems"] = problems
            program = make_program(stages)
            source_sha = rebuild(program)
        else:
            stats["cache"] = "hit"
            source_sha = entry.read_manifest()["files"][MODULE_FILE]
            if program is None:
                program = make_program(stages)
        t1 = time.perf_counter()
        with stages.timed("import"):
            module = entry.import_module(reuse=not problems)
        t2 = time.perf_counter()
        stats["driver"] = program.options.get("driver")  # the one "auto" chose
        llvm = stats["driver"] == "llvm"
        numba_cpu_s = time.process_time()
        before = None if llvm else _counts(module.step)
        try:
            step = _native_step(entry, module, program, stages)
        except Exception as err:  # noqa: BLE001 - any failure to load cached code means: rebuild it
            if stats["cache"] != "hit":
                raise
            # Files that passed their checksums still failed to load (another Numba build?): rebuild.
            stats["cache"] = "rebuilt"
            stats["cache_problems"] = [f"{'the llvm driver' if llvm else 'numba'} could not load the cached code: "
                                       f"{type(err).__name__}: {err}"]
            source_sha = rebuild(program)
            module = entry.import_module(reuse=False)
            before = None if llvm else _counts(module.step)
            step = _native_step(entry, module, program, stages)
        t3 = time.perf_counter()
        numba_cpu_s = time.process_time() - numba_cpu_s
        after = None if llvm else _counts(module.step)
        numba_misses = 0 if llvm else after[1] - before[1]
        if stats["cache"] != "hit" or numba_misses:
            entry.write_manifest(source_sha, {"graph": program.graph.name, "program": program.summary()})
        if stats["cache"] == "hit" and numba_misses:
            stats["cache"] = "numba-miss"  # our files were fine, but Numba recompiled (it judged its cache stale)
    stats.update({"import_s": t2 - t1, "build_s": time.perf_counter() - t0, "stages": stages})
    if not llvm:
        module.step.disable_compile()  # every call must match the signature compiled here
        numba_hits = after[0] - before[0]
        stages.update({"numba": t3 - t2, "numba_cpu": numba_cpu_s})
        stats.update({"numba_compile_s": t3 - t2, "numba_cache_hit": numba_hits > 0 and not numba_misses,
                      "in_process": not numba_hits + numba_misses})
    return NumbaExecutable(program, module, stats, entry.module_path.read_text(), entry, check_finite=check_finite,
                           strict=strict, step=step)


def _entry_symbol(key: str) -> str:
    """The llvm driver's entry symbol for the cache entry ``key`` (unique per entry: objects never clash)."""
    return f"graphc_step_{key[:24]}"


def _native_step(entry: Entry, module, program: Program, stages: Stages):
    """The compiled step, loaded or compiled: the llvm driver's entry (an llvm_driver.EntryStep: the entry's
    object loaded, its symbol registered for ``epoch``; imported here, so the Numba driver never loads the llvm
    target), or None where the module's Numba ``step`` is (compiled now, or loaded from Numba's cache)."""
    if program.options.get("driver") != "llvm":
        _compile(module.step, _step_signature(program))
        return None
    from .llvm_driver import EntryStep, load_entry

    with stages.timed("load"):
        return EntryStep(program, load_entry(read_record(entry.kernels_path), _entry_symbol(entry.key)))


# -- the Program in the entry --------------------------------------------------------------------------------

#: The pickled Program's own format (bump when Program's fields change meaning); the record's header
#: carries its checksum (graphc.backends.cache.write_record).
PROGRAM_FORMAT = 1


class _ProgramPickler(pickle.Pickler):
    """Pickles a Program without its parameters' values (megabytes, and stale on the next compile: a hit
    takes the values of the graph being compiled)."""

    def __init__(self, file, params: list[Node]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._values = {id(p.value): k for k, p in enumerate(params) if p.value is not None}

    def persistent_id(self, obj: Any):
        if type(obj) is np.ndarray and id(obj) in self._values:
            return ("param", self._values[id(obj)])
        return None


    def reducer_override(self, obj: Any):
        # The SymPy functions of the dtype casts are classes made at import (ops.elementwise.CAST_FUNCTIONS),
        # not module attributes: pickled by their dtype's name.
        from ...ops.elementwise import CAST_FUNCTIONS

        if isinstance(obj, type) and CAST_FUNCTIONS.get(getattr(obj, "dtype_name", None)) is obj:
            return _cast_function, (obj.dtype_name,)
        return NotImplemented


def _cast_function(dtype_name: str):
    from ...ops.elementwise import CAST_FUNCTIONS

    return CAST_FUNCTIONS[dtype_name]


class _ProgramUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any):
        return None  # a parameter's value: filled in from the graph being compiled


def dump_program(program: Program) -> bytes:
    """``program`` as bytes: its state table keyed by node position (it is keyed by ``id(node)``, which
    does not survive pickling), parameter values left out."""
    graph = program.graph
    state = {graph.nodes.index(n): program.state[id(n)] for n in graph.nodes if id(n) in program.state}
    buffer = io.BytesIO()
    _ProgramPickler(buffer, graph.params).dump({"format": PROGRAM_FORMAT,
                                                "program": dataclasses.replace(program, state=state)})
    return buffer.getvalue()


def load_program(data: bytes, built: Graph) -> Program:
    """The Program of :func:`dump_program`, its parameters given the current values of ``built``'s
    parameters of the same names; RecordError when it is not a Program this graphc wrote for ``built``."""
    try:
        record = _ProgramUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # noqa: BLE001 - any unpickling failure means: not ours, rebuild
        raise RecordError(f"{PROGRAM_FILE}: cannot be unpickled ({type(err).__name__}: {err})") from None
    program = record.get("program") if isinstance(record, dict) else None
    if not isinstance(program, Program) or record.get("format") != PROGRAM_FORMAT:
        raise RecordError(f"{PROGRAM_FILE}: not a Program of format {PROGRAM_FORMAT}")
    graph = program.graph
    values = {p.name: p.value for p in built.params}
    for p in graph.params:
        if p.name not in values:
            raise RecordError(f"{PROGRAM_FILE}: its parameter {p.name!r} is not in graph {built.name!r}")
        p.value = values[p.name]
    program.state = {id(graph.nodes[k]): slot for k, slot in program.state.items()}
    return program


def _counts(dispatcher) -> tuple[int, int]:
    return sum(dispatcher.stats.cache_hits.values()), sum(dispatcher.stats.cache_misses.values())


def _compile(dispatcher, signature) -> None:
    """Compile (or load) one signature; if Numba cannot load the runtime kernels' own cache files,
    flush those caches and try once more."""
    from . import runtime

    if tuple(signature) in dispatcher.overloads:  # already compiled in this process
        return
    with driver_opt_level():
        try:
            if not _load_cached(dispatcher, signature):
                dispatcher.compile(signature)
        except Exception:
            for kernel in runtime.KERNELS:
                kernel._cache.flush()
            dispatcher.compile(signature)


#: LLVM's optimization level for a driver (Numba's own default is 3). Measured (bench/compile_time.py,
#: bench/train_step.py): LLVM's time on the LeNet-like step 2.3 -> 1.4 s, the MLP's and the tiny step's a few
#: percent less, and the steps run as fast: a driver is loop nests and inlined runtime kernels, which level 2
#: already inlines, folds, unrolls and vectorizes (see docs/performance.md).
DRIVER_OPT_LEVEL = 2


@contextlib.contextmanager
def driver_opt_level(level: int = DRIVER_OPT_LEVEL) -> Iterator[None]:
    """Numba's LLVM passes at ``level`` while a driver compiles. Numba reads ``config.OPT`` whenever it builds
    a pass manager; holding its global compiler lock keeps every other thread's compile out of this window."""
    from numba.core import config
    from numba.core.compiler_lock import global_compiler_lock

    with global_compiler_lock:
        saved = config.OPT
        config.OPT = type(saved)(level)
        try:
            yield
        finally:
            config.OPT = saved


def _load_cached(dispatcher, signature) -> bool:
    """Load ``signature``'s machine code from Numba's cache as ``dispatcher.compile`` does, less its first
    step: ``Cache.load_overload`` refreshes the target context, which imports and installs every lowering
    implementation Numba has (~0.3 s of a 0.4 s cache hit) that code loaded as machine code never uses;
    its one part that such code needs, the runtime's memory manager, is initialized here.
    False when there is nothing cached (the caller compiles); a Numba whose internals differ gets False too."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.runtime import rtsys

    cache, hits = getattr(dispatcher, "_cache", None), getattr(dispatcher, "_cache_hits", None)
    load = getattr(cache, "_load_overload", None)
    if load is None or hits is None:
        return False
    with global_compiler_lock:
        rtsys.initialize(dispatcher.targetctx)  # the part of the refresh loaded code needs: Numba's memory manager
        cres = load(signature, dispatcher.targetctx)
        if cres is None:
            return False
        hits[signature] += 1
        if not cres.objectmode:
            dispatcher.targetctx.insert_user_function(cres.entry_point, cres.fndesc, [cres.library])
        dispatcher.add_overload(cres)
    return True


def _step_signature(program: Program) -> tuple:
    import numba
    from numba import types

    args = [types.Array(numba.from_dtype(n.dtype.np), n.ndim, "C") for n in program.inputs]
    u8 = types.Array(types.uint8, 1, "C")
    return tuple(args) + (u8, u8, types.Array(types.int64, 1, "C"))


def compile_function(exe: NumbaExecutable, name: str, signature: tuple):
    """Compile (or load from the cache) another function of ``exe``'s module, e.g. ``epoch``; keeps the
    manifest in step with Numba's cache files."""
    fn = getattr(exe.module, name)
    if tuple(signature) in fn.overloads:
        return fn
    entry: Entry = exe._entry
    t0 = time.perf_counter()
    with locked(entry.lock_path):
        fn.compile(signature)
        if fn.stats.cache_misses:
            manifest = entry.read_manifest() or {}
            # The module's checksum as imported, not as the manifest says: the manifest is rewritten, not trusted.
            entry.write_manifest(exe.module.__graphc_sha__,
                                 {k: v for k, v in manifest.items() if k in ("graph", "program")})
    exe.stats[f"{name}_compile_s"] = time.perf_counter() - t0
    return fn


def fresh_dispatcher(exe: NumbaExecutable):
    """The driver compiled afresh, without the cache (machine code loaded from Numba's cache carries
    no LLVM IR): the module's source is executed again with ``cache=False`` and ``step`` compiled."""
    import types as pytypes

    source = exe.source.replace("NJIT = dict(cache=True,", "NJIT = dict(cache=False,", 1)
    module = pytypes.ModuleType(exe.module.__name__ + "_inspect")
    exec(compile(source, exe._entry.module_path.as_posix(), "exec"), module.__dict__)
    with driver_opt_level():
        module.step.compile(exe._signature)
    return module.step


def has_lowering(op: str) -> bool:
    """Whether this backend computes ``op``: every op with a lowering rule (the renderer covers the
    whole kernel IR)."""
    return has_rule(op)


__all__ = ["DEFAULT_FASTMATH", "NumbaExecutable", "Program", "build", "build_program", "cache_root",
           "has_lowering", "lower", "lower_program", "render"]

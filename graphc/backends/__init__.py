"""Backends: each lowers a Graph to something that runs. ``reference`` is the NumPy oracle.

:func:`compile` is the one entry point: it cuts the graph down to what the outputs and
updates need, optimizes it (when the passes are available), and hands it to a backend.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from ..ir import Graph, GraphcError, Node
from ..ir.rewrite import clone
from . import threads as _threads  # first: it sets the thread pools' spin defaults before they load
from .executable import Executable

#: The backends that run a lowered Program as native code (and build from the optimized graph).
NATIVE = ("cpu", "cuda")
#: "cuda" needs the cuda extra and a GPU or Numba's simulator (graphc.backends.numba_cuda).
BACKENDS = ("reference", "cpu", "cuda")
#: The targets that render a lowered Program: the native backends, and llvm (graphc.export's ahead-of-time target).
LOWERED = NATIVE + ("llvm",)


def compile(outputs: Any, inputs: Sequence[Any] | None = None, backend: str = "reference",
            name: str | None = None, optimize: int | None = None, fast_math: bool = False,
            threads: int | None = None, **options: Any) -> Executable:
    """Compile ``outputs`` (a Tensor, a list, or a Graph: all its outputs) of their graph into an :class:`Executable`.

    ``inputs`` fixes the positional call order (default: the graph's inputs that are needed,
    in creation order); an input the passes made unused (``x - x`` under ``fast_math``) is still
    accepted, checked and ignored. Parameter updates registered with ``Graph.update`` run in place
    on every call. ``fast_math`` allows the passes' rewrites that do not hold for NaN, infinities or
    overflow (see graphc.optimize and docs/passes.md; the default keeps IEEE semantics). ``options``
    go to the backend (``backend="cpu"``: see graphc.backends.numba_cpu.build).

    ``threads`` (backend "cpu"): the threads of graphc's parallel loops and of BLAS. None (default): the
    cores of the process's affinity mask, less each core other processes kept busy during the compile
    (graphc.backends.threads), re-checked by ``fit`` each epoch and by ``run_epoch``; an int fixes it.

    ``check_finite=True`` (every backend): NaN or Inf in an input or parameter is an InputError naming
    it; NaN or Inf in an output or an updated parameter after a call puts the parameters back to their
    values before the call and raises a NonFiniteError naming the first node that produced it (op,
    rule, the user's line), found by replaying the call on the reference backend from the graph as
    built (``exe.source_graph``, kept from before optimization).
    """
    if backend not in BACKENDS:
        raise GraphcError(f"compile: unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    tensors = _tensors(outputs)
    if backend == "cuda":  # before any work: say what is missing (the extra, a GPU or the simulator)
        from .numba_cuda import require_device

        require_device()
    t0 = time.perf_counter()
    policy = _threads.ThreadPolicy(_threads.check_threads(threads, "compile"))  # samples the load over the build
    if backend == "cpu":  # the cache entry is found before the passes: a hit skips them and the codegen
        exe = _build_cpu(tensors, inputs, name, optimize, fast_math, options)
        exe.use_threads(policy)
        exe.stats["trace_to_build_s"] = time.perf_counter() - t0
        return exe
    built, graph, call_inputs, optimized = _prepare(tensors, inputs, backend, name, optimize, fast_math)
    if backend == "cuda":
        from . import numba_cuda

        plan = optimized.buffer_plan if optimized is not None else None  # planned once, by the passes
        exe = numba_cuda.build(graph, call_inputs, plan=plan, **options)
    else:
        from . import reference

        exe = reference.build(graph, call_inputs, **options)
    exe.source_graph = built
    exe.stats["trace_to_build_s"] = time.perf_counter() - t0
    if optimized is not None:
        exe.stats["optimize"] = optimized  # the OptimizeResult: per-pass statistics and the buffer plan
    return exe


def _build_cpu(tensors: list, inputs: Sequence[Any] | None, name: str | None, optimize: int | None,
               fast_math: bool, options: dict[str, Any]) -> Executable:
    """compile() for backend="cpu": the entry is keyed by the graph as built (numba_cpu.source_key), so
    that a hit unpickles its Program; only a miss runs the passes and the lowering."""
    from . import numba_cpu

    built, call_inputs = _cut(tensors, inputs, name)
    if optimize is None:
        from ..passes import DEFAULT_LEVEL as optimize
    key = numba_cpu.source_key(built, call_inputs, optimize, fast_math, options)
    optimized: list = []

    def make_program(stages: numba_cpu.Stages):
        with stages.timed("passes"):
            graph, lowered_inputs, result = _optimize(built, call_inputs, optimize, fast_math)
        optimized.append(result)
        with stages.timed("lower"):
            return numba_cpu.lower_program(graph, lowered_inputs, plan=result.buffer_plan if result else None,
                                           **{k: v for k, v in options.items() if k in numba_cpu.LOWER_OPTIONS})

    exe = numba_cpu.build_graph(built, key, make_program, **options)
    exe.source_graph = built
    if optimized:
        exe.stats["optimize"] = optimized[0]  # the OptimizeResult: per-pass statistics and the buffer plan
    stages = exe.stats["stages"]
    exe.stats["codegen_s"] = stages.get("lower", 0.0) + stages.get("render", 0.0)  # 0 on a hit: none ran
    return exe


def _tensors(outputs: Any) -> list:
    """The output Tensors of one graph: ``outputs`` (a Tensor, a list of them, or a Graph: all its outputs)."""
    from ..dsl import Tensor

    if isinstance(outputs, Graph):
        outputs = [Tensor(o, outputs) for o in outputs.outputs]
    tensors = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    if not tensors:
        raise GraphcError("compile: nothing to compile (no outputs)")
    for k, t in enumerate(tensors):
        if not isinstance(t, Tensor):  # a Node of g.outputs, say: an AttributeError deeper in otherwise
            what = f"graph node ({t.op}{f', {t.loc}' if t.loc else ''})" if isinstance(t, Node) else type(t).__name__
            raise GraphcError(f"compile: output {k} is a {what}, not a Tensor; pass the Tensors graphc's "
                              f"functions return (g.output(...)), or the Graph for all its outputs")
    _check_one_graph(tensors, tensors[0].graph)
    return tensors


def _prepare(tensors: list, inputs: Sequence[Any] | None, backend: str, name: str | None, optimize: int | None,
             fast_math: bool) -> tuple[Graph, Graph, list[Node], Any]:
    """What :func:`compile` hands a backend: (the graph cut down to ``tensors`` as the user built it, the
    graph to lower (optimized: the default level for native backends), its call inputs, the OptimizeResult
    or None)."""
    built, call_inputs = _cut(tensors, inputs, name)
    if optimize is None and backend in LOWERED:  # native code is built from the optimized graph (optimize=0: as written)
        from ..passes import DEFAULT_LEVEL as optimize
    graph, call_inputs, optimized = _optimize(built, call_inputs, optimize, fast_math)
    return built, graph, call_inputs, optimized


def _cut(tensors: list, inputs: Sequence[Any] | None, name: str | None) -> tuple[Graph, list[Node]]:
    """The graph cut down to ``tensors`` as the user built it (check_finite replays a failing call on it),
    and its call inputs."""
    source: Graph = tensors[0].graph
    graph, mapping = clone(source, [t.node for t in tensors], name=name)
    if inputs is None:
        return graph, graph.inputs
    call_inputs = []
    for t in inputs:
        node = source.find(t) if isinstance(t, str) else getattr(t, "node", t)
        if id(node) not in mapping:
            raise GraphcError(f"compile: input {node.name!r} is not used by the outputs")
        call_inputs.append(mapping[id(node)])
    unlisted = [n.name for n in graph.inputs if all(n is not c for c in call_inputs)]
    if unlisted:
        raise GraphcError(f"compile: the outputs need input(s) {unlisted} that are not in `inputs`")
    return graph, call_inputs


def _optimize(graph: Graph, call_inputs: list[Node], optimize: int | None, fast_math: bool) -> tuple[Graph, list[Node], Any]:
    """(the graph to lower, its call inputs, the OptimizeResult or None): graphc.passes at level
    ``optimize`` (None: none); inputs are matched to their copies by name."""
    if optimize is None:
        return graph, call_inputs, None
    from ..passes import optimize as run_passes

    optimized = run_passes(graph, optimize, fast_math=fast_math)
    return optimized.graph, _inputs_of(optimized.graph, call_inputs), optimized


def lower_for(outputs: Any, inputs: Sequence[Any] | None = None, backend: str = "cuda", name: str | None = None,
              optimize: int | None = None, fast_math: bool = False, **options: Any):
    """The kernel IR (a ``lowering.Program``) that ``compile(outputs, inputs, backend, ...)`` would build,
    without building it: the same cut, passes (the default level unless ``optimize`` says otherwise) and
    the target's lowering choices (``options``: the backend's, e.g. ``conv``). No GPU is needed for
    ``backend="cuda"``, so that its kernels can be compiled offline (``numba_cuda.compile_ptx``);
    ``backend="llvm"`` gives the Program ``graphc.export`` renders.
    ``outputs`` may also be a Graph: all its outputs, its inputs in creation order (as ``fit`` compiles).

    >>> program = graphc.backends.lower_for(build_train_step(model, 128, optim.SGD(0.1)))  # doctest: +SKIP
    """
    if backend not in LOWERED:
        raise GraphcError(f"lower_for: backend {backend!r} does not run a lowered Program; use one of "
                          f"{', '.join(LOWERED)}")
    _built, graph, call_inputs, optimized = _prepare(_tensors(outputs), inputs, backend, name, optimize, fast_math)
    if backend == "cuda":
        from . import numba_cuda as target
    elif backend == "llvm":
        from . import llvm as target
    else:
        from . import numba_cpu as target
    plan = optimized.buffer_plan if optimized is not None else None
    return target.lower_program(graph, call_inputs, plan=plan, **options)


def _check_one_graph(tensors: list, source: Graph) -> None:
    """All outputs must come from one graph (a KeyError deep in the cloning otherwise)."""
    for t in tensors[1:]:
        graph = getattr(t, "graph", None)
        if graph is not source:
            where = f" ({t.node.loc})" if getattr(getattr(t, "node", None), "loc", None) else ""
            raise GraphcError(f"compile: the outputs come from two graphs, {source.name!r} and "
                              f"{getattr(graph, 'name', '?')!r}{where}; compile the outputs of one graph together")


def _inputs_of(graph: Graph, call_inputs: list[Node]) -> list[Node]:
    """The optimized graph's copies of ``call_inputs``, matched by name. An input the passes made
    unused (``x*0 + y`` under fast_math) is added back to ``graph`` without readers, so that the
    executable still takes it in its place (checked for shape and dtype, then ignored)."""
    copies = {n.name: n for n in graph.inputs}
    out = []
    for n in call_inputs:
        if n.name not in copies:
            copies[n.name] = graph.add(Node("input", (), n.attrs, n.shape, n.dtype, name=n.name, loc=n.loc))
        out.append(copies[n.name])
    return out


__all__ = ["BACKENDS", "Executable", "Node", "compile", "lower_for"]

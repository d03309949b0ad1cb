"""The pass pipeline: ``optimize(graph, level)`` runs the passes of a level, can dump the graph
after each one, and reports per-pass statistics and the buffer plan.
"""
from __future__ import annotations

import inspect
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from ..ir import Graph
from .activations import derivatives_from_outputs
from .algebra import simplify
from .buffers import BufferPlan, naive_bytes, plan_buffers
from .cleanup import cse, dce
from .core import count_kernels
from .epilogue import fuse_epilogue
from .fold import fold_constants
from .fusion import fuse_elementwise
from .printing import annotated_text
from .reductions import fuse_reductions
from .schedule import sink_update_products
from .stability import stabilize
from .sympy_simplify import simplify_expressions

Pass = Callable[[Graph], Graph]

#: The passes of each level, in order. Level 0 only drops dead nodes.
LEVELS: dict[int, tuple[tuple[str, Pass], ...]] = {
    0: (("dce", dce),),
    1: (("dce", dce), ("fold_constants", fold_constants), ("simplify", simplify), ("cse", cse)),
}
LEVELS[2] = LEVELS[1] + (
    ("fuse_reductions", fuse_reductions),
    ("stabilize", stabilize),
    ("derivatives_from_outputs", derivatives_from_outputs),
    ("simplify", simplify),
    ("cse", cse),
    ("fuse_elementwise", fuse_elementwise),
    ("fuse_epilogue", fuse_epilogue),
    ("sink_update_products", sink_update_products),
)
LEVELS[3] = LEVELS[2] + (("simplify_expressions", simplify_expressions), ("cse", cse))

DEFAULT_LEVEL = 2


@dataclass
class PassStats:
    """What one pass did: node and kernel counts before and after, and its time in seconds.

    A kernel is a node that computes: not an input, a parameter, a constant or a reshape
    (see :func:`graphc.passes.core.is_kernel`).
    """

    name: str
    nodes_before: int
    nodes_after: int
    kernels_before: int
    kernels_after: int
    seconds: float


@dataclass
class OptimizeResult:
    """The optimized graph, what each pass did, and the buffer plan of the result.

    ``optimize`` returns this rather than attaching statistics to the graph, so that a graph
    stays a plain value (its structural hash, the compile-cache key, never sees statistics).
    """

    graph: Graph
    level: int
    passes: list[PassStats] = field(default_factory=list)
    buffer_plan: BufferPlan | None = None
    #: Whether the fast-math rewrites were allowed (see :func:`optimize`).
    fast_math: bool = False
    #: Bytes of intermediates in the input graph when each gets its own buffer.
    input_intermediate_bytes: int = 0
    plan_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        """Total time of the passes and the buffer plan."""
        return sum(p.seconds for p in self.passes) + self.plan_seconds

    def table(self) -> str:
        """The per-pass statistics as an aligned text table."""
        rows = [f"{'pass':<28} {'nodes':>13} {'kernels':>13} {'ms':>8}"]
        for k, p in enumerate(self.passes, start=1):
            rows.append(f"{k:02d} {p.name:<25} {p.nodes_before:>5} -> {p.nodes_after:<5} "
                        f"{p.kernels_before:>5} -> {p.kernels_after:<5} {p.seconds * 1e3:>8.2f}")
        if self.buffer_plan is not None:
            rows.append(f"{'   buffer_plan':<28} {'':>13} {'':>13} {self.plan_seconds * 1e3:>8.2f}")
            rows.append(f"intermediate bytes: {self.input_intermediate_bytes} (input graph, one buffer each) -> "
                        f"{self.buffer_plan.arena_bytes} (optimized graph, planned; "
                        f"{self.buffer_plan.naive_bytes} unplanned, peak live {self.buffer_plan.peak_live_bytes})")
        rows.append(f"total {self.seconds * 1e3:.1f} ms")
        return "\n".join(rows) + "\n"

    def to_json(self) -> dict:
        """The statistics as plain data (for benchmarks and dumps)."""
        plan = self.buffer_plan
        return {
            "graph": self.graph.name, "level": self.level, "fast_math": self.fast_math, "seconds": self.seconds,
            "passes": [asdict(p) for p in self.passes],
            "plan_seconds": self.plan_seconds,
            "input_intermediate_bytes": self.input_intermediate_bytes,
            "naive_bytes": plan.naive_bytes if plan else None,
            "arena_bytes": plan.arena_bytes if plan else None,
            "peak_live_bytes": plan.peak_live_bytes if plan else None,
            "slots": len(plan.slot_bytes) if plan else None,
            "inplace_updates": len(plan.inplace_updates) if plan else None,
        }


def optimize(graph: Graph, level: int = DEFAULT_LEVEL, dump_dir: str | None = None,
             fast_math: bool = False) -> OptimizeResult:
    """Optimize ``graph`` with the passes of ``level`` (0..3); the input graph is not modified.

    The passes keep IEEE semantics (NaN and infinities come out where the graph as written gives
    them) unless ``fast_math=True``, which allows identities of real numbers that NaN, infinities
    or overflow break, as a C compiler's -ffast-math: ``x*0 -> 0``, ``x - x -> 0``, ``x/x -> 1``,
    ``exp(log x) -> x``, ``log(exp x) -> x``, SymPy's own simplifications inside fused expressions,
    and (level 3) ``simplify_expressions``. See docs/passes.md.

    Levels: 0 dead-code elimination only; 1 + constant folding, algebraic simplification, CSE;
    2 + reduction fusion, stability rewrites, activation derivatives from outputs, elementwise
    and epilogue fusion (the default); 3 + SymPy simplification of fused expressions (time budget).

    ``dump_dir`` (or the environment variable ``GRAPHC_DUMP``) names a directory that receives
    ``00_input.txt`` and, for each pass, ``NN_<pass>.txt`` (statistics, the graph's text form and
    where each fused node's pieces came from) and ``NN_<pass>.dot``; then ``buffer_plan.txt`` and
    ``stats.json``.

    >>> import graphc
    >>> with graphc.Graph("demo") as g:
    ...     x = graphc.input("x", (4,))
    ...     y = g.output(graphc.relu(x * 1.0 + 0.0) * 2.0)
    >>> result = graphc.optimize(g, level=2)
    >>> [n.op for n in result.graph.nodes]
    ['input', 'fused']
    >>> result.passes[0].name, result.graph.nodes[1].attrs["expr"]
    ('dce', 2.0*Piecewise((0, x0 <= 0), (x0, True)))
    """
    if level not in LEVELS:
        raise ValueError(f"optimize: level must be one of {sorted(LEVELS)}, got {level!r}")
    dump_dir = dump_dir if dump_dir is not None else os.environ.get("GRAPHC_DUMP") or None
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        _dump(dump_dir, "00_input", graph, None)
    result = OptimizeResult(graph, level, fast_math=bool(fast_math))
    result.input_intermediate_bytes = naive_bytes(graph)
    current = graph
    for k, (name, fn) in enumerate(LEVELS[level], start=1):
        before_nodes, before_kernels = len(current.nodes), count_kernels(current)
        t0 = time.perf_counter()
        current = fn(current, fast_math=fast_math) if _takes_fast_math(fn) else fn(current)
        seconds = time.perf_counter() - t0
        stats = PassStats(name, before_nodes, len(current.nodes), before_kernels, count_kernels(current), seconds)
        result.passes.append(stats)
        if dump_dir:
            _dump(dump_dir, f"{k:02d}_{name}", current, stats)
    t0 = time.perf_counter()
    result.buffer_plan = plan_buffers(current)
    result.plan_seconds = time.perf_counter() - t0
    result.graph = current
    if dump_dir:
        with open(os.path.join(dump_dir, "buffer_plan.txt"), "w") as f:
            f.write(result.buffer_plan.text())
        with open(os.path.join(dump_dir, "stats.json"), "w") as f:
            json.dump(result.to_json(), f, indent=2)
        with open(os.path.join(dump_dir, "stats.txt"), "w") as f:
            f.write(result.table())
    return result


def _takes_fast_math(fn: Pass) -> bool:
    """Whether a pass has rewrites that only ``fast_math`` allows (its ``fast_math`` keyword)."""
    return "fast_math" in inspect.signature(fn).parameters


def _dump(directory: str, stem: str, graph: Graph, stats: PassStats | None) -> None:
    header = [f"# {stem}"]
    if stats is not None:
        header.append(f"# nodes {stats.nodes_before} -> {stats.nodes_after}, kernels {stats.kernels_before} -> "
                      f"{stats.kernels_after}, {stats.seconds * 1e3:.2f} ms")
    with open(os.path.join(directory, stem + ".txt"), "w") as f:
        f.write("\n".join(header) + "\n" + annotated_text(graph))
    with open(os.path.join(directory, stem + ".dot"), "w") as f:
        f.write(graph.to_dot())

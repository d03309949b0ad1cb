"""Graph optimization passes: each a pure function ``Graph -> Graph``, composed by :func:`optimize`.

    result = graphc.optimize(graph, level=2, dump_dir="dump")   # an OptimizeResult
    result.graph          # the optimized graph (the input graph is untouched)
    print(result.table()) # nodes, kernels and time per pass; intermediate bytes before/after
    result.buffer_plan    # where each value lives (graphc.passes.buffers), for the backends

See docs/passes.md for the passes, the fused-node conventions and the buffer-plan API.
"""
from .activations import derivatives_from_outputs
from .algebra import simplify
from .buffers import BufferPlan, plan_buffers
from .cleanup import cse, dce
from .core import count_kernels, is_kernel
from .epilogue import fuse_epilogue
from .fold import fold_constants
from .fusion import fuse_elementwise, fused_cse
from .pipeline import DEFAULT_LEVEL, LEVELS, OptimizeResult, PassStats, optimize
from .printing import annotated_text, fused_provenance
from .reductions import fuse_reductions
from .stability import stabilize
from .sympy_simplify import simplify_expressions

__all__ = [
    "BufferPlan", "DEFAULT_LEVEL", "LEVELS", "OptimizeResult", "PassStats", "annotated_text", "count_kernels", "cse",
    "dce", "derivatives_from_outputs", "fold_constants", "fuse_elementwise", "fuse_epilogue", "fuse_reductions",
    "fused_cse", "fused_provenance", "is_kernel", "optimize", "plan_buffers", "simplify", "simplify_expressions",
    "stabilize",
]

"""Every op graphc knows, one registry entry each, grouped by family in the modules below.

Importing a module registers its ops; the order here is the registry's order, and so the order of
the generated op reference: the families first, then the fused ops graphc.passes builds from them.
"""
# isort: off
from . import elementwise, linalg, conv, reduce, shape, nn, random, source  # noqa: F401
from . import fused  # noqa: F401
# isort: on
from .elementwise import is_elementwise, node_expression
from .registry import OpDef, UnknownOpError, all_ops, get, is_registered, is_source, is_view, register

__all__ = ["OpDef", "UnknownOpError", "all_ops", "conv", "elementwise", "fused", "get", "is_elementwise", "is_registered", "is_source",
           "is_view", "linalg", "nn", "node_expression", "random", "reduce", "register", "shape", "source"]

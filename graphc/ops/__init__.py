"""Every op graphc knows, one registry entry each, grouped by family in the modules below."""
from . import conv, elementwise, linalg, nn, random, reduce, shape  # noqa: F401  (importing registers the ops)
from . import fused  # noqa: F401,E402  (the epilogue ops graphc.passes builds)
from .registry import OpDef, all_ops, get, is_registered, register

__all__ = ["OpDef", "all_ops", "conv", "elementwise", "get", "is_registered", "linalg", "nn", "random", "reduce", "register",
           "shape"]

"""Every op graphc knows, one registry entry each, grouped by family in the modules below."""
from . import (  # noqa: F401  (importing registers the ops)
           conv,
           elementwise,
           fused,  # noqa: F401,E402  (the epilogue ops graphc.passes builds)
           linalg,
           nn,
           random,
           reduce,
           shape,
)
from .registry import OpDef, all_ops, get, is_registered, register

__all__ = ["OpDef", "all_ops", "conv", "elementwise", "get", "is_registered", "linalg", "nn", "random", "reduce", "register",
           "shape"]

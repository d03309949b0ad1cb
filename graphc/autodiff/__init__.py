"""Automatic differentiation: gradients as graph nodes.

* :func:`grad` (reverse mode) appends the gradient of a scalar to its graph;
* :func:`hvp` builds Hessian-vector products (a gradient of a gradient);
* :func:`jvp` is forward mode, derived from the reverse-mode rules;
* :func:`check_grad` compares any of them with central finite differences in float64;
* :func:`gradient_text` prints the backward nodes of one gradient with their provenance.
"""
from .check import GradCheck, check_grad, float64_copy
from .forward import jvp
from .reverse import backward, grad, gradient_nodes, gradient_text, hvp

__all__ = ["GradCheck", "backward", "check_grad", "float64_copy", "grad", "gradient_nodes", "gradient_text", "hvp",
           "jvp"]

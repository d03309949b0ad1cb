"""The op reference, generated from the op registry (``graphc ops``; ``graphc ops --markdown`` writes docs/ops.md).

Everything shown comes from the registry entries themselves: name, family, doc string, notes, and for
elementwise ops the SymPy expression, its parameters with their defaults and the derivative SymPy
derives from it. Nothing here is written by hand, so the reference cannot drift from the code
(tests/test_docs.py checks that docs/ops.md equals this module's current output).

>>> from graphc.docs import op_names
>>> "relu" in op_names() and "matmul" in op_names()
True
"""
from __future__ import annotations

import inspect
from typing import Iterable

import sympy as sp

import graphc
from graphc.ops import all_ops, is_registered, registry
from graphc.ops.registry import OpDef

#: The command that regenerates docs/ops.md; quoted in the file's header.
REGENERATE = "graphc ops --markdown > docs/ops.md"


def is_derivative_op(op: OpDef) -> bool:
    """True for the ``d<op>_d<x>`` ops autodiff registers lazily; they are not part of the reference."""
    return op.derivative_of is not None


#: Families in pipeline-reading order; any other family follows, in registration order.
FAMILY_ORDER = ("elementwise", "linalg", "conv", "nn", "reduce", "shape")


def documented_ops() -> list[OpDef]:
    """Every registered op except lazily-registered derivative ops, grouped by family (ops in registration order)."""
    families: dict[str, list[OpDef]] = {family: [] for family in FAMILY_ORDER}
    for op in all_ops():
        if not is_derivative_op(op):
            families.setdefault(op.family, []).append(op)
    return [op for family_ops in families.values() for op in family_ops]


def op_names() -> list[str]:
    """Names of the documented ops, in the order the reference lists them."""
    return [op.name for op in documented_ops()]


def _derivatives(op: OpDef) -> list[tuple[sp.Symbol, sp.Expr | str]]:
    """Each input symbol and the derivative autodiff uses; a user op SymPy cannot differentiate is
    documented as such (``grad`` refuses it; the reference must still list it)."""
    from graphc.ops.elementwise import UndefinedDerivativeError, _derivative_expr

    def derivative(i: int) -> sp.Expr | str:
        try:
            return _derivative_expr(op.name, i)
        except UndefinedDerivativeError as err:
            return f"undefined ({str(err).split(': ', 1)[-1].split(' (')[0]})"

    return [(sym, derivative(i)) for i, sym in enumerate(op.symbols)]


def _gradient_kind(op: OpDef) -> str:
    if op.vjp is None:
        return "none yet (no VJP rule registered)"
    if op.source:
        return "a leaf: its value is given, not computed; gradients stop there (graphc.grad is taken with respect to inputs and parameters)"
    if op.vjp is registry.no_gradient:
        return "not differentiable (no gradient flows through it)"
    if op.is_elementwise:
        return "derived by SymPy from the expression (below)"
    return "hand-written VJP rule"


def _params_text(op: OpDef) -> str:
    if not op.params:
        return "none"
    return ", ".join(f"`{p}={_number(v)}`" for p, v in op.params.items())


def _number(value: object) -> str:
    return repr(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def _latex(op: OpDef) -> str:
    args = ", ".join(sp.latex(s) for s in op.symbols)
    if op.params:
        args += "; " + ", ".join(sp.latex(sp.Symbol(p)) for p in op.params)
    name = op.name.replace("_", r"\_")
    return rf"\operatorname{{{name}}}({args}) = {sp.latex(op.expr)}"


# -- plain text (the terminal) ------------------------------------------------------------------------------

def ops_table() -> str:
    """One line per op: name, family, doc. What ``graphc ops`` prints."""
    ops = documented_ops()
    width = max(len(op.name) for op in ops)
    fam_width = max(len(op.family) for op in ops)
    lines = [f"{op.name:<{width}}  {op.family:<{fam_width}}  {op.doc}" for op in ops]
    lines.append(f"\n{len(ops)} ops. `graphc ops NAME` shows one in detail; `{REGENERATE}` writes the reference.")
    return "\n".join(lines)


def op_detail(name: str, unicode: bool = True) -> str:
    """Everything the registry knows about one op, for the terminal (SymPy's pretty form included)."""
    op = registry.get(name)
    lines = [f"{op.name}  ({op.family})", f"  {op.doc}", f"  gradient: {_gradient_kind(op)}"]
    if op.is_elementwise:
        lines.append(f"  inputs: {', '.join(map(str, op.symbols))}    parameters: {_params_text(op).replace('`', '')}")
        lines.append(f"  expression: {op.expr}")
        lines.append("")
        lines.extend("    " + line for line in sp.pretty(op.expr, use_unicode=unicode).splitlines())
        lines.append("")
        for sym, d in _derivatives(op):
            lines.append(f"  d/d{sym}: {d}")
    if op.notes:
        lines.append(f"  notes: {op.notes}")
    return "\n".join(lines)


# -- Markdown (docs/ops.md) ---------------------------------------------------------------------------------

def _anchor(name: str) -> str:
    return name.lower().replace(" ", "-")


def _composite_functions() -> list[tuple[str, object]]:
    """Public graphc functions from graphc.ops that are not ops themselves: they build graphs of ops.

    graphc.ops.tensor's ``apply`` and ``constant`` are the DSL's node builders (graphc.dsl re-exports them),
    documented with it, not op builders."""
    found = []
    for name in sorted(graphc.__all__):
        fn = getattr(graphc, name)
        module = getattr(fn, "__module__", "")
        if (inspect.isfunction(fn) and module.startswith("graphc.ops.") and module != "graphc.ops.tensor"
                and not is_registered(name)):
            found.append((name, fn))
    return found


def _parameters(fn: object) -> str:
    """A signature without annotations: ``x, axis=-1``."""
    parts = []
    for p in inspect.signature(fn).parameters.values():
        text = ("*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else "") + p.name
        if p.default is not p.empty:
            text += f"={p.default!r}"
        parts.append(text)
    return ", ".join(parts)


def _first_paragraph(doc: str | None) -> str:
    text = inspect.cleandoc(doc or "")
    return " ".join(text.split("\n\n")[0].split())


def _markdown_op(op: OpDef) -> Iterable[str]:
    yield f"### `{op.name}`"
    yield ""
    yield f"{op.doc}"
    yield ""
    yield f"- family: {op.family}"
    yield f"- gradient: {_gradient_kind(op)}"
    if op.is_elementwise:
        yield f"- inputs: {', '.join(f'`{s}`' for s in op.symbols)}"
        yield f"- parameters: {_params_text(op)}"
    if op.notes:
        yield f"- notes: {op.notes}"
    if op.is_elementwise:
        yield ""
        yield "$$"
        yield _latex(op)
        yield "$$"
        yield ""
        yield f"SymPy: `{op.expr}`"
        yield ""
        yield "Derivatives (SymPy, as autodiff uses them):"
        yield ""
        for sym, d in _derivatives(op):
            yield f"- ∂/∂{sym}: `{d}`"
    yield ""


def ops_markdown() -> str:
    """The whole op reference as Markdown: what docs/ops.md contains."""
    ops = documented_ops()
    families: dict[str, list[OpDef]] = {}
    for op in ops:
        families.setdefault(op.family, []).append(op)

    out = [
        "# graphc op reference",
        "",
        f"<!-- Generated from the op registry by `{REGENERATE}`. Do not edit by hand. -->",
        "",
        "Every op graphc knows, one registry entry each (`graphc/ops/`). Elementwise ops are defined by one SymPy",
        "expression; their reference implementation (`lambdify`), their derivative (`sympy.diff`, shown below) and",
        "their code in fused kernels all come from that expression. The other ops have hand-written shape rules,",
        "NumPy references and VJP rules. User activations defined with `graphc.elementwise(name, fn)` get the same",
        "treatment; they are not listed here. Derivative ops (`d<op>_d<x>`) are registered by autodiff on",
        "first use and are not listed either.",
        "",
        f"{len(ops)} ops in {len(families)} families:",
        "",
    ]
    for family, family_ops in families.items():
        links = ", ".join(f"[`{op.name}`](#{_anchor(op.name)})" for op in family_ops)
        out.append(f"- **{family}**: {links}")
    out.append("")
    for family, family_ops in families.items():
        out.append(f"## {family}")
        out.append("")
        for op in family_ops:
            out.extend(_markdown_op(op))

    composites = _composite_functions()
    if composites:
        out.append("## Functions built from these ops")
        out.append("")
        out.append("Public functions that are compositions of the ops above (their gradients and fusion come from")
        out.append("those ops), or helpers for defining ops.")
        out.append("")
        for name, fn in composites:
            out.append(f"- `graphc.{name}({_parameters(fn)})`: {_first_paragraph(fn.__doc__)}")
        out.append("")
    return "\n".join(out)

"""graphc's exceptions. Every message names the op, the shapes or dtypes involved and the user's line."""
from __future__ import annotations

import difflib
from typing import Iterable

from .source import SourceLoc


class GraphcError(Exception):
    """Base class of every error graphc raises on purpose."""


class ShapeError(GraphcError, ValueError):
    """Shapes that cannot go together (matmul inner dimensions, broadcasting, conv channels...)."""


class DTypeError(GraphcError, TypeError):
    """A dtype an op does not accept (float labels for a classification loss, ...)."""


class InputError(GraphcError, ValueError):
    """A runtime input (a NumPy array handed to an executable) that does not match the graph."""


class NonFiniteError(GraphcError, FloatingPointError):
    """A NaN or Inf where a finite value belongs (``fit``'s epoch check, ``compile(check_finite=True)``).

    The message names the first node that produced it (op, rule, user's line), found by replaying
    the failing call on the reference backend. ``node`` is that node (None when the replay stayed
    finite), ``index`` and ``value`` the first bad element; ``epoch`` and ``step`` are set by ``fit``.
    """

    def __init__(self, message: str, node=None, index: tuple[int, ...] | None = None, value: float | None = None,
                 epoch: int | None = None, step: int | None = None):
        super().__init__(message)
        self.node, self.index, self.value, self.epoch, self.step = node, index, value, epoch, step


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'relu'?)`` for a misspelt ``name``: the closest of ``known`` (difflib), or ""."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6) if isinstance(name, str) else []
    if not close:
        return ""
    names = [repr(c) for c in close]
    return " (did you mean " + (", ".join(names[:-1]) + " or " if len(names) > 1 else "") + names[-1] + "?)"


def line_text(loc: SourceLoc | None) -> str:
    """``\n  at file:line``: how every graphc error message ends when it knows the user's line."""
    return f"\n  at {loc}" if loc is not None else ""


def at_op(err: GraphcError, op: str, operands: str, loc: SourceLoc | None) -> GraphcError:
    """Re-create ``err`` with the op name, its operand types and the user's line in the message."""
    where = line_text(loc)
    operand_text = f" (operands: {operands})" if operands else ""
    text = str(err)
    # Errors raised by an op's own checks may already start with its name.
    head = text if text.startswith(f"{op}: ") else f"{op}: {text}"
    new = type(err)(f"{head}{operand_text}{where}")
    new.op = op
    new.loc = loc
    return new

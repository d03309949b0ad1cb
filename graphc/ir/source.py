"""Source locations: the user's file:line that created a node, so errors and generated code point back to it."""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from dataclasses import dataclass

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Frames inside these libraries are never the user's line (SymPy calls user lambdas, for instance).
_SKIP_PREFIXES = (_PACKAGE_DIR + os.sep,)


@dataclass(frozen=True)
class SourceLoc:
    """Where in the user's code a node was created."""

    file: str
    line: int

    @property
    def short(self) -> str:
        """``mlp.py:12``: the form the text printer and generated code use."""
        return f"{os.path.basename(self.file)}:{self.line}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def user_location() -> SourceLoc | None:
    """The innermost stack frame outside the graphc package: the user's line."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_SKIP_PREFIXES) and not frame.f_code.co_filename.startswith("<frozen"):
            return SourceLoc(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return None


_location: contextvars.ContextVar[SourceLoc | None] = contextvars.ContextVar("graphc_location", default=None)


@contextlib.contextmanager
def located_at(loc: SourceLoc | None):
    """Nodes built inside this block are attributed to ``loc`` (e.g. the line that created a layer)."""
    token = _location.set(loc)
    try:
        yield
    finally:
        _location.reset(token)


def current_location() -> SourceLoc | None:
    """The user's line that the node being built is attributed to (see :func:`located_at`)."""
    return _location.get() or user_location()

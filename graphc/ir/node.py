"""Node: one operation in a graph, with its static type and where it came from."""
from __future__ import annotations

import contextlib
import contextvars
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from .dtypes import DType
from .source import SourceLoc

Shape = tuple[int, ...]


class Attrs(Mapping[str, Any]):
    """Frozen, hashable, ordered-by-key op attributes (stride, axis, alpha, ...)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None):
        self._items = tuple(sorted((items or {}).items()))

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attrs) and self._items == other._items

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k}={v!r}" for k, v in self._items) + "}"


@dataclass(frozen=True)
class Provenance:
    """Why a backward (or rewritten) node exists: the forward node and the rule that produced it."""

    forward: "Node"
    rule: str
    wrt: "Node | None" = None  # the parameter/input whose gradient this node is (when it is one)


_provenance: contextvars.ContextVar[Provenance | None] = contextvars.ContextVar("graphc_provenance", default=None)


@contextlib.contextmanager
def provenance(forward: "Node", rule: str, wrt: "Node | None" = None):
    """Nodes built inside this block record that ``rule`` applied to ``forward`` produced them."""
    token = _provenance.set(Provenance(forward, rule, wrt))
    try:
        yield
    finally:
        _provenance.reset(token)


def current_provenance() -> Provenance | None:
    """The provenance nodes built now record (see :func:`provenance`), if any."""
    return _provenance.get()


_ids = itertools.count()


@dataclass(eq=False)
class Node:
    """One operation. Nodes compare by identity; the structural hash ignores names and locations."""

    op: str
    inputs: tuple["Node", ...]
    attrs: Attrs
    shape: Shape
    dtype: DType
    name: str | None = None
    loc: SourceLoc | None = None
    #: Constants: their value. Parameters: their initial value. Otherwise None.
    value: np.ndarray | None = None
    provenance: Provenance | None = None
    #: Nodes a rewrite folded into this one (fusion); empty for nodes the user built.
    absorbed: tuple["Node", ...] = ()
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def type_str(self) -> str:
        """``f32[128,512]``: dtype and shape as the printer and error messages show them."""
        return type_str(self.dtype, self.shape)

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<Node {self.op}{name} {self.type_str}>"


def type_str(dtype: DType, shape: Shape) -> str:
    return f"{dtype.short}[{','.join(str(d) for d in shape)}]"

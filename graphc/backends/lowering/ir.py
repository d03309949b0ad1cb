"""The kernel IR: what every target renders. A :class:`Program` is a layout plus a schedule of kernels.

Target-independent on purpose: nothing here is Python, CUDA or LLVM text. Scalars are SymPy
expressions over named variables (loop indices, loaded values, temporaries); memory is a set of
flat :class:`Buffer` s, each a run of elements of one dtype inside one store (an input, an output,
the parameter store or the workspace); indices are integer SymPy expressions over loop variables
(and, for gathers, over loaded integers). A kernel's body is a list of statements:

==============  ===========================================================================
``Loop``        ``for var in range(extent)``; ``parallel``: iterations are independent
``Load``        ``var = buffer[index]`` (``guard``: 0 when the guard is false, never read)
``Assign``      ``var = value`` computed in ``dtype``; a variable may be assigned again
                (loop-carried accumulators)
``Store``       ``buffer[index] = value`` or, with ``reduce``, ``buffer[index] op= value``
``Check``       stop the step, reporting (index, value), when ``failed`` holds
``Gemm``        ``C = alpha * op(A) @ op(B) + beta * C`` (BLAS's contract, leading dimensions)
``Call``        a library kernel every target provides (im2col convolution, pooling, ...)
``Seed/Draw``   the legacy Mersenne Twister NumPy and Numba share: seed it, draw a uniform
==============  ===========================================================================

``print(program)`` shows it like a jaxpr for kernels (see :func:`program_text`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import sympy as sp
from sympy.logic.boolalg import Boolean

from ...ir import Graph, Node
from ...passes.buffers import aligned as round_up


def aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to whole ALIGN-byte blocks, at least one: every buffer has an address of its own."""
    return round_up(max(nbytes, 1))


# -- memory ---------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Buffer:
    """A flat run of ``size`` elements of ``dtype`` where a value (or a kernel's scratch) lives.

    ``store`` is ``"input"`` (argument ``arg`` of the step), ``"output"`` (output ``arg``, a fresh
    array), ``"state"`` (the parameter store: parameters, updated in place, and constants) or
    ``"workspace"`` (intermediates, reused once dead; per-kernel scratch). ``offset`` counts
    elements of ``dtype`` from the store's start (always a multiple of ALIGN bytes).
    """

    name: str
    store: str
    offset: int
    size: int
    dtype: str
    shape: tuple[int, ...]
    note: str = ""
    arg: int = -1

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Ref:
    """Element ``offset`` of ``buffer``: where a library call's operand starts."""

    buffer: Buffer
    offset: sp.Expr = sp.Integer(0)


# -- statements -----------------------------------------------------------------------------------

@dataclass
class Loop:
    """``for var in range(extent)``. ``parallel`` promises that the iterations are independent: no two
    write one element (even with ``reduce``), none reads what another writes, no variable is carried
    from one to the next, no Seed or Draw is inside; variables assigned inside are private to an
    iteration and dead after the loop. The interpreter checks the promise."""

    var: sp.Symbol
    extent: int
    body: list
    parallel: bool = True


@dataclass
class Load:
    var: sp.Symbol
    buffer: Buffer
    index: sp.Expr
    guard: sp.Expr | None = None


@dataclass
class Assign:
    var: sp.Symbol
    value: sp.Expr
    dtype: str


@dataclass
class Store:
    buffer: Buffer
    index: sp.Expr
    value: sp.Expr
    #: None: overwrite; "add", "max", "min": combine with the element already there (max/min
    #: propagate NaN, as NumPy's reductions do).
    reduce: str | None = None
    #: The value is known to have the buffer's dtype already: a target need not convert it.
    exact: bool = False


@dataclass(frozen=True)
class ErrorSite:
    """A run-time check; a step that stops on it reports ``(code, index, value)``."""

    code: int
    kind: str            # "label"
    op: str
    node: int            # position of the checking node in the graph (%k)
    where: str           # the user's file:line, or ""
    input: str | None    # the input the checked values come from, when they come straight from one
    classes: int = 0


@dataclass
class Check:
    failed: sp.Expr
    site: ErrorSite
    index: sp.Expr
    value: sp.Expr


@dataclass
class Gemm:
    """``c[m, n] = alpha * op(a)[m, k] @ op(b)[k, n] + beta * c``, row-major with leading dimensions;
    ``trans_a``: ``a`` is stored [k, m] (read transposed). alpha and beta are expressions over the
    kernel's variables, so an SGD or momentum update can ride inside the gradient's GEMM. A, B and C
    share one float dtype; C overlaps neither A nor B; with beta == 0, C is not read."""

    m: int
    n: int
    k: int
    alpha: sp.Expr
    a: Ref
    trans_a: bool
    lda: int
    b: Ref
    trans_b: bool
    ldb: int
    beta: sp.Expr
    c: Ref
    ldc: int


@dataclass
class Call:
    """A library kernel by name (see :data:`LIBRARY`): operands are Refs and integers, in order."""

    name: str
    args: tuple


@dataclass
class Seed:
    """Seed the generator with ``value``, an integer in [0, 2**32)."""

    value: sp.Expr


@dataclass
class Draw:
    var: sp.Symbol


Statement = Union[Loop, Load, Assign, Store, Check, Gemm, Call, Seed, Draw]

#: The library kernels a target provides besides GEMM, with their operands (Refs marked "*"), all
#: row-major: x [N, C, H, W], w [O, C, kh, kw], y [N, O, Ho, Wo]; im2col's col, a scratch of at least one
#: image's columns [C*kh*kw, Ho*Wo] (library.im2col_scratch: what the expansion's chunks need); col2im's
#: cols [O*kh*kw, H*W] scattered into y [O, Ho, Wo] (one image); pooling on planes = N*C, no dilation. conv
#: and pooling overwrite y, col2im_add adds into it, max_pool_backward zeroes y first and routes each gradient
#: to its window's first maximum (padding counts as -inf, the first NaN wins).
#: allreduce_sum / allreduce_mean: y [size] = the element-wise sum (mean: the sum / the number of ranks) of x
#: [size] over every MPI rank of the job (``x`` itself on one process); y does not overlap x; every rank makes
#: the same calls in the same order (a collective).
LIBRARY: dict[str, str] = {
    "conv2d_im2col": "*x, *w, N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, *col, *y",
    "conv2d_direct": "*x, *w, N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, *y",
    "col2im_add": "*cols, O, kh, kw, H, W, sh, sw, ph, pw, dh, dw, Ho, Wo, *y",
    "max_pool": "*x, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, *y",
    "avg_pool": "*x, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, *y",
    "max_pool_backward": "*x, *g, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, *y",
    "max_pool_gather": "*x, *g, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, *y",
    "allreduce_sum": "*x, *y, size",
    "allreduce_mean": "*x, *y, size",
}
#: The library calls that are collectives across the processes of an MPI job: no loops compute them, and only a
#: target with MPI (the cpu backend's Numba driver) provides them.
COLLECTIVES = ("allreduce_sum", "allreduce_mean")


def signature(name: str) -> list[str]:
    """Library call ``name``'s operand names, in order (a Ref's marked "*"), as :data:`LIBRARY` lists them."""
    return [n.strip() for n in LIBRARY[name].split(",")]


#: A library call's work (see :func:`step_work`): the operands whose product counts its element operations
#: (a convolution's multiply-adds, a pooling's window reads, col2im's additions, an allreduce's elements).
LIBRARY_WORK: dict[str, tuple[str, ...]] = {
    "conv2d_im2col": ("N", "O", "Ho", "Wo", "C", "kh", "kw"),
    "conv2d_direct": ("N", "O", "Ho", "Wo", "C", "kh", "kw"),
    "col2im_add": ("O", "kh", "kw", "Ho", "Wo"),
    "max_pool": ("planes", "Ho", "Wo", "kh", "kw"),
    "avg_pool": ("planes", "Ho", "Wo", "kh", "kw"),
    "max_pool_backward": ("planes", "Ho", "Wo", "kh", "kw"),
    "max_pool_gather": ("planes", "Ho", "Wo", "kh", "kw"),
    "allreduce_sum": ("size",),
    "allreduce_mean": ("size",),
}


# -- the program ----------------------------------------------------------------------------------

@dataclass
class Kernel:
    """One step of the schedule and where it comes from: the node (``%k``), its op (with the ops
    fusion absorbed), the lowering rule, and the user's file:line."""

    node: int
    op: str
    rule: str
    where: str
    body: list
    #: What the kernel does when it is not the node's own value: "labels of", "update W <-", ...
    role: str = ""
    #: A remark after the op: ", accumulated into W by its GEMM".
    note: str = ""

    @property
    def title(self) -> str:
        head = f"{self.role} %{self.node} {self.op}" if self.role else f"%{self.node} {self.op}"
        return f"{head}{self.note}  {self.where}".rstrip()


@dataclass(frozen=True)
class Slot:
    """Where a parameter or constant lives in the parameter store (bytes)."""

    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]

    def view(self, store: np.ndarray) -> np.ndarray:
        """The value's array inside ``store``, the parameter store's bytes (writes go to the store)."""
        return store[self.offset:self.offset + self.nbytes].view(self.dtype).reshape(self.shape)


@dataclass
class Program:
    """A lowered graph: the layout (buffers, inputs, outputs, updates, checks) and the schedule.

    >>> import graphc
    >>> from graphc.backends.lowering import lower
    >>> with graphc.Graph("double") as g:
    ...     x = graphc.input("x", (4,))
    ...     y = g.output(graphc.relu(x * 2.0))
    >>> print(lower(g))  # doctest: +ELLIPSIS
    program 'double': 1 input, 1 output, 0 updates
    ...
    """

    graph: Graph
    inputs: list[Node]
    #: The step's argument name per input (identifiers derived from the input names).
    input_args: list[str]
    #: Every value's buffer (views share their source's), by node position.
    buffers: dict[int, Buffer]
    #: Storage class by node position: input, state, ws, out, alias (a reshape), tview (a transpose
    #: read in place by GEMMs), inplace (an update computed into its parameter), accumulate (a product
    #: added straight into a parameter by its GEMM).
    plan: dict[int, str]
    #: Parameters and constants in the parameter store: id(node) -> slot.
    state: dict[int, Slot]
    state_bytes: int
    workspace_bytes: int
    outputs: list[Buffer]
    #: (parameter position, value position, "inplace" | "copy") for each update.
    updates: list[tuple[int, int, str]]
    #: Label-range checks on inputs, done before anything is computed.
    checks: list[Kernel]
    kernels: list[Kernel]
    errors: list[ErrorSite]
    #: Which inputs an epoch feeds by minibatch (leading axis = the first input's): the others (a
    #: learning rate, a random key) take one value per step.
    batched: list[bool]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.graph.name

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for k in self.plan.values():
            kinds[k] = kinds.get(k, 0) + 1
        return (f"{len(self.graph.nodes)} nodes, {len(self.kernels)} kernels, workspace {self.workspace_bytes} B, "
                f"parameter store {self.state_bytes} B, buffers {kinds}")

    def __str__(self) -> str:
        return program_text(self)


# -- text -----------------------------------------------------------------------------------------

def program_text(program: Program) -> str:
    """The program as text: layout, checks, then every kernel's statements."""
    n_in, n_out = len(program.inputs), len(program.outputs)
    lines = [f"program {program.name!r}: {n_in} input{'s' * (n_in != 1)}, {n_out} output{'s' * (n_out != 1)}, "
             f"{len(program.updates)} updates",
             f"  layout: parameter store {program.state_bytes} B, workspace {program.workspace_bytes} B"]
    seen: set[int] = set()
    for buf in list(program.buffers.values()) + list(program.outputs) + kernel_buffers(program):
        if id(buf) in seen:
            continue
        seen.add(id(buf))
        lines.append(f"    {buf.name:<8} {_place(buf):<16} {buf.note}")
    for kernel in program.checks + program.kernels:
        lines.append(f"  # {kernel.title}")
        lines += statement_lines(kernel.body, 2)
    return "\n".join(lines)


def is_condition(value: sp.Basic) -> bool:
    """Whether an Assign's ``value`` is a truth value (a relation or a logical combination), which every target
    keeps as one whatever the Assign's dtype. A bare Symbol is not one: SymPy makes every Symbol a Boolean too,
    and a copy ``a = b`` has its Assign's dtype."""
    return isinstance(value, Boolean) and not isinstance(value, sp.Symbol)


def walk(body: Sequence):
    """Every statement of ``body``: each loop, then what is inside it."""
    for s in body:
        yield s
        if isinstance(s, Loop):
            yield from walk(s.body)


def draws(program: Program) -> bool:
    """Whether ``program`` draws random numbers (a target then keeps a generator's state for it)."""
    return any(isinstance(s, Draw) for kernel in program.kernels for s in walk(kernel.body))


def step_work(program: Program) -> int:
    """The element operations one run of ``program`` does, roughly: each loop's body times its extent (a load,
    an assignment, a store, a check: one each), a GEMM's m*n*k multiply-adds, a library call's
    :data:`LIBRARY_WORK`. What a target weighs a call's fixed overhead against (the cpu backend's driver choice).

    >>> import graphc
    >>> from graphc.backends.lowering import lower
    >>> with graphc.Graph("double") as g:
    ...     x = graphc.input("x", (4,))
    ...     y = g.output(graphc.relu(x * 2.0))
    >>> step_work(lower(g))  # two kernels (unoptimized: no fusion), each 4 x (a load, a store)
    16
    """
    return sum(work(kernel.body) for kernel in program.checks + program.kernels)


def work(body: Sequence) -> int:
    """The element operations of ``body`` (statements), counted as :func:`step_work` counts a Program's."""
    total = 0
    for s in body:
        if isinstance(s, Loop):
            total += s.extent * work(s.body)
        elif isinstance(s, Gemm):
            total += s.m * s.n * s.k
        elif isinstance(s, Call):
            operands = dict(zip((n.lstrip("*") for n in signature(s.name)), s.args))
            total += int(np.prod([int(operands[n]) for n in LIBRARY_WORK[s.name]]))
        else:
            total += 1
    return total


def runs_chunks_in_parallel(loop, min_work: int) -> bool:
    """The cost rule of a target that runs chunks of work on several threads (the cpu backend's llvm driver):
    ``loop`` (a kernel's outer statement) is split among threads when its iterations are independent
    (``Loop.parallel``), there is more than one, each runs a GEMM or a library call (a chunk of a convolution's
    images, of a pooling's planes: the loops of plain statements between them measured no gain,
    docs/performance.md), none checks, draws or calls a collective, and the whole does at least ``min_work``
    element operations (:func:`step_work`'s count: waking a thread and joining it costs microseconds)."""
    if not (isinstance(loop, Loop) and loop.parallel and loop.extent > 1):
        return False
    inside = list(walk(loop.body))
    return (any(isinstance(s, (Gemm, Call)) for s in inside)
            and not any(isinstance(s, (Check, Seed, Draw)) or (isinstance(s, Call) and s.name in COLLECTIVES)
                        for s in inside)
            and work([loop]) >= min_work)


def outside_variables(body: Sequence) -> set[sp.Symbol]:
    """The variables ``body`` reads before it assigns them itself (in statement order; its loop counters, loads
    and assignments are its own): what a renderer must hand a loop it moves into a function of its own.

    >>> i, a, lr = index_var("i"), scalar_var("a"), scalar_var("lr")
    >>> buf = Buffer("V0", "workspace", 0, 4, "float32", (4,))
    >>> sorted(map(str, outside_variables([Loop(i, 4, [Load(a, buf, i), Store(buf, i, a * lr)])])))
    ['lr']
    """
    own: set = set()
    read: set = set()

    def symbols(value) -> set:  # of an expression, a Ref's offset, a tuple of operands
        if isinstance(value, Ref):
            return symbols(value.offset)
        if isinstance(value, (tuple, list)):
            return set().union(*map(symbols, value))
        return set(getattr(value, "free_symbols", ()))

    def visit(stmts: Sequence) -> None:
        for s in stmts:
            if isinstance(s, Loop):
                own.add(s.var)
                visit(s.body)
            elif isinstance(s, Load):
                read.update((symbols(s.index) | symbols(s.guard)) - own)
                own.add(s.var)
            elif isinstance(s, Assign):
                read.update(symbols(s.value) - own)
                own.add(s.var)
            else:  # a store, a GEMM, a call: every field is read
                for value in vars(s).values():
                    read.update(symbols(value) - own)
    visit(body)
    return read


def library_calls(program: Program) -> list[Call]:
    """Every library call ``program`` makes (checks and kernels, in order): what a target must provide."""
    return [s for kernel in program.checks + program.kernels for s in walk(kernel.body) if isinstance(s, Call)]


def kernel_buffers(program: Program) -> list[Buffer]:
    """Every buffer the kernels touch, in order of first use: the values' and the per-kernel scratch
    blocks (im2col columns, converted operands, snapshots), which belong to no node."""
    found: dict[int, Buffer] = {}

    def visit(body: Sequence) -> None:
        for s in body:
            if isinstance(s, Loop):
                visit(s.body)
            refs = [getattr(s, "buffer", None)] + [r.buffer for r in vars(s).values() if isinstance(r, Ref)]
            refs += [a.buffer for a in getattr(s, "args", ()) if isinstance(a, Ref)]
            for buf in refs:
                if buf is not None:
                    found.setdefault(id(buf), buf)

    for kernel in program.kernels:
        visit(kernel.body)
    return list(found.values())


def _place(buf: Buffer) -> str:
    if buf.store in ("input", "output"):
        return f"{buf.store} {buf.arg}"
    return f"{buf.store}[{buf.offset}:]"


def _idx(buf: Buffer, index: sp.Expr) -> str:
    return f"{buf.name}[{index}]"


def statement_lines(body: Sequence, depth: int) -> list[str]:
    pad = "  " * depth
    out: list[str] = []
    for s in body:
        if isinstance(s, Loop):
            out.append(f"{pad}for {s.var} in range({s.extent}){'' if s.parallel else '  # sequential'}:")
            out += statement_lines(s.body, depth + 1)
        elif isinstance(s, Load):
            guard = f" if {s.guard} else 0" if s.guard is not None else ""
            out.append(f"{pad}{s.var} = {_idx(s.buffer, s.index)}{guard}")
        elif isinstance(s, Assign):
            out.append(f"{pad}{s.var}: {s.dtype} = {s.value}")
        elif isinstance(s, Store):
            op = {None: "=", "add": "+=", "max": "max=", "min": "min="}[s.reduce]
            out.append(f"{pad}{_idx(s.buffer, s.index)} {op} {s.value}")
        elif isinstance(s, Check):
            out.append(f"{pad}check {s.site.kind} #{s.site.code}: stop if {s.failed}, report ({s.index}, {s.value})")
        elif isinstance(s, Gemm):
            ta, tb = "T" if s.trans_a else "N", "T" if s.trans_b else "N"
            out.append(f"{pad}gemm {ta}{tb} m={s.m} n={s.n} k={s.k}: {_ref(s.c)} (ld {s.ldc}) = {_num(s.alpha)} * "
                       f"{_ref(s.a)} (ld {s.lda}) @ {_ref(s.b)} (ld {s.ldb}) + {_num(s.beta)} * {_ref(s.c)}")
        elif isinstance(s, Call):
            out.append(f"{pad}{s.name}({', '.join(_ref(a) if isinstance(a, Ref) else str(a) for a in s.args)})")
        elif isinstance(s, Seed):
            out.append(f"{pad}seed({s.value})")
        elif isinstance(s, Draw):
            out.append(f"{pad}{s.var} = uniform()")
        else:  # pragma: no cover - a new statement kind must be printed here
            raise TypeError(f"unknown statement {s!r}")
    return out


def _num(expr: sp.Expr) -> str:
    return f"{float(expr):g}" if expr.is_number else str(expr)


def _ref(ref: Ref) -> str:
    return f"&{ref.buffer.name}[{ref.offset}]"


# -- building blocks for lowering rules -----------------------------------------------------------

def index_var(name: str) -> sp.Symbol:
    """A loop or index variable (an integer)."""
    return sp.Symbol(name, integer=True)


def scalar_var(name: str) -> sp.Symbol:
    """A scalar value variable (loaded, computed)."""
    return sp.Symbol(name, real=True)


def nest(sizes: Sequence[int], names: Sequence[str], body: list, parallel: bool = True) -> list:
    """Loops over ``sizes`` (outermost first) around ``body``; returns the statement list."""
    for size, name in reversed(list(zip(sizes, names))):
        body = [Loop(index_var(name), int(size), body, parallel)]
    return list(body)


def divided(numerator: sp.Expr, denominator: sp.Expr | int) -> sp.Expr:
    """``numerator / denominator`` as a division (SymPy would turn ``x / 3`` into ``x * (1/3)`` and
    ``g / sqrt(v)`` into ``g * v**(-1/2)``, which round differently)."""
    return sp.Mul(numerator, sp.Pow(sp.sympify(denominator), -1, evaluate=False), evaluate=False)


def linear(names: Sequence[str | sp.Expr], sizes: Sequence[int]) -> sp.Expr:
    """The row-major linear index of ``names`` over ``sizes``."""
    index, stride = sp.Integer(0), 1
    for name, size in reversed(list(zip(names, sizes))):
        var = index_var(name) if isinstance(name, str) else name
        index += var * stride
        stride *= int(size)
    return index


def strides(shape: Sequence[int]) -> list[int]:
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= int(d)
    return out[::-1]

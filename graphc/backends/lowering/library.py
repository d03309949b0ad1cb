"""The library calls (``ir.LIBRARY``) as plain kernel-IR loops, for targets that have no library.

:func:`expand_call` turns one :class:`~.ir.Call` into Loop/Load/Assign/Store statements (and, for
im2col, a Gemm over the call's ``col`` scratch, so that a target with its own GEMM does the product)
that compute what the interpreter's implementation of the call computes (its oracle): bit for bit for
max pooling, its gradients and col2im_add; to rounding where a sum's order differs (the convolutions,
and avg_pool's window sum, which the loops add in row-major tap order, NumPy pairwise):

* conv2d_direct / conv2d_im2col overwrite y; im2col runs a parallel loop over chunks of images (or of one
  image's blocks of channels, with partial outputs), each chunk over a block of ``col`` of its own, its images
  and blocks in sequence (they share that block; see COL_BLOCK, CHUNKS);
* col2im_add adds into y. It is written as a gather, one parallel nest per (row, column) residue of the
  strides: the kernel taps that reach a target are known when expanding, so no integer division is left
  in the IR, every target is written by one iteration, and its taps are summed in (i, j) order from 0
  before being added to y, the interpreter's order;
* max_pool / avg_pool: padding is -inf for the max (a NaN in a window wins) and 0 for the average, whose
  divisor is always kh*kw (count_include_pad, as the interpreter and the cpu runtime);
* max_pool_backward zeroes y, then adds each window's gradient at its FIRST maximum (row-major window
  order, padding -inf, the first NaN wins; nothing when that maximum is padding), windows in (ho, wo)
  order. Overlapping windows may pick one element, so then only the planes run in parallel; windows that
  do not overlap (and each hold an element of x) run in parallel too. Windows that tile the plane write
  each element once instead (g or 0: bit for bit but for a -0.0 gradient, which stays -0.0);
* max_pool_gather: y[p, ho, wo] = g at the window's first maximum, 0 where it is padding.

allreduce_* are collectives over MPI ranks: no loops compute them, and :func:`expand_call` refuses them.
Loop and value variables are named ``lib_*`` so they never meet those of the kernel around the call.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable, Sequence

import sympy as sp

from ...ir import GraphcError
from ...ops.elementwise import IsNaN
from .ir import (
    COLLECTIVES,
    LIBRARY,
    Assign,
    Call,
    Gemm,
    Kernel,
    Load,
    Loop,
    Program,
    Ref,
    Statement,
    Store,
    divided,
    index_var,
    linear,
    nest,
    runs_chunks_in_parallel,
    scalar_var,
    signature,
    work,
)


class LibraryCallError(GraphcError):
    """A library call that cannot be expanded into loops: a collective, an unknown name, or operands
    that do not match its ``ir.LIBRARY`` signature."""


# -- the public API ---------------------------------------------------------------------------------

def expand_call(call: Call) -> list[Statement]:
    """``call`` as kernel-IR statements computing what the library kernel computes (see the module doc).

    Raises :class:`LibraryCallError` for allreduce_* (no loops compute a collective), for a name that is
    not in ``ir.LIBRARY`` and for operands that do not match its signature.
    """
    if call.name in COLLECTIVES:
        raise LibraryCallError(f"library call {call.name!r} cannot be expanded into loops: it is a collective "
                               f"over the MPI ranks of a job, which a target without MPI cannot run")
    expansion = EXPANSIONS.get(call.name)
    if expansion is None:
        known = ", ".join(sorted(EXPANSIONS))
        raise LibraryCallError(f"unknown library call {call.name!r}: the library calls loops can compute are {known}")
    return expansion(**operands(call))


def expand_calls(program: Program) -> Program:
    """A copy of ``program`` whose kernels make no library call but allreduce_*: every other Call is
    replaced by its loops (:func:`expand_call`); kernels keep their provenance (node, op, rule, line).
    ``program`` itself is not changed."""
    def kernels(listed: list[Kernel]) -> list[Kernel]:
        return [dataclasses.replace(k, body=_expanded_body(k.body, k)) for k in listed]

    return dataclasses.replace(program, checks=kernels(program.checks), kernels=kernels(program.kernels))


def _expanded_body(body: Sequence, kernel: Kernel) -> list:
    out: list = []
    for s in body:
        if isinstance(s, Loop):
            out.append(dataclasses.replace(s, body=_expanded_body(s.body, kernel)))
        elif isinstance(s, Call) and s.name not in COLLECTIVES:
            try:
                out += expand_call(s)
            except LibraryCallError as e:
                raise LibraryCallError(f"{kernel.title}: {e}") from None
        else:
            out.append(s)
    return out


def operands(call: Call) -> dict:
    """The call's operands by their ``ir.LIBRARY`` names (Refs where the signature marks ``*``, Python ints
    elsewhere), checked against the signature."""
    names = [_PARAMETER.get(n, n) for n in signature(call.name)]
    if len(call.args) != len(names):
        raise LibraryCallError(f"library call {call.name!r} takes {len(names)} operands ({LIBRARY[call.name]}), "
                               f"got {len(call.args)}")
    found: dict = {}
    for name, arg in zip(names, call.args):
        if name.startswith("*"):
            if not isinstance(arg, Ref):
                raise LibraryCallError(f"library call {call.name!r}: operand {name[1:]} must be a Ref, got {arg!r}")
            found[name[1:]] = arg
        else:
            found[name] = _constant(call.name, name, arg)
    return found


#: LIBRARY's operand names the expansions spell otherwise (``O`` reads as a zero: ConvGeometry's ``Co``).
_PARAMETER = {"O": "Co"}


def _constant(call: str, name: str, value) -> int:
    """An integer operand's value: loops need their extents when they are built."""
    number = sp.sympify(value)
    if not number.is_Integer:
        raise LibraryCallError(f"library call {call!r}: operand {name} must be an integer constant, got {value!r}")
    return int(number)


# -- building blocks ---------------------------------------------------------------------------------

def _index(name: str) -> sp.Symbol:
    return index_var(f"lib_{name}")


def _scalar(name: str) -> sp.Symbol:
    return scalar_var(f"lib_{name}")


def _nest(sizes: Sequence[int], names: Sequence[str], body: list, parallel: bool = True) -> list:
    return nest(sizes, [f"lib_{n}" for n in names], body, parallel)


def _load(var: sp.Symbol, ref: Ref, index: sp.Expr, guard: sp.Expr | None = None) -> Load:
    """``var = ref[index]``, reading nothing (0) where ``guard`` is false; no guard when it always holds."""
    guard = None if guard is None or guard == sp.true else guard
    return Load(var, ref.buffer, ref.offset + index, guard)


def _store(ref: Ref, index: sp.Expr, value: sp.Expr, computed_in: str, reduce: str | None = None) -> Store:
    return Store(ref.buffer, ref.offset + index, value, reduce, exact=computed_in == ref.buffer.dtype)


def _inside(h: sp.Expr, q: sp.Expr, H: int, W: int, extents: dict[str, int]) -> sp.Expr:
    """Whether row ``h``, column ``q`` lies in an H x W plane (not in the padding), each bound left out where
    the ranges of the indices (``extents``: index name without ``lib_`` -> its loop's extent) prove it holds:
    a window that never reaches the padding loads unguarded, which lets a target vectorize its loops."""
    terms = []
    for value, size in ((h, H), (q, W)):
        low, high = _bounds(value, {_index(k): n for k, n in extents.items()})
        if low is not None and (high < 0 or low > size - 1):
            return sp.false  # always in the padding
        if low is None or low < 0:
            terms.append(value >= 0)
        if high is None or high > size - 1:
            terms.append(value < size)
    return sp.And(*terms)


def _runs(extent: int, low: int, high: int, single_edges: bool = False) -> list[tuple[int, int]]:
    """``range(extent)`` as (start, count) runs: before ``low``, [low, high), from ``high``; empty ones left out.
    [low, high) is where a window lies inside the plane: its loads need no guard (see :func:`_inside`).
    ``single_edges``: each index before ``low`` and from ``high`` a run of its own (its taps then are either
    inside or outside the plane, known when expanding)."""
    low = min(max(low, 0), extent)
    high = min(max(high, low), extent)
    if single_edges:
        return [(a, 1) for a in range(low)] + ([(low, high - low)] if high > low else []) + \
            [(a, 1) for a in range(high, extent)]
    return [(a, b - a) for a, b in ((0, low), (low, high), (high, extent)) if b > a]


def _region_nests(names: Sequence[str], runs: Sequence[list[tuple[int, int]]],
                  body: Callable[[dict[str, sp.Expr], dict[str, int]], list]) -> list[Statement]:
    """One parallel nest per combination of the runs of the indices ``names``: ``body(at, extents)`` builds it
    with index ``name`` at ``at[name]`` (the run's start plus the loop's index) over ``extents[name]``."""
    out: list[Statement] = []
    for combo in itertools.product(*runs):
        at = {n: _index(n) + start for n, (start, _) in zip(names, combo)}
        extents = {n: count for n, (_, count) in zip(names, combo)}
        out += _nest(list(extents.values()), list(names), body(at, extents))
    return out


def _bounds(expr: sp.Expr, extents: dict[sp.Symbol, int]) -> tuple[int | None, int | None]:
    """The least and the greatest value of ``expr``, an integer combination of indices that each run over
    ``range(extent)``; (None, None) when it is not one."""
    low = high = 0
    for term in sp.Add.make_args(sp.expand(expr)):
        coeff, rest = term.as_coeff_Mul()
        if not coeff.is_Integer:
            return None, None
        if rest == 1:
            low, high = low + int(coeff), high + int(coeff)
        elif rest in extents:
            reach = int(coeff) * (extents[rest] - 1)
            low, high = low + min(0, reach), high + max(0, reach)
        else:
            return None, None
    return low, high


# -- convolution ---------------------------------------------------------------------------------

def conv2d_direct(x: Ref, w: Ref, N: int, C: int, H: int, W: int, Co: int, kh: int, kw: int, sh: int, sw: int,
                  ph: int, pw: int, dh: int, dw: int, Ho: int, Wo: int, y: Ref) -> list[Statement]:
    """y[n, o, ho, wo] = sum over (c, i, j), in that order, of w[o, c, i, j] * x[n, c, ho*sh - ph + i*dh,
    wo*sw - pw + j*dw] (0 in the padding), accumulated in y's dtype; every output in parallel."""
    n, o, ho, wo, c, i, j = (_index(v) for v in ("n", "o", "ho", "wo", "c", "i", "j"))
    dtype = y.buffer.dtype
    acc, xv, wv = _scalar("acc"), _scalar("x"), _scalar("w")
    h, q = ho * sh - ph + i * dh, wo * sw - pw + j * dw
    tap = [_load(xv, x, ((n * C + c) * H + h) * W + q, _inside(h, q, H, W, dict(ho=Ho, wo=Wo, i=kh, j=kw))),
           _load(wv, w, linear([o, c, i, j], [Co, C, kh, kw])),
           Assign(acc, acc + wv * xv, dtype)]
    body = [Assign(acc, sp.Integer(0), dtype),
            *_nest([C, kh, kw], ["c", "i", "j"], tap, parallel=False),
            _store(y, linear([n, o, ho, wo], [N, Co, Ho, Wo]), acc, dtype)]
    return _nest([N, Co, Ho, Wo], ["n", "o", "ho", "wo"], body)


#: Elements of the column matrix filled before the GEMM that reads it (128 KiB of float32; the cpu runtime's
#: conv2d_im2col measured 16K-32K best): the block is still in L2 when the GEMM reads it. Only a big kernel over many channels
#: needs more than one block (a weight gradient's convolution: a LeNet conv1's has 64 "channels" of 28x28 windows).
COL_BLOCK = 32768

#: The chunks a convolution or a pooling cuts its images (planes, blocks of channels) into, the first count that
#: divides them: iterations of a parallel loop, each with its own scratch (and partial sums) where it needs one,
#: that a target may run on several threads (the cpu backend's llvm driver shares them with a helper thread). Four,
#: so that a thread that joins late still takes its share; two where four do not divide the images.
CHUNKS = (4, 2)


def chunk_count(count: int) -> int:
    """How many chunks ``count`` images (planes, blocks of channels) are cut into: 1 when no CHUNKS divides it."""
    return next((c for c in CHUNKS if count % c == 0), 1)


def _col_blocks(C: int, kh: int, kw: int, P: int) -> tuple[int, int]:
    """(channels per block of columns, blocks): blocks of one size (a loop over them), each at most COL_BLOCK
    elements where one channel fits."""
    target = min(C, max(1, COL_BLOCK // (kh * kw * P)))
    cb = max(d for d in range(1, target + 1) if C % d == 0)
    return cb, C // cb


def _im2col_split(N: int, C: int, kh: int, kw: int, P: int) -> tuple[str, int]:
    """How conv2d_im2col's work is chunked: ("images", k) for k chunks of images; ("channels", k) for one
    image's blocks of channels in k chunks, each summed into a partial output of its own (a weight gradient's
    convolution: one "image" per input channel); ("none", 1)."""
    if chunk_count(N) > 1:
        return "images", chunk_count(N)
    blocks = _col_blocks(C, kh, kw, P)[1]
    return ("channels", chunk_count(blocks)) if chunk_count(blocks) > 1 else ("none", 1)


def runs_in_parallel_chunks(s: Statement, min_work: int) -> bool:
    """The cost rule of parallel chunks (``ir.runs_chunks_in_parallel``) for a kernel's outer statement: a loop by
    the rule itself; a conv2d_im2col call by what its expansion does, decided without expanding it (a cache hit
    must not pay SymPy's time for it): its work cut into chunks (:func:`_im2col_split`), at least ``min_work``
    multiply-adds. Its expansion's first statement is then the loop of chunks."""
    if isinstance(s, Call):
        if s.name != "conv2d_im2col":
            return False
        o = operands(s)
        return (_im2col_split(o["N"], o["C"], o["kh"], o["kw"], o["Ho"] * o["Wo"])[1] > 1
                and work([s]) >= min_work)
    return runs_chunks_in_parallel(s, min_work)


def im2col_scratch(N: int, C: int, H: int, W: int, Co: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
                   dh: int, dw: int, Ho: int, Wo: int) -> int:
    """Elements of conv2d_im2col's ``col`` scratch (ir.LIBRARY: at least one image's columns, C*kh*kw*Ho*Wo, which
    the interpreter fills): a block of columns per chunk, and the chunks' partial outputs when they split the
    channels (:func:`_im2col_split`)."""
    P = Ho * Wo
    split, chunks = _im2col_split(N, C, kh, kw, P)
    used = chunks * _col_blocks(C, kh, kw, P)[0] * kh * kw * P + (chunks * N * Co * P if split == "channels" else 0)
    return max(C * kh * kw * P, used)


def conv2d_im2col(x: Ref, w: Ref, N: int, C: int, H: int, W: int, Co: int, kh: int, kw: int, sh: int, sw: int,
                  ph: int, pw: int, dh: int, dw: int, Ho: int, Wo: int, col: Ref, y: Ref) -> list[Statement]:
    """Per image n, per block of ``cb`` channels (sequentially, see COL_BLOCK): col [cb*kh*kw, Ho*Wo] = the
    block's patches (0 in the padding), then the GEMM y[n] [Co, Ho*Wo] (+)= w[:, block] @ col, the first block
    overwriting y[n] (beta 0), the others adding to it.

    The work is a parallel loop over chunks (:func:`_im2col_split`), each with its own block of ``col``
    (sized by :func:`im2col_scratch`): chunks of images, whose outputs are the unchunked ones bit for bit; or, for
    one image, chunks of its blocks, each into a partial output in ``col``, then y = the partials summed in chunk
    order (a sum in another order: equal to rounding)."""
    c, i, j, t, m, b = (_index(v) for v in ("c", "i", "j", "t", "m", "b"))
    P = Ho * Wo
    K = C * kh * kw
    cb, blocks = _col_blocks(C, kh, kw, P)
    split, chunks = _im2col_split(N, C, kh, kw, P)
    span = cb * kh * kw * P  # one block of columns
    xv = _scalar("x")
    cols = Ref(col.buffer, col.offset + t * span) if chunks > 1 else col

    def image_block(n: sp.Expr, blk: sp.Expr, beta: sp.Expr, out: Ref) -> list[Statement]:
        """Block ``blk`` of image ``n``'s columns filled, then multiplied into ``out``[n]."""
        def patch(at: dict[str, sp.Expr], extents: dict[str, int]) -> list[Statement]:
            h, q = at["ho"] * sh - ph + i * dh, at["wo"] * sw - pw + j * dw
            return [_load(xv, x, n * (C * H * W) + ((blk * cb + c) * H + h) * W + q,
                          _inside(h, q, H, W, dict(extents, i=kh, j=kw))),
                    _store(cols, linear([c, i, j], [cb, kh, kw]) * P + at["ho"] * Wo + at["wo"], xv, x.buffer.dtype)]

        # Windows in the padding at the plane's edges, the rest unguarded (contiguous rows a target vectorizes).
        runs = [_runs(Ho, -(-ph // sh), (H - 1 + ph - (kh - 1) * dh) // sh + 1),
                _runs(Wo, -(-pw // sw), (W - 1 + pw - (kw - 1) * dw) // sw + 1)]
        fill = _nest([cb, kh, kw], ["c", "i", "j"], _region_nests(["ho", "wo"], runs, patch))
        product = Gemm(Co, P, cb * kh * kw, sp.Integer(1), Ref(w.buffer, w.offset + blk * (cb * kh * kw)), False, K,
                       cols, False, P, beta, Ref(out.buffer, out.offset + n * (Co * P)), P)
        return [*fill, product]

    def each_block(n: sp.Expr, first: sp.Expr, count: int, out: Ref) -> list[Statement]:
        """Blocks first..first+count-1 of image ``n`` into ``out``[n], the first of them overwriting it."""
        if count == 1:
            return image_block(n, first, sp.Integer(0), out)
        return _nest([count], ["b"], image_block(n, first + b, sp.Min(b, 1), out), parallel=False)

    if split == "images":
        per = N // chunks
        return _nest([chunks], ["t"], _nest([per], ["m"], each_block(t * per + m, sp.Integer(0), blocks, y),
                                            parallel=False))
    if split == "channels":
        per, size = blocks // chunks, N * Co * P
        partials = Ref(col.buffer, col.offset + chunks * span)
        mine = Ref(partials.buffer, partials.offset + t * size)
        n = _index("n")
        chunked = _nest([chunks], ["t"], _nest([N], ["n"], each_block(n, t * per, per, mine), parallel=False))
        e, acc, v = _index("e"), _scalar("acc"), _scalar("v")
        total: list[Statement] = []
        for k in range(chunks):
            total += [_load(v, partials, k * size + e), Assign(acc, v if k == 0 else acc + v, y.buffer.dtype)]
        return chunked + _nest([size], ["e"], [*total, _store(y, e, acc, y.buffer.dtype)])
    n = _index("n")
    return _nest([N], ["n"], each_block(n, sp.Integer(0), blocks, y), parallel=False)


def col2im_add(cols: Ref, Co: int, kh: int, kw: int, H: int, W: int, sh: int, sw: int, ph: int, pw: int, dh: int,
               dw: int, Ho: int, Wo: int, y: Ref) -> list[Statement]:
    """y[o, h*sh - ph + i*dh, q*sw - pw + j*dw] += cols[(o*kh + i)*kw + j, h*W + q], as a gather.

    Target row t = a*sh + b - ph (b = (t + ph) mod sh) is reached by tap i exactly when i*dh = b (mod sh),
    from column row h = a - (i*dh - b) / sh: parallel nests over (o, a, a') per residue pair (b, b'), its
    taps listed here, so that no index needs a division; one nest per run of targets (see _runs), so that
    only the targets at the edges guard their taps. Each target's taps are summed from 0 in
    (i, j) order, then added to y: the interpreter's order, bit for bit."""
    out: list[Statement] = []
    for b in range(sh):
        rows = _residue_targets(b, sh, ph, Ho)
        taps_i = [(i, (i * dh - b) // sh) for i in range(kh) if (i * dh - b) % sh == 0]
        for bw in range(sw):
            columns = _residue_targets(bw, sw, pw, Wo)
            taps_j = [(j, (j * dw - bw) // sw) for j in range(kw) if (j * dw - bw) % sw == 0]
            if not rows[1] or not columns[1] or not taps_i or not taps_j:
                continue  # no targets, or none any tap reaches (y + 0 is y)
            gather = functools.partial(_col2im_gather, cols, y, Co, kh, kw, H, W, sh, ph, pw, Ho, Wo, b, bw, sw,
                                       rows[0], columns[0], taps_i, taps_j)
            # Targets whose every tap reads the plane in the middle run, unguarded (see _runs).
            runs = [_runs(rows[1], max(d for _, d in taps_i) - rows[0], H + min(d for _, d in taps_i) - rows[0],
                          single_edges=True),
                    _runs(columns[1], max(d for _, d in taps_j) - columns[0],
                          W + min(d for _, d in taps_j) - columns[0])]
            out += _nest([Co], ["o"], _region_nests(["a", "e"], runs, gather))
    return out


def _col2im_gather(cols: Ref, y: Ref, Co: int, kh: int, kw: int, H: int, W: int, sh: int, ph: int, pw: int, Ho: int,
                   Wo: int, b: int, bw: int, sw: int, first_a: int, first_e: int, taps_i: list, taps_j: list,
                   at: dict[str, sp.Expr], extents: dict[str, int]) -> list[Statement]:
    """col2im_add's body for the targets of residues (b, bw) at rows ``at["a"] + first_a``, columns
    ``at["e"] + first_e``: their taps summed from 0 in (i, j) order, then added to y."""
    o, dtype = _index("o"), y.buffer.dtype
    acc, cv = _scalar("acc"), _scalar("c")
    a_abs, e_abs = at["a"] + first_a, at["e"] + first_e
    body: list[Statement] = [Assign(acc, sp.Integer(0), dtype)]
    for i, di in taps_i:
        for j, dj in taps_j:
            h, q = a_abs - di, e_abs - dj
            inside = _inside(h, q, H, W, extents)
            if inside == sp.false:
                continue  # this run's targets never reach the plane through this tap: it adds 0
            body += [_load(cv, cols, linear([o, i, j], [Co, kh, kw]) * (H * W) + h * W + q, inside),
                     Assign(acc, acc + cv, dtype)]
    target = (o * Ho + a_abs * sh + b - ph) * Wo + e_abs * sw + bw - pw
    return [*body, _store(y, target, acc, dtype, reduce="add")]


def _residue_targets(b: int, s: int, p: int, size: int) -> tuple[int, int]:
    """(first a, count) of the targets t = a*s + b - p that lie in [0, size)."""
    first = max(0, -((b - p) // s))  # ceil((p - b) / s)
    last = (size - 1 + p - b) // s
    return first, max(0, last - first + 1)


# -- pooling -------------------------------------------------------------------------------------

def _window(sh: int, sw: int, ph: int, pw: int) -> tuple[sp.Expr, sp.Expr]:
    """(row, column) of tap (i, j) of window (ho, wo) in the plane (outside it: padding)."""
    return _index("ho") * sh - ph + _index("i"), _index("wo") * sw - pw + _index("j")


def max_pool(x: Ref, planes: int, H: int, W: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, Ho: int,
             Wo: int, y: Ref) -> list[Statement]:
    """y[p, ho, wo] = the largest x of the window (padding -inf); a NaN in the window makes it NaN."""
    p = _index("p")
    dtype = x.buffer.dtype
    acc, v = _scalar("acc"), _scalar("x")
    h, q = _window(sh, sw, ph, pw)
    inside = _inside(h, q, H, W, dict(ho=Ho, wo=Wo, i=kh, j=kw))
    tap = [_load(v, x, (p * H + h) * W + q, inside),
           Assign(acc, sp.Piecewise((v, inside & ((v > acc) | IsNaN(v))), (acc, True)), dtype)]
    body = [Assign(acc, -sp.oo, dtype),
            *_nest([kh, kw], ["i", "j"], tap, parallel=False),
            _store(y, (p * Ho + _index("ho")) * Wo + _index("wo"), acc, dtype)]
    return _nest([planes, Ho, Wo], ["p", "ho", "wo"], body)


def avg_pool(x: Ref, planes: int, H: int, W: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, Ho: int,
             Wo: int, y: Ref) -> list[Statement]:
    """y[p, ho, wo] = (the sum of the window, taps in row-major order, padding 0) / (kh*kw): the divisor
    counts the padding (PyTorch's count_include_pad), as the interpreter and the cpu runtime do."""
    p = _index("p")
    dtype = x.buffer.dtype
    acc, v = _scalar("acc"), _scalar("x")
    h, q = _window(sh, sw, ph, pw)
    tap = [_load(v, x, (p * H + h) * W + q, _inside(h, q, H, W, dict(ho=Ho, wo=Wo, i=kh, j=kw))),
           Assign(acc, acc + v, dtype)]
    mean = _scalar("mean")
    body = [Assign(acc, sp.Integer(0), dtype),
            *_nest([kh, kw], ["i", "j"], tap, parallel=False),
            Assign(mean, divided(acc, kh * kw), dtype),
            _store(y, (p * Ho + _index("ho")) * Wo + _index("wo"), mean, dtype)]
    return _nest([planes, Ho, Wo], ["p", "ho", "wo"], body)


def _first_maximum(x: Ref, H: int, W: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, Ho: int, Wo: int
                   ) -> tuple[list[Statement], sp.Expr, sp.Expr, sp.Expr]:
    """(statements, h, q): (h, q) is the first maximum of window (lib_ho, lib_wo) of plane lib_p, in
    row-major window order, padding -inf and the first NaN winning (NumPy's argmax); it may be padding.
    Compares in x's dtype. The statements track the tap (bi, bj) of the maximum, from tap (0, 0) at -inf,
    which an all -inf window keeps (argmax's first maximum). The fourth value: whether (h, q) is in the plane."""
    p = _index("p")
    dtype = x.buffer.dtype
    best, v, c = _scalar("best"), _scalar("x"), _scalar("candidate")
    bi, bj = _index("bi"), _index("bj")
    h, q = _window(sh, sw, ph, pw)
    inside = _inside(h, q, H, W, dict(ho=Ho, wo=Wo, i=kh, j=kw))
    better = (c > best) | (IsNaN(c) & ~IsNaN(best))
    # The tap updates come first: they test the best value before this tap.
    tap = [_load(v, x, (p * H + h) * W + q, inside),
           Assign(c, sp.Piecewise((v, inside), (-sp.oo, True)), dtype),
           Assign(bi, sp.Piecewise((_index("i"), better), (bi, True)), "int64"),
           Assign(bj, sp.Piecewise((_index("j"), better), (bj, True)), "int64"),
           Assign(best, sp.Piecewise((c, better), (best, True)), dtype)]
    start = [Assign(best, -sp.oo, dtype), Assign(bi, sp.Integer(0), "int64"), Assign(bj, sp.Integer(0), "int64")]
    found = _index("ho") * sh - ph + bi, _index("wo") * sw - pw + bj
    return (start + _nest([kh, kw], ["i", "j"], tap, parallel=False), *found,
            _inside(*found, H, W, dict(ho=Ho, wo=Wo, bi=kh, bj=kw)))


def max_pool_gather(x: Ref, g: Ref, planes: int, H: int, W: int, kh: int, kw: int, sh: int, sw: int, ph: int,
                    pw: int, Ho: int, Wo: int, y: Ref) -> list[Statement]:
    """y[p, ho, wo] = g[p, h, q] at the first maximum (h, q) of window (ho, wo) of x; 0 where it is padding."""
    p, ho, wo = _index("p"), _index("ho"), _index("wo")
    find, bh, bq, chosen = _first_maximum(x, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
    gv = _scalar("g")
    body = [*find,
            _load(gv, g, (p * H + bh) * W + bq, chosen),
            _store(y, (p * Ho + ho) * Wo + wo, gv, g.buffer.dtype)]
    return _nest([planes, Ho, Wo], ["p", "ho", "wo"], body)


def max_pool_backward(x: Ref, g: Ref, planes: int, H: int, W: int, kh: int, kw: int, sh: int, sw: int, ph: int,
                      pw: int, Ho: int, Wo: int, y: Ref) -> list[Statement]:
    """y [planes, H, W] = 0, then y[p, h, q] += g[p, ho, wo] at the first maximum (h, q) of each window
    (windows in (ho, wo) order; nothing where the maximum is padding).

    A Store has no guard, so a window whose maximum is padding adds 0 (exactly y's value: y starts at +0)
    to the in-plane element nearest its top-left corner. Windows that overlap may add to one element:
    then only the planes are parallel. Windows that do not overlap and each hold an element of x
    (padding < kernel) touch disjoint elements, that one included: every window runs in parallel."""
    p, ho, wo = _index("p"), _index("ho"), _index("wo")
    dtype = y.buffer.dtype
    find, bh, bq, chosen = _first_maximum(x, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
    if (kh, kw, ph, pw) == (sh, sw, 0, 0) and (Ho * kh, Wo * kw) == (H, W):
        return _max_pool_backward_tiled(g, planes, H, W, kh, kw, Ho, Wo, y, find)
    gv, at = _scalar("g"), _index("at")
    corner = _clamped(ho * sh - ph, H) * W + _clamped(wo * sw - pw, W)
    body = [*find,
            _load(gv, g, (p * Ho + ho) * Wo + wo, chosen),
            Assign(at, sp.Piecewise((bh * W + bq, chosen), (corner, True)), "int64"),
            _store(y, p * (H * W) + at, gv, g.buffer.dtype, reduce="add")]
    k = _index("k")
    zero = nest([planes * H * W], [k.name], [_store(y, k, sp.Integer(0), dtype)])
    disjoint = kh <= sh and kw <= sw and ph < kh and pw < kw
    windows = nest([Ho, Wo], [ho.name, wo.name], body, parallel=disjoint)
    return zero + nest([planes], [p.name], windows)


def _max_pool_backward_tiled(g: Ref, planes: int, H: int, W: int, kh: int, kw: int, Ho: int, Wo: int, y: Ref,
                             find: list[Statement]) -> list[Statement]:
    """max_pool_backward for windows that tile the plane (stride = window, no padding, no remainder): every
    element is in one window, so each is written once, g at its window's first maximum and 0 elsewhere,
    branch-free and with no zeroing pass (as the cpu runtime does). The same values as adding g into a zeroed
    y, but for a gradient of -0.0, stored as -0.0 instead of 0 + -0.0 = +0.0."""
    p, ho, wo, i, j = (_index(v) for v in ("p", "ho", "wo", "i", "j"))
    gv = _scalar("g")
    at_maximum = sp.Eq(i, _index("bi")) & sp.Eq(j, _index("bj"))
    spread = _nest([kh, kw], ["i", "j"], [_store(y, (p * H + ho * kh + i) * W + wo * kw + j,
                                                 sp.Piecewise((gv, at_maximum), (0, True)), g.buffer.dtype)])
    body = [*find, _load(gv, g, (p * Ho + ho) * Wo + wo), *spread]
    return _nest([planes, Ho, Wo], ["p", "ho", "wo"], body)


def _clamped(index: sp.Expr, size: int) -> sp.Expr:
    """``index`` moved into [0, size)."""
    return sp.Piecewise((0, index < 0), (size - 1, index > size - 1), (index, True))


#: ir.LIBRARY name -> its expansion ``fn(**operands)`` (all but the collectives).
EXPANSIONS: dict[str, Callable[..., list[Statement]]] = {
    "conv2d_im2col": conv2d_im2col, "conv2d_direct": conv2d_direct, "col2im_add": col2im_add,
    "max_pool": max_pool, "avg_pool": avg_pool, "max_pool_backward": max_pool_backward,
    "max_pool_gather": max_pool_gather,
}

"""GEMM for the LLVM target: ``graphc_sgemm`` / ``graphc_dgemm`` defined in an llvmlite module.

Both have the cpu runtime's row-major contract (C = alpha * op(A) @ op(B) + beta * C)::

    void graphc_sgemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                      const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)

``blas="generated"`` writes the whole loop nest in IR, so the artifact needs nothing but libc:

1. C is scaled by beta first (beta == 0 stores zeros and never reads C, so NaN in C does not propagate;
   beta == 1 leaves it untouched). With alpha == 0, k == 0, m == 0 or n == 0 that is all (A and B are not
   read, as in BLAS).
2. m == 1 (batch-1 inference, a GEMV) reads B once in its storage order, nothing packed: B not transposed,
   rows of B are added into an accumulator row on the stack (``_row_axpy``); B transposed (and A not), one
   vector dot product per column (``_row_dots``).
3. Otherwise k is cut into blocks of ``kc`` and n into panels of ``nr`` columns. Each [kc, nr] panel of
   op(B) is packed into a stack buffer (``kc * nr`` elements, zero-padded past n), so every transpose and
   leading dimension reads the same contiguous panel; with m <= mr and B not transposed, a full-width
   panel is read straight from B instead (it is used once: packing would only copy it).
4. A register-blocked micro-kernel computes an [r, v * lanes] tile (r = min(mr, rows left), v = the vectors
   needed for the columns left; one specialized kernel per (r, v), so edges do only the work they need) in
   ``r * v`` vector accumulators (``ir.VectorType``: 16 floats / 8 doubles; LLVM splits them into the
   registers a baseline x86-64 has, so one IR serves "native" and "generic") and adds alpha * tile into C
   (through a small stack tile when the panel is narrower than the kernel, so nothing past n is touched).

Summation order (exactness): every product is accumulated in the dtype, with ``llvm.fmuladd`` (fused on
targets with FMA, such as "native" here; a multiply then an add on "generic", so the two targets agree to
rounding, not bitwise). After ``c = beta * c``:

* blocked path (m >= 2, and m == 1 with both operands transposed): for each C element, each k block
  [p0, p0 + kc) is summed from 0 in increasing p, ``s = fmuladd(a[i, p], b[p, j], s)``, then
  ``c = fmuladd(alpha, s, c)``, block after block in increasing p0. Independent of m, n, the transposes
  and the leading dimensions.
* m == 1, B not transposed: one sum over all of k in increasing p from 0, then ``c = fmuladd(alpha, s, c)``.
* m == 1, B transposed, A not: p is spread over ``4 * lanes`` partial sums (p mod 4 * lanes), each in
  increasing p; the four accumulators are added pairwise, their lanes by halving, then the last
  k mod (4 * lanes) terms in increasing p; then ``c = fmuladd(alpha, s, c)``.

No global state, no malloc: the only scratch lives in the function's frame, so the function is re-entrant.

``blas="system"`` defines the same symbol as a thin wrapper over CBLAS's ``cblas_sgemm`` /
``cblas_dgemm`` (32-bit integers, CblasRowMajor); whoever links the object supplies the library
(``-lcblas`` or ``-lopenblas``). ``blas="external"`` only declares ``graphc_sgemm`` / ``graphc_dgemm``:
whoever loads the object supplies them (the cpu backend's llvm driver: its BLAS, shared with a helper
thread under contention).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from llvmlite import ir

from graphc.ir.errors import DTypeError, GraphcError

I32 = ir.IntType(32)
I64 = ir.IntType(64)

#: CBLAS's enumerations (cblas.h).
CBLAS_ROW_MAJOR = 101
CBLAS_NO_TRANS = 111
CBLAS_TRANS = 112


class GemmError(GraphcError, ValueError):
    """A GEMM that cannot be defined (an unknown ``blas`` choice)."""


@dataclass(frozen=True)
class Blocking:
    """The register and cache blocking of the generated GEMM, measured by bench/llvm_gemm.py."""

    #: rows of C per micro-kernel tile
    mr: int
    #: columns of C per tile and per packed B panel (a multiple of ``lanes``)
    nr: int
    #: depth of a packed B panel (the k block)
    kc: int
    #: elements per IR vector
    lanes: int


#: Per dtype: (LLVM scalar type, its name in intrinsic suffixes, bytes, blocking, symbol, CBLAS symbol).
_FLOAT = {
    "float32": (ir.FloatType(), "f32", 4, Blocking(mr=6, nr=32, kc=256, lanes=16), "graphc_sgemm", "cblas_sgemm"),
    "float64": (ir.DoubleType(), "f64", 8, Blocking(mr=6, nr=16, kc=256, lanes=8), "graphc_dgemm", "cblas_dgemm"),
}

BLAS_CHOICES = ("generated", "system", "external")
DTYPES = tuple(_FLOAT)


def default_blocking(dtype: str) -> Blocking:
    """The measured blocking of the generated GEMM for ``dtype`` (bench/llvm_gemm.py)."""
    return _spec(dtype)[3]


def gemm_symbol(dtype: str) -> str:
    """The name of the GEMM function for ``dtype`` ("float32" -> "graphc_sgemm")."""
    return _spec(dtype)[4]


def gemm_type(dtype: str) -> ir.FunctionType:
    """The C signature of ``graphc_sgemm`` / ``graphc_dgemm`` as an LLVM function type."""
    t = _spec(dtype)[0]
    p = t.as_pointer()
    return ir.FunctionType(ir.VoidType(), [I32, I32, I64, I64, I64, t, p, I64, p, I64, t, p, I64])


def gemm_argtypes(dtype: str) -> list:
    """The ctypes argument types of ``graphc_sgemm``/``graphc_dgemm`` (for calling a linked library)."""
    import ctypes

    scalar = ctypes.c_float if dtype == "float32" else ctypes.c_double
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    return [i32, i32, i64, i64, i64, scalar, ptr, i64, ptr, i64, scalar, ptr, i64]


def define_gemm(module: ir.Module, dtype: str, blas: str = "generated", blocking: Blocking | None = None) -> ir.Function:
    """Define ``graphc_sgemm`` (float32) or ``graphc_dgemm`` (float64) in ``module`` once and return it.

    ``blas``: "generated" (a blocked, vectorized loop nest in IR; needs only libc), "system" (a wrapper
    over CBLAS; the link must supply ``cblas_sgemm``/``cblas_dgemm``) or "external" (declared only). ``blocking`` overrides the measured
    default (for tuning only). Calling again returns the function already defined."""
    t, _, _, default_blocking, symbol, cblas_symbol = _spec(dtype)
    if blas not in BLAS_CHOICES:
        raise GemmError(f"define_gemm: blas must be one of {BLAS_CHOICES}, got {blas!r}")
    existing = module.globals.get(symbol)
    if existing is not None:
        return existing
    fn = ir.Function(module, gemm_type(dtype), symbol)
    for arg, name in zip(fn.args, ("trans_a", "trans_b", "m", "n", "k", "alpha", "a", "lda", "b", "ldb", "beta",
                                   "c", "ldc")):
        arg.name = name
    if blas == "external":
        fn.attributes.add("nounwind")
    elif blas == "system":
        _define_cblas_wrapper(module, fn, t, cblas_symbol)
    else:
        _GemmWriter(module, fn, dtype, blocking or default_blocking).write()
    return fn


def _spec(dtype: str):
    try:
        return _FLOAT[str(dtype)]
    except KeyError:
        raise DTypeError(f"define_gemm: dtype must be float32 or float64, got {dtype!r}") from None


def _define_cblas_wrapper(module: ir.Module, fn: ir.Function, t: ir.Type, cblas_symbol: str) -> None:
    """graphc_?gemm -> cblas_?gemm(CblasRowMajor, ...), the 64-bit sizes narrowed to CBLAS's int."""
    p = t.as_pointer()
    cblas_type = ir.FunctionType(ir.VoidType(), [I32, I32, I32, I32, I32, I32, t, p, I32, p, I32, t, p, I32])
    cblas = module.globals.get(cblas_symbol) or ir.Function(module, cblas_type, cblas_symbol)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ta, tb, m, n, k, alpha, a, lda, bb, ldb, beta, c, ldc = fn.args

    def trans(flag):
        return b.select(b.icmp_signed("!=", flag, I32(0)), I32(CBLAS_TRANS), I32(CBLAS_NO_TRANS))

    def narrow(v):
        return b.trunc(v, I32)

    b.call(cblas, [I32(CBLAS_ROW_MAJOR), trans(ta), trans(tb), narrow(m), narrow(n), narrow(k), alpha, a,
                   narrow(lda), bb, narrow(ldb), beta, c, narrow(ldc)])
    b.ret_void()


class _GemmWriter:
    """Writes the generated GEMM's body into ``fn`` (see the module docstring for the algorithm)."""

    def __init__(self, module: ir.Module, fn: ir.Function, dtype: str, blocking: Blocking):
        self.module = module
        self.fn = fn
        self.t, self.suffix, self.nbytes, _, self.symbol, _ = _spec(dtype)
        self.blk = blocking
        if blocking.nr % blocking.lanes:
            raise GemmError(f"define_gemm: nr={blocking.nr} is not a multiple of lanes={blocking.lanes}")
        self.vt = ir.VectorType(self.t, blocking.lanes)
        self.p = self.t.as_pointer()
        self.vp = self.vt.as_pointer()

    # ---- small IR helpers -------------------------------------------------------------------------------

    def _start(self, fn: ir.Function) -> ir.IRBuilder:
        """A builder for ``fn`` whose allocas go to a first block of their own (so mem2reg promotes them)."""
        allocas = fn.append_basic_block("allocas")
        body = fn.append_basic_block("body")
        self.alloca_builder = ir.IRBuilder(allocas)
        self.alloca_builder.branch(body)
        self.alloca_builder.position_at_start(allocas)
        return ir.IRBuilder(body)

    def _alloca(self, ty: ir.Type, count: int | None = None, align: int | None = None) -> ir.Value:
        slot = self.alloca_builder.alloca(ty, size=None if count is None else I64(count))
        if align:
            slot.align = align
        return slot

    @contextmanager
    def _loop(self, b: ir.IRBuilder, start, stop, step=1, name: str = "i") -> Iterator[ir.Value]:
        """``for (i = start; i < stop; i += step)`` on int64; yields i."""
        var = self._alloca(I64)
        b.store(_i64(start), var)
        head = b.append_basic_block(f"{name}.head")
        body = b.append_basic_block(f"{name}.body")
        end = b.append_basic_block(f"{name}.end")
        b.branch(head)
        b.position_at_end(head)
        i = b.load(var, name=name)
        b.cbranch(b.icmp_signed("<", i, _i64(stop)), body, end)
        b.position_at_end(body)
        yield i
        b.store(b.add(i, _i64(step)), var)
        b.branch(head)
        b.position_at_end(end)

    def _fmuladd(self, b: ir.IRBuilder, x, y, z):
        """x * y + z, fused where the target has FMA (llvm.fmuladd)."""
        ty = x.type
        name = f"llvm.fmuladd.v{ty.count}{self.suffix}" if isinstance(ty, ir.VectorType) else f"llvm.fmuladd.{self.suffix}"
        fn = self.module.globals.get(name) or ir.Function(self.module, ir.FunctionType(ty, [ty, ty, ty]), name)
        return b.call(fn, [x, y, z])

    def _splat(self, b: ir.IRBuilder, x):
        v = b.insert_element(ir.Constant(self.vt, ir.Undefined), x, I32(0))
        return b.shuffle_vector(v, ir.Constant(self.vt, ir.Undefined), ir.Constant(ir.VectorType(I32, self.blk.lanes), None))

    def _at(self, b: ir.IRBuilder, base, *terms):
        """&base[sum of terms]"""
        offset = terms[0]
        for t in terms[1:]:
            offset = b.add(offset, t)
        return b.gep(base, [offset], inbounds=True)

    def _vload(self, b: ir.IRBuilder, ptr):
        return b.load(b.bitcast(ptr, self.vp), align=self.nbytes)

    def _vstore(self, b: ir.IRBuilder, value, ptr):
        b.store(value, b.bitcast(ptr, self.vp), align=self.nbytes)

    # ---- the function -----------------------------------------------------------------------------------

    def write(self) -> None:
        blk = self.blk
        ta, tb, m, n, k, alpha, a, lda, bmat, ldb, beta, c, ldc = self.fn.args
        vectors = blk.nr // blk.lanes
        kernels = [self._define_kernel(rows, v) for rows in range(1, blk.mr + 1) for v in range(1, vectors + 1)]
        b = self._start(self.fn)
        self._scale_c(b, m, n, beta, c, ldc)
        nothing_to_add = b.or_(b.fcmp_ordered("==", alpha, ir.Constant(self.t, 0.0)),
                               b.or_(b.icmp_signed("<=", k, I64(0)),
                                     b.or_(b.icmp_signed("<=", m, I64(0)), b.icmp_signed("<=", n, I64(0)))))
        with b.if_then(nothing_to_add, likely=False):
            b.ret_void()
        a_trans = b.icmp_signed("!=", ta, I32(0))
        b_trans = b.icmp_signed("!=", tb, I32(0))
        # op(A)[i, p] = a[i * a_rs + p * a_cs]
        a_rs = b.select(a_trans, I64(1), lda)
        a_cs = b.select(a_trans, lda, I64(1))
        panel = self._alloca(self.t, blk.kc * blk.nr, align=64)
        tile = self._alloca(self.t, blk.mr * blk.nr, align=64)
        # batch-1 inference (m == 1): a GEMV, one pass over B in its storage order, nothing packed
        one_row = b.icmp_signed("==", m, I64(1))
        with b.if_then(b.and_(one_row, b.not_(b_trans))):
            self._row_axpy(b, k, a, a_cs, bmat, ldb, n, c, alpha, panel)
            b.ret_void()
        with b.if_then(b.and_(one_row, b.and_(b_trans, b.not_(a_trans)))):
            self._row_dots(b, k, a, bmat, ldb, n, c, alpha)
            b.ret_void()
        read_b_directly = b.and_(b.not_(b_trans), b.icmp_signed("<=", m, I64(blk.mr)))
        with self._loop(b, I64(0), k, blk.kc, "pc") as pc:
            kc = _min(b, I64(blk.kc), b.sub(k, pc))
            with self._loop(b, I64(0), n, blk.nr, "jc") as jc:
                nr = _min(b, I64(blk.nr), b.sub(n, jc))
                direct = b.and_(read_b_directly, b.icmp_signed("==", nr, I64(blk.nr)))
                with b.if_else(direct) as (then, otherwise):
                    with then:
                        direct_ptr = self._at(b, bmat, b.mul(pc, ldb), jc)
                        direct_block = b.block
                    with otherwise:
                        self._pack_b(b, b_trans, bmat, ldb, pc, jc, kc, nr, panel)
                        packed_block = b.block
                b_ptr = b.phi(self.p, "b_panel")
                b_ptr.add_incoming(direct_ptr, direct_block)
                b_ptr.add_incoming(panel, packed_block)
                b_stride = b.phi(I64, "b_stride")
                b_stride.add_incoming(ldb, direct_block)
                b_stride.add_incoming(I64(blk.nr), packed_block)
                # the narrowest kernel covering nr columns: ceil(nr / lanes) vectors
                panel_vectors = b.sdiv(b.add(nr, I64(blk.lanes - 1)), I64(blk.lanes))
                with self._loop(b, I64(0), m, blk.mr, "ic") as ic:
                    rows = _min(b, I64(blk.mr), b.sub(m, ic))
                    which = b.add(b.mul(b.sub(rows, I64(1)), I64(vectors)), panel_vectors)
                    a_ptr = self._at(b, a, b.mul(ic, a_rs), b.mul(pc, a_cs))
                    c_ptr = self._at(b, c, b.mul(ic, ldc), jc)
                    args = [kc, a_ptr, a_rs, a_cs, b_ptr, b_stride, c_ptr, ldc, nr, alpha, tile]
                    self._dispatch(b, which, kernels, args)
        b.ret_void()

    def _row_axpy(self, b: ir.IRBuilder, k, a, a_cs, bmat, ldb, n, c, alpha, scratch, unroll: int = 4) -> None:
        """c[0, :] += alpha * sum_p a[0, p] * B[p, :] for B not transposed: rows of B are added into an
        accumulator row (``scratch``, KC * NR elements, so n is cut into chunks of that width) in increasing
        p, ``unroll`` rows per pass over the accumulator (same order, fewer loads and stores of it), reading
        B once, contiguously; then alpha times the accumulator is added into C."""
        width = I64(self.blk.kc * self.blk.nr)
        k_unrolled = b.sub(k, b.srem(k, I64(unroll)))
        with self._loop(b, I64(0), n, width, "rj") as jc:
            w = _min(b, width, b.sub(n, jc))
            with self._loop(b, I64(0), w, 1, "rz") as j:
                b.store(ir.Constant(self.t, 0.0), self._at(b, scratch, j))
            with self._loop(b, I64(0), k_unrolled, unroll, "rp") as p:
                self._add_rows(b, [b.add(p, I64(u)) for u in range(unroll)], a, a_cs, bmat, ldb, jc, w, scratch)
            with self._loop(b, k_unrolled, k, 1, "rq") as p:
                self._add_rows(b, [p], a, a_cs, bmat, ldb, jc, w, scratch)
            with self._loop(b, I64(0), w, 1, "rc") as j:
                ptr = self._at(b, c, jc, j)
                b.store(self._fmuladd(b, alpha, b.load(self._at(b, scratch, j)), b.load(ptr)), ptr)

    def _add_rows(self, b: ir.IRBuilder, ps: list, a, a_cs, bmat, ldb, jc, w, acc_row) -> None:
        """acc_row[0:w] = fmuladd(a[0, p], B[p, jc:jc + w], acc_row[0:w]) for p in ``ps``, in that order."""
        lanes = self.blk.lanes
        w_vectors = b.sub(w, b.srem(w, I64(lanes)))
        a_ps = [b.load(self._at(b, a, b.mul(p, a_cs))) for p in ps]
        a_pvs = [self._splat(b, x) for x in a_ps]
        b_rows = [self._at(b, bmat, b.mul(p, ldb), jc) for p in ps]
        with self._loop(b, I64(0), w_vectors, lanes, "rv") as j:
            ptr = self._at(b, acc_row, j)
            acc = self._vload(b, ptr)
            for a_pv, b_row in zip(a_pvs, b_rows):
                acc = self._fmuladd(b, a_pv, self._vload(b, self._at(b, b_row, j)), acc)
            self._vstore(b, acc, ptr)
        with self._loop(b, w_vectors, w, 1, "rt") as j:
            ptr = self._at(b, acc_row, j)
            acc = b.load(ptr)
            for a_p, b_row in zip(a_ps, b_rows):
                acc = self._fmuladd(b, a_p, b.load(self._at(b, b_row, j)), acc)
            b.store(acc, ptr)

    def _row_dots(self, b: ir.IRBuilder, k, a, bmat, ldb, n, c, alpha, unroll: int = 4) -> None:
        """c[0, j] += alpha * dot(a[0, :], b[j, :]) for B transposed and A not (both rows contiguous in p):
        each dot sums p in ``unroll * lanes`` independent vector lanes (lane l of accumulator u takes
        p = u * lanes + l (mod unroll * lanes)), adds the accumulators pairwise and the lanes by halving,
        then the p past the last whole step in increasing order."""
        lanes = self.blk.lanes
        step = unroll * lanes
        k_vectors = b.sub(k, b.srem(k, I64(step)))
        accs = [self._alloca(self.vt) for _ in range(unroll)]
        with self._loop(b, I64(0), n, 1, "dj") as j:
            b_row = self._at(b, bmat, b.mul(j, ldb))
            for acc in accs:
                b.store(ir.Constant(self.vt, [0.0] * lanes), acc)
            with self._loop(b, I64(0), k_vectors, step, "dp") as p:
                for u, acc in enumerate(accs):
                    offset = b.add(p, I64(u * lanes))
                    x = self._vload(b, self._at(b, a, offset))
                    y = self._vload(b, self._at(b, b_row, offset))
                    b.store(self._fmuladd(b, x, y, b.load(acc)), acc)
            vectors = [b.load(acc) for acc in accs]
            while len(vectors) > 1:
                vectors = [b.fadd(x, y) for x, y in zip(vectors[::2], vectors[1::2])]
            total = self._lane_sum(b, vectors[0])
            dot = self._alloca(self.t)
            b.store(total, dot)
            with self._loop(b, k_vectors, k, 1, "dt") as p:
                x = b.load(self._at(b, a, p))
                y = b.load(self._at(b, b_row, p))
                b.store(self._fmuladd(b, x, y, b.load(dot)), dot)
            ptr = self._at(b, c, j)
            b.store(self._fmuladd(b, alpha, b.load(dot), b.load(ptr)), ptr)

    def _lane_sum(self, b: ir.IRBuilder, v):
        """The sum of a vector's lanes, halving: (v[:h] + v[h:]) until one lane is left."""
        count = v.type.count
        while count > 1:
            half = count // 2
            undef = ir.Constant(v.type, ir.Undefined)
            lo = b.shuffle_vector(v, undef, ir.Constant(ir.VectorType(I32, half), list(range(half))))
            hi = b.shuffle_vector(v, undef, ir.Constant(ir.VectorType(I32, half), list(range(half, count))))
            v = b.fadd(lo, hi)
            count = half
        return b.extract_element(v, I32(0))

    def _scale_c(self, b: ir.IRBuilder, m, n, beta, c, ldc) -> None:
        """C *= beta; with beta == 0, C = 0 without reading it (NaN in C does not propagate)."""
        zero = ir.Constant(self.t, 0.0)
        is_zero = b.fcmp_ordered("==", beta, zero)
        is_one = b.fcmp_ordered("==", beta, ir.Constant(self.t, 1.0))
        with b.if_then(b.not_(is_one)):
            with self._loop(b, I64(0), m, 1, "si") as i:
                row = self._at(b, c, b.mul(i, ldc))
                with self._loop(b, I64(0), n, 1, "sj") as j:
                    ptr = self._at(b, row, j)
                    with b.if_else(is_zero) as (then, otherwise):
                        with then:
                            b.store(zero, ptr)
                        with otherwise:
                            b.store(b.fmul(beta, b.load(ptr)), ptr)

    def _pack_b(self, b: ir.IRBuilder, b_trans, bmat, ldb, pc, jc, kc, nr, panel) -> None:
        """panel[p * NR + j] = op(B)[pc + p, jc + j] for p < kc, j < nr; zeros for nr <= j < NR."""
        nr_full = I64(self.blk.nr)
        with b.if_else(b_trans) as (then, otherwise):
            with then:  # op(B)[p, j] = b[j * ldb + p]: walk p innermost, along B's rows
                with self._loop(b, I64(0), nr, 1, "pj") as j:
                    src = self._at(b, bmat, b.mul(b.add(jc, j), ldb), pc)
                    with self._loop(b, I64(0), kc, 1, "pp") as p:
                        b.store(b.load(self._at(b, src, p)), self._at(b, panel, b.mul(p, nr_full), j))
            with otherwise:  # op(B)[p, j] = b[p * ldb + j]: walk j innermost
                with self._loop(b, I64(0), kc, 1, "pp") as p:
                    src = self._at(b, bmat, b.mul(b.add(pc, p), ldb), jc)
                    dst = self._at(b, panel, b.mul(p, nr_full))
                    with self._loop(b, I64(0), nr, 1, "pj") as j:
                        b.store(b.load(self._at(b, src, j)), self._at(b, dst, j))
        with self._loop(b, I64(0), kc, 1, "zp") as p:
            dst = self._at(b, panel, b.mul(p, nr_full))
            with self._loop(b, nr, nr_full, 1, "zj") as j:
                b.store(ir.Constant(self.t, 0.0), self._at(b, dst, j))

    def _dispatch(self, b: ir.IRBuilder, which, kernels: list[ir.Function], args: list) -> None:
        """switch (which) { case w: kernels[w - 1](args) } (which = (rows - 1) * NV + vectors)"""
        done = b.append_basic_block("kernel.done")
        cases = [b.append_basic_block(f"kernel.{r}") for r in range(1, len(kernels) + 1)]
        switch = b.switch(which, cases[-1])
        for r, (case, kernel) in enumerate(zip(cases, kernels), start=1):
            switch.add_case(I64(r), case)
            b.position_at_end(case)
            b.call(kernel, args)
            b.branch(done)
        b.position_at_end(done)

    def _define_kernel(self, rows: int, vectors: int) -> ir.Function:
        """An internal function computing one [rows, vectors * lanes] tile over a k block and adding alpha * it
        into C: ``(kc, a, a_rs, a_cs, b_panel, b_stride, c, ldc, nr, alpha, tile)``; ``nr < vectors * lanes``
        goes through the ``tile`` scratch so that columns past n are neither read nor written."""
        blk = self.blk
        width = vectors * blk.lanes
        fnty = ir.FunctionType(ir.VoidType(), [I64, self.p, I64, I64, self.p, I64, self.p, I64, I64, self.t, self.p])
        fn = ir.Function(self.module, fnty, f"{self.symbol}_kernel_{rows}x{width}")
        fn.linkage = "internal"
        kc, a, a_rs, a_cs, bp, b_stride, c, ldc, nr, alpha, tile = fn.args
        for arg in (a, bp, c, tile):
            arg.add_attribute("noalias")
        b = self._start(fn)
        accs = [[self._alloca(self.vt) for _ in range(vectors)] for _ in range(rows)]
        zero = ir.Constant(self.vt, [0.0] * blk.lanes)
        for row in accs:
            for acc in row:
                b.store(zero, acc)
        a_rows = [self._at(b, a, b.mul(I64(i), a_rs)) for i in range(rows)]
        with self._loop(b, I64(0), kc, 1, "p") as p:
            b_row = self._at(b, bp, b.mul(p, b_stride))
            b_vecs = [self._vload(b, self._at(b, b_row, I64(v * blk.lanes))) for v in range(vectors)]
            a_off = b.mul(p, a_cs)
            for i in range(rows):
                a_ip = self._splat(b, b.load(self._at(b, a_rows[i], a_off)))
                for v in range(vectors):
                    b.store(self._fmuladd(b, a_ip, b_vecs[v], b.load(accs[i][v])), accs[i][v])
        alpha_v = self._splat(b, alpha)
        full = b.icmp_signed("==", nr, I64(width))
        with b.if_else(full, likely=True) as (then, otherwise):
            with then:  # C[i, 0:NR] += alpha * acc, whole vectors
                for i in range(rows):
                    c_row = self._at(b, c, b.mul(I64(i), ldc))
                    for v in range(vectors):
                        ptr = self._at(b, c_row, I64(v * blk.lanes))
                        self._vstore(b, self._fmuladd(b, alpha_v, b.load(accs[i][v]), self._vload(b, ptr)), ptr)
            with otherwise:  # the last panel of n: through the tile, element by element
                for i in range(rows):
                    for v in range(vectors):
                        self._vstore(b, b.load(accs[i][v]), self._at(b, tile, I64(i * width + v * blk.lanes)))
                for i in range(rows):
                    c_row = self._at(b, c, b.mul(I64(i), ldc))
                    with self._loop(b, I64(0), nr, 1, "ej") as j:
                        ptr = self._at(b, c_row, j)
                        s = b.load(self._at(b, tile, I64(i * width), j))
                        b.store(self._fmuladd(b, alpha, s, b.load(ptr)), ptr)
        b.ret_void()
        return fn


def _i64(v) -> ir.Value:
    return I64(v) if isinstance(v, int) else v


def _min(b: ir.IRBuilder, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)

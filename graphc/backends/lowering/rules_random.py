"""Random ops: random_uniform, random_shift2d, random_flip2d.

The generator is the legacy Mersenne Twister that NumPy and Numba share: seeded with
``(key * KEY_MULTIPLIER + salt) % 2**32`` (graphc.ops.random), it draws the same numbers as the
reference backend. Draws happen in a fixed order, so the loops around them are sequential.
"""
from __future__ import annotations

import sympy as sp

from ...ir import Node
from ...ops import random as random_ops
from .context import Lowering, assign, rule
from .ir import Draw, Loop, Seed, index_var, nest

SEED_MODULUS = 2 ** 32


def seeded(lw: Lowering, key: Node, salt: int, skipped: int = 0) -> list:
    """Statements seeding the generator from the step's key (the reference backend's seed arithmetic;
    the key is reduced first so that the product stays within int64), then taking the ``skipped`` draws
    of the rows before this batch's (``row_offset``: a data-parallel rank's share)."""
    from ...ops.random import KEY_MULTIPLIER

    k = lw.integer_var("key")
    out = [lw.load(k, key, 0), Seed(sp.Mod(sp.Mod(k, SEED_MODULUS) * KEY_MULTIPLIER + salt, SEED_MODULUS))]
    if skipped:
        out.append(Loop(index_var("j"), skipped, [Draw(lw.var("skip"))], parallel=False))
    return out


@rule("random_uniform")
def lower_random_uniform(lw: Lowering, node: Node) -> None:
    (key,) = node.inputs
    j, u = index_var("j"), lw.var("u")
    draws = Loop(j, node.size, [Draw(u), lw.store(node, j, u)], parallel=False)
    skipped = random_ops.uniform_skipped(node.attrs, node.shape)
    lw.emit(seeded(lw, key, node.attrs["salt"], skipped) + [draws])


def per_image(lw: Lowering, x: Node, draws: list, pixel: list) -> Loop:
    """For each image i (sequential: it draws): ``draws``, then ``pixel`` for every (c, r, q)."""
    N, C, H, W = x.shape
    return Loop(index_var("i"), N, draws + nest([C, H, W], ["c", "r", "q"], pixel), parallel=False)


@rule("random_shift2d")
def lower_random_shift2d(lw: Lowering, node: Node) -> None:
    """Each image shifted by its own (dy, dx), each uniform in [-max_shift, max_shift]; pixels shifted
    in from outside are 0 (a guarded load)."""
    x, key = node.inputs
    _, C, H, W = x.shape
    ms = node.attrs["max_shift"]
    span = 2 * ms + 1
    i, c, r, q = (index_var(n) for n in "icrq")
    uy, ux, v = lw.var("u"), lw.var("u"), lw.var("x")
    dy, dx = lw.integer_var("dy"), lw.integer_var("dx")
    draws = [Draw(uy), assign(dy, sp.floor(uy * span) - ms, "int64"),
             Draw(ux), assign(dx, sp.floor(ux * span) - ms, "int64")]
    rr, qq = r - dy, q - dx
    inside = (rr >= 0) & (rr < H) & (qq >= 0) & (qq < W)
    pixel = [lw.load(v, x, ((i * C + c) * H + rr) * W + qq, guard=inside),
             lw.store(node, ((i * C + c) * H + r) * W + q, v, exact=True)]
    skipped = 2 * random_ops.row_offset(node.attrs)  # two draws per image
    lw.emit(seeded(lw, key, node.attrs["salt"], skipped) + [per_image(lw, x, draws, pixel)])


@rule("random_flip2d")
def lower_random_flip2d(lw: Lowering, node: Node) -> None:
    """Each image flipped left-right with probability 1/2: both pixels loaded, one kept."""
    x, key = node.inputs
    _, C, H, W = x.shape
    i, c, r, q = (index_var(n) for n in "icrq")
    u, mirrored, same = lw.var("u"), lw.var("x"), lw.var("x")
    row = ((i * C + c) * H + r) * W
    pixel = [lw.load(mirrored, x, row + (W - 1) - q), lw.load(same, x, row + q),
             lw.store(node, row + q, sp.Piecewise((mirrored, u < 0.5), (same, True)), exact=True)]
    skipped = random_ops.row_offset(node.attrs)  # one draw per image
    lw.emit(seeded(lw, key, node.attrs["salt"], skipped) + [per_image(lw, x, [Draw(u)], pixel)])

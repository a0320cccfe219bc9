"""Access analysis for the contraction rule: where the SIMD lanes and the register tile go.

GEMM view of a reduction block ``out[S] (+)= f(operand_1[...], operand_2[...])``: each operand
has *exclusive* spatial iterators, used by no other operand (NCHW conv: the weight owns ``f``, the
input owns ``n, y, x``; dense: ``A`` owns ``m``, ``B`` owns ``n``).

- With reuse: the vector axis ``v`` is an exclusive iterator of an operand that walks it with
  unit stride or is cheap to repack (a copy ``[.., F, ..] -> [F/t, .., t]``, small next to the
  multiply-adds); the register axis ``u`` is the innermost exclusive iterator of another operand,
  so each loaded vector is reused ``u_tile`` times from registers. Among the candidates wins the
  most multiply-adds per load, then the cheapest (no copy, free copy, sliding window, costly copy).
  When the register axis's extent leaves the tile short of independent accumulators (a 14-wide
  conv: 7 of one vector, fewer than the multiply-add pipes' latency needs), a second register
  axis ``u2`` of the same operand (the conv's output rows) multiplies the tile: ``2 x 2`` output
  pixels of 2 vectors, 8 accumulators (measured 2-7% faster on ResNet-18's 14x14 convs).
- Without (depthwise conv, pooling): ``v`` is the innermost output iterator and ``u`` the one
  before it (independent accumulators hide the multiply-add latency). When an operand walks ``v``
  with a constant stride ``s > 1`` (strided depthwise conv or pooling) the ``v`` loop is left
  whole, with the (small) reduction unrolled inside it, for LLVM's loop vectorizer. On a
  load-store ISA a two-vector ``v`` (NCHW8c on NEON) is taken whole, and with unit stride and
  room for the window's weight vectors the tiles along ``u`` become a serial loop.

:func:`plan_contraction` is the heuristic's plan; :func:`plan_variants` adds the alternatives
(vectors per tile row, register axis) the auto-tuner measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import tvm
from tvm import tirx

from relaycomp.schedules.cpu.common import (
    CpuFacts,
    buffer_size,
    collect_loads,
    is_unit_stride,
    largest_divisor,
    static_int,
    uses_var,
)

# Repacking an operand is "free" below 1/64 of the multiply-adds and allowed up to 1/8.
FREE_PACK_RATIO = 64
MAX_PACK_RATIO = 8
# Independent accumulators that keep both FMA pipes busy (2 pipes x 4 cycles on AVX2 cores):
# a one-axis tile with fewer gets a second register axis when that gives more.
MIN_ACCUMULATORS = 8
# A tile without a register axis (a depthwise conv along a row, a matrix-vector product) has no
# operand to share between its vectors, and its epilogue works on all of them at once: past 8
# vectors the epilogue spills (PP-OCRv4 det int8's NCHW depthwise convs with a quantizing
# hardswish: 10 vectors 1.59 ms, 5 vectors 0.89 ms).
MAX_VECTORS_WITHOUT_REGISTER_AXIS = 8


@dataclass(frozen=True)
class Relayout:
    """Give operand ``read`` (an index into the block's reads) the layout ``index_map``."""

    read: int
    index_map: Callable


@dataclass(frozen=True)
class Plan:
    """Where the lanes and the unrolled register tile go (indices into the block's iter_vars)."""

    vector_iter: int
    vector_tile: int
    register_iter: int | None
    register_tile: int
    relayouts: tuple[Relayout, ...]
    # A second unrolled register axis, outside ``register_iter`` in the tile (``None``: none).
    outer_register_iter: int | None = None
    outer_register_tile: int = 1
    # The tiles along ``register_iter`` as a serial loop inside the parallel one, not fused
    # into it: what does not change along it (a depthwise conv's window weights) stays in
    # registers, and the tile's addresses step instead of being divided out of one index.
    serial_register_outer: bool = False


def plan_contraction(block, facts: CpuFacts) -> Plan | None:
    """Plan the register tile of ``block`` (an ``SBlock``), or ``None`` if it does not fit.

    ``vector_tile == 0`` means "keep the whole ``v`` loop, do not vectorize it in TVM"."""
    plans = plan_variants(block, facts)
    return plans[0] if plans else None


def plan_variants(block, facts: CpuFacts, most: int = 8) -> list[Plan]:
    """The heuristic plan of ``block`` first, then up to ``most - 1`` alternatives the auto-tuner
    may measure: the same vector axis and operand with another number of vectors per row of the
    tile, or another register axis (empty when the block does not fit the rule)."""
    found = _analyze_any_width(block, facts)
    if not isinstance(found, _Candidate):
        return [found] if found is not None else []
    extents, lanes = found.extents, found.lanes
    heuristic = (found.vectors, found.register_iter, found.outer_tile)
    choices = [heuristic]
    for register_iter in [found.register_iter, *found.register_candidates]:
        if register_iter != found.register_iter and (extents[register_iter] or 1) < 2:
            continue
        for vectors in range(1, 5):
            if extents[found.vector_iter] % (vectors * lanes) == 0:
                choices.append((vectors, register_iter, 1))
    relayout_read = None
    if found.dim is not None:
        name = str(found.operands[found.operand].source.name)
        if found.reads.count(name) != 1:
            return []
        relayout_read = found.reads.index(name)
    plans = []
    for vectors, register_iter, outer_tile in dict.fromkeys(choices):
        u_extent = 1 if register_iter is None else extents[register_iter]
        tile = (found.tile if (vectors, register_iter, outer_tile) == heuristic
                else largest_divisor(u_extent, max(facts.accumulator_budget // vectors, 1)))
        relayouts = ()
        if relayout_read is not None:
            relayouts = (Relayout(relayout_read, _blocked(found.dim, vectors * lanes)),)
        outer_iter = found.outer_register_iter if outer_tile > 1 else None
        plans.append(Plan(found.vector_iter, vectors * lanes, register_iter, tile, relayouts,
                          outer_iter, outer_tile))
    return plans[:most]


class _Candidate(NamedTuple):
    """The best vector/register axes of a block with reuse, and what varying them needs."""

    operand: int
    vector_iter: int
    dim: int | None
    register_iter: int | None
    vectors: int
    tile: int
    extents: list
    lanes: int
    reads: list
    operands: list
    register_candidates: list
    outer_register_iter: int | None
    outer_tile: int


def _analyze_any_width(block, facts: CpuFacts) -> _Candidate | Plan | None:
    """:func:`_analyze` at the CPU's vector width, or at half of it when only half-width
    vectors give a register tile: on AVX-512, 256-bit vectors for the channel counts that are
    multiples of 8 but not of 16 (MobileNetV2's 24-channel 1x1 convs) or a 1000-class dense."""
    found = _analyze(block, facts)
    if isinstance(found, _Candidate) or facts.vector_bits <= 256:
        return found
    narrower = _analyze(block, replace(facts, vector_bits=facts.vector_bits // 2))
    return narrower if isinstance(narrower, _Candidate) else found


def _analyze(block, facts: CpuFacts) -> _Candidate | Plan | None:
    """The best register-tile candidate, else a :class:`Plan` without reuse, else ``None``."""
    store = block.body
    if not isinstance(store, tirx.BufferStore):
        return None
    lanes = facts.lanes(store.buffer.dtype)
    iters = list(block.iter_vars)
    operands = [ld for ld in collect_loads(store.value) if not ld.source.same_as(store.buffer)]
    # Symbolic extents (a dynamic batch) may only sit on outer spatial loops.
    extents = [static_int(it.dom.extent) for it in iters]
    spatial = [i for i, it in enumerate(iters) if it.iter_type == tirx.IterVar.DataPar]
    if not operands or any(extents[i] is None for i in range(len(iters)) if i not in spatial):
        return None
    used = [{i for i in spatial if _uses(op, iters[i].var)} for op in operands]
    exclusive = [own - set().union(*(used[:k] + used[k + 1 :])) for k, own in enumerate(used)]
    reads = [str(region.source.name) for region in block.reads]
    macs = 1
    for extent in extents:
        macs *= extent or 1

    # Each candidate: the register tile it allows, scored by multiply-adds per load (vector
    # loads of the vector operand + broadcast loads along the register axis), then by cost:
    # 0 walks the operand as is (dense B[k, n]); 1 repacks it for free (a conv weight); 2 walks a
    # sliding window (conv input x + rx: unaligned, overlapping loads); a costly repack ranks
    # by its size.
    best, best_others = None, []
    for k, load in enumerate(operands):
        size = buffer_size(load.source)
        others = sorted(set(spatial) - used[k], reverse=True)
        register_iter = next(
            (i for i in others if extents[i] and any(i in own for own in exclusive)), None
        )
        # The next axis of the operand that owns the register axis: the tile's second axis.
        owner = next((own for own in exclusive if register_iter in own), set())
        outer_iter = next((i for i in others if i < (register_iter or 0) and i in owner
                           and (extents[i] or 1) > 1), None)
        for i in exclusive[k]:
            if size is None or extents[i] is None or extents[i] % lanes:
                continue
            dim = None
            if is_unit_stride(load.indices, iters[i].var):
                cost = 0 if load.indices[-1].same_as(iters[i].var) else 2
            else:
                dim = _sole_dim(load.indices, iters[i].var)
                if dim is None or size * MAX_PACK_RATIO > macs:
                    continue
                cost = 1 if size * FREE_PACK_RATIO <= macs else max(size, 3)
            if register_iter is None and (facts.loads_operands or len(operands) == 1):
                # No other operand to reuse the vectors (a depthwise conv): on a load-store ISA,
                # a second axis of this one (the output rows) that its loads slide along; so too
                # for a pool on any ISA (ResNet-18's max pool: 7 pixels x 2 vectors, measured
                # 10% faster than one pixel per iteration).
                register_iter = _sliding_axis(load, iters, extents, exclusive[k] - {i})
            vectors, tile = _register_tile(extents, lanes, facts, i, register_iter)
            rows = _vector_rows(extents, lanes, facts, i, register_iter,
                                exclusive[k] - {i}, (vectors, tile))
            per_load = round(vectors * tile / (vectors + tile), 2)
            if rows is not None:
                per_load = round(rows[1] * rows[2] / (rows[1] + rows[2]), 2)
            key = (-per_load, cost, size, -i)
            if best is None or key < best[0]:
                tile_outer_iter, outer_tile = outer_iter, 1
                if rows is not None:
                    tile_outer_iter, outer_tile, tile = rows
                elif outer_iter is not None and vectors * tile < MIN_ACCUMULATORS:
                    vectors, tile, outer_tile = _register_tile_2d(
                        extents, lanes, facts, i, register_iter, outer_iter, (vectors, tile))
                best = (key, k, i, dim, register_iter, vectors, tile,
                        tile_outer_iter if outer_tile > 1 else None, outer_tile)
                best_others = [j for j in others if extents[j]
                               and any(j in own for own in exclusive)]
    if best is not None:
        key, k, i, dim, register_iter, vectors, tile, outer_iter, outer_tile = best
        return _Candidate(k, i, dim, register_iter, vectors, tile, extents, lanes, reads,
                          operands, best_others, outer_iter, outer_tile)
    return _plan_without_reuse(operands, iters, extents, spatial, lanes, facts)


def _plan_without_reuse(operands, iters, extents, spatial, lanes, facts) -> Plan | None:
    vector_iter = spatial[-1]
    if extents[vector_iter] is None:
        return None
    var = iters[vector_iter].var
    strides = [_last_dim_stride(load, var) for load in operands if _uses(load, var)]
    if None in strides:
        return None
    if any(stride != 1 for stride in strides):
        # Strided lanes (strided depthwise conv / pooling): TVM would gather them one by one,
        # LLVM's loop vectorizer loads whole vectors and shuffles - leave that loop to LLVM.
        return Plan(vector_iter, 0, None, 1, ()) if len(spatial) > 1 else None
    row = extents[vector_iter]
    if lanes < row <= 4 * lanes and row % lanes:
        # A short row that is no multiple of the lanes (a 28- or 14-wide depthwise conv): the
        # whole row as one vector, which LLVM splits into full vectors and one part; measured
        # 1.8x faster at 28 wide than 7-lane vectors with a register tile, the same at 14.
        return Plan(vector_iter, row, None, 1, ())
    vector_tile = largest_divisor(row, lanes)
    if vector_tile < 2:
        return None
    # Independent accumulators along the next output axis hide the FMA latency.
    register_iter = next((i for i in reversed(spatial[:-1]) if (extents[i] or 1) > 1), None)
    if facts.loads_operands and row == 2 * lanes and register_iter is not None:
        # A blocked layout's two-vector channel block (NCHW8c on NEON) whole: a pixel's two
        # output vectors are adjacent, written by one store pair (stp), not two stores.
        unit = all(_stride(load, iters[register_iter].var) in (None, 1) for load in operands)
        return _two_vector_row(vector_iter, row, register_iter, extents, spatial, facts, unit)
    register_tile = (
        1
        if register_iter is None
        else largest_divisor(extents[register_iter], facts.accumulator_budget)
    )
    return Plan(vector_iter, vector_tile, register_iter, register_tile, ())


def _two_vector_row(vector_iter, row, register_iter, extents, spatial, facts,
                    unit_stride: bool) -> Plan:
    """A two-vector row without reuse on a load-store ISA (a depthwise conv over NCHW8c on
    NEON): when the window's weight vectors fit the registers next to enough accumulators to
    hide the FMA latency (``MIN_ACCUMULATORS``; two clamp bounds and two input vectors
    besides), the row's tiles are a serial loop along which they stay in registers; else
    (a short row, or a strided one, whose tile reads twice the input vectors: LLVM spilled)
    the largest tile, fused into the parallel loop."""
    window = 1
    for i, extent in enumerate(extents):
        if i not in spatial:
            window *= extent
    columns = (facts.registers - 2 * window - 4) // 2
    tile = largest_divisor(extents[register_iter], columns) if columns > 0 else 1
    if unit_stride and 2 * tile >= MIN_ACCUMULATORS:
        return Plan(vector_iter, row, register_iter, tile, (), serial_register_outer=True)
    # Per column two accumulators and the input vectors a window row reads (2 x the stride).
    columns = (facts.registers - 4) // (2 + (1 if unit_stride else 2))
    tile = largest_divisor(extents[register_iter], min(columns, facts.accumulator_budget // 2))
    return Plan(vector_iter, row, register_iter, tile, ())


def _sliding_axis(load, iters, extents, candidates) -> int | None:
    """The innermost of ``candidates`` (iterator indices) that ``load`` indexes together with a
    reduction iterator (``y + ry``), so that neighbouring outputs share loads; else ``None``."""
    reduction = [it.var for it in iters if it.iter_type != tirx.IterVar.DataPar]
    for j in sorted(candidates, reverse=True):
        if (extents[j] or 1) > 1 and any(
                uses_var(index, iters[j].var) and any(uses_var(index, r) for r in reduction)
                for index in load.indices):
            return j
    return None


def _register_tile(extents, lanes, facts, vector_iter, register_iter) -> tuple[int, int]:
    """``(vectors, register_tile)``: the most accumulators (independent FMA chains) the register
    budget holds, then the fewest loads per multiply-add (vectors + register_tile)."""
    u_extent = 1 if register_iter is None else extents[register_iter]
    # Without a register axis (matrix-vector) the chains can only come from more vectors.
    most_vectors = 2 if u_extent > 1 else min(facts.accumulator_budget,
                                              MAX_VECTORS_WITHOUT_REGISTER_AXIS)
    best = (0, 0, 0, 1, 1)
    for vectors in range(1, most_vectors + 1):
        if extents[vector_iter] % (vectors * lanes) == 0:
            tile = largest_divisor(u_extent, facts.accumulator_budget // vectors)
            while tile > 1 and not _fits(facts, vectors, tile):
                tile = largest_divisor(u_extent, tile - 1)
            best = max(best, (tile * vectors, -(tile + vectors), -vectors, vectors, tile))
    return best[3], best[4]


def _vector_rows(extents, lanes, facts, vector_iter, register_iter, own,
                 one_axis) -> tuple[int, int, int] | None:
    """``(rows_iter, rows, register_tile)`` when the vector axis holds exactly one vector (a
    blocked layout's channel block) and another axis of the same operand (the blocks of output
    channels) gives the tile more vectors, ``rows`` of them: each broadcast input then feeds
    ``rows`` multiply-adds (as two vectors of a wider block would); else ``None``."""
    if extents[vector_iter] != lanes or register_iter is None or one_axis[0] != 1:
        return None
    best, budget = None, facts.accumulator_budget
    for rows_iter in sorted(own, reverse=True):
        for rows in range(2, 5):
            if not extents[rows_iter] or extents[rows_iter] % rows:
                continue
            tile = largest_divisor(extents[register_iter], budget // rows)
            while tile > 1 and not _fits(facts, rows, tile):
                tile = largest_divisor(extents[register_iter], tile - 1)
            if tile < 2 or rows * tile < MIN_ACCUMULATORS:
                continue
            score = (rows * tile / (rows + tile), rows * tile)
            if score > (one_axis[1] / (1 + one_axis[1]), one_axis[1]) and (
                    best is None or score > best[0]):
                best = (score, rows_iter, rows, tile)
    return None if best is None else best[1:]


def _fits(facts, vectors: int, pixels: int) -> bool:
    """Whether a ``vectors x pixels`` tile, its weight vectors and its broadcast inputs fit the
    registers of a load-store ISA (always on x86, whose FMAs read an operand from memory)."""
    return not facts.loads_operands or vectors * pixels + vectors + pixels <= facts.registers


def _register_tile_2d(extents, lanes, facts, vector_iter, register_iter, outer_iter,
                      one_axis) -> tuple[int, int, int]:
    """``(vectors, register_tile, outer_register_tile)``: a tile over two register axes when
    it holds more accumulators than ``one_axis`` (``(vectors, register_tile)``) does, then the
    fewest loads per multiply-add (vectors + tile pixels); else ``one_axis`` unchanged."""
    budget = facts.accumulator_budget
    best = (one_axis[0] * one_axis[1], -(one_axis[0] + one_axis[1]), 1, *one_axis, 1)
    for vectors in range(1, 3):
        if extents[vector_iter] % (vectors * lanes):
            continue
        for outer in range(2, budget // vectors + 1):
            if extents[outer_iter] % outer:
                continue
            tile = largest_divisor(extents[register_iter], budget // (vectors * outer))
            pixels = tile * outer
            if tile < 2 or not _fits(facts, vectors, pixels):  # a column: loads not shared
                continue
            best = max(best, (vectors * pixels, -(vectors + pixels), 0, vectors, tile, outer))
    return best[3], best[4], best[5]


def _uses(load, var) -> bool:
    return any(uses_var(index, var) for index in load.indices)


def _sole_dim(indices, var) -> int | None:
    """The dimension whose index is exactly ``var`` when no other dimension mentions it."""
    dims = [d for d, index in enumerate(indices) if uses_var(index, var)]
    if len(dims) == 1 and isinstance(indices[dims[0]], tirx.Var):
        return dims[0] if indices[dims[0]].same_as(var) else None
    return None


def _stride(load, var) -> int | None:
    """The constant coefficient of ``var`` in the one index of ``load`` that uses it linearly
    (``None``: no index, several, or not linear)."""
    found = [index for index in load.indices if uses_var(index, var)]
    if len(found) != 1:
        return None
    coefficients = tvm.sym.detect_linear_equation(found[0], [var])
    return static_int(coefficients[0]) if len(coefficients) == 2 else None


def _last_dim_stride(load, var) -> int | None:
    """The constant coefficient of ``var`` when it only appears, linearly, in the last index."""
    if any(uses_var(index, var) for index in load.indices[:-1]):
        return None
    coefficients = tvm.sym.detect_linear_equation(load.indices[-1], [var])
    return static_int(coefficients[0]) if len(coefficients) == 2 else None


def _blocked(dim: int, tile: int) -> Callable:
    """``[.., d, ..] -> [.., d // tile, .., d % tile]``: ``tile`` consecutive ``d`` contiguous."""

    def index_map(*axes):
        return [*axes[:dim], axes[dim] // tile, *axes[dim + 1 :], axes[dim] % tile]

    return index_map

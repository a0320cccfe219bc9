"""The contraction rule of ``schedule_cpu_loops``: conv2d, dense/matmul, batch matmul, pooling.

Matches a PrimFunc with exactly one reduction block ("main") whose iterators all have static
extents, surrounded by injective blocks (padding before it, an elementwise epilogue after it).

Schedule, for main: pick a *vector axis* ``v`` (a spatial iterator SIMD lanes run along) and a
*register axis* ``u`` (unrolled, each step reusing the same vector operand), then

    parallel(fused outer spatial loops) / reduction loops / unroll(u_inner) / vectorize(v_inner)

with the ``u_inner x v_inner`` output tile accumulated in a "local" buffer (cache_write +
decompose_reduction) that LLVM keeps in registers. The epilogue is inlined into the
write-back of that tile (reverse_compute_inline + reverse_compute_at), padding stays a separate
parallel, vectorized stage.

Choosing ``v`` (GEMM view: each operand has *exclusive* spatial iterators, used by no other
operand - for NCHW conv the weight owns ``f``, the input owns ``n, y, x``): ``v`` is an exclusive
iterator of the smallest operand that either already walks it with unit stride or is cheap to
repack so that it does (a copy ``[.., F, ..] -> [F/t, .., t]`` whose cost is small next to the
multiply-adds). The repack block is annotated ``meta_schedule.layout_rewrite_preproc`` so that
constant weights can be packed once at compile time. ``u`` is the innermost exclusive iterator of
another operand. Without such an operand (depthwise conv, pooling) ``v`` is the innermost output
iterator, provided every operand walks it with unit stride or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func

from ._cpu_common import (
    CpuFacts,
    CpuRule,
    buffer_size,
    collect_loads,
    is_unit_stride,
    largest_divisor,
    loop_extent,
    schedule_spatial_block,
    static_int,
    uses_var,
)

# Repacking an operand is "free" below 1/64 of the multiply-adds and allowed up to 1/8.
FREE_PACK_RATIO = 64
MAX_PACK_RATIO = 8
LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"
_HAS_IF_THEN_ELSE = tvm.get_global_func("s_tir.schedule.HasIfThenElse")


@dataclass(frozen=True)
class _Plan:
    """Where the lanes and the unrolled register tile go, and which operand to repack."""

    vector_iter: int  # index into the main block's iter_vars
    vector_tile: int
    register_iter: int | None
    register_tile: int
    pack_read: int | None  # index into main's reads of the operand to repack, if any
    pack_dim: int | None  # the dimension of that operand indexed by the vector iterator


class ContractionRule(CpuRule):
    """Register-tiled, vectorized, parallel schedule for one reduction block plus its epilogue."""

    name = "contraction"

    def schedule(self, sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule | None:
        """See the module docstring."""
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        reductions = [info for info in infos if not info.is_injective()]
        if len(reductions) != 1:
            return None
        main = reductions[0]
        kinds = main.dom_kind()
        if set(kinds) != {"S", "R"} or any(not isinstance(d, int) for d in main.dom()):
            return None
        position = infos.index(main)
        prologue, epilogue = infos[:position], infos[position + 1 :]
        plan = _plan(sch, main.block_rv, facts)
        if plan is None:
            return None
        for info in prologue:  # elementwise producers fold into main; padding stays a stage
            if _has_if_then_else(sch.get(info.block_rv)) or not _try(
                sch.compute_inline, info.block_rv
            ):
                schedule_spatial_block(sch, info.block_rv, facts)
        _tile(sch, main.block_rv, plan, [info.block_rv for info in epilogue], facts)
        return sch


def _has_if_then_else(block) -> bool:
    return bool(_HAS_IF_THEN_ELSE(block))


def _try(primitive, *args) -> bool:
    try:
        primitive(*args)
    except Exception:  # noqa: BLE001 - a primitive that does not apply is an answer, not an error
        return False
    return True


def _plan(sch: s_tir.Schedule, block_rv, facts: CpuFacts) -> _Plan | None:
    block = sch.get(block_rv)
    store = block.body
    if not isinstance(store, tirx.BufferStore):
        return None
    lanes = facts.lanes(store.buffer.dtype)
    iters = list(block.iter_vars)
    operands = [load for load in collect_loads(store.value) if not load.source.same_as(store.buffer)]
    if not operands:
        return None
    extents = [static_int(it.dom.extent) for it in iters]
    spatial = [i for i, it in enumerate(iters) if it.iter_type == tirx.IterVar.DataPar]
    macs = 1
    for extent in extents:
        macs *= extent
    used = [{i for i in spatial if any(uses_var(x, iters[i].var) for x in op.indices)} for op in operands]
    exclusive = [u - set().union(*(used[:k] + used[k + 1 :])) for k, u in enumerate(used)]
    read_index = {str(r.source.name): k for k, r in enumerate(block.reads)}

    candidates = []  # (cost, operand size, -output position, operand, iterator, packed dim)
    for k, load in enumerate(operands):
        size = buffer_size(load.source)
        for i in exclusive[k]:
            if extents[i] % lanes or size is None:
                continue
            if is_unit_stride(load.indices, iters[i].var):
                candidates.append((0, size, -i, k, i, None))
                continue
            dim = _sole_dim(load.indices, iters[i].var)
            if dim is None or size * MAX_PACK_RATIO > macs:
                continue
            cost = 0 if size * FREE_PACK_RATIO <= macs else size
            candidates.append((cost, size, -i, k, i, dim))
    if candidates:
        _, _, _, k, vector_iter, dim = min(candidates)
        others = sorted(set(spatial) - used[k] - {vector_iter}, reverse=True)
        register_iter = next((i for i in others if any(i in e for e in exclusive)), None)
        pack_read = None if dim is None else read_index.get(str(operands[k].source.name))
        if dim is not None and pack_read is None:
            return None
    else:  # no reuse across an operand: vectorize the innermost output axis if unit-stride
        vector_iter = spatial[-1]
        if not all(
            is_unit_stride(op.indices, iters[vector_iter].var)
            or not any(uses_var(x, iters[vector_iter].var) for x in op.indices)
            for op in operands
        ):
            return None
        register_iter, pack_read, dim = None, None, None
    return _tiles(extents, lanes, facts, vector_iter, register_iter, pack_read, dim, bool(candidates))


def _tiles(extents, lanes, facts, vector_iter, register_iter, pack_read, dim, reuse) -> _Plan:
    """Pick ``vectors x register_tile`` accumulators within the register budget (most wins)."""
    v_extent = extents[vector_iter]
    u_extent = 1 if register_iter is None else extents[register_iter]
    if not reuse:
        vector_tile = largest_divisor(v_extent, lanes)
        return _Plan(vector_iter, vector_tile, None, 1, None, None)
    best = (0, 0, 1, 1)
    for vectors in (1, 2):
        if v_extent % (vectors * lanes):
            continue
        tile = largest_divisor(u_extent, facts.accumulator_budget // vectors)
        best = max(best, (tile * vectors, vectors, tile, vectors))
    _, _, register_tile, vectors = best
    return _Plan(vector_iter, vectors * lanes, register_iter, register_tile, pack_read, dim)


def _sole_dim(indices, var) -> int | None:
    """The dimension whose index is exactly ``var`` when no other dimension mentions it."""
    dims = [d for d, index in enumerate(indices) if uses_var(index, var)]
    if len(dims) == 1 and isinstance(indices[dims[0]], tirx.Var):
        return dims[0] if indices[dims[0]].same_as(var) else None
    return None


def _pack(sch: s_tir.Schedule, block_rv, plan: _Plan, facts: CpuFacts) -> None:
    """Copy the vector operand into ``[.., d / tile, .., d % tile]`` so lanes are contiguous."""
    pack = sch.cache_read(block_rv, plan.pack_read, "global")
    dim, tile = plan.pack_dim, plan.vector_tile

    def index_map(*axes):
        blocked = [*axes[:dim], axes[dim] // tile, *axes[dim + 1 :]]
        return [*blocked, axes[dim] % tile]

    sch.transform_layout(block_rv, ("read", plan.pack_read), index_map)
    sch.annotate(pack, LAYOUT_REWRITE_PREPROC, True)
    schedule_spatial_block(sch, pack, facts)


def _tile(sch: s_tir.Schedule, block_rv, plan: _Plan, epilogue: list, facts: CpuFacts) -> None:
    if plan.pack_read is not None:
        _pack(sch, block_rv, plan, facts)
    block = sch.get(block_rv)
    kinds = [it.iter_type for it in block.iter_vars]
    loops = sch.get_loops(block_rv)
    vector_outer, vector_inner = sch.split(loops[plan.vector_iter], [None, plan.vector_tile])
    register_inner = None
    spatial_outer, reduction = [], []
    for i, loop in enumerate(loops):
        if i == plan.vector_iter:
            spatial_outer.append(vector_outer)
        elif i == plan.register_iter:
            outer, register_inner = sch.split(loop, [None, plan.register_tile])
            spatial_outer.append(outer)
        elif kinds[i] == tirx.IterVar.DataPar:
            spatial_outer.append(loop)
        else:
            reduction.append(loop)
    inner = [register_inner] if register_inner is not None else []
    sch.reorder(*spatial_outer, *reduction, *inner, vector_inner)
    outer = sch.fuse(*spatial_outer) if len(spatial_outer) > 1 else spatial_outer[0]
    tile_elements = plan.vector_tile * plan.register_tile * (loop_extent(sch, outer) or 1)
    if facts.parallel and tile_elements >= 64 and (loop_extent(sch, outer) or 2) > 1:
        sch.parallel(outer)

    write_back = sch.cache_write(block_rv, 0, "local")
    _accumulate_along_lanes(sch, block_rv, block.iter_vars[plan.vector_iter].var)
    for producer in epilogue[:-1]:
        if not _try(sch.compute_inline, producer):
            schedule_spatial_block(sch, producer, facts)
    if epilogue and not _try(sch.reverse_compute_inline, epilogue[-1]):
        schedule_spatial_block(sch, epilogue[-1], facts)
    sch.reverse_compute_at(write_back, outer, preserve_unit_loops=True)
    _vectorize_tile(sch, write_back, outer)
    sch.vectorize(vector_inner)
    if register_inner is not None:
        sch.unroll(register_inner)
    init = sch.decompose_reduction(block_rv, reduction[0])
    _vectorize_tile(sch, init, outer)


def _accumulate_along_lanes(sch: s_tir.Schedule, block_rv, vector_var) -> None:
    """Lay the local accumulator out with the vector axis last: whole-vector loads and stores
    that LLVM keeps in registers, rather than strided lanes it spills."""
    indices = sch.get(block_rv).body.indices
    dims = [d for d, index in enumerate(indices) if uses_var(index, vector_var)]
    if len(dims) != 1 or dims[0] == len(indices) - 1:
        return
    (dim,) = dims
    sch.transform_layout(
        block_rv, ("write", 0), lambda *axes: [*axes[:dim], *axes[dim + 1 :], axes[dim]]
    )


def _vectorize_tile(sch: s_tir.Schedule, block_rv, outer) -> None:
    """Vectorize the innermost non-unit loop of a tile nest under ``outer``, unroll the rest."""
    loops = sch.get_loops(block_rv)
    outer_loop = sch.get(outer)
    start = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(outer_loop)) + 1
    tile = [loop for loop in loops[start:] if loop_extent(sch, loop) != 1]
    if not tile:
        return
    sch.vectorize(tile[-1])
    for loop in tile[:-1]:
        sch.unroll(loop)

"""The inner-reduction rule of ``schedule_cpu_loops``: sum/mean/max over contiguous trailing axes.

Matches a PrimFunc with exactly one reduction block whose reduction iterators all come after its
spatial ones and walk trailing, whole dimensions of every operand (global average pooling,
``ReduceMean``/``ReduceSum``/``ReduceMax`` over the last axes), plus injective prologue/epilogue.

Schedule: the reduction is fused into one contiguous loop, split by a few SIMD widths and
rfactor-ed, so that partial results accumulate in vector registers fed by whole-vector loads,
then the lanes are reduced and the epilogue (e.g. the division of a mean) applied, all inside one
parallel loop over the output. Summation order changes (partial sums), so results agree with the
unscheduled build to fp32 rounding, not bit for bit.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from relaycomp.schedules.cpu.common import (
    CpuFacts,
    CpuRule,
    collect_loads,
    loop_extent,
    schedule_spatial_block,
    single_reduction,
    static_int,
    uses_var,
)


class InnerReductionRule(CpuRule):
    """Vectorized partial sums (rfactor) for reductions over contiguous trailing axes."""

    name = "inner_reduction"

    def schedule(self, sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule | None:
        """See the module docstring."""
        nest = single_reduction(sch)
        if nest is None:
            return None
        kinds = nest.main.dom_kind()
        spatial_count = len(kinds) - len(kinds.lstrip("S"))
        if spatial_count == 0 or set(kinds[spatial_count:]) != {"R"}:
            return None
        main = nest.main.block_rv
        for info in nest.prologue:
            if not _inline(sch, info.block_rv):
                schedule_spatial_block(sch, info.block_rv, facts)
        width = reduction_width(sch.get(main), spatial_count, facts)
        if width is None:
            return None
        loops = sch.get_loops(main)
        spatial, reduction = loops[:spatial_count], loops[spatial_count:]
        fused = sch.fuse(*reduction) if len(reduction) > 1 else reduction[0]
        _, lanes = sch.split(fused, [None, width])
        partial = sch.rfactor(lanes, factor_axis=spatial_count)
        outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        if facts.parallel and loop_extent(sch, outer) > 1:
            sch.parallel(outer)
        sch.compute_at(partial, outer)
        lane_loop, chunk_loop = sch.get_loops(partial)[-2:]
        sch.reorder(chunk_loop, lane_loop)
        sch.vectorize(lane_loop)
        sch.decompose_reduction(partial, chunk_loop)
        epilogue = [info.block_rv for info in nest.epilogue]
        for producer in epilogue[:-1]:
            if not _inline(sch, producer):
                schedule_spatial_block(sch, producer, facts)
        if epilogue:
            sch.reverse_compute_at(epilogue[-1], outer)
        return sch


def _inline(sch: s_tir.Schedule, block_rv) -> bool:
    try:
        sch.compute_inline(block_rv)
    except Exception:  # noqa: BLE001 - not inlinable: keep it as a stage
        return False
    return True


def reduction_width(block, spatial_count: int, facts: CpuFacts) -> int | None:
    """Lanes x chains for the fused reduction, or ``None`` if it is not contiguous or divisible.

    Every operand must read the reduction iterators, in order, as its trailing whole dimensions,
    or none of them (a value of the row: softmax's maximum, subtracted from each element).
    """
    store = block.body
    if not isinstance(store, tirx.BufferStore):
        return None
    iters = list(block.iter_vars)[spatial_count:]
    extent = 1
    for it in iters:
        value = static_int(it.dom.extent)
        if value is None:
            return None
        extent *= value
    operands = [ld for ld in collect_loads(store.value) if not ld.source.same_as(store.buffer)]
    if not operands:
        return None
    reading = [load for load in operands
               if any(uses_var(index, it.var) for index in load.indices for it in iters)]
    if not reading:
        return None
    for load in reading:
        tail = list(load.indices)[len(load.indices) - len(iters) :]
        dims = list(load.source.shape)[len(load.indices) - len(iters) :]
        if len(tail) != len(iters):
            return None
        for index, dim, it in zip(tail, dims, iters, strict=True):
            if not index.same_as(it.var) or static_int(dim) != static_int(it.dom.extent):
                return None
    lanes = facts.lanes(store.buffer.dtype)
    for chains in (4, 2, 1):  # several accumulators hide the add latency
        if extent % (lanes * chains) == 0 and extent >= 2 * lanes * chains:
            return lanes * chains
    return None

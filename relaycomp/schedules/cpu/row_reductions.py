"""The row-reductions rule of ``schedule_cpu_loops``: softmax and its kin, several reductions
over the trailing axes of each row.

Matches a PrimFunc with two or more reduction blocks, each reducing the same leading spatial
axes' rows over contiguous trailing axes (as :class:`InnerReductionRule` requires of its one),
and an injective last block that writes those rows (softmax: row maximum, exponentials, their
sum, the division). TVM's own reduction rule leaves each reduction a scalar chain, one add or
max per element behind the previous one: a 640 x 640 softmax ran 7x onnxruntime's time.

Schedule: each reduction is split by a few SIMD widths and rfactor-ed (partial results in vector
registers, fed by whole-vector loads); every block is computed inside one parallel loop over the
rows of the last block, the injective ones vectorized. Summation order changes (partial sums),
so results agree with the unscheduled build to fp32 rounding, not bit for bit. A max (min)
reduction that ``reduce_from_infinity`` starts from -inf (+inf) is no reducer TVM's ``rfactor``
knows: it is scheduled from the lowest (highest) finite float, and its partial and final
reductions are then started from the infinity again (max and min results unchanged).
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.target import Target

from relaycomp.schedules.cpu.common import CpuFacts, CpuRule, loop_extent
from relaycomp.schedules.cpu.reduction import reduction_width


class RowReductionsRule(CpuRule):
    """Vectorized partial results for every reduction of a row, all inside one row loop."""

    name = "row_reductions"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``func`` (module docstring), its infinite reduction identities made finite
        for ``rfactor`` and infinite again after."""
        if not isinstance(func, tirx.PrimFunc):
            return None
        finite, swapped = _swap_identities(func, to_finite=True)
        sch = super().apply(finite, target, tunable)
        if sch is None or not swapped:
            return sch
        return s_tir.Schedule(_swap_identities(sch.mod["main"], to_finite=False)[0])

    def schedule(self, sch: s_tir.Schedule, facts: CpuFacts) -> s_tir.Schedule | None:
        """See the module docstring."""
        infos = normalize_prim_func(sch)
        if not infos or not infos[-1].is_injective():
            return None
        reductions = [info for info in infos if not info.is_injective()]
        if len(reductions) < 2:
            return None
        rows = _row_axes(reductions, infos[-1])
        if rows is None:
            return None
        widths = [reduction_width(sch.get(info.block_rv), rows, facts) for info in reductions]
        if None in widths:
            return None
        partials, partial_widths = [], []
        for info, width in zip(reductions, widths, strict=True):
            reduction = sch.get_loops(info.block_rv)[rows:]
            fused = sch.fuse(*reduction) if len(reduction) > 1 else reduction[0]
            _, lanes = sch.split(fused, [None, width])
            try:
                partials.append(sch.rfactor(lanes, factor_axis=rows))
                partial_widths.append(width)
            except s_tir.ScheduleError:
                # a reducer rfactor does not know (the infinite starts were made finite in
                # ``apply``): a chain, unrolled by the vector width
                sch.unroll(lanes)
        last = infos[-1].block_rv
        row_loops = sch.get_loops(last)[:rows]
        outer = sch.fuse(*row_loops) if rows > 1 else row_loops[0]
        if facts.parallel and loop_extent(sch, outer) > 1:
            sch.parallel(outer)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, outer, preserve_unit_loops=True)
        for partial, width in zip(partials, partial_widths, strict=True):
            # the rfactor-ed block's loops inside the row: lanes, unit row loops, chunks
            *inner, chunk_loop = sch.get_loops(partial)[1:]
            lane_loop = next(loop for loop in inner if loop_extent(sch, loop) == width)
            sch.reorder(chunk_loop, lane_loop)
            sch.vectorize(lane_loop)
            sch.decompose_reduction(partial, chunk_loop)
        for info in infos:
            if info.is_injective():
                _vectorize_row(sch, info.block_rv, facts)
        return sch


def _row_axes(reductions, last) -> int | None:
    """How many leading spatial axes the reductions and the last block share as rows."""
    counts = set()
    for info in reductions:
        kinds = info.dom_kind()
        spatial = len(kinds) - len(kinds.lstrip("S"))
        if spatial == 0 or set(kinds[spatial:]) != {"R"}:
            return None
        counts.add((spatial, tuple(str(extent) for extent in info.dom()[:spatial])))
    if len(counts) != 1:
        return None
    (rows, extents), = counts
    if len(last.dom()) <= rows or tuple(str(e) for e in last.dom()[:rows]) != extents:
        return None
    return rows


def _vectorize_row(sch: s_tir.Schedule, block, facts: CpuFacts) -> None:
    """Vectorize the innermost loop of an injective block inside a row, if it has whole
    vectors."""
    inner = sch.get_loops(block)[-1]
    extent = loop_extent(sch, inner)
    lanes = facts.lanes(sch.get(block).writes[0].source.dtype)
    if extent is not None and extent % lanes == 0:
        _, vector = sch.split(inner, [None, lanes])
        sch.vectorize(vector)


def _swap_identities(func: tirx.PrimFunc, to_finite: bool) -> tuple[tirx.PrimFunc, int]:
    """``func`` with its reductions' float inits of -inf/+inf made the lowest/highest finite
    value (``to_finite``), or back: in blocks' ``init`` and in the init blocks
    ``decompose_reduction`` made (named ``*_init``); and how many."""
    count = [0]

    def swapped(value):
        if not isinstance(value, tirx.FloatImm) or not str(value.ty).startswith("float"):
            return None
        dtype = str(value.ty)
        lowest, highest = (float(tvm.tirx.min_value(dtype).value),
                           float(tvm.tirx.max_value(dtype).value))
        pairs = [(-math.inf, lowest), (math.inf, highest)]
        for infinite, finite in pairs:
            source, result = (infinite, finite) if to_finite else (finite, infinite)
            if value.value == source:
                count[0] += 1
                return tirx.FloatImm(dtype, result)
        return None

    def store(node):
        value = swapped(node.value) if isinstance(node, tirx.BufferStore) else None
        return node if value is None else tirx.BufferStore(node.buffer, value, node.indices)

    def block(node, mutator):
        node = mutator.default_mutate(node)
        init = store(node.init) if node.init is not None else None
        body = store(node.body) if node.name_hint.endswith("_init") else node.body
        if (init is None or init.same_as(node.init)) and body.same_as(node.body):
            return node
        return s_tir.SBlock(node.iter_vars, node.reads, node.writes, node.name_hint, body,
                            init, node.alloc_buffers, node.match_buffers, node.annotations)

    mutated = tvm_ffi.structural_mutate(func, [(s_tir.SBlock, block)])
    return (mutated, count[0]) if count[0] else (func, 0)

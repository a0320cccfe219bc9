"""The int8 matrix-vector product of ``schedule_cpu_loops`` on x86: a batch-1 classifier head
(``matmul(x_q[1, K], W_q[K, N])`` from ``lower_qdq_to_integer``) on ``vpdpbusd`` (AVX-512 VNNI,
groups of 4 inputs) or, on AVX2 without VNNI, ``vpmaddwd`` on inputs and weights widened to
16 bits (``DOT_8X2_AVX2``, groups of 2: exact for any int8 weights).

Matches a PrimFunc whose one reduction block is ``acc[(0,) n] += int32(x[(0,) k]) *
int32(w[k, n])`` (normalization drops the unit row) with uint8 ``x``, int8 ``w`` (a parameter:
a constant weight is repacked at compile time), int32 ``acc``, ``N`` a multiple of 8 and ``K``
of the group.

Schedule (``L`` lanes: 16, or 8 on ymm registers when ``N`` is no multiple of 16 and on AVX2;
``G`` the group, ``B`` accumulators)::

    parallel(N / (L B)) / K / G / unroll(B) / dot_LxG

``w`` is packed ``[N / L, K / G, L, G]``, so each step loads one vector of weights per
accumulator and broadcasts ``G`` inputs once; ``B`` independent accumulators hide the
``vpdpbusd`` latency; the epilogue is applied as the ``L B`` outputs are written back. The
generic schedule widened and multiplied int32 vectors (``vpmovsxbd``, ``vpmulld``): MobileNetV2's
head (1280 x 1000) took 0.12 ms, this 0.006 ms (timed alone, weights in cache; Zen 5, 2 threads);
the AVX2 form (x86-64-avx2 build run on the same Zen 5): 0.087 -> 0.010 ms.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from relaycomp.schedules.cpu.common import (
    CpuFacts,
    inline_epilogue,
    matched_reduction,
    schedule_spatial_block,
)
from relaycomp.schedules.cpu.int8_depthwise import u8_s8_operands
from relaycomp.schedules.cpu.int8_names import DOT_8X2_AVX2, DOT_8X4_VNNI, DOT_16X4_VNNI
from relaycomp.schedules.cpu.int8_nchwc import VNNI_BLOCKS, blocked_dot

LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"
GROUP = 4  # inputs one vpdpbusd lane sums
AVX2_GROUP = 2  # inputs one vpmaddwd lane sums
MAX_ACCUMULATORS = 8  # independent accumulators: vpdpbusd's latency x its issue rate, about


def schedule_int8_gemv(func: tirx.PrimFunc, target: Target,
                       facts: CpuFacts) -> s_tir.Schedule | None:
    """The schedule of the module docstring, or ``None`` when ``func`` does not match."""
    dot = blocked_dot(target)
    group = GROUP if dot is VNNI_BLOCKS else AVX2_GROUP
    matched = matched_reduction(func, lambda block: _gemv_shape(block, group)) if dot else None
    if matched is None or matched[1].prologue:
        return None
    sch, nest, (outputs, _) = matched
    main = nest.main.block_rv
    lanes = 16 if outputs % 16 == 0 and dot is VNNI_BLOCKS else 8
    intrinsic = DOT_8X2_AVX2
    if dot is VNNI_BLOCKS:
        intrinsic = DOT_16X4_VNNI if lanes == 16 else DOT_8X4_VNNI
    blocks = max(b for b in range(1, MAX_ACCUMULATORS + 1) if outputs // lanes % b == 0)
    from relaycomp.schedules.cpu import int8_intrin  # noqa: F401 - registers the intrinsics

    weight_copy = sch.cache_read(main, 1, "global")
    sch.annotate(weight_copy, LAYOUT_REWRITE_PREPROC, True)
    sch.transform_layout(main, ("read", 1), _packed(lanes, group))
    column, step = sch.get_loops(main)
    column_outer, column_block, column_lane = sch.split(column, [None, blocks, lanes])
    step_outer, step_group = sch.split(step, [None, group])
    sch.reorder(column_outer, step_outer, column_block, column_lane, step_group)
    if facts.parallel:
        sch.parallel(column_outer)
    write_back = sch.cache_write(main, 0, "global")
    inline_epilogue(sch, nest)
    sch.reverse_compute_at(write_back, column_outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, step_outer)
    sch.tensorize(column_lane, intrinsic)
    sch.unroll(column_block)
    for block in (init, write_back):
        sch.vectorize(sch.get_loops(block)[-1])
    schedule_spatial_block(sch, weight_copy, facts)
    return sch


def _gemv_shape(block, group: int = GROUP) -> tuple[int, int] | None:
    """``(N, K)`` of a uint8 x int8 -> int32 matrix-vector block, ``K`` a multiple of
    ``group``, else ``None``."""
    operands = u8_s8_operands(block)
    if operands is None:
        return None
    data, weight = operands
    kinds = "".join("S" if it.iter_type == tirx.IterVar.DataPar else "R"
                    for it in block.iter_vars)
    if kinds != "SR" or len(weight.shape) != 2 or len(data.shape) not in (1, 2):
        return None
    extents = [it.dom.extent for it in block.iter_vars]
    if not all(isinstance(e, tirx.IntImm) for e in extents):
        return None
    outputs, inputs = (int(e) for e in extents)
    if [int(d) for d in weight.shape] != [inputs, outputs]:
        return None
    if outputs % 8 or inputs % group:
        return None
    return outputs, inputs


def _packed(lanes: int, group: int):
    def index_map(k, n):
        return [n // lanes, k // group, n % lanes, k % group]

    return index_map

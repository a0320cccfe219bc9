"""The schedule of Winograd's tile products in bf16 (``winograd_products_bf16`` of
``convert_to_bf16``): ``M[e, p, k] += V[e, p, 2q + j] . U[e, q, k, j]`` over bf16 bits, fp32 sums,
the target's bf16 dot product (AVX-512 BF16 ``vdpbf16ps``, AArch64 ``bfdot``) tensorized over a
register tile.

Schedule (``L`` lanes, ``R`` blocks of ``L`` outputs and ``U`` tiles a register tile)::

    parallel(e, p / U, k / (R L)) / q / unroll(U) / unroll(R) / dot_Lx2

A tile's input pair is one 32-bit broadcast, an output block's ``L x 2`` weights one vector
load; the tile's sizes are :func:`bf16_nchwc.register_tile`'s (the same registers, the same
stack limit).
"""

from __future__ import annotations

from tvm import s_tir, tirx

from relaycomp.schedules.cpu.bf16_llvm import IMPORT_PRAGMA
from relaycomp.schedules.cpu.bf16_nchwc import register_tile
from relaycomp.schedules.cpu.common import (
    CpuFacts,
    reduction_operands,
    static_int,
    vectorize_tiles,
)
from relaycomp.schedules.cpu.int8_names import DOT_4X2_BFDOT, DOT_8X2_BF16, DOT_16X2_BF16

_INTRINSICS = {16: DOT_16X2_BF16, 8: DOT_8X2_BF16, 4: DOT_4X2_BFDOT}


def schedule_bf16_products(func: tirx.PrimFunc, isa, facts: CpuFacts) -> s_tir.Schedule | None:
    """The schedule of the module docstring with ``isa`` (an ``int8.Int8Instructions`` for
    bf16), or ``None`` when ``func`` is not the products alone. The intrinsics must be
    registered."""
    if isa is None or isa.lanes not in _INTRINSICS:
        return None
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) != 1:
        return None
    (main,) = blocks
    found = reduction_operands(sch.get(main), "float32", "uint16", "uint16")
    if found is None:
        return None
    data, weight, output = found
    if len(data.shape) != 3 or len(weight.shape) != 4 or len(output.shape) != 3:
        data, weight = weight, data
    shapes = [[static_int(d) for d in buffer.shape] for buffer in (data, weight, output)]
    if ([len(shape) for shape in shapes] != [3, 4, 3]
            or any(None in shape for shape in shapes) or shapes[1][3] != 2):
        return None
    _, tiles, outputs = shapes[2]
    if outputs % isa.lanes:
        return None
    rows, tile = register_tile(outputs // isa.lanes, 1, tiles, isa.lanes, isa.registers,
                               isa.scratch, loads_operands=isa.lane_columns > 0)
    element, p, k, pairs, pair = sch.get_loops(main)
    k_outer, k_row, k_lane = sch.split(k, [None, rows, isa.lanes])
    p_outer, p_inner = sch.split(p, [None, tile])
    sch.reorder(element, p_outer, k_outer, pairs, p_inner, k_row, k_lane, pair)
    outer = sch.fuse(element, p_outer, k_outer)
    if facts.parallel:
        sch.parallel(outer)
    sch.annotate(outer, IMPORT_PRAGMA, isa.llvm_ir)
    write_back = sch.cache_write(main, 0, "global")
    sch.reverse_compute_at(write_back, outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, pairs)
    sch.tensorize(k_lane, _INTRINSICS[isa.lanes])
    sch.unroll(p_inner)
    sch.unroll(k_row)
    vectorize_tiles(sch, (init, write_back), isa.lanes)
    return sch

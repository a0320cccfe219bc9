"""The schedule of a bf16 conv in the blocked layout (``conv2d_nchwc_bf16`` of
``convert_to_bf16``): the bf16 dot product of the target tensorized over a register tile.

Matches a PrimFunc whose one reduction block is
``acc[n, fo, y, x, fi] += widen(data[n, co, y', x', 2p + k]) * widen(weight[fo, co, ry, rx, p, fi,
k])`` - fp32 ``acc``, bf16 bits (``uint16``) ``data`` and ``weight`` - on a target with a bf16 dot
product (:func:`relaycomp.schedules.cpu.int8.bf16_instructions`): AVX-512 BF16 ``vdpbf16ps``
(16 lanes, or 8 on ymm for a block of 8), AArch64 ``bfdot`` (4 lanes).

Schedule (``L`` lanes, block ``b = V L``, ``R`` output blocks and ``U`` columns a tile)::

    parallel(n, fo / R, y, x / U) / co, ry, rx, p / unroll(U) / unroll(R) / unroll(V) / dot_Lx2

The layout is already the instruction's: a pixel's input pair is one 32-bit broadcast, an
output block's ``L x 2`` weights one vector load, and the ``U x R x V`` accumulators are stored
whole, with the epilogue (bias, residual add, activation, the next conv's ``round_to_bf16``)
inlined into their write-back. The padding (with a ``round_to_bf16`` inlined into it) is a
parallel stage of its own; a ``round_to_bf16`` that feeds the conv directly (a 1x1 conv's
input) is one too. Nothing is copied or repacked per call.

A conv that ``convert_to_bf16`` gave blocks of fewer lanes than its output's (only the real
channels of a block that is part padding: :data:`LANES_STAGE`, the output's blocks read from
them with zeros in the rest) is scheduled from its output instead::

    parallel(n, y, x / U) / [tile: co, ry, rx, p / unroll(U) / unroll(R) / dot_Lx2]
                          / unroll(U) / unroll(output blocks) / unroll(b / L) / vector(L)

with all ``R`` blocks of the conv in one tile, so that each output vector reads one tile vector
or is zero, known at compile time.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from relaycomp.schedules.cpu.bf16_llvm import IMPORT_PRAGMA
from relaycomp.schedules.cpu.common import (
    CpuFacts,
    inlined,
    reduction_operands,
    schedule_spatial_block,
    static_int,
    vectorize_tiles,
)
from relaycomp.schedules.cpu.int8_names import DOT_4X2_BFDOT, DOT_8X2_BF16, DOT_16X2_BF16

STACK_TILE_BYTES = 1024  # TVM puts a "global" buffer on the stack only below 1 KB
MIN_ACCUMULATORS = 12  # independent sums that hide the dot product's latency on two pipes
# lanes -> the intrinsic of :mod:`bf16_intrin` / :mod:`bf16_arm_intrin`
_INTRINSICS = {16: DOT_16X2_BF16, 8: DOT_8X2_BF16, 4: DOT_4X2_BFDOT}
# The stage of ``convert_to_bf16`` that reads a conv computed on narrower blocks back into the
# output's blocks (zeros in the lanes it left out).
LANES_STAGE = "conv2d_nchwc_bf16_lanes"
_HAS_IF_THEN_ELSE = tvm.get_global_func("s_tir.schedule.HasIfThenElse")


def schedule_bf16_nchwc(func: tirx.PrimFunc, isa, facts: CpuFacts,
                        narrower=None) -> s_tir.Schedule | None:
    """The schedule of the module docstring with ``isa`` (an ``int8.Int8Instructions`` for
    bf16; ``narrower``: the same on fewer lanes, for a block ``isa``'s lanes do not divide), or
    ``None`` when ``func`` does not match. The intrinsics must be registered."""
    if isa is None:
        return None
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    reductions = [i for i, block in enumerate(blocks) if any(
        it.iter_type != tirx.IterVar.DataPar for it in sch.get(block).iter_vars)]
    if len(reductions) != 1:
        return None
    position = reductions[0]
    main, prologue, epilogue = blocks[position], blocks[:position], blocks[position + 1:]
    shape = _blocked_shape(sch.get(main))
    if shape is None:
        return None
    out_blocks, block, width = shape
    if block % isa.lanes and narrower is not None:
        isa = narrower
    if block % isa.lanes:
        return None
    vectors = block // isa.lanes
    lanes_stage = bool(epilogue) and sch.get(epilogue[0]).name_hint.startswith(LANES_STAGE)
    rows, tile = register_tile(out_blocks, vectors, width, isa.lanes, isa.registers,
                               isa.scratch, loads_operands=isa.lane_columns > 0,
                               row_choices=(out_blocks,) if lanes_stage else (4, 3, 2, 1))
    if lanes_stage and (rows != out_blocks or vectors != 1):
        return None  # one tile holds every block of the conv, a vector each

    for producer in prologue:  # elementwise producers inline into the padding, if any
        if not _is_padding(sch.get(producer)) and not _feeds_main(sch, producer, main):
            inlined(sch, producer)
    for producer in prologue:
        if _still_there(sch, producer):
            schedule_spatial_block(sch, producer, facts)
    if lanes_stage:
        return _schedule_from_output(sch, main, epilogue, isa, tile, facts)

    # the loops of the TE compute, unit ones included: n, fo, y, x, fi / co, ry, rx, p, k
    n, fo, y, x, fi, *window, pair = sch.get_loops(main)
    fo_outer, fo_inner = sch.split(fo, [None, rows])
    x_outer, x_inner = sch.split(x, [None, tile])
    fi_vector, fi_lane = sch.split(fi, [vectors, isa.lanes])
    sch.reorder(n, fo_outer, y, x_outer, *window, x_inner, fo_inner, fi_vector, fi_lane, pair)
    outer = sch.fuse(n, fo_outer, y, x_outer)
    if facts.parallel:
        sch.parallel(outer)
    sch.annotate(outer, IMPORT_PRAGMA, isa.llvm_ir)
    write_back = sch.cache_write(main, 0, "global")
    for consumer in epilogue[:-1]:  # bias, residual add, activation, round_to_bf16
        sch.compute_inline(consumer)
    if epilogue:
        sch.reverse_compute_inline(epilogue[-1])
    sch.reverse_compute_at(write_back, outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, window[0])
    sch.tensorize(fi_lane, _INTRINSICS[isa.lanes])
    for loop in (x_inner, fo_inner, fi_vector):
        sch.unroll(loop)
    vectorize_tiles(sch, (init, write_back), isa.lanes)
    return sch


def _schedule_from_output(sch: s_tir.Schedule, main, epilogue, isa, tile: int,
                          facts: CpuFacts) -> s_tir.Schedule | None:
    """The conv of a :data:`LANES_STAGE` (module docstring): the epilogue, the stage inlined,
    tiled over the output's columns, and the conv's tile computed in it. The stage's blocks
    read the tile through ``(block * b + lane) // L``, which no region analysis inverts, so the
    output drives and the conv's region follows from it (``compute_at``)."""
    for consumer in epilogue[:-1]:  # the lanes stage, bias, residual add, activation, rounding
        sch.compute_inline(consumer)
    loops = sch.get_loops(epilogue[-1])
    if len(loops) != 5:
        return None
    n, blocks, y, x, lane = loops
    x_outer, x_inner = sch.split(x, [None, tile])
    vector_outer, vector = sch.split(lane, [None, isa.lanes])
    sch.reorder(n, y, x_outer, x_inner, blocks, vector_outer, vector)
    outer = sch.fuse(n, y, x_outer)
    if facts.parallel:
        sch.parallel(outer)
    sch.annotate(outer, IMPORT_PRAGMA, isa.llvm_ir)
    sch.vectorize(vector)
    for loop in (x_inner, blocks, vector_outer):
        sch.unroll(loop)
    sch.compute_at(main, outer, preserve_unit_loops=True)
    n, fo, y, x, fi, *window, pair = sch.get_loops(main)[1:]
    sch.reorder(n, y, *window, x, fo, fi, pair)
    init = sch.decompose_reduction(main, window[0])
    sch.tensorize(fi, _INTRINSICS[isa.lanes])
    for loop in (x, fo):
        sch.unroll(loop)
    vectorize_tiles(sch, (init,), isa.lanes)
    return sch


def register_tile(out_blocks: int, vectors: int, width: int, lanes: int, registers: int,
                  scratch: int, loads_operands: bool = False,
                  row_choices: tuple[int, ...] = (4, 3, 2, 1)) -> tuple[int, int]:
    """``(R, U)``: output blocks and columns of a register tile. Its ``U x R x V`` accumulators
    (``V`` vectors a block) with the ``R x V`` weight vectors and the scratch registers must fit
    the vector registers (on a load-store ISA the ``U`` broadcast inputs too) and, as a stack
    buffer, stay under :data:`STACK_TILE_BYTES`; of those, the fewest loads per multiply-add -
    ``1/(R V) + 1/U`` (a broadcast per column, a weight load per vector) - among tiles with at
    least :data:`MIN_ACCUMULATORS` accumulators when there are any. ``row_choices``: the output
    blocks a tile may span."""
    best = None
    for rows in row_choices:
        if out_blocks % rows or rows * vectors > 4:
            continue
        for tile in range(1, width + 1):
            accumulators = tile * rows * vectors
            operands = rows * vectors + (tile if loads_operands else scratch)
            if (width % tile or accumulators + operands > registers
                    or accumulators * lanes * 4 >= STACK_TILE_BYTES):
                continue
            cost = (accumulators < MIN_ACCUMULATORS, 1 / (rows * vectors) + 1 / tile,
                    -accumulators)
            if best is None or cost < best[0]:
                best = (cost, rows, tile)
    return (best[1], best[2]) if best else (1, 1)


def _blocked_shape(block) -> tuple[int, int, int] | None:
    """``(out_blocks, block, out_width)`` of a blocked bf16 conv block, else ``None``."""
    found = reduction_operands(block, "float32", "uint16", "uint16")
    if found is None:
        return None
    data, weight, output = found
    if len(data.shape) not in (4, 5) or len(weight.shape) != 7 or len(output.shape) != 5:
        return None
    if static_int(weight.shape[6]) != 2 or any(static_int(d) is None for d in weight.shape):
        return None
    kinds = "".join("S" if it.iter_type == tirx.IterVar.DataPar else "R"
                    for it in block.iter_vars)
    extents = [static_int(it.dom.extent) for it in block.iter_vars]
    if kinds != "SSSSSRRRRR" or None in extents[1:] or extents[-1] != 2:
        return None  # n, fo, y, x, fi / co, ry, rx, p, k (the TE compute's, unit ones kept)
    out_blocks, width, block_size = extents[1], extents[3], extents[4]
    if block_size != static_int(weight.shape[5]) or out_blocks != static_int(weight.shape[0]):
        return None
    return out_blocks, block_size, width


def _is_padding(block) -> bool:
    return bool(_HAS_IF_THEN_ELSE(block))


def _feeds_main(sch: s_tir.Schedule, block, main) -> bool:
    return any(sch.get(c).same_as(sch.get(main)) for c in sch.get_consumers(block))


def _still_there(sch: s_tir.Schedule, block) -> bool:
    try:
        sch.get_loops(block)
    except Exception:  # noqa: BLE001 - inlined away
        return False
    return True



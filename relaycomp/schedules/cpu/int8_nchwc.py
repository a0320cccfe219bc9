"""The schedule of an int8 conv on planned ``NCHW[b]c`` uint8 activations
(``conv2d_nchwc_int8`` of :mod:`relaycomp.rewrite.int8_kernels`): a dot-product instruction over
a register tile, nothing copied or transposed.

Matches a PrimFunc whose one reduction block is
``acc[n, fo, y, x, fi] += int32(data[n, co, y', x', 4q + k]) * int32(weight[fo, co, ry, rx, q,
fi, k])`` - int32 ``acc``, uint8 ``data``, int8 ``weight``, ``b``-channel blocks (the RGB stem's
input: one block of 4) - on an x86 CPU with (:func:`blocked_dot`):

- AVX-512 VNNI, ``b = 16``: ``vpdpbusd`` on zmm (:data:`DOT_16X4_VNNI`), exact;
- AVX2 only, ``b = 8``: ``vpmaddubsw`` + ``vpmaddwd`` with ones on ymm
  (:data:`DOT_8X4_AVX2`), exact for pair-safe weights (``int8.pair_safe``), which
  ``int8_kernels`` packs in groups of 4 on such targets; other weights it widens to int16 in
  groups of 2, summed exactly by ``vpmaddwd`` with the inputs widened
  (:data:`DOT_8X2_AVX2_WIDE`).

Schedule (``R`` output blocks and ``U`` columns a tile)::

    parallel(n, fo / R, y, x / U) / co, ry, rx, q / unroll(U) / unroll(R) / dot_bxG

The layout is already the instruction's: a pixel's four input channels are one 32-bit
broadcast, an output block's ``b`` x 4 weights of a step one vector load, and an accumulator is
one output pixel's ``b`` channels, so the epilogue (zero-point correction, rescale, bias,
residual add, the next ``quantize``) inlined into the write-back runs on whole vectors and
stores ``b`` bytes a pixel. The NCHW int8 schedule (:mod:`relaycomp.schedules.cpu.int8`)
instead copies its input into this channel grouping and transposes its channels-last
accumulators to NCHW, in every conv. The padding, when the conv has some, is a parallel stage of
its own. Depthwise convs on the layout: :mod:`relaycomp.schedules.cpu.int8_nchwc_depthwise`.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from relaycomp.schedules.cpu.bf16_nchwc import register_tile
from relaycomp.schedules.cpu.common import (
    CpuFacts,
    collect_loads,
    inline_epilogue,
    inlined,
    matched_reduction,
    reduction_operands,
    schedule_spatial_block,
    static_int,
    uses_var,
    vectorize_tiles,
)
from relaycomp.schedules.cpu.int8_isa import AVX2, AVX512_VNNI, int8_instructions
from relaycomp.schedules.cpu.int8_names import DOT_8X2_AVX2_WIDE, DOT_8X4_AVX2, DOT_16X4_VNNI

GROUP = 4  # input channels a lane sums (pair-safe weights on AVX2)
PAIR_GROUP = 2  # on AVX2, other weights: vpmaddwd on widened pairs
_HAS_IF_THEN_ELSE = tvm.get_global_func("s_tir.schedule.HasIfThenElse")
# TVM 0.27 marks tirx.round, floor, exp, ... vectorizable but not tirx.nearbyint, which te.round
# (the requantizing epilogue's rounding) lowers to: VectorizeLoop scalarizes the epilogue and
# leaves it to LLVM, which vectorized a 16-column tile's write-back across the columns,
# gathering every 16th accumulator (6x slower). llvm.nearbyint takes vectors (vrndscaleps,
# the same rounding), so the epilogue may stay vectorized along the channels.
if tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable") is None:
    tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


@dataclass(frozen=True)
class BlockedDot:
    """The dot product of the planned layout on one target: ``lanes`` int32 lanes (the block),
    the dense intrinsic's name per kind of weight (``(group of input channels, dtype)``), the
    vector registers, and the registers a tile leaves to other values (broadcast input, spare;
    AVX2: the int16 products and the ones vector too)."""

    lanes: int
    intrinsics: dict
    registers: int
    scratch: int
    isa: str  # "vnni" | "avx2": the depthwise intrinsic's variant


VNNI_BLOCKS = BlockedDot(16, {(GROUP, "int8"): DOT_16X4_VNNI}, registers=32, scratch=2,
                         isa="vnni")
AVX2_BLOCKS = BlockedDot(
    8, {(GROUP, "int8"): DOT_8X4_AVX2, (PAIR_GROUP, "int16"): DOT_8X2_AVX2_WIDE}, registers=16,
    scratch=3, isa="avx2")


def blocked_dot(target: Target | None) -> BlockedDot | None:
    """:data:`VNNI_BLOCKS` on an x86 CPU with AVX-512 VNNI, :data:`AVX2_BLOCKS` on one with
    AVX2 (and no VNNI), else ``None``."""
    if target is None or target.kind.name != "llvm":
        return None
    return {AVX512_VNNI: VNNI_BLOCKS, AVX2: AVX2_BLOCKS}.get(int8_instructions(target))


def schedule_int8_nchwc(func: tirx.PrimFunc, target: Target,
                        facts: CpuFacts) -> s_tir.Schedule | None:
    """The schedule of the module docstring, or ``None`` when ``func`` does not match (a
    depthwise conv: ``int8_nchwc_depthwise``)."""
    dot = blocked_dot(target)
    if dot is None:
        return None
    matched = matched_reduction(func, lambda block: blocked_int8_shape(block, dot.lanes))
    if matched is None or matched[2][2] not in dot.intrinsics:
        return None
    sch, nest, (out_blocks, width, weights) = matched
    main = nest.main.block_rv
    if weights == (PAIR_GROUP, "int16"):
        rows, tile = widened_tile(out_blocks, width, dot)
    else:
        rows, tile = register_tile(out_blocks, 1, width, dot.lanes, dot.registers, dot.scratch)
    for info in nest.prologue:  # the padding stays a stage of its own; elementwise producers
        # (a residual's dequantize) inline into the epilogue that reads them
        if _HAS_IF_THEN_ELSE(sch.get(info.block_rv)) or not inlined(sch, info.block_rv):
            schedule_spatial_block(sch, info.block_rv, facts)

    axes, window = output_axes(sch, main)
    *window, k = window  # (co, ry, rx,) q, k: unit loops may have vanished
    fo_outer = fo_inner = None
    if axes[1] is not None:  # (one output block leaves no loop)
        fo_outer, fo_inner = sch.split(axes[1], [None, rows])
    x_outer, x_inner = sch.split(axes[3], [None, tile])
    tiles = [loop for loop in (axes[0], fo_outer, axes[2], x_outer) if loop is not None]
    sch.reorder(*tiles, *window, x_inner, *([fo_inner] if fo_inner else []), axes[4], k)
    outer = sch.fuse(*tiles) if len(tiles) > 1 else tiles[0]
    fi = axes[4]
    if facts.parallel:
        sch.parallel(outer)
    write_back = sch.cache_write(main, 0, "global")
    inline_epilogue(sch, nest)
    sch.reverse_compute_at(write_back, outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, window[0] if window else x_inner)
    sch.tensorize(fi, dot.intrinsics[weights])
    for loop in (x_inner, fo_inner):
        if loop is not None:
            sch.unroll(loop)
    vectorize_tiles(sch, (init, write_back), dot.lanes)
    return sch


def widened_tile(out_blocks: int, width: int, dot: BlockedDot) -> tuple[int, int]:
    """``(R, U)`` for int16 weights on AVX2 (``vpmaddwd`` reads them from memory, while a
    broadcast input pair costs two instructions, ``vpbroadcastw`` + ``vpmovzxbw``): the most
    output blocks (4, 2 or 1) sharing each broadcast, then the most columns that fit the
    registers. Zen 5, 8-bit weights: a 1x1 conv over 7 pixels 0.059 ms with (4, 1) against
    0.074 with ``register_tile``'s (1, 7); a 3x3 one over 56 (4, 2) equal to it."""
    rows = next(r for r in (4, 2, 1) if out_blocks % r == 0)
    tile = max(u for u in range(1, width + 1)
               if width % u == 0 and rows * u + rows + dot.scratch <= dot.registers)
    return rows, tile


def int8_operands(block) -> tuple | None:
    """``(data, weight, output)`` of a ``uint8 x int8 -> int32`` reduction ``block``, or of
    ``uint8 x int16`` (a weight widened for AVX2's ``vpmaddwd``), else ``None``."""
    return (reduction_operands(block, "int32", "uint8", "int8")
            or reduction_operands(block, "int32", "uint8", "int16"))


def blocked_int8_shape(block, lanes: int = VNNI_BLOCKS.lanes,
                       ) -> tuple[int, int, tuple] | None:
    """``(out_blocks, out_width, (group, weight dtype))`` of a ``conv2d_nchwc_int8`` block of
    ``lanes``-channel blocks, its weights int8 or int16 in groups of 4 or 2 input channels
    (module docstring), else ``None``."""
    found = int8_operands(block)
    if found is None:
        return None
    data, weight, output = found
    if len(data.shape) != 5 or len(weight.shape) != 7 or len(output.shape) != 5:
        return None
    if any(static_int(d) is None for d in weight.shape) or (
            static_int(weight.shape[5]), static_int(weight.shape[6])) not in (
                (lanes, GROUP), (lanes, PAIR_GROUP)):
        return None
    group = static_int(weight.shape[6])
    kinds = [it.iter_type == tirx.IterVar.DataPar for it in block.iter_vars]
    spatial = sum(kinds)
    if kinds != [True] * spatial + [False] * (len(kinds) - spatial):
        return None
    extents = [static_int(it.dom.extent) for it in block.iter_vars]
    if None in extents or extents[-1] != group or extents[spatial - 1] != lanes:
        return None
    if not any(load.source.same_as(weight) for load in collect_loads(block.body)):
        return None
    out_blocks, width = static_int(output.shape[1]), static_int(output.shape[3])
    if out_blocks != static_int(weight.shape[0]) or width is None or width < 2:
        return None
    return out_blocks, width, (group, str(weight.dtype))




def output_axes(sch: s_tir.Schedule, block) -> tuple[list, list]:
    """The loops of ``block`` over each axis of its 5-D output (``None`` for an axis of extent
    one, whose loop normalization removed) and its reduction loops."""
    store = sch.get(block).body
    axes: list = [None] * len(store.indices)
    reduction = []
    for loop, it in zip(sch.get_loops(block), sch.get(block).iter_vars):
        if it.iter_type != tirx.IterVar.DataPar:
            reduction.append(loop)
            continue
        used = [i for i, index in enumerate(store.indices) if uses_var(index, it.var)]
        if len(used) != 1:
            raise ValueError("a spatial loop that is not one output axis")
        axes[used[0]] = loop
    return axes, reduction

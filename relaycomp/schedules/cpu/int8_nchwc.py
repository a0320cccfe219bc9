"""The schedule of an int8 conv on planned ``NCHW16c`` uint8 activations
(``conv2d_nchwc_int8`` of :mod:`relaycomp.rewrite.int8_layout`): ``vpdpbusd`` over a register
tile, nothing copied or transposed.

Matches a PrimFunc whose one reduction block is
``acc[n, fo, y, x, fi] += int32(data[n, co, y', x', 4q + k]) * int32(weight[fo, co, ry, rx, q,
fi, k])`` - int32 ``acc``, uint8 ``data``, int8 ``weight``, 16-channel blocks (the RGB stem's
input: one block of 4) - on an x86 CPU with AVX-512 VNNI.

Schedule (``R`` output blocks and ``U`` columns a tile)::

    parallel(n, fo / R, y, x / U) / co, ry, rx, q / unroll(U) / unroll(R) / dot_16x4

The layout is already the instruction's: a pixel's four input channels are one 32-bit
broadcast, an output block's 16 x 4 weights of a step one 64-byte load, and an accumulator is
one output pixel's 16 channels, so the epilogue (zero-point correction, rescale, bias, residual
add, the next ``quantize``) inlined into the write-back runs on whole vectors and stores 16
bytes a pixel. The NCHW int8 schedule (:mod:`relaycomp.schedules.cpu.int8`) instead copies its
input into this channel grouping and transposes its channels-last accumulators to NCHW, in every
conv. The padding, when the conv has some, is a parallel stage of its own.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func
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
from relaycomp.schedules.cpu.int8_depthwise import has_avx512_vnni
from relaycomp.schedules.cpu.int8_names import DOT_16X4_VNNI

LANES = 16  # int32 lanes of a 512-bit vpdpbusd: the block
GROUP = 4  # input channels a lane sums
REGISTERS = 32
SCRATCH = 2  # the broadcast input and one spare
_HAS_IF_THEN_ELSE = tvm.get_global_func("s_tir.schedule.HasIfThenElse")
TAPS = 4  # a depthwise kernel row: four adjacent pixels, 64 bytes of NCHW16c
MAX_COLUMNS = 16  # depthwise: output pixels a tile (accumulators), with kh weight vectors
DEPTHWISE_DOT = "relaycomp_depthwise_dot_16x4_nchwc_vnni"
# TVM 0.27 marks tirx.round, floor, exp, ... vectorizable but not tirx.nearbyint, which te.round
# (the requantizing epilogue's rounding) lowers to: VectorizeLoop scalarizes the epilogue and
# leaves it to LLVM, which vectorized a 16-column tile's write-back across the columns,
# gathering every 16th accumulator (6x slower). llvm.nearbyint takes vectors (vrndscaleps,
# the same rounding), so the epilogue may stay vectorized along the channels.
if tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable") is None:
    tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


def schedule_int8_nchwc(func: tirx.PrimFunc, target: Target,
                        facts: CpuFacts) -> s_tir.Schedule | None:
    """The schedule of the module docstring, that of :func:`schedule_int8_depthwise_nchwc`
    for a depthwise conv, or ``None`` when ``func`` matches neither."""
    if not has_avx512_vnni(target):
        return None
    matched = matched_reduction(func, blocked_int8_shape)
    if matched is None:  # not a dense conv: a depthwise one, or none of these
        return schedule_int8_depthwise_nchwc(func, target, facts)
    sch, nest, (out_blocks, width) = matched
    main = nest.main.block_rv
    rows, tile = register_tile(out_blocks, 1, width, LANES, REGISTERS, SCRATCH)
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
    sch.tensorize(fi, DOT_16X4_VNNI)
    for loop in (x_inner, fo_inner):
        if loop is not None:
            sch.unroll(loop)
    vectorize_tiles(sch, (init, write_back), LANES)
    return sch


def blocked_int8_shape(block) -> tuple[int, int] | None:
    """``(out_blocks, out_width)`` of a ``conv2d_nchwc_int8`` block (module docstring), else
    ``None``."""
    found = reduction_operands(block, "int32", "uint8", "int8")
    if found is None:
        return None
    data, weight, output = found
    if len(data.shape) != 5 or len(weight.shape) != 7 or len(output.shape) != 5:
        return None
    if any(static_int(d) is None for d in weight.shape) or (
            static_int(weight.shape[5]), static_int(weight.shape[6])) != (LANES, GROUP):
        return None
    kinds = [it.iter_type == tirx.IterVar.DataPar for it in block.iter_vars]
    spatial = sum(kinds)
    if kinds != [True] * spatial + [False] * (len(kinds) - spatial):
        return None
    extents = [static_int(it.dom.extent) for it in block.iter_vars]
    if None in extents or extents[-1] != GROUP or extents[spatial - 1] != LANES:
        return None
    if not any(load.source.same_as(weight) for load in collect_loads(block.body)):
        return None
    out_blocks, width = static_int(output.shape[1]), static_int(output.shape[3])
    if out_blocks != static_int(weight.shape[0]) or width is None or width < 2:
        return None
    return out_blocks, width



def schedule_int8_depthwise_nchwc(func: tirx.PrimFunc, target: Target,
                                  facts: CpuFacts) -> s_tir.Schedule | None:
    """An int8 depthwise conv on ``NCHW16c`` (``depthwise_conv2d_nchwc_int8``): per output
    pixel and kernel row, the four input pixels under the row (one 64-byte load), one byte
    shuffle putting each channel's four taps in a dword (``vpermb``), one ``vpdpbusd`` with the
    row's 16 x 4 weights; ``U`` pixels of a row a tile::

        parallel(n, c, y, x / U) / ry / unroll(U) / dot

    ``None`` when ``func`` does not match."""
    matched = matched_reduction(func, _depthwise_width) if has_avx512_vnni(target) else None
    if matched is None:
        return None
    sch, nest, width = matched
    main = nest.main.block_rv
    columns = max(d for d in range(1, MAX_COLUMNS + 1) if width % d == 0)
    padding = []
    for info in nest.prologue:
        if _HAS_IF_THEN_ELSE(sch.get(info.block_rv)):
            padding.append(info.block_rv)
        elif not inlined(sch, info.block_rv):
            schedule_spatial_block(sch, info.block_rv, facts)
    axes, (ry, k) = output_axes(sch, main)
    x_outer, x_inner = sch.split(axes[3], [None, columns])
    tiles = [loop for loop in (*axes[:3], x_outer) if loop is not None]
    i = axes[4]
    sch.reorder(*tiles, ry, x_inner, i, k)
    outer = sch.fuse(*tiles) if len(tiles) > 1 else tiles[0]
    if facts.parallel:
        sch.parallel(outer)
    for block in padding:  # the tile's window of the padded input, in L1, not the image
        sch.compute_at(block, outer, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(block)[-1])
    write_back = sch.cache_write(main, 0, "global")
    inline_epilogue(sch, nest)
    sch.reverse_compute_at(write_back, outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, ry)
    sch.tensorize(i, depthwise_dot())
    sch.unroll(x_inner)
    vectorize_tiles(sch, (init, write_back), LANES)
    return sch


def depthwise_dot() -> str:
    """``C[i] += sum_k A[k, i] * B[i, k]``: 16 channels (``i``) x four taps (``k``), ``A`` the
    four input pixels as they lie in ``NCHW16c``; registered on first use."""
    if s_tir.TensorIntrin.get(DEPTHWISE_DOT, allow_missing=True) is None:
        s_tir.TensorIntrin.register(DEPTHWISE_DOT, _depthwise_desc, _depthwise_vnni())
    return DEPTHWISE_DOT


@T.prim_func(s_tir=True)
def _depthwise_desc(A: T.Buffer((TAPS, LANES), "uint8", offset_factor=1),
                    B: T.Buffer((LANES, TAPS), "int8", offset_factor=1),
                    C: T.Buffer((LANES,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:LANES], A[0:TAPS, 0:LANES], B[0:LANES, 0:TAPS])
        T.writes(C[0:LANES])
        for i, k in T.grid(LANES, TAPS):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                C[vi] = C[vi] + T.cast(A[vk, vi], "int32") * T.cast(B[vi, vk], "int32")


def _depthwise_vnni():
    """One 64-byte load, a byte shuffle to channel-major taps (``vpermb``), one ``vpdpbusd``.
    Built with the IR builder: the shuffle indices are constants."""
    bytes_ = LANES * TAPS
    with IRBuilder() as builder, build_prim_func():
        a, b, c = (T.arg(name, T.handle()) for name in "abc")
        A = T.match_buffer(a, (TAPS, LANES), "uint8", offset_factor=1)
        B = T.match_buffer(b, (LANES, TAPS), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:TAPS, 0:LANES], B[0:LANES, 0:TAPS])
            T.writes(C[0:LANES])
            taps = tirx.Shuffle([A.vload([0, 0], f"uint8x{bytes_}")],
                                [k * LANES + i for i in range(LANES) for k in range(TAPS)])
            T.buffer_store(C, T.call_llvm_pure_intrin(
                f"int32x{LANES}", f"llvm.x86.avx512.vpdpbusd.{LANES * 32}",
                C.vload([0], f"int32x{LANES}"), T.reinterpret(taps, dtype=f"int8x{bytes_}"),
                T.reinterpret(B.vload([0, 0], f"int8x{bytes_}"), dtype=f"int8x{bytes_}")),
                [T.ramp(0, 1, LANES)])
    return builder.get()


def _depthwise_width(block) -> int | None:
    """The output width of a ``depthwise_conv2d_nchwc_int8`` block, else ``None``."""
    found = reduction_operands(block, "int32", "uint8", "int8")
    if found is None:
        return None
    data, weight, output = found
    if len(data.shape) != 5 or len(weight.shape) != 4 or len(output.shape) != 5:
        return None
    if (static_int(weight.shape[2]), static_int(weight.shape[3])) != (LANES, TAPS):
        return None
    kinds = "".join("S" if it.iter_type == tirx.IterVar.DataPar else "R"
                    for it in block.iter_vars)
    extents = [static_int(it.dom.extent) for it in block.iter_vars]
    if kinds.rstrip("R") != "S" * kinds.count("S") or not kinds.endswith("RR"):
        return None
    if None in extents or extents[-1] != TAPS or extents[kinds.count("S") - 1] != LANES:
        return None
    width = static_int(output.shape[3])
    return width if width is not None and width >= 2 else None


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

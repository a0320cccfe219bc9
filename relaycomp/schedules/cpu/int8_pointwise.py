"""The int8 1x1 conv of ``schedule_cpu_loops`` on AVX-512 VNNI with the lanes along the
pixels: NCHW accumulators, so the requantizing epilogue stores whole vectors.

Matches a PrimFunc whose one reduction block is an NCHW 1x1 conv of stride 1,
``acc[n, f, y, x] += int32(data[n, c, y, x]) * int32(weight[f, c, 0, 0])`` with uint8 ``data``,
int8 ``weight``, int32 ``acc``, ``c`` a multiple of 4 and at most :data:`MAX_INPUT_CHANNELS`
or ``f`` no multiple of 16, and images of a multiple of 16 pixels (MobileNetV2's convs over 16-32
channels, and to 24 channels, at 112, 56 and 28 pixels a row), on an x86 CPU with AVX-512 VNNI.

The dot-product schedule of :mod:`relaycomp.schedules.cpu.int8` puts the lanes on the output
channels: its accumulators are channels-last, and writing them to an NCHW output transposes
them, which costs more than the products where the reduction is short (and with output
channels no multiple of 16 it runs on 8-lane ymm registers). Here the image is one
row of pixels (a 1x1 conv of stride 1 reads and writes it contiguously; the block's ``y, x``
become ``y * width + x``) and ``vpdpbusd`` sums four input channels of 16 adjacent pixels (one
64-byte load of the input, channel groups last: ``[n, c/4, h*w, 4]``, a copy) times four weights
of one output channel broadcast::

    parallel(n, f / F, hw / (16 V)) / c / 4 / unroll(F) / unroll(V) / dot_16x4

a tile of ``F`` channels x ``V`` vectors of 16 pixels (:func:`register_tile`); the epilogue
(zero-point correction, rescale, bias, activation, next ``quantize``) runs along the pixels.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func
from tvm.target import Target

from relaycomp.schedules.cpu.common import (
    CpuFacts,
    collect_loads,
    inline_epilogue,
    loop_extent,
    matched_reduction,
    schedule_spatial_block,
)
from relaycomp.schedules.cpu.int8_depthwise import has_avx512_vnni, u8_s8_operands

GROUP = 4  # input channels one vpdpbusd lane sums
LANES = 16  # pixels per accumulator: images of a multiple of 16 pixels
# Where the reduction is this short, the channel-lanes schedule's transposing epilogue costs
# more than the products (Zen 5, 2 threads: 0.15-0.55x the time with 16-32 input channels,
# 1.13x with 144 in and 32 out) - or where the output channels are no multiple of its 16
# lanes, which leaves it half-width vpdpbusd (96 or 144 in, 24 out: 0.71-0.77x).
MAX_INPUT_CHANNELS = 32
CHANNEL_LANES = 16
MAX_ACCUMULATORS = 16  # 16 x 64 bytes: TVM keeps a tile buffer on the stack below 1 KB
_HAS_IF_THEN_ELSE = tvm.get_global_func("s_tir.schedule.HasIfThenElse")


def pointwise_dot(lanes: int) -> str:
    """The name of ``dot_16x4``: ``C[i] += sum_k A[i, k] * B[k]`` for 16 pixels (``A``: their
    four input channels, ``B``: one output channel's four weights), registered on first use."""
    name = f"relaycomp_pointwise_dot_{lanes}x{GROUP}_vnni"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        s_tir.TensorIntrin.register(name, _dot_desc(lanes), _dot_vnni(lanes))
    return name


def _dot_desc(lanes: int):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((lanes, GROUP), "uint8", offset_factor=1),
             B: T.Buffer((GROUP, 1, 1), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes, 0:GROUP], B[0:GROUP, 0:1, 0:1])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, GROUP):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vi, vk], "int32") * T.cast(B[vk, 0, 0], "int32")

    return desc


def _dot_vnni(lanes: int):
    """One 512-bit ``vpdpbusd``: the 64 input bytes of 16 pixels as they lie (channel groups
    last), the four weights broadcast."""
    with IRBuilder() as builder, build_prim_func():
        a, b, c = (T.arg(name, T.handle()) for name in "abc")
        A = T.match_buffer(a, (lanes, GROUP), "uint8", offset_factor=1)
        B = T.match_buffer(b, (GROUP, 1, 1), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes, 0:GROUP], B[0:GROUP, 0:1, 0:1])
            T.writes(C[0:lanes])
            weights = T.broadcast(T.reinterpret(B.vload([0, 0, 0], f"int8x{GROUP}"),
                                                dtype="int32"), lanes)
            T.buffer_store(C, T.call_llvm_pure_intrin(
                f"int32x{lanes}", f"llvm.x86.avx512.vpdpbusd.{lanes * 32}",
                C.vload([0], f"int32x{lanes}"),
                T.reinterpret(A.vload([0, 0], f"uint8x{lanes * GROUP}"),
                              dtype=f"int8x{lanes * GROUP}"),
                T.reinterpret(weights, dtype=f"int8x{lanes * GROUP}")), [T.ramp(0, 1, lanes)])
    return builder.get()


def register_tile(channels: int, vectors: int) -> tuple[int, int]:
    """``(F, V)``: output channels and pixel vectors per tile, ``F V`` accumulators at most
    :data:`MAX_ACCUMULATORS`. Each step loads ``V`` input vectors and broadcasts ``F`` weight
    quads for ``F V`` multiply-adds: the fewest loads per multiply-add, then the most
    accumulators."""
    best = (float("inf"), 0, 1, 1)
    for tile_vectors in range(1, min(vectors, MAX_ACCUMULATORS) + 1):
        for tile_channels in range(1, channels + 1):
            accumulators = tile_channels * tile_vectors
            if vectors % tile_vectors or channels % tile_channels or (
                    accumulators > MAX_ACCUMULATORS):
                continue
            loads = (tile_channels + tile_vectors) / accumulators
            best = min(best, (loads, -accumulators, tile_channels, tile_vectors))
    return best[2], best[3]


def _pointwise_shape(block) -> tuple[int, int, int, int] | None:
    """``(out_channels, height, width, in_channels)`` of a uint8 x int8 -> int32 NCHW 1x1 conv
    block of stride 1 with input channels a multiple of :data:`GROUP`, else ``None``."""
    operands = u8_s8_operands(block)
    if operands is None:
        return None
    data, weight = operands
    if len(data.shape) != 4 or len(weight.shape) != 4:
        return None
    if [int(d) for d in weight.shape[2:]] != [1, 1]:
        return None
    kinds = "".join("S" if it.iter_type == tirx.IterVar.DataPar else "R"
                    for it in block.iter_vars)
    if kinds not in ("SSSR", "SSSSR"):
        return None
    extents = [it.dom.extent for it in block.iter_vars]
    if not all(isinstance(e, tirx.IntImm) for e in extents):
        return None
    spatial = len(kinds) - 1
    channels, height, width, inputs = (int(extents[i]) for i in range(spatial - 3, spatial + 1))
    if inputs % GROUP or int(weight.shape[1]) != inputs or int(weight.shape[0]) != channels:
        return None
    if int(data.shape[1]) != inputs or int(data.shape[3]) != width:
        return None  # a strided conv reads a wider row
    row, column = (block.iter_vars[i].var for i in (spatial - 2, spatial - 1))
    loads = [load for load in collect_loads(block.body.value) if load.source.same_as(data)]
    if len(loads) != 1 or not (loads[0].indices[-1].same_as(column)
                               and loads[0].indices[-2].same_as(row)):
        return None
    return channels, height, width, inputs


def schedule_int8_pointwise(func: tirx.PrimFunc, target: Target,
                            facts: CpuFacts) -> s_tir.Schedule | None:
    """The schedule of the module docstring, or ``None`` when ``func`` does not match."""
    matched = matched_reduction(func, _pointwise_shape) if has_avx512_vnni(target) else None
    if matched is None:
        return None
    sch, nest, (channels, height, width, inputs) = matched
    if any(_HAS_IF_THEN_ELSE(sch.get(info.block_rv)) for info in nest.prologue):
        return None  # a padded input
    main = nest.main.block_rv
    pixels = height * width
    if pixels % LANES or inputs > MAX_INPUT_CHANNELS and channels % CHANNEL_LANES == 0:
        return None
    tile_channels, tile_vectors = register_tile(channels, pixels // LANES)
    for info in nest.prologue:  # elementwise producers: into their consumers
        sch.compute_inline(info.block_rv)
    # The image as one row of pixels (a 1x1 conv of stride 1 reads and writes it contiguously):
    # the input channel groups last, the accumulators and the block's iterations along it.
    copy = sch.cache_read(main, 0, "global")
    sch.transform_layout(main, ("read", 0), _pixels_groups_last(width))
    write_back = sch.cache_write(main, 0, "global")
    sch.transform_layout(main, ("write", 0), _pixels(width))
    sch.transform_block_layout(main, _pixels(width, reduction=True,
                                             batch=len(sch.get(main).iter_vars) == 5))
    *batch, channel, pixel, step = sch.get_loops(main)
    channel_outer, channel_tile = sch.split(channel, [None, tile_channels])
    pixel_outer, pixel_vector, pixel_lane = sch.split(pixel, [None, tile_vectors, LANES])
    step_outer, step_group = sch.split(step, [None, GROUP])
    sch.reorder(*batch, channel_outer, pixel_outer, step_outer, channel_tile, pixel_vector,
                pixel_lane, step_group)
    outer = sch.fuse(*batch, channel_outer, pixel_outer)
    if facts.parallel:
        sch.parallel(outer)
    inline_epilogue(sch, nest)
    sch.transform_block_layout(write_back, _pixels(
        width, batch=len(sch.get(write_back).iter_vars) == 4))
    sch.reverse_compute_at(write_back, outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, step_outer)
    sch.tensorize(pixel_lane, pointwise_dot(LANES))
    sch.unroll(channel_tile)
    sch.unroll(pixel_vector)
    for block in (init, write_back):
        sch.vectorize(sch.get_loops(block)[-1])
    schedule_groups_last_stage(sch, copy, GROUP, facts)
    return sch


def _pixels_groups_last(width: int):
    def index_map(n, c, h, w):
        return [n, c // GROUP, h * width + w, c % GROUP]

    return index_map


def _pixels(width: int, reduction: bool = False, batch: bool = True):
    """``[(n,) f, h, w (, c)] -> [(n,) f, h * width + w (, c)]``: a buffer's or a block's."""
    if reduction and batch:
        return lambda n, f, h, w, c: [n, f, h * width + w, c]
    if reduction:
        return lambda f, h, w, c: [f, h * width + w, c]
    if batch:
        return lambda n, f, h, w: [n, f, h * width + w]
    return lambda f, h, w: [f, h * width + w]


def groups_last(group: int):
    """The index map ``[n, c, h, w] -> [n, c / group, h, w, c % group]``."""

    def index_map(n, c, h, w):
        return [n, c // group, h, w, c % group]

    return index_map


def schedule_groups_last_stage(sch: s_tir.Schedule, block, group: int,
                               facts: CpuFacts) -> None:
    """A stage that writes a conv's input groups-last (``[n, c/G, h, w, G]``: the padding
    stage or a copy), looped in that order - channel groups outside the rows, the ``G``
    channels of a pixel innermost and unrolled - so its stores are contiguous; looped in the
    input's order they were ``G`` bytes apart, one at a time (MobileNetV2's 4-channel stem:
    most of its int8 conv's time). Other shapes get the generic recipe."""
    loops = sch.get_loops(block)
    extents = [loop_extent(sch, loop) for loop in loops]
    if len(loops) < 3 or None in extents or extents[-3] % group:
        schedule_spatial_block(sch, block, facts)
        return
    *batch, channels, rows, columns = loops
    channel_outer, channel_group = sch.split(channels, [None, group])
    sch.reorder(*batch, channel_outer, rows, columns, channel_group)
    sch.unroll(channel_group)
    outer = sch.fuse(*batch, channel_outer, rows)
    if facts.parallel:
        sch.parallel(outer)

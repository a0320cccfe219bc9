"""The schedule of an int8 depthwise conv on planned ``NCHW[b]c`` uint8 activations
(``depthwise_conv2d_nchwc_int8`` of :mod:`relaycomp.rewrite.int8_kernels`): integer
accumulation, four taps of a kernel row per dot-product step.

Matches a PrimFunc whose one reduction block is
``acc[n, c, y, x, i] += int32(data[n, c, y', x' + k, i]) * int32(weight[c, ry, i, k])`` - int32
``acc``, uint8 ``data``, int8 ``weight`` (int16 on AVX2: below), ``b``-channel blocks,
:data:`TAPS`-wide kernel rows (``int8_layout`` widens 3-wide ones with a zero column) - on an
x86 CPU with AVX-512 VNNI
(``b = 16``) or AVX2 (``b = 8``; :func:`int8_nchwc.blocked_dot`).

Per output pixel and kernel row: the four input pixels under the row (one ``4 b``-byte load),
one byte shuffle putting each channel's four taps in a dword, then

- AVX-512 VNNI: one ``vpdpbusd`` with the row's 16 x 4 weights (exact);
- AVX2, int8 weights: ``vpmaddubsw`` with the row's 8 x 4 weights (adjacent tap pairs summed
  into int16), ``vpmaddwd`` with ones (the pairs into int32), ``vpaddd``: exact because
  ``int8_kernels`` keeps int8 weights on AVX2 only where every tap pair is pair-safe
  (``int8.pair_safe``);
- AVX2, int16 weights (the others, widened at compile time): per pair of taps, the two pixels'
  bytes shuffled to channel-major pairs and widened to int16, one ``vpmaddwd`` with the pair's
  weights, ``vpaddd`` (exact for any int8 weights; two multiplies a row, as above).

``U`` pixels of a row a tile::

    parallel(n, c, y, x / U) / ry / unroll(U) / dot

The epilogue is inlined into the write-back and runs on whole vectors of a pixel's channels.
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
    inline_epilogue,
    inlined,
    matched_reduction,
    schedule_spatial_block,
    static_int,
    vectorize_tiles,
)
from relaycomp.schedules.cpu.int8_nchwc import blocked_dot, int8_operands, output_axes

TAPS = 4  # a kernel row: four adjacent pixels, one vector of NCHW[b]c
# Output pixels a tile (accumulators), which with the kernel rows' weight vectors and the
# shuffled taps must fit the registers: 32 zmm on AVX-512, 16 ymm on AVX2 (with the int16
# products and the ones vector).
MAX_COLUMNS = {"vnni": 16, "avx2": 8}
_HAS_IF_THEN_ELSE = tvm.get_global_func("s_tir.schedule.HasIfThenElse")


def schedule_int8_depthwise_nchwc(func: tirx.PrimFunc, target: Target,
                                  facts: CpuFacts) -> s_tir.Schedule | None:
    """The schedule of the module docstring, or ``None`` when ``func`` does not match."""
    dot = blocked_dot(target)
    if dot is None:
        return None
    matched = matched_reduction(func, lambda block: _depthwise_width(block, dot.lanes))
    if matched is None or (matched[2][1] == "int16" and dot.isa != "avx2"):
        return None
    sch, nest, (width, weight_dtype) = matched
    main = nest.main.block_rv
    columns = max(d for d in range(1, MAX_COLUMNS[dot.isa] + 1) if width % d == 0)
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
    sch.tensorize(i, depthwise_dot(dot.lanes, dot.isa, weight_dtype))
    sch.unroll(x_inner)
    vectorize_tiles(sch, (init, write_back), dot.lanes)
    return sch


def depthwise_dot(lanes: int, isa: str, weight_dtype: str = "int8") -> str:
    """``C[i] += sum_k A[k, i] * B[i, k]``: ``lanes`` channels (``i``) x four taps (``k``),
    ``A`` the four input pixels as they lie in ``NCHW[lanes]c``, ``B`` of ``weight_dtype``;
    ``isa`` ``"vnni"`` or ``"avx2"`` (module docstring); registered on first use."""
    suffix = "" if weight_dtype == "int8" else f"_{weight_dtype}"
    name = f"relaycomp_depthwise_dot_{lanes}x{TAPS}_nchwc_{isa}{suffix}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        impl = (_depthwise_widened(lanes) if weight_dtype == "int16"
                else _depthwise_impl(lanes, isa))
        s_tir.TensorIntrin.register(name, _depthwise_desc(lanes, weight_dtype), impl)
    return name


def _depthwise_desc(lanes: int, weight_dtype: str):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((TAPS, lanes), "uint8", offset_factor=1),
             B: T.Buffer((lanes, TAPS), weight_dtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:TAPS, 0:lanes], B[0:lanes, 0:TAPS])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, TAPS):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk, vi], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _intrinsic(lanes: int, weight_dtype: str, value):
    """A depthwise intrinsic's implementation, built with the IR builder (its shuffle indices
    are constants): ``C[0:lanes] = value(A, B, C)`` over ``A``, ``TAPS`` pixels of ``lanes``
    uint8 channels, and ``B``, ``lanes`` channels' ``TAPS`` weights of ``weight_dtype``."""
    with IRBuilder() as builder, build_prim_func():
        a, b, c = (T.arg(name, T.handle()) for name in "abc")
        A = T.match_buffer(a, (TAPS, lanes), "uint8", offset_factor=1)
        B = T.match_buffer(b, (lanes, TAPS), weight_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:TAPS, 0:lanes], B[0:lanes, 0:TAPS])
            T.writes(C[0:lanes])
            T.buffer_store(C, value(A, B, C), [T.ramp(0, 1, lanes)])
    return builder.get()


def _depthwise_impl(lanes: int, isa: str):
    """One ``4 lanes``-byte load, a byte shuffle to channel-major taps, then ``vpdpbusd``
    (VNNI) or ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` (AVX2)."""
    bytes_ = lanes * TAPS

    def value(A, B, C):
        taps = tirx.Shuffle([A.vload([0, 0], f"uint8x{bytes_}")],
                            [k * lanes + i for i in range(lanes) for k in range(TAPS)])
        weights = T.reinterpret(B.vload([0, 0], f"int8x{bytes_}"), dtype=f"int8x{bytes_}")
        accumulator = C.vload([0], f"int32x{lanes}")
        if isa == "vnni":
            return T.call_llvm_pure_intrin(
                f"int32x{lanes}", f"llvm.x86.avx512.vpdpbusd.{lanes * 32}", accumulator,
                T.reinterpret(taps, dtype=f"int8x{bytes_}"), weights)
        # the int16 pair sums are exact: int8_layout planned pair-safe taps only
        pairs = T.call_llvm_pure_intrin(f"int16x{lanes * 2}", "llvm.x86.avx2.pmadd.ub.sw",
                                        taps, weights)
        return accumulator + T.call_llvm_pure_intrin(
            f"int32x{lanes}", "llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), lanes * 2))

    return _intrinsic(lanes, "int8", value)


def _depthwise_widened(lanes: int):
    """AVX2, int16 weights: per pair of taps, the two pixels' ``lanes`` channels shuffled to
    channel-major pairs and widened to int16, one ``vpmaddwd`` with the pair's weights."""

    def value(A, B, C):
        pixels = A.vload([0, 0], f"uint8x{lanes * TAPS}")
        weights = B.vload([0, 0], f"int16x{lanes * TAPS}")
        total = C.vload([0], f"int32x{lanes}")
        for pair in range(TAPS // 2):
            taps = [2 * pair + t for t in range(2)]
            data = T.Cast(f"int16x{lanes * 2}", tirx.Shuffle(
                [pixels], [k * lanes + i for i in range(lanes) for k in taps]))
            weight = tirx.Shuffle([weights], [i * TAPS + k for i in range(lanes)
                                              for k in taps])
            total = total + T.call_llvm_pure_intrin(
                f"int32x{lanes}", "llvm.x86.avx2.pmadd.wd", data, weight)
        return total

    return _intrinsic(lanes, "int16", value)


def _depthwise_width(block, lanes: int) -> tuple[int, str] | None:
    """The output width and weight dtype (int8, or int16 widened for AVX2's ``vpmaddwd``) of a
    ``depthwise_conv2d_nchwc_int8`` block of ``lanes``-channel blocks, else ``None``."""
    found = int8_operands(block)
    if found is None:
        return None
    data, weight, output = found
    if len(data.shape) != 5 or len(weight.shape) != 4 or len(output.shape) != 5:
        return None
    if (static_int(weight.shape[2]), static_int(weight.shape[3])) != (lanes, TAPS):
        return None
    kinds = "".join("S" if it.iter_type == tirx.IterVar.DataPar else "R"
                    for it in block.iter_vars)
    extents = [static_int(it.dom.extent) for it in block.iter_vars]
    if kinds.rstrip("R") != "S" * kinds.count("S") or not kinds.endswith("RR"):
        return None
    if None in extents or extents[-1] != TAPS or extents[kinds.count("S") - 1] != lanes:
        return None
    width = static_int(output.shape[3])
    return (width, str(weight.dtype)) if width is not None and width >= 2 else None

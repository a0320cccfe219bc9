"""The int8 dot-product tensor intrinsics of :mod:`relaycomp.schedules.cpu.int8`: AVX2 vpmaddwd
8x2 (exact), AVX2
vpmaddubsw 8x4 (exact for pair-safe weights only) and AVX-512 VNNI vpdpbusd 16x4 (exact), all
u8 x s8 -> s32; AArch64 sdot 4x4 (s8 x s8 -> s32, exact). One description (:func:`_dot_desc`),
an implementation each. Importing this module registers them; that module imports it
on first use only, because parsing TVMScript at import costs seconds.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func

from relaycomp.schedules.cpu.int8_names import (
    DOT_4X4_SDOT,
    DOT_8X2_AVX2,
    DOT_8X2_AVX2_WIDE,
    DOT_8X4_AVX2,
    DOT_8X4_VNNI,
    DOT_16X4_VNNI,
)


def _dot_desc(lanes: int, group: int, data: str, weight: str = "int8"):
    """What every intrinsic computes: ``C[lanes] += A[group] . B[lanes, group]`` in int32."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((group,), data, offset_factor=1),
             B: T.Buffer((lanes, group), weight, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


@T.prim_func(s_tir=True)
def _dot_8x2_avx2(A: T.Buffer((2,), "uint8", offset_factor=1),
                  B: T.Buffer((8, 2), "int8", offset_factor=1),
                  C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        # (a0, a1) broadcast as a 16-bit pair to 8 byte pairs, then widened to int16: [a0 a1 a0
        # a1 ...] (vpbroadcastw from memory, vpmovzxbw: widening first took movzwl, vmovd,
        # vpmovzxbw, vpbroadcastd). One expression: a Python name bound here becomes a
        # T.alloc_local, i.e. a workspace allocation per output tile inside the parallel loop.
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.Cast("int16x16", T.reinterpret(T.broadcast(T.reinterpret(
                A.vload([0], "uint8x2"), dtype="uint16"), 8), dtype="uint8x16")),
            T.Cast("int16x16", B.vload([0, 0], dtype="int8x16")),
            dtype="int32x8")


@T.prim_func(s_tir=True)
def _dot_8x2_avx2_wide(A: T.Buffer((2,), "uint8", offset_factor=1),
                       B: T.Buffer((8, 2), "int16", offset_factor=1),
                       C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        # as _dot_8x2_avx2, the weights already int16 (widened at compile time): vpmaddwd
        # reads them from memory, no vpmovsxbw a step
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.Cast("int16x16", T.reinterpret(T.broadcast(T.reinterpret(
                A.vload([0], "uint8x2"), dtype="uint16"), 8), dtype="uint8x16")),
            B.vload([0, 0], dtype="int16x16"),
            dtype="int32x8")


@T.prim_func(s_tir=True)
def _dot_8x4_avx2(A: T.Buffer((4,), "uint8", offset_factor=1),
                  B: T.Buffer((8, 4), "int8", offset_factor=1),
                  C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        # vpmaddubsw: u8 x s8 products summed in adjacent pairs into saturating int16 - exact
        # only when no pair sum leaves int16, which the schedule checks of the weights; then
        # vpmaddwd with ones sums the pairs into int32 (exact).
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"),
                                          8), dtype="uint8x32"),
                B.vload([0, 0], dtype="int8x32"),
                dtype="int16x16"),
            T.broadcast(T.int16(1), 16),
            dtype="int32x8")


def _dot_vnni(lanes: int):
    """vpdpbusd on ``lanes`` int32 lanes: 16 (zmm) or 8 (ymm, AVX-512 VL, for channel counts
    that are multiples of 8 but not of 16)."""
    intrinsic, wide, products = f"llvm.x86.avx512.vpdpbusd.{lanes * 32}", f"int32x{lanes}", \
        f"int8x{lanes * 4}"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1),
             B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            # TVM's own dot_16x4_vnni passes i32 vectors, which LLVM 19+ refuses (i8 now).
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(intrinsic),
                C.vload([0], dtype=wide),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"),
                                          lanes), dtype=products),
                B.vload([0, 0], dtype=products),
                dtype=wide,
            )

    return impl


@T.prim_func(s_tir=True)
def _dot_4x4_sdot(A: T.Buffer((4,), "int8", offset_factor=1),
                  B: T.Buffer((4, 4), "int8", offset_factor=1),
                  C: T.Buffer((4,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([0], dtype="int32x4"),
            B.vload([0, 0], dtype="int8x16"),
            T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4),
                          dtype="int8x16"),
            dtype="int32x4",
        )


s_tir.TensorIntrin.register(DOT_4X4_SDOT, _dot_desc(4, 4, "int8"), _dot_4x4_sdot, override=True)
s_tir.TensorIntrin.register(DOT_8X2_AVX2, _dot_desc(8, 2, "uint8"), _dot_8x2_avx2, override=True)
s_tir.TensorIntrin.register(DOT_8X2_AVX2_WIDE, _dot_desc(8, 2, "uint8", "int16"),
                            _dot_8x2_avx2_wide, override=True)
s_tir.TensorIntrin.register(DOT_8X4_AVX2, _dot_desc(8, 4, "uint8"), _dot_8x4_avx2,
                            override=True)
s_tir.TensorIntrin.register(DOT_16X4_VNNI, _dot_desc(16, 4, "uint8"), _dot_vnni(16),
                            override=True)
s_tir.TensorIntrin.register(DOT_8X4_VNNI, _dot_desc(8, 4, "uint8"), _dot_vnni(8),
                            override=True)


def lane_loads(columns: int, stride: int) -> list[int]:
    """The first pixel of each 16-byte input load of the lane-indexed ``sdot`` over
    ``columns`` output columns ``stride`` pixels apart: four pixels a load, the last one ending
    at the last pixel read, so that nothing past the region is read (needs at least 4)."""
    pixels = (columns - 1) * stride + 1
    return sorted({min(j * stride // 4 * 4, pixels - 4) for j in range(columns)})


def _dot_columns_desc(columns: int, stride: int):
    """``C[j, lanes] += A[j * stride, 4] . B[lanes, 4]`` for ``columns`` output columns ``j``
    (4 lanes): a conv's output pixels along a row, whose 4-channel input groups lie
    ``stride`` groups apart."""
    pixels = (columns - 1) * stride + 1

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (pixels, 4), "int8", offset_factor=1)
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (columns, 4), "int32", offset_factor=1, strides=[T.int32(), 1])
        with T.sblock("root"):
            T.reads(C[0:columns, 0:4], A[0:pixels, 0:4], B[0:4, 0:4])
            T.writes(C[0:columns, 0:4])
            for j, i, k in T.grid(columns, 4, 4):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])  # the conv's f, x, c order
                    C[vj, vi] = C[vj, vi] + T.cast(A[vj * stride, vk], "int32") * T.cast(
                        B[vi, vk], "int32")

    return desc


def _sdot_lanes_impl(columns: int, stride: int):
    """``sdot v.4s, v.16b, v.4b[lane]``: one 16-byte load holds the inputs of four adjacent
    pixels (:func:`lane_loads`) and each ``sdot`` picks its column's 4-byte lane. Built with
    the IR builder: the lanes must be constants."""
    pixels = (columns - 1) * stride + 1
    loads = lane_loads(columns, stride)
    with IRBuilder() as builder, build_prim_func():
        a, b, c = (T.arg(name, T.handle()) for name in "abc")
        A = T.match_buffer(a, (pixels, 4), "int8", offset_factor=1)
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (columns, 4), "int32", offset_factor=1, strides=[T.int32(), 1])
        with T.sblock("root"):
            T.reads(C[0:columns, 0:4], A[0:pixels, 0:4], B[0:4, 0:4])
            T.writes(C[0:columns, 0:4])
            for j in range(columns):
                start = max(first for first in loads if first <= j * stride)
                inputs = T.reinterpret(A.vload([start, 0], "int8x16"), dtype="int32x4")
                lane = T.reinterpret(tirx.Shuffle([inputs], [j * stride - start] * 4),
                                     dtype="int8x16")
                T.buffer_store(C, T.call_llvm_pure_intrin(
                    "int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8",
                    C.vload([j, 0], dtype="int32x4"), B.vload([0, 0], dtype="int8x16"), lane),
                    [j, T.ramp(0, 1, 4)])
    return builder.get()


def sdot_lanes(columns: int, stride: int = 1) -> str:
    """The name of the lane-indexed ``sdot`` intrinsic for ``columns`` output columns
    ``stride`` pixels apart (at least 4 pixels in all), registered on first use."""
    name = f"{DOT_4X4_SDOT}_lanes_{columns}_stride_{stride}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        s_tir.TensorIntrin.register(name, _dot_columns_desc(columns, stride),
                                    _sdot_lanes_impl(columns, stride))
    return name

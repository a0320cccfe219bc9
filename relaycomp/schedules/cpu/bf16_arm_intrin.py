"""The AArch64 bf16 dot-product tensor intrinsics of :mod:`relaycomp.schedules.cpu.int8`:
Armv8.6 ``BFDOT`` on 4 fp32 lanes, each lane adding two bf16 x bf16 products (``C[4] += A[2] .
B[4, 2]``, the ``vdpbf16ps`` of :mod:`relaycomp.schedules.cpu.bf16_intrin` on a 128-bit
register), the bf16 operands held as their bits (``uint16``: ``passes/convert_to_bf16.py``).

Two forms, like ``sdot``'s (:mod:`relaycomp.schedules.cpu.int8_intrin`):

- :data:`DOT_4X2_BFDOT`: the input pair broadcast to the four lanes (``ld1r``/``dup``).
- :func:`bfdot_lanes`: lane-indexed, ``bfdot v.4s, v.8h, v.2h[i]``, over the columns of a tile:
  one 16-byte load holds the input pairs of four adjacent pixels and each ``bfdot`` picks its
  column's pair (:func:`relaycomp.schedules.cpu.int8_intrin.lane_loads`).

Both call functions of :mod:`relaycomp.schedules.cpu.bf16_arm_llvm`, which the kernel imports as
LLVM IR: TVM 0.27 cannot hold a bf16 vector. Importing this module registers
:data:`DOT_4X2_BFDOT`; the lane-indexed ones are registered on first use.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func

from relaycomp.schedules.cpu.bf16_arm_llvm import BFDOT, BFDOT_LANE
from relaycomp.schedules.cpu.int8_intrin import lane_loads
from relaycomp.schedules.cpu.int8_names import DOT_4X2_BFDOT


@T.prim_func(s_tir=True)
def _dot_4x2_desc(A: T.Buffer((2,), "uint16", offset_factor=1),
                  B: T.Buffer((4, 2), "uint16", offset_factor=1),
                  C: T.Buffer((4,), "float32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:2], B[0:4, 0:2])
        T.writes(C[0:4])
        for i in T.serial(0, 4):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.reinterpret(
                        "float32", T.shift_left(T.Cast("uint32", A[vk]), T.uint32(16))
                    ) * T.reinterpret(
                        "float32", T.shift_left(T.Cast("uint32", B[vi, vk]), T.uint32(16)))


@T.prim_func(s_tir=True)
def _dot_4x2_bfdot(A: T.Buffer((2,), "uint16", offset_factor=1),
                   B: T.Buffer((4, 2), "uint16", offset_factor=1),
                   C: T.Buffer((4,), "float32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:2], B[0:4, 0:2])
        T.writes(C[0:4])
        C[T.ramp(T.int32(0), 1, 4)] = T.call_pure_extern(
            "float32x4", BFDOT,
            C.vload([0], dtype="float32x4"),
            T.reinterpret(B.vload([0, 0], dtype="uint16x8"), dtype="float32x4"),
            T.broadcast(T.reinterpret(A.vload([0], "uint16x2"), dtype="float32"), 4),
        )


s_tir.TensorIntrin.register(DOT_4X2_BFDOT, _dot_4x2_desc, _dot_4x2_bfdot, override=True)


def _dot_columns_desc(columns: int, stride: int):
    """``C[j, 4] += A[j * stride, 2] . B[4, 2]`` in fp32 for ``columns`` output columns ``j``:
    a conv's output pixels along a row, whose input pairs lie ``stride`` pairs apart."""
    pixels = (columns - 1) * stride + 1

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (pixels, 2), "uint16", offset_factor=1)
        B = T.match_buffer(b, (4, 2), "uint16", offset_factor=1)
        C = T.match_buffer(c, (columns, 4), "float32", offset_factor=1, strides=[T.int32(), 1])
        with T.sblock("root"):
            T.reads(C[0:columns, 0:4], A[0:pixels, 0:2], B[0:4, 0:2])
            T.writes(C[0:columns, 0:4])
            for j, i, k in T.grid(columns, 4, 2):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])  # the conv's f, x, c order
                    C[vj, vi] = C[vj, vi] + T.reinterpret(
                        "float32", T.shift_left(T.Cast("uint32", A[vj * stride, vk]),
                                                T.uint32(16))
                    ) * T.reinterpret(
                        "float32", T.shift_left(T.Cast("uint32", B[vi, vk]), T.uint32(16)))

    return desc


def _bfdot_lanes_impl(columns: int, stride: int):
    """One ``bfdot`` per column on the lane of a 16-byte input load that holds its pair. Built
    with the IR builder: the lanes must be constants."""
    pixels = (columns - 1) * stride + 1
    loads = lane_loads(columns, stride)
    with IRBuilder() as builder, build_prim_func():
        a, b, c = (T.arg(name, T.handle()) for name in "abc")
        A = T.match_buffer(a, (pixels, 2), "uint16", offset_factor=1)
        B = T.match_buffer(b, (4, 2), "uint16", offset_factor=1)
        C = T.match_buffer(c, (columns, 4), "float32", offset_factor=1, strides=[T.int32(), 1])
        with T.sblock("root"):
            T.reads(C[0:columns, 0:4], A[0:pixels, 0:2], B[0:4, 0:2])
            T.writes(C[0:columns, 0:4])
            weights = T.reinterpret(B.vload([0, 0], "uint16x8"), dtype="float32x4")
            for j in range(columns):
                start = max(first for first in loads if first <= j * stride)
                inputs = T.reinterpret(A.vload([start, 0], "uint16x8"), dtype="float32x4")
                T.buffer_store(C, T.call_pure_extern(
                    "float32x4", BFDOT_LANE.format(j * stride - start),
                    C.vload([j, 0], dtype="float32x4"), weights, inputs), [j, T.ramp(0, 1, 4)])
    return builder.get()


def bfdot_lanes(columns: int, stride: int = 1) -> str:
    """The name of the lane-indexed ``bfdot`` intrinsic for ``columns`` output columns
    ``stride`` pixels apart (at least 4 pixels in all), registered on first use."""
    name = f"{DOT_4X2_BFDOT}_lanes_{columns}_stride_{stride}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        s_tir.TensorIntrin.register(name, _dot_columns_desc(columns, stride),
                                    _bfdot_lanes_impl(columns, stride))
    return name

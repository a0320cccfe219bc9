"""The bf16 dot-product tensor intrinsics of :mod:`relaycomp.schedules.cpu.int8`: AVX-512 BF16
``vdpbf16ps`` on 16 (zmm) or 8 (ymm) fp32 lanes, each lane adding two bf16 x bf16 products -
``C[lanes] += A[2] . B[lanes, 2]`` with fp32 accumulation, the bf16 operands held as their bits
(``uint16``, widened by ``bits << 16``: ``passes/convert_to_bf16.py``). Importing this module
registers them.

TVM 0.27's LLVM code generator cannot hold a bf16 vector (its ``BF16*Legalize`` passes turn
every bf16 value into fp32 or uint16 first), yet LLVM's ``vdpbf16ps`` takes ``<32 x bfloat>``.
So each intrinsic calls a two-line LLVM IR function (:mod:`relaycomp.schedules.cpu.bf16_llvm`)
on the operands' bits as ``int32`` vectors; the IR bit-casts them to bf16 and calls the
instruction. The kernel imports that IR with the ``pragma_import_llvm`` annotation on its outer
loop, and LLVM inlines it (``alwaysinline``): the loop holds the bare instruction.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.script import tirx as T

from relaycomp.schedules.cpu.int8_names import DOT_8X2_BF16, DOT_16X2_BF16


def _dot_desc(lanes: int):
    """What the intrinsics compute: ``C[lanes] += A[2] . B[lanes, 2]`` in fp32."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((2,), "uint16", offset_factor=1),
             B: T.Buffer((lanes, 2), "uint16", offset_factor=1),
             C: T.Buffer((lanes,), "float32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.reinterpret(
                            "float32", T.shift_left(T.Cast("uint32", A[vk]), T.uint32(16))
                        ) * T.reinterpret(
                            "float32", T.shift_left(T.Cast("uint32", B[vi, vk]), T.uint32(16)))

    return desc


def _dot_vdpbf16ps(lanes: int):
    """``vdpbf16ps`` on ``lanes`` fp32 lanes; the input pair broadcast as one 32-bit word."""
    floats, pairs, halves = f"float32x{lanes}", f"int32x{lanes}", f"uint16x{2 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), "uint16", offset_factor=1),
             B: T.Buffer((lanes, 2), "uint16", offset_factor=1),
             C: T.Buffer((lanes,), "float32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_pure_extern(
                floats, f"relaycomp_dpbf16ps_{lanes}",
                C.vload([0], dtype=floats),
                T.broadcast(T.reinterpret(A.vload([0], "uint16x2"), dtype="int32"), lanes),
                T.reinterpret(B.vload([0, 0], dtype=halves), dtype=pairs),
            )

    return impl


s_tir.TensorIntrin.register(DOT_16X2_BF16, _dot_desc(16), _dot_vdpbf16ps(16), override=True)
s_tir.TensorIntrin.register(DOT_8X2_BF16, _dot_desc(8), _dot_vdpbf16ps(8), override=True)

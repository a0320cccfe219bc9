"""The dot-product instructions of the CPU int8 (and bf16) kernels, as data: what each target
has (:func:`int8_instructions`, :func:`bf16_instructions`), which activation dtype its kernels
multiply, and which int8 weights ``vpmaddubsw`` (AVX2) sums exactly (:func:`pair_safe`).
:mod:`relaycomp.schedules.cpu.int8` re-exports every name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm.target import Target, codegen

from relaycomp.schedules.cpu.bf16_arm_llvm import LLVM_IR as BFDOT_LLVM_IR
from relaycomp.schedules.cpu.bf16_llvm import LLVM_IR
from relaycomp.schedules.cpu.int8_names import (
    DOT_4X2_BFDOT,
    DOT_4X4_SDOT,
    DOT_8X2_AVX2,
    DOT_8X2_BF16,
    DOT_8X4_AVX2,
    DOT_8X4_VNNI,
    DOT_16X2_BF16,
    DOT_16X4_VNNI,
)

# PrimFunc attribute: indices of the int8 parameters that are constants with pair-safe values.
PAIR_SAFE_PARAMS = "relaycomp.pair_safe_int8_params"


@dataclass(frozen=True)
class Int8Instructions:
    """A u8 x s8 -> s32 dot-product instruction as a tensor intrinsic ``C[lanes] +=
    A[group] . B[lanes, group]``, the vector registers and the instructions one broadcast of
    ``A`` costs."""

    intrinsic: str
    lanes: int
    group: int
    registers: int
    broadcast_cost: int
    mac_cost: int  # instructions per accumulator and step: product(s) and add
    scratch: int = 2  # registers besides accumulators and weights: broadcast input, product
    data_dtype: str = "uint8"  # what the instruction multiplies the weights with
    weight_dtype: str = "int8"
    accumulator_dtype: str = "int32"
    llvm_ir: str | None = None  # LLVM IR the intrinsic calls into, imported by the kernel
    # Lane-indexed form (AArch64 ``sdot v.4s, v.16b, v.4b[i]``): one vector load holds the
    # inputs of this many adjacent columns (0: none). Without it the ``U`` broadcast inputs of
    # a step stay live at once on AArch64 (LLVM hoists the ``ld1r``s), not ``scratch`` of them.
    lane_columns: int = 0


# vpmaddwd on 16-bit widened operands (exact); a u8 pair broadcast is movzwl, vmovd, vpmovzxbw,
# vpbroadcastd.
AVX2 = Int8Instructions(DOT_8X2_AVX2, lanes=8, group=2, registers=16, broadcast_cost=4,
                        mac_cost=2)
# vpmaddubsw + vpmaddwd(ones) on pair-safe weights; a u8 quad broadcast is one vpbroadcastd; the
# ones vector takes a register.
AVX2_PAIRS = Int8Instructions(DOT_8X4_AVX2, lanes=8, group=4, registers=16, broadcast_cost=1,
                              mac_cost=3, scratch=3)
# AVX-512 VNNI vpdpbusd: four u8 x s8 products summed into s32, exact.
AVX512_VNNI = Int8Instructions(DOT_16X4_VNNI, lanes=16, group=4, registers=32,
                               broadcast_cost=1, mac_cost=1)
# The same on 256-bit registers (AVX-512 VL), for output channels a multiple of 8 but not 16.
AVX512_VNNI_YMM = Int8Instructions(DOT_8X4_VNNI, lanes=8, group=4, registers=32,
                                   broadcast_cost=1, mac_cost=1)
# AArch64 dot product (ARMv8.2 +dotprod): sdot, four s8 x s8 products summed into s32, exact;
# activations are int8 (``lower_qdq_to_integer`` shifts uint8 ones by -128 for such targets).
ARM_SDOT = Int8Instructions(DOT_4X4_SDOT, lanes=4, group=4, registers=32, broadcast_cost=1,
                            mac_cost=1, scratch=1, data_dtype="int8", lane_columns=4)

# AVX-512 BF16 vdpbf16ps: two bf16 x bf16 products added to each fp32 lane; on 512-bit registers
# and, for output channels a multiple of 8 but not 16, on 256-bit ones (AVX-512 VL). Two spare
# registers more than VNNI's: with 28 accumulators of a 28-wide row LLVM spilled.
AVX512_BF16 = Int8Instructions(DOT_16X2_BF16, lanes=16, group=2, registers=32,
                               broadcast_cost=1, mac_cost=1, scratch=4, data_dtype="uint16",
                               weight_dtype="uint16", accumulator_dtype="float32",
                               llvm_ir=LLVM_IR)
AVX512_BF16_YMM = Int8Instructions(DOT_8X2_BF16, lanes=8, group=2, registers=32,
                                   broadcast_cost=1, mac_cost=1, scratch=4, data_dtype="uint16",
                                   weight_dtype="uint16", accumulator_dtype="float32",
                                   llvm_ir=LLVM_IR)
# Armv8.6 BF16 bfdot: two bf16 x bf16 products added to each of 4 fp32 lanes; lane-indexed
# over a tile's columns like sdot (``bf16_arm_intrin``).
ARM_BFDOT = Int8Instructions(DOT_4X2_BFDOT, lanes=4, group=2, registers=32, broadcast_cost=1,
                             mac_cost=1, scratch=1, data_dtype="uint16", weight_dtype="uint16",
                             accumulator_dtype="float32", llvm_ir=BFDOT_LLVM_IR,
                             lane_columns=4)


X86_TRIPLES = ("x86_64", "i686", "i386")


def _triple(target: Target) -> str:
    return str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())


def _cpu_has(target: Target, feature: str) -> bool:
    """Whether ``target``'s CPU has ``feature``; an unknown CPU has none (the generic schedule)."""
    try:
        return bool(codegen.llvm_cpu_has_features([feature], target))
    except Exception:  # noqa: BLE001 - an unknown CPU gets the generic schedule
        return False


def bf16_instructions(target: Target) -> Int8Instructions | None:
    """``target``'s bf16 dot product: x86 AVX-512 BF16 (``vdpbf16ps``), AArch64 BF16
    (``bfdot``, Armv8.6: Graviton3, Neoverse V1/V2/N2), else ``None``."""
    if target.kind.name != "llvm":
        return None
    if _triple(target).startswith("aarch64"):
        return ARM_BFDOT if _cpu_has(target, "bf16") else None
    if not _triple(target).startswith(X86_TRIPLES):
        return None
    return AVX512_BF16 if _cpu_has(target, "avx512bf16") else None


# CPUs that run each 512-bit operation as two 256-bit halves (AMD Zen 4): a ymm ``vdpbf16ps``
# costs them half a zmm one, where CPUs with a full 512-bit datapath (Zen 5, Intel) take the same.
SPLIT_AVX512_CPUS = ("znver4",)


def bf16_output_lanes(target: Target | None) -> int | None:
    """The lanes a blocked bf16 conv may compute its output channels in, when its last block is
    part padding: 8 (ymm ``vdpbf16ps``) on AVX-512 BF16 CPUs of :data:`SPLIT_AVX512_CPUS`,
    where 8-lane blocks skip the padded lanes at no cost per real one; ``None`` elsewhere (whole
    blocks: fewer instructions for the same lanes)."""
    if target is None or bf16_instructions(target) is not AVX512_BF16:
        return None
    return 8 if str(target.attrs.get("mcpu", "")) in SPLIT_AVX512_CPUS else None


def int8_instructions(target: Target) -> Int8Instructions | None:
    """The best int8 dot product of ``target``: x86 VNNI, then AVX2; AArch64 dotprod; else
    ``None``."""
    triple = _triple(target)
    if triple.startswith("aarch64"):
        return ARM_SDOT if _cpu_has(target, "dotprod") else None
    if not triple.startswith(X86_TRIPLES):
        return None
    if _cpu_has(target, "avx512vnni"):
        return AVX512_VNNI
    return AVX2 if _cpu_has(target, "avx2") else None


def int8_data_dtype(target: Target | None) -> str:
    """The activation dtype ``target``'s int8 conv kernels multiply: ``int8`` for AArch64
    dotprod (sdot), else ``uint8``."""
    return "int8" if target is not None and target.kind.name == "llvm" and (
        int8_instructions(target) is ARM_SDOT) else "uint8"


def prefers_pair_safe_weights(target: Target | None) -> bool:
    """Whether int8 kernels for ``target`` run twice as fast on pair-safe (7-bit) weights: an
    x86 CPU with AVX2 but no AVX-512 VNNI (``None``: the host)."""
    target = target if target is not None else Target.current(allow_none=True)
    if target is None:
        target = Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    return target.kind.name == "llvm" and int8_instructions(target) is AVX2


def pair_safe(weight: np.ndarray) -> bool:
    """Whether ``vpmaddubsw`` sums every pair of adjacent input channels of ``weight`` (int8,
    ``[out, in, ...]``) with any uint8 inputs without leaving int16: per pair, the positive
    weights sum to at most 128 and the negative ones to at least -128 (255 x 128 < 2^15)."""
    if weight.dtype != np.int8 or weight.ndim < 2:
        return False
    wide = weight.astype(np.int32)
    if wide.shape[1] % 2:
        wide = np.concatenate([wide, np.zeros_like(wide[:, :1])], axis=1)
    pairs = wide.reshape(wide.shape[0], wide.shape[1] // 2, 2, -1)
    positive = np.maximum(pairs, 0).sum(axis=2)
    negative = np.minimum(pairs, 0).sum(axis=2)
    return bool(positive.max(initial=0) <= 128 and negative.min(initial=0) >= -128)

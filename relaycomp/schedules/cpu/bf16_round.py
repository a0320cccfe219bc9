"""fp32 -> bf16 bits (``uint16``) inside a kernel, rounded to nearest even, NaN kept NaN: the
integer arithmetic on the value's bits anywhere, and on AVX-512 BF16 the conversion instruction.

The integer form (:func:`round_bits`) is about nine vector operations a value - add the
rounding bias, shift, narrow, and a NaN test - and in the epilogue of a conv with few input
channels it costs more than the multiply-adds (MobileNetV2's 16 -> 96 conv at 112x112: 8
``vdpbf16ps`` and 12 epilogue operations an output vector). AVX-512 BF16 has the rounding as one
instruction, ``vcvtneps2bf16``, but TVM 0.27 cannot reach it: its ``BF16*Legalize`` passes turn
a cast to ``bfloat16`` into the same integer arithmetic.

So :func:`rounding` gives such a target a TIR intrinsic op of its own, :data:`CONVERT_OP`.
TVM's vectorizer widens it like any arithmetic (``TVectorizable``), and ``LowerIntrin`` - after
the bf16 legalization - turns each 8- or 16-lane call into ``vcvtneps2bf16`` on ymm or zmm
(``llvm.x86.avx512bf16.cvtneps2bf16.256/.512``), a wider one into 16-lane pieces, and anything
else (a scalar, 4 lanes, a non-LLVM target) back into :func:`round_bits`. The two agree on every
input but two kinds: a NaN keeps its payload's top bits in the instruction (still a quiet NaN),
and the instruction flushes fp32 denormals (below 1.2e-38) to zero, as OpenVINO's and oneDNN's
bf16 kernels do. Importing this module registers the op (:func:`register_op`).
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import tirx
from tvm.target import Target

from relaycomp.rewrite.float_bits import constant, is_nan, lanes_of
from relaycomp.schedules.cpu.int8_isa import AVX512_BF16, bf16_instructions

CONVERT_OP = "tirx.relaycomp_cvtneps2bf16"
_PURE = 1  # tirx.CallEffectKind.Pure, as the op attribute registry takes it
# lanes -> the LLVM intrinsic converting that many fp32 lanes to bf16
_INSTRUCTIONS = {16: "llvm.x86.avx512bf16.cvtneps2bf16.512",
                 8: "llvm.x86.avx512bf16.cvtneps2bf16.256"}
_PIECE = 16


def round_bits(value: tirx.PrimExpr) -> tirx.PrimExpr:
    """An fp32 ``value`` (scalar or vector) as bf16 bits, round to nearest even, NaN kept NaN
    (as ``0x7FC0``), in integer arithmetic any target has."""
    lanes = tvm.DataType(str(value.ty)).lanes
    bits = tirx.reinterpret(lanes_of("uint32", lanes), value)
    nearest_even = (bits + constant(0x7FFF, "uint32", lanes)
                    + ((bits >> constant(16, "uint32", lanes)) & constant(1, "uint32", lanes)))
    rounded = (nearest_even >> constant(16, "uint32", lanes)).astype(lanes_of("uint16", lanes))
    return tirx.Select(is_nan(value), constant(0x7FC0, "uint16", lanes), rounded)


def rounding(target: Target | None) -> Callable[[tirx.PrimExpr], tirx.PrimExpr]:
    """How ``target``'s kernels round an fp32 value to bf16 bits: :data:`CONVERT_OP` on x86
    with AVX-512 BF16, :func:`round_bits` elsewhere (the same values; module docstring)."""
    if target is not None and bf16_instructions(target) is AVX512_BF16:
        return _convert
    return round_bits


def _convert(value: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.call_intrin("uint16", CONVERT_OP, value)


def _lower_llvm(call: tirx.PrimExpr) -> tirx.PrimExpr:
    """``LowerIntrin``'s rule for :data:`CONVERT_OP` on LLVM targets (module docstring)."""
    (value,) = call.args
    lanes = tvm.DataType(str(value.ty)).lanes
    if lanes in _INSTRUCTIONS:
        return _instruction(value, lanes)
    if lanes % _PIECE:
        return round_bits(value)
    pieces = [_instruction(tirx.Shuffle([value], [tirx.const(start + lane, "int32")
                                                  for lane in range(_PIECE)]), _PIECE)
              for start in range(0, lanes, _PIECE)]
    return tirx.Shuffle(pieces, [tirx.const(lane, "int32") for lane in range(lanes)])


def _instruction(value: tirx.PrimExpr, lanes: int) -> tirx.PrimExpr:
    """The conversion of ``lanes`` fp32 lanes as ``uint16`` bits. LLVM's instruction returns
    ``bfloat`` lanes, which TVM's code generator takes as they come: it is declared ``int16``
    and reinterpreted, so that the code generator bit-casts it to the ``i16`` lanes a select, a
    phi or a shuffle beside it expects."""
    converted = tirx.call_llvm_pure_intrin(f"int16x{lanes}", _INSTRUCTIONS[lanes], value)
    return tirx.reinterpret(f"uint16x{lanes}", converted)


def _lower_default(call: tirx.PrimExpr) -> tirx.PrimExpr:
    return round_bits(call.args[0])


def register_op() -> None:
    """Register :data:`CONVERT_OP` and its lowering rules, once per process: at this module's
    import, and in the auto-tuner's build workers (``relaycomp.tune.measure``), which get this
    function by value and do not import relaycomp - a kernel that calls the op could not even be
    unpickled there without it."""
    if CONVERT_OP in tvm.ir.Op.list_op_names():
        return
    tvm.ir.register_op_attr(CONVERT_OP, "TCallEffectKind", _PURE)
    tvm.ir.register_op_attr(CONVERT_OP, "TVectorizable", True)
    tvm.ir.register_op_attr(CONVERT_OP, "TScriptPrinterName", CONVERT_OP.removeprefix("tirx."))
    tirx.register_intrin_lowering(CONVERT_OP, target="llvm", f=_lower_llvm, level=99)
    tirx.register_intrin_lowering(CONVERT_OP, target="default", f=_lower_default, level=99)


register_op()

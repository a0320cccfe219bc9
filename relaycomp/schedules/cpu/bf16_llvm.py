"""The LLVM IR behind the bf16 tensor intrinsics (:mod:`relaycomp.schedules.cpu.bf16_intrin`):
``relaycomp_dpbf16ps_16`` and ``_8`` take the fp32 accumulators and the bf16 operands' bits as
``int32`` vectors, bit-cast them to ``bfloat`` and call ``vdpbf16ps`` - a bf16 vector TVM 0.27's
code generator cannot express. A kernel that uses them imports this text with the loop
annotation :data:`IMPORT_PRAGMA`; the functions are ``alwaysinline`` and ``linkonce_odr`` (one
copy however many kernels of a library import them)."""

IMPORT_PRAGMA = "pragma_import_llvm"


def _function_ir(lanes: int) -> str:
    floats, pairs, halves = f"<{lanes} x float>", f"<{lanes} x i32>", f"<{2 * lanes} x bfloat>"
    return f"""
declare {floats} @llvm.x86.avx512bf16.dpbf16ps.{lanes * 32}({floats}, {halves}, {halves})
define linkonce_odr {floats} @relaycomp_dpbf16ps_{lanes}({floats} %acc, {pairs} %a, {pairs} %b)
    alwaysinline {{
  %a16 = bitcast {pairs} %a to {halves}
  %b16 = bitcast {pairs} %b to {halves}
  %sum = call {floats} @llvm.x86.avx512bf16.dpbf16ps.{lanes * 32}({floats} %acc, {halves} %a16,
                                                                  {halves} %b16)
  ret {floats} %sum
}}
"""


LLVM_IR = _function_ir(16) + _function_ir(8)

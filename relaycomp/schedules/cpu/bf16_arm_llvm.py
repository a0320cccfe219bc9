"""The LLVM IR behind the AArch64 bf16 tensor intrinsics
(:mod:`relaycomp.schedules.cpu.bf16_arm_intrin`): Armv8.6's ``BFDOT`` on the fp32 accumulators
and two vectors of eight bf16 values held as ``<4 x float>`` (their bits, two bf16 to a 32-bit
lane), bit-cast to ``bfloat`` - a bf16 vector TVM 0.27's code generator cannot express (see
:mod:`relaycomp.schedules.cpu.bf16_llvm`, the same on x86).

- ``relaycomp_bfdot_4(acc, a, b)``: ``bfdot v.4s, v.8h, v.8h``.
- ``relaycomp_bfdot_lane_<i>(acc, a, b)``: the pair in 32-bit lane ``i`` of ``b`` for every
  lane, ``bfdot v.4s, v.8h, v.2h[i]`` - one 16-byte input load serves four output columns.
  Written as inline assembly: LLVM 22, which TVM 0.27 links, selects the lane-indexed ``bfdot``
  only for a splat of a 64-bit source; a lane of a 128-bit register, in any IR form
  (a ``<4 x float>``, ``<4 x i32>`` or ``<8 x bfloat>`` splat, clang's ``vbfdotq_laneq_f32``
  form), became ``dup`` + ``bfdot`` (LLVM 19 selected it).

A kernel imports this text with ``bf16_llvm.IMPORT_PRAGMA``; the functions are ``alwaysinline``
and ``linkonce_odr``."""

_DECLARE = """
declare <4 x float> @llvm.aarch64.neon.bfdot.v4f32.v8bf16(<4 x float>, <8 x bfloat>,
                                                         <8 x bfloat>)
define linkonce_odr <4 x float> @relaycomp_bfdot_4(<4 x float> %acc, <4 x float> %a,
                                                   <4 x float> %b) alwaysinline {
  %a16 = bitcast <4 x float> %a to <8 x bfloat>
  %b16 = bitcast <4 x float> %b to <8 x bfloat>
  %sum = call <4 x float> @llvm.aarch64.neon.bfdot.v4f32.v8bf16(<4 x float> %acc,
                                                                <8 x bfloat> %a16,
                                                                <8 x bfloat> %b16)
  ret <4 x float> %sum
}
"""


def _lane_ir(lane: int) -> str:
    return f"""
define linkonce_odr <4 x float> @relaycomp_bfdot_lane_{lane}(<4 x float> %acc, <4 x float> %a,
                                                          <4 x float> %b) alwaysinline {{
  %sum = call <4 x float> asm "bfdot $0.4s, $2.8h, $3.2h[{lane}]", "=w,0,w,w"(
      <4 x float> %acc, <4 x float> %a, <4 x float> %b)
  ret <4 x float> %sum
}}
"""


LLVM_IR = _DECLARE + "".join(_lane_ir(lane) for lane in range(4))
BFDOT, BFDOT_LANE = "relaycomp_bfdot_4", "relaycomp_bfdot_lane_{}"

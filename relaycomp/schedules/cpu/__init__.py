"""CPU schedules: contraction plans, elementwise and reduction rules, int8 intrinsics per ISA."""

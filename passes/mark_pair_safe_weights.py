"""Mark the kernels whose constant int8 weights are safe for ``vpmaddubsw``'s int16 pair sums.

Matches: every ``call_tir`` of a PrimFunc in the module's Relax functions.
Produces: the PrimFunc with attribute ``relaycomp.pair_safe_int8_params`` (:data:`PAIR_SAFE_PARAMS`)
= the indices of the parameters that every call passes an int8 OIHW conv weight whose adjacent
input-channel pairs keep ``255 x`` their positive and negative sums within int16
(:func:`passes._cpu_int8.pair_safe`; 7-bit weights always do). The AVX2 int8 conv schedule
takes its twice-as-fast ``vpmaddubsw`` path only for such weights.
Keeps: everything else; a module without int8 constants is returned as it is.
Runs: stage ``fuse``, last (after FuseTIR made the kernels), so that tuning - whose tasks are the
kernels after ``fuse`` - schedules them as the build does; ``schedule_cpu_loops`` marks any
kernel not yet marked itself (the pass is idempotent).
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from relaycomp.registry import register_pass

from ._cpu_int8 import PAIR_SAFE_PARAMS, pair_safe


def pair_safe_params(mod: tvm.IRModule) -> dict[tvm.ir.GlobalVar, set[int]]:
    """PrimFunc -> the parameters every ``call_tir`` of it passes a pair-safe int8 constant."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    verdicts: dict[tvm.ir.GlobalVar, set[int]] = {}

    def is_safe(arg) -> bool:
        return (isinstance(arg, tvm.ir.expr.Constant) and str(arg.ty.dtype) == "int8"
                and len(arg.ty.shape) == 4 and pair_safe(arg.value.numpy()))  # OIHW conv weights

    def visit(expr) -> None:
        if (isinstance(expr, relax.Call) and expr.op.same_as(call_tir)
                and isinstance(expr.args[0], tvm.ir.GlobalVar)
                and isinstance(expr.args[1], relax.Tuple)):
            safe = {i for i, arg in enumerate(expr.args[1].fields) if is_safe(arg)}
            gvar = expr.args[0]
            verdicts[gvar] = verdicts[gvar] & safe if gvar in verdicts else safe

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return verdicts


def with_pair_safe_marks(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with every unmarked PrimFunc that has pair-safe parameters marked."""
    marks = {gvar: safe for gvar, safe in pair_safe_params(mod).items()
             if safe and isinstance(mod[gvar], tirx.PrimFunc)
             and PAIR_SAFE_PARAMS not in (mod[gvar].attrs or {})}
    if not marks:
        return mod
    mod = mod.clone()
    for gvar, safe in marks.items():
        mod[gvar] = mod[gvar].with_attr(PAIR_SAFE_PARAMS, sorted(safe))
    return mod


@register_pass("mark_pair_safe_weights", stage="fuse",
               description="mark kernels whose int8 weights suit vpmaddubsw (AVX2 int8)")
def mark_pair_safe_weights(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """The module pass described in this module's docstring."""

    @tvm.transform.module_pass(opt_level=0, name="mark_pair_safe_weights")
    def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return with_pair_safe_marks(mod)

    return run

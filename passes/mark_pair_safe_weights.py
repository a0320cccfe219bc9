"""Mark the kernels whose constant int8 weights are safe for ``vpmaddubsw``'s int16 pair sums.

Matches: every ``call_tir`` of a PrimFunc in the module's Relax functions.
Produces: the PrimFunc with attribute ``relaycomp.pair_safe_int8_params`` (:data:`PAIR_SAFE_PARAMS`)
= the indices of the parameters that every call passes an int8 OIHW conv weight whose adjacent
input-channel pairs keep ``255 x`` their positive and negative sums within int16
(:func:`passes._cpu_int8.pair_safe`; 7-bit weights always do), an empty list when none does;
kernels without int8 conv weights stay unmarked. The AVX2 int8 conv schedule
takes its twice-as-fast ``vpmaddubsw`` path only for such weights.
Keeps: everything else; a module without int8 constants is returned as it is.
Runs: stage ``fuse``, last (after FuseTIR made the kernels), so that tuning - whose tasks are the
kernels after ``fuse`` - schedules them as the build does; ``schedule_cpu_loops`` marks any
kernel not yet marked itself (the pass is idempotent).
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from relaycomp import ir
from relaycomp.registry import register_pass
from relaycomp.schedules.cpu.int8 import PAIR_SAFE_PARAMS, pair_safe


def pair_safe_params(mod: tvm.IRModule) -> dict[tvm.ir.GlobalVar, set[int]]:
    """Each unmarked PrimFunc called with an int8 OIHW conv weight -> the parameters every
    ``call_tir`` of it passes a pair-safe one (possibly none)."""
    verdicts: dict[tvm.ir.GlobalVar, set[int]] = {}
    for call in ir.kernel_calls(mod):
        gvar, args = call.args[0], call.args[1]
        if (not isinstance(args, relax.Tuple) or not isinstance(mod[gvar], tirx.PrimFunc)
                or PAIR_SAFE_PARAMS in (mod[gvar].attrs or {})):
            continue
        weights = [i for i, arg in enumerate(args.fields) if _conv_weight(arg)]
        if weights or gvar in verdicts:
            safe = {i for i in weights if pair_safe(args.fields[i].value.numpy())}
            verdicts[gvar] = verdicts[gvar] & safe if gvar in verdicts else safe
    return verdicts


def _conv_weight(arg) -> bool:
    return (isinstance(arg, tvm.ir.expr.Constant) and str(arg.ty.dtype) == "int8"
            and len(arg.ty.shape) == 4)


def with_pair_safe_marks(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with every kernel taking int8 conv weights marked with its pair-safe parameters
    (an empty list records that none is, so a later call does not check them again); kernels
    without such weights are left unmarked (their tuning records keep their keys)."""
    marks = pair_safe_params(mod)
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

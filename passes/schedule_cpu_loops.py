"""Give every unscheduled PrimFunc a heuristic (untuned) CPU loop schedule.

Matches: each ``tirx.PrimFunc`` of the IRModule not yet marked ``tirx.is_scheduled`` (e.g. the
fused functions FuseTIR makes: pad + conv2d + bias + relu, matmul + bias, pooling, softmax,
elementwise, reshape/transpose/layout transforms), for an llvm (CPU) target.
Produces: the same functions, each rewritten by the first rule of :data:`RULES` that applies and
marked ``tirx.is_scheduled`` and ``relaycomp.cpu_schedule_rule`` (the rule name):

- ``contraction`` - conv2d (NCHW, strided, grouped, depthwise), dense/matmul, batch matmul,
  pooling: outer spatial loops fused and parallel, a register tile of accumulators in a "local"
  buffer (vectorized along the innermost contiguous - or repacked - axis, unrolled along
  another), epilogue (bias, BN, residual add, relu) written from the tile, padding a parallel
  stage of its own. See ``_cpu_contraction``.
- ``reduction`` - TVM's ``dlight.cpu.Reduction`` (softmax, layer/RMS norm, mean).
- ``gemv`` - TVM's ``dlight.cpu.GEMV`` (matrix-vector with an inner reduction).
- ``injective`` - elementwise/broadcast/layout functions: inlined, parallel, vectorized.
- ``parallel_outer`` - fallback for anything else (symbolic shapes included): leading spatial
  loops fused and parallel.

A function no rule can schedule - or whose scheduling raises - is left exactly as it was; the pass
never fails the build. Functions are scheduled independently, without measurement.
Keeps: numerics (loops are only split, reordered, fused, cached, parallelized and vectorized;
each output element's reduction order is unchanged, so results match the unscheduled build up to
fp32 contraction/rounding), every function signature and the Relax functions.
Runs: after FuseTIR (the cpu_generic ``legalize_passes``), before ``dataflow_lower_passes``;
targets without ``num-cores`` or with ``num-cores`` > 1 get parallel loops (the TVM runtime thread
pool, sized by ``TVM_NUM_THREADS``, runs them).
Reports: :func:`schedule_report` - PrimFuncs scheduled, by rule, and left unscheduled.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.s_tir.dlight import cpu as dlight_cpu
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from ._cpu_contraction import ContractionRule
from ._cpu_elementwise import GuardedRule, InjectiveRule, ParallelOuterRule
from ._cpu_reduction import InnerReductionRule

IS_SCHEDULED = "tirx.is_scheduled"
RULE_ATTR = "relaycomp.cpu_schedule_rule"

# Tried in order; the first rule returning a schedule wins. Specific before general.
RULES: tuple[ScheduleRule, ...] = (
    ContractionRule(),
    InnerReductionRule(),
    GuardedRule("reduction", dlight_cpu.Reduction()),
    GuardedRule("gemv", dlight_cpu.GEMV()),
    InjectiveRule(),
    ParallelOuterRule(),
)


def schedule_cpu_loops(
    target: Target | None = None, *, prepack_weights: bool = True
) -> tvm.transform.Pass:
    """The module pass described in this module's docstring.

    ``target`` must be an llvm target (``None``: ``Target.current()`` when the pass runs); for
    any other target kind the module is returned unchanged. A PrimFunc carrying its own
    ``target`` attribute is scheduled for that target. ``prepack_weights`` lets the Relax
    function pass constant weights to the scheduled kernels already repacked (folded at compile
    time) instead of repacking them in every call.

    Example::

        with target:
            mod = tvm.transform.Sequential(
                legalize_passes(target) + [schedule_cpu_loops(target)]
                + dataflow_lower_passes(target) + finalize_passes(target))(mod)
        schedule_report(mod)  # {'scheduled': 9, 'unscheduled': 0, 'by_rule': {...}, ...}
    """

    @tvm.transform.module_pass(opt_level=0, name="schedule_cpu_loops")
    def _schedule(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        default_target = target if target is not None else Target.current(allow_none=False)
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
                continue
            func_target = func.attrs.get("target", None) or default_target
            if func_target.kind.name != "llvm":
                continue
            scheduled = _apply_first(func, func_target)
            if scheduled is not None:
                updates[gvar] = scheduled
        if not updates:
            return mod
        mod = mod.clone()
        for gvar, func in updates.items():
            mod[gvar] = func
        return _prepack_constant_weights(mod) if prepack_weights else mod

    return _schedule


def schedule_report(mod: tvm.IRModule) -> dict:
    """Count the module's PrimFuncs: scheduled (total and by rule) and unscheduled (by name).

    Functions marked scheduled by something other than this pass count under ``"external"``.
    """
    by_rule: dict[str, int] = {}
    unscheduled: list[str] = []
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if _is_scheduled(func):
            rule = str(func.attrs.get(RULE_ATTR, "external"))
            by_rule[rule] = by_rule.get(rule, 0) + 1
        else:
            unscheduled.append(gvar.name_hint)
    return {
        "scheduled": sum(by_rule.values()),
        "unscheduled": len(unscheduled),
        "by_rule": dict(sorted(by_rule.items())),
        "unscheduled_funcs": sorted(unscheduled),
    }


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and bool(func.attrs.get(IS_SCHEDULED, False))


def _prepack_constant_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """Move each weight repack (blocks marked ``meta_schedule.layout_rewrite_preproc``) out of
    its kernel into a function of its own, fold it on constant weights and drop what is left
    unused. On any failure the module keeps the repack inside the kernels (still correct)."""
    try:
        packed = tvm.transform.Sequential(
            [
                relax.transform.SplitLayoutRewritePreproc(),
                relax.transform.FoldConstant(),
                relax.transform.DeadCodeElimination(),
            ]
        )(mod)
    except Exception:  # noqa: BLE001 - prepacking is an optimization, never a failure
        return mod
    # A repack left in the Relax function (a weight that is an input, not a constant) is now a
    # kernel of its own, named "<kernel>_weight_prepack" by SplitLayoutRewritePreproc.
    for gvar, func in packed.functions_items():
        if gvar.name_hint.endswith("_weight_prepack") and isinstance(func, tirx.PrimFunc):
            packed[gvar] = func.with_attr(RULE_ATTR, "weight_prepack")
    return packed


def _apply_first(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc | None:
    for rule in RULES:
        sch = rule.apply(func, target, False)
        if sch is not None:
            name = getattr(rule, "name", type(rule).__name__)
            return sch.mod["main"].with_attr(IS_SCHEDULED, True).with_attr(RULE_ATTR, name)
    return None

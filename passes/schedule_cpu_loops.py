"""Give every unscheduled PrimFunc a heuristic (untuned) CPU loop schedule.

Matches: each ``tirx.PrimFunc`` of the IRModule not yet marked ``tirx.is_scheduled`` - the fused
kernels FuseTIR makes (pad + conv2d + bias/BN + add + relu, matmul + bias, pooling, softmax,
elementwise, reshape/transpose/layout transforms) - for an llvm (CPU) target.
Produces: each such function rewritten by the first rule of :data:`RULES` that applies, marked
``tirx.is_scheduled`` and ``relaycomp.cpu_schedule_rule`` = the rule's name:

- ``winograd`` (``schedules/cpu/winograd.py``): the input and output transforms of the convs
  ``lower_convs_to_winograd`` and ``convert_to_bf16`` lowered to Winograd; the tile's rows and
  columns unrolled (constant coefficients), channel lanes vectorized, the epilogue inlined.
- ``contraction`` (``_cpu_contraction``, ``_cpu_plan``): conv1d/2d/3d (NCHW; strided, dilated,
  grouped, depthwise, transposed), dense/matmul, batch matmul, pooling. Outer spatial loops fused
  into one parallel loop; a register tile of accumulators (vectorized along a unit-stride or
  repacked axis - output channels for conv, N for dense -, unrolled along another) in a small
  stack buffer; the epilogue applied as the tile is written back; padding its own parallel stage.
- ``inner_reduction`` (``_cpu_reduction``): sum/mean/max over contiguous trailing axes (global
  average pooling, GEMV with a [N, K] weight): vector partial sums (rfactor), parallel outputs.
- ``row_reductions`` (``row_reductions``): several reductions of each row (softmax, log-softmax:
  the row maximum and the sum): each rfactor-ed into vector partial results, all inside one
  parallel loop over the rows.
- ``reduction``: TVM's ``dlight.cpu.Reduction`` (layer/group norm, variance, argmax).
- ``injective`` (``_cpu_elementwise``): inlined, outer loops parallel, innermost vectorized.
- ``parallel_outer``: anything else (e.g. a symbolic reduction extent): leading spatial loops
  fused and parallel.

With ``prepack_weights`` a kernel whose weight is repacked gets that weight already packed:
``SplitLayoutRewritePreproc`` moves the repack into a kernel of its own
(``<kernel>_weight_prepack``, reported as ``weight_prepack``) and ``FoldConstant`` evaluates it at
compile time when the weight is a constant.

Keeps: numerics - loops are split, reordered, fused, parallelized, vectorized and unrolled, and
each output's reduction order is kept, except in ``inner_reduction`` and ``row_reductions``,
which add vector-wide partial sums: results match the unscheduled build to fp32 rounding. Function signatures and the
Relax functions are unchanged, apart from the prepacked weights above. A function no rule can
schedule - or whose scheduling raises - is left exactly as it was: the pass never fails a build.
Runs: after FuseTIR (the end of the cpu_generic ``legalize_passes``) and before
``dataflow_lower_passes``. Parallel loops (unless the target says ``num-cores`` = 1) run on the
TVM runtime thread pool, sized by ``TVM_NUM_THREADS`` - by default half the logical CPUs on x86,
i.e. a single thread on a 2-vCPU machine.
Reports: :func:`schedule_report` - PrimFuncs scheduled (in total and by rule) and left unscheduled.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.s_tir.dlight import cpu as dlight_cpu
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from relaycomp.passes.mark_pair_safe_weights import with_pair_safe_marks
from relaycomp.registry import register_pass
from relaycomp.schedules.cpu.contraction import ContractionRule
from relaycomp.schedules.cpu.elementwise import GuardedRule, InjectiveRule, ParallelOuterRule
from relaycomp.schedules.cpu.reduction import InnerReductionRule
from relaycomp.schedules.cpu.row_reductions import RowReductionsRule
from relaycomp.schedules.cpu.winograd import WinogradRule

IS_SCHEDULED = "tirx.is_scheduled"
RULE_ATTR = "relaycomp.cpu_schedule_rule"

# Tried in order; the first rule returning a schedule wins. Specific before general.
RULES: tuple[ScheduleRule, ...] = (
    WinogradRule(),
    ContractionRule(),
    InnerReductionRule(),
    RowReductionsRule(),
    GuardedRule("reduction", dlight_cpu.Reduction()),
    InjectiveRule(),
    ParallelOuterRule(),
)


@register_pass("schedule_cpu_loops", stage="schedule", kinds=("llvm",),
               description="parallel, vectorized, register-tiled CPU schedule for every kernel")
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

        from tvm.relax.backend.cpu_generic import pipeline as cpu

        with target:
            mod = tvm.transform.Sequential(
                cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
                + [schedule_cpu_loops(target)])(mod)
        schedule_report(mod)  # {'scheduled': 9, 'unscheduled': 0, 'by_rule': {...}, ...}
        with target:  # then lower and build as usual
            mod = tvm.transform.Sequential(
                cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(mod)
        executable = tvm.compile(mod, target, relax_pipeline=None)
    """

    @tvm.transform.module_pass(opt_level=0, name="schedule_cpu_loops")
    def _schedule(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        default_target = target if target is not None else Target.current(allow_none=False)
        updates = {}
        mod = with_pair_safe_marks(mod)  # for modules that skipped the fuse stage's marking
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

"""The auto-tuner's design space: relaycomp's heuristic CPU schedule with its choices left open.

MetaSchedule's stock CPU space (multi-level tiling) starts far from the register-tiled,
prepacked schedule of ``schedule_cpu_loops`` and, at tens of trials per kernel, never reached it
(0 of 19 ResNet-18 kernels beat it at 32-64 trials). This space *is* that schedule: each
variant of the contraction plan (vectors per tile row, register axis: see
``_cpu_plan.plan_variants``) is a design space, its tile sizes ``sample_perfect_tile`` and its
unroll step a ``sample_categorical`` (``_cpu_contraction.ContractionRule.design_spaces``). The
first space with its decisions as sampled is the heuristic schedule; :func:`seed_records` puts it
in the search's database with its measured time, so the evolutionary search starts from it
(``EvolutionarySearch`` takes the database's best records as part of its initial population and
mutates their decisions) rather than from random points.

Kernels the contraction rule does not tune (elementwise, softmax, a row loop left to LLVM, an int8
conv with its tensorized schedule) keep MetaSchedule's stock space.
"""

from __future__ import annotations

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from relaycomp.schedules.cpu.common import cpu_facts
from relaycomp.schedules.cpu.contraction import ContractionRule
from relaycomp.schedules.cpu.int8 import schedule_int8_conv

STOCK_SPACE = "post-order-apply"
# Our space sets layouts itself (the packed weight): no RewriteLayout, no tiling rules.
POSTPROCS = (ms.postproc.DisallowDynamicLoop, ms.postproc.RewriteParallelVectorizeUnroll,
             ms.postproc.RewriteReductionBlock)
MUTATORS = ((ms.mutator.MutateTileSize, 0.85), (ms.mutator.MutateUnroll, 0.15))


def heuristic_spaces(mod: tvm.IRModule, target: tvm.target.Target) -> list[s_tir.Schedule]:
    """The heuristic design spaces of a task's kernel (``mod["main"]``); empty when the kernel
    is not one the contraction rule tunes."""
    if target.kind.name != "llvm":
        return []
    facts = cpu_facts(target)
    if _has_int8_schedule(mod["main"], target, facts):
        return []  # its tensorized schedule is not a space of this rule
    sch = s_tir.Schedule(mod, debug_mask="all")
    return ContractionRule().design_spaces(sch, facts)


def _has_int8_schedule(func, target, facts) -> bool:
    try:
        return schedule_int8_conv(func, target, facts) is not None
    except Exception:  # noqa: BLE001 - not an int8 conv
        return False


def space_generator(mod: tvm.IRModule, target: tvm.target.Target):
    """The space to tune ``mod``'s kernel in: the heuristic one when the contraction rule
    covers it, else MetaSchedule's stock space (``"post-order-apply"``)."""
    if not heuristic_spaces(mod, target):
        return STOCK_SPACE
    facts = cpu_facts(target)

    def generate(sch: s_tir.Schedule) -> list[s_tir.Schedule]:
        return ContractionRule().design_spaces(sch, facts)

    return ms.space_generator.ScheduleFn(
        generate, sch_rules=[], postprocs=[make() for make in POSTPROCS],
        mutator_probs={make(): prob for make, prob in MUTATORS})


def seed_records(context: ms.TuneContext, database: ms.database.Database,
                 baseline_seconds: float,
                 earlier: ms.database.TuningRecord | None = None) -> list[float]:
    """Commit the heuristic schedule (the first design space, as sampled) with its measured
    time, and ``earlier`` - the best record of a previous run, if any - into ``database``, the
    search's own, so that its evolution starts there. Returns the run times committed (the
    notes that keep these records out of the trial counts); empty for the stock space."""
    if isinstance(context.space_generator, ms.space_generator.PostOrderApply):
        return []
    spaces = context.generate_design_space()
    if not spaces:
        return []
    workload = database.commit_workload(context.mod)
    args = ms.arg_info.ArgInfo.from_entry_func(context.mod, remove_preproc=True)
    seeds = [(spaces[0].trace, baseline_seconds)]
    if earlier is not None and earlier.run_secs:
        seconds = [float(v) for v in earlier.run_secs]
        seeds.append((earlier.trace, sum(seconds) / len(seconds)))
    committed = []
    for trace, seconds in seeds:
        database.commit_tuning_record(ms.database.TuningRecord(
            trace, workload, [seconds], context.target, args))
        committed.append(seconds)
    return committed

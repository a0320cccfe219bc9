"""The ``apply_tuning_database`` pass and the pipeline edit that inserts it.

Matches: each PrimFunc whose workload has a record in the tuning database in context
(``with database:``, a MetaSchedule ``Database``; relaycomp puts there only records that beat the
heuristic schedule in the paired check of :mod:`relaycomp.tune_check`). Produces: those functions
replaced by their tuned schedule and marked ``tirx.is_scheduled``; a tuned kernel that repacks a
constant weight (MetaSchedule's ``RewriteLayout`` on a layout-free buffer) gets it packed at
compile time, as the check measured it (``SplitLayoutRewritePreproc`` + ``FoldConstant``).
Keeps: numerics (a schedule only reorders loops), signatures.
Runs: first in the ``schedule`` stage, before ``schedule_cpu_loops`` / ``schedule_gpu_default``,
which then skip the tuned kernels and schedule the rest. Without a database in context it does
nothing. Reports: the number of scheduled PrimFuncs, through the pipeline report.
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from .pipeline import Stage
from .registry import register_pass

PASS_NAME = "apply_tuning_database"
SCHEDULE_STAGE = "schedule"


@register_pass(PASS_NAME, stage=SCHEDULE_STAGE)
def apply_tuning_database(target) -> tvm.transform.Pass:
    """Apply the best tuned schedules of the database in context (see the module docstring)."""

    @tvm.transform.module_pass(opt_level=0, name=PASS_NAME)
    def _apply(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if ms.database.Database.current() is None:
            return mod
        tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(
            with_layout_free_weights(mod))
        return tvm.transform.Sequential([
            relax.transform.SplitLayoutRewritePreproc(),
            relax.transform.FoldConstant(),
            relax.transform.DeadCodeElimination(),
        ])(tuned)

    return _apply


def with_layout_free_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """Mark each kernel's constant-weight parameters ``layout_free_buffers``, which lets
    MetaSchedule repack them (folded at compile time). Tasks are extracted from this module, and
    the tuning pass applies records to it: a workload's key includes the mark."""
    return relax.transform.AttachAttrLayoutFreeBuffers()(mod)


def with_tuning(stages: Sequence[Stage]) -> list[Stage]:
    """``stages`` with ``apply_tuning_database`` first in the schedule stage (once)."""
    result = []
    for stage in stages:
        if stage.name == SCHEDULE_STAGE and PASS_NAME not in stage.passes:
            stage = Stage(stage.name, (PASS_NAME, *stage.passes))
        result.append(stage)
    return result


def before_schedule(stages: Sequence[Stage]) -> list[Stage]:
    """The stages that run before ``schedule``: the module tuning tasks are extracted from."""
    names = [stage.name for stage in stages]
    if SCHEDULE_STAGE not in names:
        return list(stages)
    return list(stages[:names.index(SCHEDULE_STAGE)])


def schedule_stage(stages: Sequence[Stage]) -> list[Stage]:
    """The schedule stage without the tuning pass: how an untuned build schedules a kernel."""
    return [Stage(s.name, tuple(p for p in s.passes if p != PASS_NAME))
            for s in stages if s.name == SCHEDULE_STAGE]

"""Apply the tuned schedules of a MetaSchedule database.

Matches: each PrimFunc whose workload has a record in ``database`` (a MetaSchedule
``Database``; relaycomp puts there only records that beat the heuristic schedule in the paired
check of :mod:`relaycomp.tune.check`). Produces: those functions replaced by their tuned
schedule and marked ``tirx.is_scheduled``; a tuned kernel that repacks a constant weight
(MetaSchedule's ``RewriteLayout`` on a layout-free buffer) gets it packed at compile time, as
the check measured it (``SplitLayoutRewritePreproc`` + ``FoldConstant``).
Keeps: numerics (a schedule only reorders loops), signatures.
Runs: first in the ``schedule`` stage, before ``schedule_cpu_loops`` / ``schedule_gpu_default``,
which then skip the tuned kernels and schedule the rest. Added by a ``TuneConfig`` among a
compile's features, whose plan tunes (or reuses) the database. Without ``database`` it does
nothing. Reports: ``kernels_tuned``, the kernels that took a tuned schedule.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from relaycomp.registry import register_pass


@register_pass("apply_tuning_database", stage="schedule", position="start")
def apply_tuning_database(target: tvm.target.Target | None = None,
                          database: ms.database.Database | None = None,
                          report: dict | None = None) -> tvm.transform.Pass:
    """Apply the tuned schedules of a MetaSchedule database (see the module docstring)."""

    @tvm.transform.module_pass(opt_level=0, name="apply_tuning_database")
    def _apply(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if database is None:
            return mod
        with database:
            tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(
                with_layout_free_weights(mod))
        if report is not None:
            report["kernels_tuned"] = _scheduled(tuned) - _scheduled(mod)
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


def _scheduled(mod: tvm.IRModule) -> int:
    return sum(1 for _, func in mod.functions_items() if isinstance(func, tvm.tirx.PrimFunc)
               and func.attrs is not None and func.attrs.get("tirx.is_scheduled"))

"""The paired check: is a task's best tuned kernel faster than its heuristic one, as both ship?

Search-time numbers cannot decide it. The heuristic baseline is measured once, minutes before
the candidates, one repeat each, on a machine whose load changes: on a shared 2-core machine
single measurements are off by 2x and more (a thread preempted for a 4 ms scheduler slice turns
a 0.2 ms kernel into a 4 or 8 ms one). Such an inflated baseline let one random candidate
"beat" it, and the tuned build ran 4x slower than the untuned one.

So before a record is applied, the task's heuristic schedule and the best record's schedule are
built as a build ships them and measured alternately, :data:`ROUNDS` rounds of
:data:`REPEATS` repeats, the best time of each kept; the record is applied only if it wins by
``tune_db.WIN_MARGIN``. "As shipped": a weight repack (the heuristic's, or the one MetaSchedule's
``RewriteLayout`` adds for a layout-free weight) is split out and folded into the constant
weight at compile time, so both are measured without it, on the packed weight. The results are
notes in the run's folder: a record is checked once, whichever run or model finds it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import tvm
from tqdm import tqdm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

from relaycomp.compiler.pipeline import Stage
from relaycomp.registry import PASSES
from relaycomp.tune.db import FAILED_SECONDS, TuningDatabase, TuningRun
from relaycomp.tune.measure import build_modules, run_built

ROUNDS = 4  # built once, run ROUNDS times
REPEATS = 3


def heuristic_module(task_mod: tvm.IRModule, stages, target) -> tvm.IRModule:
    """The task's kernel as an untuned build schedules it (the schedule stage's passes)."""
    with target, tvm.transform.PassContext(opt_level=3):
        for stage in _heuristic_schedule(stages):
            for name in stage.passes:
                task_mod = PASSES.get(name).factory(target)(task_mod)
    return task_mod


def tuned_module(record: ms.database.TuningRecord) -> tvm.IRModule:
    """The record's schedule applied to its workload (what ``MetaScheduleApplyDatabase`` does)."""
    sch = tvm.s_tir.Schedule(record.workload.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return _mark_scheduled(sch.mod)


def check_records(tasks: Sequence, keys: Sequence[str], database: TuningDatabase,
                  run_folder, stages, target, builder, runner, progress: bool = False) -> int:
    """Check every task whose best record is unchecked; notes the results. Returns how many.

    ``run_folder`` is a callable returning the :class:`TuningRun` to note into (opened lazily);
    ``progress`` shows a bar on stderr (scheduling the pairs, building, each round).
    """
    pending = [i for i, key in enumerate(keys) if database.state(key).needs_check]
    if not pending:
        return 0
    with tqdm(total=len(pending) + 1 + ROUNDS, desc="paired check", unit="step",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        mods = []
        for i in pending:
            mods.append(heuristic_module(tasks[i].dispatched[0], stages, target))
            mods.append(tuned_module(database.state(keys[i]).best))
            bar.update()
        built = build_modules(mods, target, builder)
        bar.update()
        best = [math.inf] * len(mods)
        for _ in range(ROUNDS):  # rounds alternate in time; each puts a task's pair side by side
            for j, seconds in enumerate(run_built(built, target, runner)):
                best[j] = min(best[j], seconds)
            bar.update()
    run: TuningRun = run_folder()
    for n, i in enumerate(pending):
        state = database.state(keys[i])
        heuristic, tuned = best[2 * n], best[2 * n + 1]
        if heuristic >= FAILED_SECONDS:  # cannot compare: keep the heuristic schedule
            tuned = FAILED_SECONDS
        state.checks[state.best_seconds] = (heuristic, tuned)
        run.note(keys[i], checked_record_seconds=state.best_seconds,
                 checked_heuristic_seconds=heuristic, checked_tuned_seconds=tuned)
    return len(pending)


def _mark_scheduled(mod: tvm.IRModule) -> tvm.IRModule:
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            mod[gvar] = func.with_attr("tirx.is_scheduled", True)
    return mod


def _heuristic_schedule(stages) -> list[Stage]:
    """The schedule stage without the tuning pass: how an untuned build schedules a kernel."""
    return [Stage(s.name, tuple(p for p in s.passes if p != "apply_tuning_database"))
            for s in stages if s.name == "schedule"]

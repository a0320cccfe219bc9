"""Tuning as a compile feature: a ``TuneConfig`` tunes (or reuses) a database on the module as
it reaches the ``schedule`` stage; ``apply_tuning_database`` applies its winning records."""

from __future__ import annotations

from relaycomp.compiler.features import Feature, Plan, PlanContext, register_feature
from relaycomp.compiler.pipeline import Placement
from relaycomp.tune.tuner import TuneConfig, tune_module, tuning_database


def plan_tuning(config: TuneConfig, context: PlanContext) -> Plan:
    """Tune first if ``config.trials`` > 0 (with none, only unchecked records are checked);
    the pass gets the records that beat the heuristic schedule. ``config``'s target and input
    shapes are ignored: the compile's own are used."""
    report = tune_module(context.mod, context.spec, context.stages, config)
    if config.progress and config.trials > 0:
        print(report.table())
    database = tuning_database(config.tuning_db, context.spec)
    best = database.best_records()
    summary = {"database": str(database.path), "new_trials": report.new_trials,
               "workloads_with_faster_records": len(best.get_all_tuning_records())}
    return Plan(options={"database": best}, report=summary)


TUNE = register_feature(Feature(
    "tuning", TuneConfig, Placement("apply_tuning_database", "schedule", "start"), plan_tuning,
    cli="relaycomp.tune.cli", description="MetaSchedule auto-tuning"))

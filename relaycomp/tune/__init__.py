"""Auto-tuning with MetaSchedule and XGBoost, checked against the heuristic schedules."""

from relaycomp.tune.tuner import TuneConfig, TuneReport, tune

__all__ = ["TuneConfig", "TuneReport", "tune"]

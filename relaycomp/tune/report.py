"""The report of a tuning session: per task, heuristic vs tuned time, and the progress curve."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TaskReport:
    """One kernel: its share of the model's latency, heuristic and tuned time.

    Times come from the paired check when the task has one (both measured side by side, as
    they ship), else from the search: the heuristic baseline and the best candidate.
    """

    name: str
    weight: int
    share: float
    heuristic_ms: float
    tuned_ms: float | None
    trials: int
    new_trials: int
    applied: bool = False   # the build uses the tuned schedule (it won the paired check)
    search_ms: float | None = None  # the best candidate as the search measured it (progress bar)

    @property
    def applied_ms(self) -> float:
        """What the build uses: the tuned time if it won the check, else the heuristic one."""
        return self.tuned_ms if self.applied and self.tuned_ms is not None else self.heuristic_ms


@dataclass
class TuneReport:
    """What a tuning session did, task by task."""

    target: str
    database: Path
    tasks: list[TaskReport]
    seconds: float = 0.0
    # After each measured batch of this session: trials so far, the task, its search best and
    # the model estimate (the progress bar's numbers; ``relaycomp tune --plot`` draws them).
    curve: list[dict] = field(default_factory=list)

    @property
    def new_trials(self) -> int:
        """Candidates measured by this session (0 when the database already had everything)."""
        return sum(t.new_trials for t in self.tasks)

    def model_ms(self, tuned: bool = True) -> float:
        """Estimated model latency: kernel times x occurrences (heuristic or as built)."""
        return sum(t.weight * (t.applied_ms if tuned else t.heuristic_ms) for t in self.tasks)

    def to_json(self) -> dict:
        """JSON form (``relaycomp tune --json``); times in ms, None where not measured."""
        def number(value):
            return value if value is not None and math.isfinite(value) else None

        return {"target": self.target, "database": str(self.database),
                "seconds": self.seconds, "new_trials": self.new_trials,
                "model_ms": {"heuristic": number(self.model_ms(False)),
                             "tuned": number(self.model_ms(True))},
                "tasks": [{"name": t.name, "weight": t.weight, "share": t.share,
                           "trials": t.trials, "new_trials": t.new_trials,
                           "heuristic_ms": number(t.heuristic_ms),
                           "tuned_ms": number(t.tuned_ms), "applied": t.applied,
                           "search_ms": number(t.search_ms)}
                          for t in self.tasks],
                "curve": [{key: number(value) if isinstance(value, float) else value
                           for key, value in point.items()} for point in self.curve]}

    def table(self) -> str:
        """The final table: task, share of latency, heuristic ms -> tuned ms (the paired check
        where there is one), and the search's best (what the progress bar showed)."""
        lines = [f"{'task':44} {'share':>6} {'trials':>6}  heuristic ms -> tuned ms  (search best)"]
        for t in sorted(self.tasks, key=lambda t: -t.share):
            tuned = f"{t.tuned_ms:.4f}" if t.tuned_ms is not None else "-"
            mark = " *" if t.applied else "  "
            search = f"({t.search_ms:.4f})" if t.search_ms is not None else ""
            lines.append(f"{t.name[:44]:44} {t.share:6.1%} {t.trials:6d}  "
                         f"{t.heuristic_ms:12.4f} -> {tuned:>8}{mark} {search}")
        lines.append(f"model (kernel sum): {self.model_ms(False):.3f} ms -> "
                     f"{self.model_ms(True):.3f} ms; {self.new_trials} new trials in "
                     f"{self.seconds:.0f} s; * = tuned schedule applied")
        lines.append("heuristic -> tuned: both built as they ship and timed side by side "
                     "(decides *); search best: the search's own measurement, as on the "
                     "progress bar")
        return "\n".join(lines)

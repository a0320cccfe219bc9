"""``relaycomp tune --plot curve.png``: best latency vs trials, per kernel and for the model,
from the progress bar's own numbers (:attr:`relaycomp.tune.report.TuneReport.curve`)."""

from __future__ import annotations

import os
from pathlib import Path

from relaycomp.compiler.figures import pyplot, save_figure
from relaycomp.errors import TuningError


def plot_tuning_curve(report, path: str | os.PathLike) -> Path:
    """Left: each tuned kernel's search best vs trials (its heuristic schedule dashed). Right:
    the model estimate vs trials, with the heuristic and as-built totals of the paired check."""
    if not report.curve:
        raise TuningError("--plot: this run measured no new trials, so there is no curve",
                          hint="tune with more --trials, or into another --tuning-db")
    plt = pyplot()
    figure, (kernels, model) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_task: dict[str, list[tuple[int, float]]] = {}
    heuristic: dict[str, float] = {}
    for point in report.curve:
        if point["best_ms"] is not None:
            by_task.setdefault(point["task"], []).append((point["trials"], point["best_ms"]))
        heuristic[point["task"]] = point["heuristic_ms"]
    for task, points in by_task.items():
        trials, best = zip(*points)
        (line,) = kernels.step(trials, best, where="post", label=task[:40])
        kernels.axhline(heuristic[task], color=line.get_color(), linestyle="--", linewidth=0.8)
    kernels.set(xlabel="trials (whole session)", ylabel="best kernel latency, ms (search)",
                title="per kernel (dashed: heuristic schedule)")
    if by_task:
        kernels.legend(fontsize=7)
    model.step([p["trials"] for p in report.curve], [p["model_ms"] for p in report.curve],
               where="post", label="estimate during the search")
    model.axhline(report.model_ms(False), color="gray", linestyle="--", linewidth=0.8,
                  label="heuristic (paired check)")
    model.axhline(report.model_ms(True), color="green", linestyle=":", linewidth=1.2,
                  label="as built (paired check)")
    model.set(xlabel="trials", ylabel="model latency, kernel sum (ms)",
              title=f"model on {report.target}")
    model.legend(fontsize=8)
    return save_figure(figure, path)

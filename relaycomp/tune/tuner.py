"""Auto-tuning: MetaSchedule with the XGBoost cost model, against relaycomp's heuristic schedule.

::

    report = relaycomp.tune("model.onnx", TuneConfig(target="host", trials=256,
                                                     tuning_db="~/.cache/relaycomp/tuning"))
    print(report.table())
    relaycomp.compile_model("model.onnx", "model.so", CompileConfig(tuning_db=...))

Tasks are the kernels of the module after the ``fuse`` stage (before ``schedule``, which marks
kernels scheduled and so hides them from MetaSchedule), constant weights marked layout-free so
MetaSchedule may repack them. Each task is first measured with the heuristic schedule of the
``schedule`` stage; that is its baseline. Conv/dense kernels are searched in the heuristic
schedule's own design space (:mod:`relaycomp.tune.space`: its plan variants, tile sizes and
unroll step as samples), starting from the heuristic schedule itself; the rest in
MetaSchedule's stock space. The trial budget is shared out by each task's share of
the model's heuristic latency (kernel time x occurrences). After the search each task's best
record is measured against the heuristic schedule, alternately and as both ship
(:mod:`relaycomp.tune.check`), and applied only if it wins there. Finished work is never redone:
a task whose budget a run finished, or whose records already reach it, is not tuned again, and a
record is checked once.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import tvm
from tqdm import tqdm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
from tvm.s_tir.meta_schedule.utils import fork_seed

from relaycomp import ir
from relaycomp.compiler.pipeline import Stage, default_stages, run_stages, split_before
from relaycomp.errors import TuningError, last_line
from relaycomp.frontend.examples import resolve_model_path
from relaycomp.frontend.onnx_import import import_onnx, load_onnx
from relaycomp.passes.apply_tuning_database import with_layout_free_weights
from relaycomp.runtime.tracker import RUN_TIMEOUT_SECONDS, Device
from relaycomp.targets import TargetSpec, resolve
from relaycomp.tune.check import REPEATS, check_records, heuristic_module
from relaycomp.tune.db import FAILED_SECONDS, TuningDatabase, workload_key
from relaycomp.tune.logs import scoped_meta_schedule_logging
from relaycomp.tune.measure import (
    DeviceLostError,
    Progress,
    make_builder,
    make_runner,
    measure_modules,
    progress_callback,
)
from relaycomp.tune.report import TaskReport, TuneReport
from relaycomp.tune.space import seed_records, space_generator

DEFAULT_DB = Path("~/.cache/relaycomp/tuning")
MIN_TASK_TRIALS = 16  # one search batch: the seeded heuristic and 15 points around it


@dataclass(frozen=True)
class TuneConfig:
    """What to tune for, how long, where to keep the records and where to measure."""

    target: str = "host"
    trials: int = 64                      # total candidates measured for the model
    tuning_db: str | os.PathLike = DEFAULT_DB
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    mcpu: str | None = None
    arch: str | None = None
    num_cores: int | None = None
    rpc: str | None = None                # "HOST:PORT" of a TVM RPC tracker
    key: str | None = None                # the device key at that tracker
    rpc_timeout: float = RUN_TIMEOUT_SECONDS  # longest wait for the device, per candidate
    trials_per_iter: int = 16             # candidates per batch: XGBoost refits between batches
    seed: int | None = None
    progress: bool = True

    def __post_init__(self):
        if self.trials < 0:
            raise TuningError(f"trials must be at least 0, got {self.trials}")
        if self.trials_per_iter < 1:
            raise TuningError(f"trials_per_iter must be at least 1, got {self.trials_per_iter}")
        if not self.rpc_timeout > 0:
            raise TuningError(f"--rpc-timeout must be more than 0 seconds, got {self.rpc_timeout}")
        Device(self.rpc, self.key)  # validates the pair


def tune(model: str | os.PathLike | onnx.ModelProto, config: TuneConfig | None = None,
         ) -> TuneReport:
    """Tune ``model``'s kernels into ``config.tuning_db``; returns the per-task report."""
    config = config or TuneConfig()
    spec = resolve(config.target, mcpu=config.mcpu, arch=config.arch, num_cores=config.num_cores)
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(resolve_model_path(model))
    mod = import_onnx(model, config.input_shapes).mod
    return tune_module(mod, spec, default_stages(spec.kind), config)


def tuning_database(config_db: str | os.PathLike, spec: TargetSpec) -> TuningDatabase:
    """The database for ``spec``'s target under ``config_db``, loaded."""
    return TuningDatabase(Path(config_db).expanduser(), spec.tvm_target()).load()


def tune_module(mod: tvm.IRModule, spec: TargetSpec, stages: Sequence[Stage],
                config: TuneConfig) -> TuneReport:
    """Tune an imported module's kernels (the pipeline runs up to the schedule stage)."""
    started = time.perf_counter()
    target = spec.tvm_target()
    if spec.kind == "llvm":
        ir.request_threads(int(target.attrs.get("num-cores") or ir.usable_cpus()))
    fused, _ = run_stages(mod, split_before(stages, "schedule")[0], target)
    tasks = [t for t in ms.relax_integration.extract_tasks(with_layout_free_weights(fused), target)
             if not t.dispatched[0].attrs or not t.dispatched[0].attrs.get("tirx.is_scheduled")]
    if not tasks:
        raise TuningError("the model has no kernels to tune")
    database = tuning_database(config.tuning_db, spec)
    device = Device(config.rpc, config.key, timeout_sec=config.rpc_timeout)
    runs_here = spec.runs_on_this_machine
    # A compile reusing a database (no trials) needs a device only for unchecked records.
    runner = make_runner(device, spec.kind, runs_here=runs_here) if config.trials > 0 else None
    builder = make_builder(spec)
    run = None
    keys = [workload_key(t.dispatched[0]) for t in tasks]

    # With no trials to run (a compile reusing a database), tasks it never saw are not measured.
    missing = [i for i, key in enumerate(keys)
               if database.state(key).baseline_seconds is None and config.trials > 0]
    if missing:
        run = run or database.new_run()
        _measure_baselines(missing, tasks, keys, database, run, stages, target, builder,
                           make_runner(device, spec.kind, repeat=REPEATS, runs_here=runs_here),
                           config.progress)
        failed = sum(database.state(keys[i]).baseline_seconds >= FAILED_SECONDS for i in missing)
        if failed:
            warnings.warn(f"the heuristic schedule of {failed} of {len(missing)} kernels could "
                          "not be measured (device lost, or a build error); see the run's logs",
                          stacklevel=2)
    budgets = _budgets(tasks, [database.state(k).baseline_seconds for k in keys], config.trials)
    todo = {i: budgets[i] - max(database.state(k).trials, database.state(k).budget_done)
            for i, k in enumerate(keys)}
    todo = {i: todo[i] for i in sorted(todo, key=lambda i: -budgets[i]) if todo[i] > 0}
    new_trials = dict.fromkeys(range(len(tasks)), 0)
    curve: list[dict] = []
    try:
        if todo:
            run = run or database.new_run()
            with scoped_meta_schedule_logging():  # our progress line says more than its console
                new_trials.update(_search(tasks, keys, todo, budgets, database, run,
                                          builder, runner, config, curve))
            database.load()
        unchecked = sum(database.state(key).needs_check for key in keys)
        if unchecked and runner is None and device.rpc is None and not runs_here:
            warnings.warn(f"{unchecked} tuned kernel(s) were never checked against the "
                          "heuristic schedule on the device (an interrupted run); they are not "
                          "used: tune again with --rpc to check them", stacklevel=2)
        elif unchecked:
            def run_folder():
                return run or database.new_run()

            check_records(tasks, keys, database, run_folder, stages, target, builder,
                          make_runner(device, spec.kind, repeat=REPEATS, runs_here=runs_here),
                          progress=config.progress)
    finally:
        builder.close()
    report = _report(spec, database, tasks, keys, new_trials)
    report.seconds = time.perf_counter() - started
    report.curve = curve
    return report


BASELINE_CHUNK = 4  # kernels built and measured together: the builder's pool works in parallel


def _measure_baselines(missing, tasks, keys, database, run, stages, target, builder, runner,
                       progress: bool) -> None:
    """Schedule each new kernel with the heuristic and measure it (repeated: a baseline decides
    the budgets and seeds the search, once per kernel), with a progress bar on stderr."""
    with tqdm(total=len(missing), desc="heuristic baselines", unit="kernel",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, len(missing), BASELINE_CHUNK):
            chunk = missing[start:start + BASELINE_CHUNK]
            heuristic = [heuristic_module(tasks[i].dispatched[0], stages, target) for i in chunk]
            for i, seconds in zip(chunk, measure_modules(heuristic, target, builder, runner)):
                database.state(keys[i]).baseline_seconds = seconds
                run.note(keys[i], baseline_seconds=seconds)
            bar.update(len(chunk))


def _shares(tasks, baselines: Sequence[float | None]) -> list[float]:
    """Each task's share of the model's heuristic latency (kernel time x occurrences).

    A kernel whose heuristic build failed to measure counts as the slowest measured one.
    """
    measured = [b for b in baselines if b is not None and b < FAILED_SECONDS]
    fallback = max(measured, default=1e-3)
    costs = [t.weight * (b if b is not None and b < FAILED_SECONDS else fallback)
             for t, b in zip(tasks, baselines)]
    total = sum(costs) or 1.0
    return [c / total for c in costs]


def _budgets(tasks, baselines: Sequence[float | None], trials: int) -> list[int]:
    """Trials per task: the largest shares of the model's heuristic latency first, each tuned
    task at least ``MIN_TASK_TRIALS`` (fewer only if that is the whole budget), the rest of the
    budget shared out by share. A search has a fixed cost per task (its initial population):
    spreading a small budget thin over every kernel buys random schedules, not tuned ones.
    """
    shares = _shares(tasks, baselines)
    floor = min(MIN_TASK_TRIALS, trials)
    chosen = []
    for i in sorted(range(len(tasks)), key=lambda i: -shares[i]):
        if floor == 0 or (len(chosen) + 1) * floor > trials:
            break
        chosen.append(i)
    budgets = [0] * len(tasks)
    rest = trials - floor * len(chosen)
    covered = sum(shares[i] for i in chosen) or 1.0
    for i in chosen:
        budgets[i] = floor + int(rest * shares[i] / covered)
    return budgets


def _search(tasks, keys, todo: dict[int, int], budgets, database, run, builder, runner,
            config: TuneConfig, curve: list[dict]) -> dict[int, int]:
    """Run MetaSchedule on each task with work left, largest share first; trials per task.
    ``curve`` receives the progress after each measured batch."""
    json_db = run.json_database()
    cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=os.cpu_count() or 1)
    heuristic = {}
    for task, key in zip(tasks, keys):
        seconds = database.state(key).baseline_seconds
        heuristic[task.task_name] = seconds * 1e3 if seconds is not None else math.inf
    progress = Progress(sum(todo.values()), {t.task_name: t.weight for t in tasks}, heuristic,
                        enabled=config.progress, curve=curve)
    done = {}
    population = min(256, max(64, 4 * max(todo.values())))
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population // 2))
    contexts = tune_contexts([tasks[i] for i in todo], str(run.path), strategy, config.seed)
    try:
        _tune_each(contexts, tasks, keys, todo, budgets, database, run, builder, runner, config,
                   json_db, cost_model, progress, done)
    finally:
        progress.close()
    return done


def _tune_each(contexts, tasks, keys, todo, budgets, database, run, builder, runner, config,
               json_db, cost_model, progress, done) -> None:
    """The search loop of :func:`_search`: one MetaSchedule run per task."""
    for context, (i, left) in zip(contexts, todo.items()):
        state = database.state(keys[i])
        baseline_ms = state.baseline_seconds * 1e3
        if state.baseline_seconds < FAILED_SECONDS:
            earlier = state.best if state.best_seconds < FAILED_SECONDS else None
            seeds = seed_records(context, json_db, state.baseline_seconds, earlier)
            if seeds:
                run.note(keys[i], seed_seconds=seeds)
        callbacks = [*ms.measure_callback.MeasureCallback.create("default"),
                     progress_callback(progress, tasks[i].task_name, left, baseline_ms)]
        try:
            ms.tune.tune_tasks(
                tasks=[context], task_weights=[float(tasks[i].weight)], work_dir=str(run.path),
                max_trials_global=left, max_trials_per_task=left,
                num_trials_per_iter=min(config.trials_per_iter, left), builder=builder,
                runner=runner, database=json_db, cost_model=cost_model,
                measure_callbacks=callbacks, task_scheduler="round-robin")
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - one task's failure must not end the session
            if getattr(runner, "lost", None):  # the device is gone: no task can go on
                raise DeviceLostError(runner.lost) from None
            warnings.warn(f"tuning {tasks[i].task_name} stopped: {last_line(err)}; its records "
                          "so far are kept and the next run continues it", stacklevel=2)
            done[i] = progress.done - sum(done.values())
            continue
        done[i] = progress.done - sum(done.values())
        run.note(keys[i], budget_done=budgets[i])


def tune_contexts(tasks, work_dir: str, strategy, seed: int | None) -> list[ms.TuneContext]:
    """One MetaSchedule TuneContext per extracted task, in the task's design space
    (:func:`relaycomp.tune.space.space_generator`: the heuristic schedule's, else the stock one)."""
    names = [task.task_name for task in tasks]
    ir.import_tensor_intrinsics()  # before TuneContext imports it at 10x the cost
    return [
        ms.TuneContext(mod=task.dispatched[0], target=task.target,
                       space_generator=space_generator(task.dispatched[0], task.target),
                       search_strategy=strategy, task_name=task.task_name, logger=logger,
                       rand_state=rand_state, num_threads="physical").clone()
        for task, logger, rand_state in zip(tasks, get_loggers_from_work_dir(work_dir, names),
                                            fork_seed(seed, n=len(tasks)))]


def _report(spec, database, tasks, keys, new_trials) -> TuneReport:
    rows = []
    shares = _shares(tasks, [database.state(k).baseline_seconds for k in keys])
    for i, (task, key) in enumerate(zip(tasks, keys)):
        state = database.state(key)
        heuristic, tuned = state.shown_check or (state.baseline_seconds, state.best_seconds)
        rows.append(TaskReport(task.task_name, task.weight, shares[i], _ms(heuristic),
                               _ms(tuned) if tuned is not None and tuned < FAILED_SECONDS
                               else None, state.trials, new_trials[i], state.tuned_is_faster,
                               search_ms=_ms(state.best_seconds)
                               if state.best_seconds < FAILED_SECONDS else None))
    return TuneReport(spec.name, database.path, rows)


def _ms(seconds: float | None) -> float:
    return seconds * 1e3 if seconds is not None and seconds < FAILED_SECONDS else float("inf")

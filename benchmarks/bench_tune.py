"""Tuned vs untuned relaycomp vs onnxruntime, same run, 2 threads, at two trial budgets.

Models: benchmarks/models/{resnet18,mobilenet_v2}.onnx when present, else the ResNet-/MobileNet-
style nets of tests/models.py. Per model, one tuning database: the first budget is a fresh
session, the second tops the same database up to the larger budget (its tuning time is the
cumulative one). Every build is made first; then all are timed together, interleaved with
onnxruntime round by round, each keeping its best round (median of ``--repeat`` runs), and the
spread between rounds is printed as the noise of the machine.

    python benchmarks/bench_tune.py [--budgets 64 256] [--models resnet18 mobilenet_v2]
                                    [--work DIR] [--rounds 5]

With ``--work DIR`` the databases persist: a second run reuses them (no new trials) and only
rebuilds and times, which lets the timing run late, on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from bench_untuned import benchmark_models
from common import THREADS


def _timers(name: str, path: Path, work: Path, budgets, rounds_log: dict) -> dict:
    """Build untuned and tuned artifacts of one model; name -> (run callable, note)."""
    import onnxruntime as ort

    import relaycomp
    from relaycomp.compiler.build import CompileConfig, compile_model
    from relaycomp.tune.tuner import TuneConfig, tune

    untuned = compile_model(path, work / f"{name}.so")
    model = relaycomp.load(untuned.path, threads=THREADS)
    inputs = relaycomp.runtime.local.random_inputs(model.manifest.inputs)
    timers = {"untuned": (model, "")}
    database = work / f"db-{name}"
    seconds = 0.0
    for budget in budgets:
        config = TuneConfig(trials=budget, tuning_db=database, seed=0, progress=False)
        started = time.perf_counter()
        report = tune(path, config)
        seconds += time.perf_counter() - started
        print(report.table(), flush=True)
        artifact = compile_model(path, work / f"{name}-{budget}.so",
                                 CompileConfig(features=(config,)))
        applied = sum(t.applied for t in report.tasks)
        note = (f"tuning {seconds:5.0f} s cumulative ({report.new_trials} new trials), "
                f"{applied}/{len(report.tasks)} kernels tuned")
        timers[f"tuned {budget:4d} tr"] = (relaycomp.load(artifact.path, threads=THREADS), note)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    timers["onnxruntime"] = (session, "")
    rounds_log["inputs"] = inputs
    return timers


def _time_once(runner, inputs, repeat: int) -> float:
    """Median ms of ``repeat`` runs (after 3 warm-up runs)."""
    if hasattr(runner, "time"):
        return runner.time(inputs, repeat=repeat).median_ms
    samples = []
    for index in range(repeat + 3):
        start = time.perf_counter()
        runner.run(None, inputs)
        if index >= 3:
            samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples))


def main() -> None:
    """Print one table per model: onnxruntime, untuned, and tuned at each budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--models", nargs="+", help="model names (default: all)")
    parser.add_argument("--work", type=Path, help="folder for databases and builds (kept)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--repeat", type=int, default=20, help="runs per round")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-tune-"))
    work.mkdir(parents=True, exist_ok=True)
    for name, path in benchmark_models().items():
        if args.models and name not in args.models:
            continue
        state: dict = {}
        timers = _timers(name, path, work, sorted(args.budgets), state)
        rounds = {key: [] for key in timers}
        for _ in range(args.rounds):  # interleaved: every build once per round
            for key, (runner, _) in timers.items():
                rounds[key].append(_time_once(runner, state["inputs"], args.repeat))
        reference = min(rounds["onnxruntime"])
        untuned = min(rounds["untuned"])
        print(f"\n{name}: best of {args.rounds} interleaved rounds (median of {args.repeat} "
              f"runs each), {THREADS} threads; noise = worst/best round")
        for key, (_, note) in timers.items():
            best, worst = min(rounds[key]), max(rounds[key])
            print(f"  {key:16} {best:8.2f} ms  {best / reference:5.2f}x onnxruntime  "
                  f"{best / untuned:5.2f}x untuned  noise {worst / best:4.2f}  {note}",
                  flush=True)


if __name__ == "__main__":
    main()

"""Tuned vs untuned relaycomp vs onnxruntime, same run, 2 threads, at two trial budgets.

Models: benchmarks/models/{resnet18,mobilenet_v2}.onnx when present, else the ResNet-/MobileNet-
style nets of tests/models.py. Each budget tunes into its own fresh database, so the second
budget's time is a full tuning session, not a top-up of the first.

    python benchmarks/bench_tune.py [--budgets 64 512] [--models resnet18 mobilenet_v2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from bench_untuned import benchmark_models
from common import THREADS, onnxruntime_ms, ratio


def relaycomp_ms(model_path: Path, output: Path, tuning=None) -> tuple[float, dict]:
    """Median latency of a relaycomp build (tuned with ``tuning``, a TuneConfig, if given)."""
    import relaycomp
    from relaycomp.build import CompileConfig, compile_model

    artifact = compile_model(model_path, output, CompileConfig(tuning=tuning))
    model = relaycomp.load(artifact.path, threads=THREADS)
    inputs = relaycomp.runtime.random_inputs(model.manifest.inputs)
    return model.time(inputs, repeat=30).median_ms, inputs


def main() -> None:
    """Print one table per model: onnxruntime, untuned, and tuned at each budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--models", nargs="+", help="model names (default: all)")
    args = parser.parse_args()
    from relaycomp.tune import TuneConfig, tune

    work = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    for name, path in benchmark_models().items():
        if args.models and name not in args.models:
            continue
        untuned, inputs = relaycomp_ms(path, work / f"{name}.so")
        reference = onnxruntime_ms(path, inputs)
        print(f"\n{name}: onnxruntime {reference:.2f} ms (1.00x), {THREADS} threads")
        print(f"  relaycomp untuned          {ratio(untuned, reference)}")
        for budget in args.budgets:
            config = TuneConfig(trials=budget, tuning_db=work / f"db-{name}-{budget}", seed=0,
                                progress=False)
            started = time.perf_counter()
            report = tune(path, config)
            seconds = time.perf_counter() - started
            tuned, _ = relaycomp_ms(path, work / f"{name}-{budget}.so", config)
            applied = sum(t.applied_ms < t.heuristic_ms for t in report.tasks)
            print(f"  relaycomp tuned {budget:5d} tr  {ratio(tuned, reference)}  "
                  f"vs untuned {tuned / untuned:4.2f}x; tuning {seconds:5.0f} s, "
                  f"{applied}/{len(report.tasks)} kernels tuned")


if __name__ == "__main__":
    main()

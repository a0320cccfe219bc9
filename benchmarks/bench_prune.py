"""Pruned vs unpruned: MACs and latency at 30% and 50%, relaycomp and onnxruntime, same run.

Models: benchmarks/models/{resnet18,mobilenet_v2}.onnx (torchvision, random weights) when present,
else the ResNet-/MobileNet-style nets of tests/models.py. Pruning is uniform, L2, kept channel
counts rounded to multiples of 8; 2 threads everywhere.

    python benchmarks/bench_prune.py [--ratios 0.3 0.5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from bench_untuned import benchmark_models
from common import THREADS, onnxruntime_ms

ROUNDS = 5  # variants are timed in interleaved rounds; the best round counts (shared machines)


def main() -> None:
    import relaycomp
    from relaycomp.frontend import graph_inputs, pin_input_shapes
    from relaycomp.prune import PruneConfig, prune
    from relaycomp.runtime import random_inputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    args = parser.parse_args()
    print(f"threads: {THREADS}; speed-up is unpruned latency / pruned latency, same runtime; "
          f"best of {ROUNDS} interleaved rounds")
    for name, path in benchmark_models().items():
        model = onnx.load(str(path))
        specs, _ = pin_input_shapes(graph_inputs(model), {})
        inputs = random_inputs(specs)
        with tempfile.TemporaryDirectory() as tmp:
            variants = []
            for ratio in [0.0, *args.ratios]:
                pruned, report = prune(model, PruneConfig(ratio=ratio))
                pruned_path = Path(tmp) / f"{name}_{ratio}.onnx"
                onnx.save(pruned, str(pruned_path))
                artifact = relaycomp.compile(pruned, Path(tmp) / f"{ratio}.so", num_cores=THREADS)
                variants.append((ratio, report, relaycomp.load(artifact.path), pruned_path))
            ours = {ratio: float("inf") for ratio, *_ in variants}
            ort = dict(ours)
            for _ in range(ROUNDS):
                for ratio, _report, loaded, pruned_path in variants:
                    ours[ratio] = min(ours[ratio], loaded.time(inputs, repeat=10).median_ms)
                    ort[ratio] = min(ort[ratio], onnxruntime_ms(pruned_path, inputs, repeat=10))
        print(f"\n{name}")
        print(f"  {'ratio':>5} {'MACs (M)':>10} {'params (M)':>10} {'relaycomp ms':>13} "
              f"{'speed-up':>8} {'onnxruntime ms':>15} {'speed-up':>8}")
        for ratio, report, *_ in variants:
            after = report.after
            print(f"  {ratio:5.2f} {after['macs'] / 1e6:10.1f} {after['params'] / 1e6:10.2f} "
                  f"{ours[ratio]:13.2f} {ours[0.0] / ours[ratio]:7.2f}x {ort[ratio]:15.2f} "
                  f"{ort[0.0] / ort[ratio]:7.2f}x")
        skipped = {g["name"] for _, report, *_ in variants for g in report.skipped}
        print(f"  groups left unpruned: {', '.join(sorted(skipped)) or 'none'}")


if __name__ == "__main__":
    main()

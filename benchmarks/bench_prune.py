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


def main() -> None:
    import relaycomp
    from relaycomp.frontend import graph_inputs, pin_input_shapes
    from relaycomp.prune import PruneConfig, prune
    from relaycomp.runtime import random_inputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    args = parser.parse_args()
    print(f"threads: {THREADS}; speed-up is unpruned latency / pruned latency, same runtime")
    for name, path in benchmark_models().items():
        model = onnx.load(str(path))
        specs, _ = pin_input_shapes(graph_inputs(model), {})
        inputs = random_inputs(specs)
        print(f"\n{name}")
        print(f"  {'ratio':>5} {'MACs (M)':>10} {'params (M)':>10} {'relaycomp ms':>13} "
              f"{'speed-up':>8} {'onnxruntime ms':>15} {'speed-up':>8}")
        base = None
        with tempfile.TemporaryDirectory() as tmp:
            for ratio in [0.0, *args.ratios]:
                pruned, report = prune(model, PruneConfig(ratio=ratio))
                pruned_path = Path(tmp) / f"{name}_{ratio}.onnx"
                onnx.save(pruned, str(pruned_path))
                artifact = relaycomp.compile(pruned, Path(tmp) / f"{ratio}.so", num_cores=THREADS)
                ours = relaycomp.load(artifact.path).time(inputs, repeat=20).median_ms
                ort = onnxruntime_ms(pruned_path, inputs)
                base = base or (ours, ort)
                after = report.after
                print(f"  {ratio:5.2f} {after['macs'] / 1e6:10.1f} {after['params'] / 1e6:10.2f} "
                      f"{ours:13.2f} {base[0] / ours:7.2f}x {ort:15.2f} {base[1] / ort:7.2f}x")
                if ratio and report.skipped:
                    names = ", ".join(g["name"] for g in report.skipped)
                    print(f"        skipped groups: {names}")


if __name__ == "__main__":
    main()

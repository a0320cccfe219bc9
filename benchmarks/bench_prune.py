"""Pruned vs unpruned: MACs and latency at 30% and 50%; digits accuracy per criterion.

Latency: benchmarks/models/{resnet18,mobilenet_v2}.onnx (torchvision, random weights) when
present, else the ResNet-/MobileNet-style nets of tests/models.py. relaycomp prunes with the
``prune_channels`` Relax pass (``compile --prune``); onnxruntime runs the ONNX pruner's output
for the same config. Uniform, L2, kept channel counts rounded to multiples of 8; 2 threads.

Accuracy: the bundled digits CNN on the sklearn digits held-out split (the stratified 80/20
split of tools/make_digits_example.py: 360 images), pruned by each criterion at each ratio
(kept counts rounded up to multiples of ``--round-to``, default 8 as ``compile --prune``)
without compensation, with data-free compensation and with compensation
calibrated on 128 training images; both front ends (ONNX pruner run by onnxruntime, Relax pass
compiled by relaycomp).

    python benchmarks/bench_prune.py [--ratios 0.3 0.5] [--no-latency] [--no-accuracy]
                                     [--round-to 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from bench_untuned import benchmark_models
from common import THREADS, onnxruntime_ms

ROUNDS = 5  # variants are timed in interleaved rounds; the best round counts (shared machines)
CRITERIA = ("l1", "l2", "bn_scale", "activation", "random")
CALIBRATION_SAMPLES = 128


def latency(ratios: list[float]) -> None:
    """MACs and latency of pruned models, relaycomp and onnxruntime, same run."""
    import relaycomp
    from relaycomp.compiler.build import CompileConfig, compile_model
    from relaycomp.frontend.onnx_import import graph_inputs, pin_input_shapes
    from relaycomp.prune.pruner import PruneConfig, prune
    from relaycomp.runtime.local import random_inputs

    print(f"threads: {THREADS}; speed-up is unpruned latency / pruned latency, same runtime; "
          f"best of {ROUNDS} interleaved rounds")
    for name, path in benchmark_models().items():
        model = onnx.load(str(path))
        specs, _ = pin_input_shapes(graph_inputs(model), {})
        inputs = random_inputs(specs)
        with tempfile.TemporaryDirectory() as tmp:
            variants = []
            for ratio in [0.0, *ratios]:
                config = PruneConfig(ratio=ratio)
                pruned, _ = prune(model, config)
                pruned_path = Path(tmp) / f"{name}_{ratio}.onnx"
                onnx.save(pruned, str(pruned_path))
                artifact = compile_model(model, Path(tmp) / f"{ratio}.so",
                                         CompileConfig(num_cores=THREADS, features=(config,)))
                variants.append((ratio, artifact.manifest.report["prune"],
                                 relaycomp.load(artifact.path), pruned_path))
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
            after = report["after"]
            print(f"  {ratio:5.2f} {after['macs'] / 1e6:10.1f} {after['params'] / 1e6:10.2f} "
                  f"{ours[ratio]:13.2f} {ours[0.0] / ours[ratio]:7.2f}x {ort[ratio]:15.2f} "
                  f"{ort[0.0] / ort[ratio]:7.2f}x")
        skipped = {g["name"] for _, report, *_ in variants for g in report["skipped"]}
        print(f"  groups left unpruned (Relax pass): {', '.join(sorted(skipped)) or 'none'}")


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held-out images, held-out labels, calibration images) of tools/make_digits_example.py."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    train, test, _train_labels, test_labels = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0)
    return test, test_labels, train[:CALIBRATION_SAMPLES]


def accuracy(ratios: list[float], round_to: int) -> None:
    """Digits held-out accuracy after pruning, per criterion, ratio and compensation."""
    import onnxruntime

    import relaycomp
    from relaycomp.compiler.build import CompileConfig, compile_model
    from relaycomp.frontend.examples import get_example
    from relaycomp.prune.pruner import PruneConfig, prune

    model = onnx.load(str(get_example("digits").model_path))
    images, labels, calibration = digits_split()
    feed, calib = {"input": images}, {"input": calibration}

    def onnx_accuracy(m) -> float:
        session = onnxruntime.InferenceSession(m.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        return float(np.mean(session.run(None, feed)[0].argmax(axis=1) == labels))

    def relax_accuracy(config, options, tmp) -> float:
        artifact = compile_model(model, Path(tmp) / "digits.so", CompileConfig(
            input_shapes={"input": images.shape}, pass_options=options, features=(config,)))
        logits = relaycomp.load(artifact.path).run(feed)["logits"]
        return float(np.mean(logits.argmax(axis=1) == labels))

    print(f"\ndigits CNN, sklearn held-out split ({len(labels)} images); unpruned "
          f"{onnx_accuracy(model):.3f}. Columns: no compensation / data-free / calibrated "
          f"({CALIBRATION_SAMPLES} training images); kept counts multiples of {round_to}")
    print(f"  {'criterion':>10} {'ratio':>5}   {'ONNX pruner (onnxruntime)':>27}   "
          f"{'Relax pass (relaycomp)':>27}")
    modes = [(False, None), (True, None), (True, calib)]
    with tempfile.TemporaryDirectory() as tmp:
        for criterion in CRITERIA:
            for ratio in ratios:
                onnx_row, relax_row = [], []
                for compensate, data in modes:
                    config = PruneConfig(ratio=ratio, importance=criterion,
                                         round_to=round_to, compensate=compensate)
                    use = calib if criterion == "activation" else data
                    pruned, _ = prune(model, config, calib=use)
                    onnx_row.append(onnx_accuracy(pruned))
                    options = {"prune_channels": {"calib": use}} if use else {}
                    relax_row.append(relax_accuracy(config, options, tmp))
                print(f"  {criterion:>10} {ratio:5.2f}   "
                      + " / ".join(f"{a:.3f}" for a in onnx_row) + "   "
                      + " / ".join(f"{a:.3f}" for a in relax_row))
    print("  (activation ranks channels on the calibration images, so its 'data-free' column "
          "is calibrated too)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--round-to", type=int, default=8, help="for the accuracy table")
    args = parser.parse_args()
    if not args.no_latency:
        latency(args.ratios)
    if not args.no_accuracy:
        accuracy(args.ratios, args.round_to)


if __name__ == "__main__":
    main()

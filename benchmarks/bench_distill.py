"""Distillation training speed (samples/s) on TVM, and optionally the digits accuracy results.

Speed: per student, training samples/s of distill() (gradient + optimizer steps only, the
compiled teacher and the program build excluded), next to onnxruntime's inference samples/s on
the same student and batch in the same run (a training step costs a forward, a backward and an
update, so expect a ratio well below 1).

    python benchmarks/bench_distill.py [--epochs 3] [--accuracy] [--seeds 0 1 2]

``--accuracy`` also prints, on scikit-learn digits (held-out test split of
tools/make_digits_example.py): distilled vs from-scratch students per seed, with all labels
and with 10% of the labels (scratch sees the labelled samples for as many steps as
distillation takes on all of them), and the recovery of the 50%-pruned bundled CNN.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from common import THREADS


def _students():
    from test_distill import cnn_student, mlp_student

    from relaycomp.frontend.examples import get_example
    from relaycomp.prune.pruner import PruneConfig, prune

    teacher = onnx.load(str(get_example("digits").model_path))
    pruned, _ = prune(teacher, PruneConfig(ratio=0.5))
    return teacher, {"mlp 64-64-10": mlp_student(0), "cnn 4/8 + BN": cnn_student(0, width=4),
                     "digits cnn, 50% pruned": pruned, "digits cnn (teacher size)": teacher}


def _ort_samples_per_second(model: onnx.ModelProto, batch: np.ndarray, repeat: int = 50) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, {"input": batch})
    start = time.perf_counter()
    for _ in range(repeat):
        session.run(None, {"input": batch})
    return repeat * len(batch) / (time.perf_counter() - start)


def speed(epochs: int, batch_sizes: list[int]) -> None:
    """Training samples/s per student and batch size, with onnxruntime inference alongside."""
    from test_distill import digits_split, ort_logits

    from relaycomp.distill.distiller import DistillConfig, distill

    train_x, _, train_y, _ = digits_split()
    teacher, students = _students()
    logits = ort_logits(teacher, train_x)
    print(f"training on {len(train_x)} digits, {epochs} epochs, {THREADS} threads; "
          f"ratio = training samples/s / onnxruntime inference samples/s")
    print(f"{'student':28} {'batch':>5} {'train samples/s':>16} {'ms/step':>8} "
          f"{'ort infer/s':>12} {'ratio':>6}")
    for name, student in students.items():
        for batch in batch_sizes:
            config = DistillConfig(epochs=epochs, batch_size=batch, val_split=0.0, patience=0)
            _, report = distill(logits, student, {"input": train_x}, config, labels=train_y)
            rate = report.samples_per_second
            reference = _ort_samples_per_second(student, train_x[:batch])
            print(f"{name:28} {batch:5d} {rate:16,.0f} {1e3 * batch / rate:8.2f} "
                  f"{reference:12,.0f} {rate / reference:6.3f}")


def accuracy(seeds: list[int]) -> None:
    """Distilled vs scratch per seed (all labels; 10% labels) and pruned-CNN recovery."""
    from test_distill import (
        _distilled_and_scratch,
        _pruned_recovery,
        digits_split,
        mlp_student,
        ort_logits,
        test_accuracy,
    )

    from relaycomp.distill.distiller import DistillConfig, distill

    digits = digits_split()
    train_x, test_x, train_y, test_y = digits
    teacher, _ = _students()
    logits = ort_logits(teacher, train_x)
    print(f"\nteacher (bundled digits CNN) held-out accuracy "
          f"{test_accuracy(teacher, test_x, test_y):.2%}; student: MLP 64-64-10; "
          f"held-out accuracy on {len(test_y)} test digits")
    print("all labels, 20 epochs each (alpha 0.7, T 4 vs alpha 0):")
    for seed in seeds:
        result = {}
        for label, alpha in (("distilled", 0.7), ("scratch", 0.0)):
            config = DistillConfig(epochs=20, lr=3e-3, alpha=alpha, seed=seed, patience=0)
            model, _ = distill(logits, mlp_student(seed), {"input": train_x}, config,
                               labels=train_y)
            result[label] = test_accuracy(model, test_x, test_y)
        print(f"  seed {seed}: distilled {result['distilled']:.2%}  scratch "
              f"{result['scratch']:.2%}")
    print("10% labels, same number of steps (distillation also sees the unlabelled 90%):")
    for seed in seeds:
        distilled, scratch = _distilled_and_scratch(digits, logits, seed, epochs=10)
        print(f"  seed {seed}: distilled {distilled:.2%}  scratch {scratch:.2%}")
    for epochs in (10, 30):
        (unpruned, pruned, recovered), report, _ = _pruned_recovery(digits, teacher, epochs)
        print(f"50%-pruned digits CNN, {epochs} epochs lr 1e-2: unpruned {unpruned:.2%}, pruned "
              f"{pruned:.2%}, distilled {recovered:.2%} "
              f"({report.samples_per_second:,.0f} samples/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--accuracy", action="store_true",
                        help="also run the digits accuracy comparisons (a few minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    speed(args.epochs, args.batch_sizes)
    if args.accuracy:
        accuracy(args.seeds)


if __name__ == "__main__":
    main()

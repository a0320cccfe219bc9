"""Prune → distill → quantize → compile, in one process, on the bundled digits CNN.

    pip install -e ".[test]"            # scikit-learn provides the digits data
    python examples/prune_distill_quantize.py [--ratio 0.5] [--epochs 10] [-o digits_small.so]

The bundled model is the teacher. Half of its channels are removed (structured pruning, so the
compiled model really does fewer MACs), the pruned student is distilled from the teacher on the
training split, then compiled with int8 kernels calibrated on training images. Accuracy on the
held-out split is printed after every step, with MACs, weight bytes and latency.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import relaycomp
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.distill.distiller import DistillConfig, distill
from relaycomp.frontend.examples import EXAMPLES
from relaycomp.frontend.model_info import model_info
from relaycomp.prune.pruner import PruneConfig, prune
from relaycomp.quantize.quantizer import QuantConfig


def digits_split():
    """scikit-learn's digits as [N, 1, 8, 8] in [0, 1]; the split the bundled model held out."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    return train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=0)


def evaluate(artifact, images, labels) -> tuple[float, float]:
    """Held-out accuracy and the best of 20 single-batch latencies (ms) of a compiled model."""
    model = relaycomp.load(artifact.path)
    logits = model.run({"input": images})["logits"]
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        model.run({"input": images})
        best = min(best, time.perf_counter() - start)
    return float((logits.argmax(axis=1) == labels).mean()), best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of channels to remove")
    parser.add_argument("--epochs", type=int, default=10, help="distillation epochs")
    parser.add_argument("-o", "--output", default="digits_small.so", help="the int8 artifact")
    args = parser.parse_args()

    train_x, test_x, train_y, test_y = digits_split()
    shapes = {"input": test_x.shape}
    teacher = relaycomp.load_onnx(EXAMPLES.get("digits").model_path)

    pruned, prune_report = prune(teacher, PruneConfig(ratio=args.ratio))
    student, distill_report = distill(teacher, pruned, {"input": train_x},
                                      DistillConfig(epochs=args.epochs, lr=1e-2, patience=0),
                                      labels=train_y, progress=print)
    steps = {
        "teacher (float)": (teacher, CompileConfig(input_shapes=shapes)),
        f"pruned {args.ratio:.0%} (float)": (pruned, CompileConfig(input_shapes=shapes)),
        "distilled (float)": (student, CompileConfig(input_shapes=shapes)),
        "distilled (int8)": (student, CompileConfig(
            input_shapes=shapes, features=(QuantConfig(),),
            calibration={"input": train_x[:len(test_x)]})),  # one batch of the compiled shape
    }
    print(f"\n{'step':<22} {'accuracy':>9} {'MACs':>10} {'params':>8} {'latency':>9}")
    for step, (model, config) in steps.items():
        output = args.output if step == "distilled (int8)" else "_step.so"
        artifact = compile_model(model, output, config)
        accuracy, latency = evaluate(artifact, test_x, test_y)
        info = model_info(model, {"input": (1, 1, 8, 8)})
        print(f"{step:<22} {accuracy:>8.2%} {info.macs:>10,} {info.params:>8,} "
              f"{latency:>7.2f}ms")
    print(f"\npruning: {prune_report.summary()}")
    print(f"distillation: {distill_report.summary()}")
    print(f"int8 artifact: {args.output}")


if __name__ == "__main__":
    main()

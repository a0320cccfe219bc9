"""Distillation training speed (samples/s) on TVM, and optionally the digits accuracy results.

Speed: per student, training samples/s of distill() (gradient + optimizer steps only, the
compiled teacher and the program build excluded), next to onnxruntime's inference samples/s on
the same student and batch in the same run (a training step costs a forward, a backward and an
update, so expect a ratio well below 1).

Against PyTorch (``--torch-python PYTHON``: an interpreter that has torch; torch is never a
dependency of relaycomp, it runs in that interpreter as a subprocess): the small CNN student
(conv 8 → conv 16 stride 2 → linear) trained with the same KD loss, Adam, learning rate,
batch size, data order policy, epochs and initial weights in both, at 2 threads; training
samples/s and held-out accuracy side by side, ratio = relaycomp / PyTorch.

    python benchmarks/bench_distill.py [--epochs 3] [--accuracy] [--hints] [--seeds 0 1 2]
                                       [--torch-python /path/to/venv/bin/python]

``--hints`` compares feature distillation (attention transfer) with logits-only distillation
at the same budget, per seed. ``--accuracy`` also prints, on scikit-learn digits (held-out test split of
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
    (unpruned, pruned, recovered), report, _ = _pruned_recovery(digits, teacher)
    print(f"50%-pruned digits CNN, defaults (lr {report.lr['value']:.2e} found, "
          f"{len(report.history)} epochs until done, {report.seconds:.1f} s): unpruned "
          f"{unpruned:.2%}, pruned {pruned:.2%}, distilled {recovered:.2%} "
          f"({report.samples_per_second:,.0f} samples/s)")


def hints_comparison(seeds: list[int], samples: int = 100, epochs: int = 30) -> None:
    """Held-out accuracy of logits-only distillation vs attention-transfer hints at both conv
    stages, same student initialization, data subset, rate and epochs, per seed."""
    from test_distill import digits_split
    from test_distill_hints import ATTENTION_HINTS, hints_versus_logits

    digits = digits_split()
    teacher, _ = _students()
    print(f"\nhints vs logits only: small CNN from scratch, {samples} digits, {epochs} epochs, "
          f"lr 3e-3; attention transfer at relu1/r1 and relu2/r2, weight 1:")
    gains = []
    for seed in seeds:
        logits, hinted = hints_versus_logits(digits, teacher, seed, ATTENTION_HINTS,
                                             samples=samples, epochs=epochs,
                                             hint_loss="attention", hint_weight=1.0)
        gains.append(hinted - logits)
        print(f"  seed {seed}: logits only {logits:.2%}  with hints {hinted:.2%}  "
              f"({100 * (hinted - logits):+.2f} points)")
    print(f"  mean gain {100 * np.mean(gains):+.2f} points")


TORCH_SIDE = r"""
import sys, time
import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
blob = np.load(sys.argv[1])
x, t, y = (torch.from_numpy(blob[k]) for k in ("x", "t", "y"))
test_x = torch.from_numpy(blob["test_x"])
epochs, batch, lr, temp, alpha = (float(v) for v in blob["settings"])
epochs, batch = int(epochs), int(batch)
model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
    torch.nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.nn.ReLU(),
    torch.nn.Flatten(), torch.nn.Linear(256, 10))
with torch.no_grad():
    for name, param in model.named_parameters():
        param.copy_(torch.from_numpy(blob["w_" + name]))
optimizer = torch.optim.Adam(model.parameters(), lr=lr)
rng = np.random.default_rng(0)
seconds = 0.0
for epoch in range(epochs):
    order = torch.from_numpy(rng.permutation(len(x)))
    tic = time.perf_counter()
    for start in range(0, len(x), batch):
        rows = order[start:start + batch]
        logits = model(x[rows])
        soft = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(t[rows] / temp, 1),
                        reduction="batchmean", log_target=True)
        loss = alpha * temp * temp * soft + (1 - alpha) * F.cross_entropy(logits, y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds += time.perf_counter() - tic
with torch.no_grad():
    predicted = model(test_x).argmax(1).numpy()
np.save(sys.argv[1] + ".pred.npy", predicted)
print(epochs * len(x) / seconds)
"""


def versus_torch(torch_python: str, epochs: int, batch: int, lr: float = 3e-3) -> None:
    """Training samples/s and accuracy of the small CNN: relaycomp vs PyTorch, same run."""
    import subprocess
    import tempfile

    from onnx import numpy_helper
    from test_distill import digits_split, ort_logits, small_cnn_student, test_accuracy

    from relaycomp.distill.distiller import DistillConfig, distill

    train_x, test_x, train_y, test_y = digits_split()
    teacher, _ = _students()
    logits = ort_logits(teacher, train_x)
    student = small_cnn_student(0)
    weights = {i.name: numpy_helper.to_array(i) for i in student.graph.initializer}
    torch_names = {"0.weight": "conv1.weight", "0.bias": "conv1.bias", "2.weight":
                   "conv2.weight", "2.bias": "conv2.bias", "5.weight": "fc.weight",
                   "5.bias": "fc.bias"}
    config = DistillConfig(epochs=epochs, lr=lr, batch_size=batch, val_split=0.0, patience=0,
                           warmup=0, schedule="constant")
    trained, report = distill(logits, student, {"input": train_x}, config, labels=train_y)
    ours = report.samples_per_second
    with tempfile.TemporaryDirectory() as folder:
        blob = Path(folder) / "data.npz"
        np.savez(blob, x=train_x, t=logits, y=train_y, test_x=test_x,
                 settings=np.array([epochs, batch, lr, config.temperature, config.alpha]),
                 **{f"w_{k}": weights[v] for k, v in torch_names.items()})
        result = subprocess.run([torch_python, "-c", TORCH_SIDE, str(blob), str(THREADS)],
                                check=False, capture_output=True, text=True, timeout=600)
        if result.returncode:
            raise SystemExit(f"the PyTorch side failed:\n{result.stderr}")
        theirs = float(result.stdout.split()[-1])
        torch_accuracy = float((np.load(str(blob) + ".pred.npy") == test_y).mean())
    print(f"\nsmall CNN student (2.8k params), {epochs} epochs, batch {batch}, Adam lr {lr}, "
          f"constant rate, {THREADS} threads (AMD Zen 5 EPYC, AVX-512):")
    kernels = report.trained["kernels"]
    print(f"  relaycomp (TVM) {ours:9,.0f} samples/s  held-out "
          f"{test_accuracy(trained, test_x, test_y):.2%}  ({kernels['scheduled']} training "
          f"kernels scheduled by schedule_cpu_loops, {kernels['unscheduled']} not)")
    print(f"  PyTorch {_torch_version(torch_python):8} {theirs:9,.0f} samples/s  held-out "
          f"{torch_accuracy:.2%}")
    print(f"  ratio relaycomp / PyTorch: {ours / theirs:.2f}x")


def _torch_version(python: str) -> str:
    import subprocess

    return subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                          check=True, capture_output=True, text=True).stdout.strip().split("+")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--accuracy", action="store_true",
                        help="also run the digits accuracy comparisons (a few minutes)")
    parser.add_argument("--hints", action="store_true",
                        help="also compare attention hints with logits-only distillation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--torch-python",
                        help="a Python interpreter with torch: also train the small CNN there")
    args = parser.parse_args()
    if args.torch_python:
        for batch in args.batch_sizes:
            versus_torch(args.torch_python, max(args.epochs, 5), batch)
    speed(args.epochs, args.batch_sizes)
    if args.accuracy:
        accuracy(args.seeds)
    if args.hints:
        hints_comparison(args.seeds)


if __name__ == "__main__":
    main()

"""Train the bundled example model, a small CNN on scikit-learn's digits, and export it to ONNX.

Writes ``relaycomp/data/digits_cnn.onnx`` and ``relaycomp/data/digits_samples.npz``. torch is
never a dependency of relaycomp, so this runs in a separate virtual environment, from the
repository root:

    python -m venv VENV
    VENV/bin/pip install torch==2.14.1 onnx numpy scikit-learn
    VENV/bin/python tools/make_digits_example.py

Everything is seeded and training runs on one CPU thread, so a re-run reproduces the accuracy
printed at the end (bit-identical weights are likely, not promised, across torch builds).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
EPOCHS = 60
BATCH_SIZE = 32
SHIPPED_TEST_SAMPLES = 64
SHIPPED_CALIBRATION_SAMPLES = 32
DATA_DIR = Path(__file__).resolve().parents[1] / "relaycomp" / "data"


def digits_cnn() -> nn.Module:
    """Three conv+BN+ReLU layers (one strided), global average pooling, a linear classifier.

    Layers are named (conv1, bn1, ...) so ONNX node and weight names read well in reports.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    widths = [(1, 16, 1), (16, 32, 2), (32, 32, 1)]  # (in, out, stride); 8x8 → 8x8 → 4x4 → 4x4
    for i, (cin, cout, stride) in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(cout)
        layers[f"relu{i}"] = nn.ReLU()
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(32, 10)
    return nn.Sequential(layers)


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1,797 digits as float32 [N,1,8,8] in [0,1]; a stratified 80/20 train/test split."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    return train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=SEED)


def _shift(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augment by translating each image up to one pixel, which matters most on 8x8 inputs."""
    padded = nn.functional.pad(batch, (1, 1, 1, 1))
    out = torch.empty_like(batch)
    offsets = torch.randint(0, 3, (len(batch), 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy:dy + 8, dx:dx + 8]
    return out


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> nn.Module:
    """Adam with a cosine schedule on shifted copies of the training images."""
    generator = torch.Generator().manual_seed(SEED)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), BATCH_SIZE):
            index = order[start:start + BATCH_SIZE]
            optimizer.zero_grad()
            loss_fn(model(_shift(x[index], generator)), y[index]).backward()
            optimizer.step()
        schedule.step()
    return model.eval()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the eval-mode model."""
    with torch.no_grad():
        predictions = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predictions == labels).mean())


def export(model: nn.Module, path: Path) -> onnx.ModelProto:
    """Legacy exporter, opset 17, batch dim named "batch", BatchNormalization kept.

    Tracing uses a batch of 1. With ``do_constant_folding=False`` the exporter skips its eval
    peephole, which would otherwise fold each BatchNorm into the conv before it; relaycomp's
    own passes are meant to do that folding.
    """
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
    exported = onnx.load(str(path))
    onnx.checker.check_model(exported, full_check=True)
    return exported


def main() -> None:
    """Train, report held-out accuracy, export, and check the ONNX model against PyTorch."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    train_images, test_images, train_labels, test_labels = load_split()
    model = train(digits_cnn(), train_images, train_labels)
    held_out = accuracy(model, test_images, test_labels)
    print(f"held-out accuracy: {held_out:.4f} on {len(test_labels)} images "
          f"(trained on {len(train_labels)})")

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    model_path = DATA_DIR / "digits_cnn.onnx"
    exported = export(model, model_path)
    samples = test_images[:SHIPPED_TEST_SAMPLES]
    np.savez_compressed(
        DATA_DIR / "digits_samples.npz",
        input=samples,
        labels=test_labels[:SHIPPED_TEST_SAMPLES],
        calibration=train_images[:SHIPPED_CALIBRATION_SAMPLES],
    )

    (onnx_logits,) = ReferenceEvaluator(exported).run(None, {"input": samples})
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(samples)).numpy()
    max_error = float(np.abs(onnx_logits - torch_logits).max())
    shipped = float((onnx_logits.argmax(axis=1) == test_labels[:SHIPPED_TEST_SAMPLES]).mean())
    ops = sorted({node.op_type for node in exported.graph.node})
    print(f"ONNX vs PyTorch max |diff| {max_error:.2e}; accuracy on the {len(samples)} shipped "
          f"samples {shipped:.4f}")
    print(f"{model_path.name}: {model_path.stat().st_size} bytes, ops {', '.join(ops)}")


if __name__ == "__main__":
    main()

"""Export the benchmark models, torchvision's resnet18 and mobilenet_v2, to benchmarks/models/.

The files are large (47 MB and 14 MB) and not committed; make them before benchmarking. torch is
never a dependency of relaycomp, so this runs in a separate virtual environment (with torch,
torchvision, onnx and numpy installed), from the repository root:

    VENV/bin/python benchmarks/export_torchvision.py

Weights are random (``weights=None``: nothing is downloaded) but seeded; speed does not depend
on their values. BatchNorm statistics are then estimated on random images: with torchvision's
initialisation and default statistics, mobilenet_v2's eval-mode logits are about 1e-9, too small
for a meaningful numeric comparison against onnxruntime. Each model is exported in eval mode
with a static 1x3x224x224 input named "input", output "logits", opset 17, by the legacy TorchScript exporter with its default
constant folding, the form most deployed ONNX files have (BatchNorm folded into the convs).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
import torchvision

MODELS_DIR = Path(__file__).resolve().parent / "models"
MODEL_NAMES = ("resnet18", "mobilenet_v2")
OPSET = 17


def _estimate_batchnorm_statistics(model: torch.nn.Module, batches: int = 4) -> torch.nn.Module:
    """Set every BatchNorm's running statistics to their mean over a few random batches.

    Returns the model in eval mode.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, 224, 224))
    return model.eval()


def export(name: str) -> Path:
    """Export torchvision's ``name`` with random seeded weights; returns the file written."""
    torch.manual_seed(0)
    model = _estimate_batchnorm_statistics(torchvision.models.get_model(name, weights=None))
    path = MODELS_DIR / f"{name}.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False,
                      opset_version=OPSET, input_names=["input"], output_names=["logits"])
    onnx.checker.check_model(str(path), full_check=True)
    return path


def main() -> None:
    """Export every benchmark model."""
    MODELS_DIR.mkdir(exist_ok=True)
    for name in MODEL_NAMES:
        path = export(name)
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

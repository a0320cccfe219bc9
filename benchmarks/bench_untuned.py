"""Untuned default build vs stock TVM vs onnxruntime (and OpenVINO), same run, 2 threads.

Models: benchmarks/models/{resnet18,mobilenet_v2}.onnx from export_torchvision.py (torchvision,
random weights) when present, else the ResNet-/MobileNet-style nets from tests/models.py.

    python benchmarks/bench_untuned.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from common import MODELS_DIR, THREADS, median_ms, onnxruntime_ms, openvino_ms, ratio


def benchmark_models() -> dict[str, Path]:
    """Name → ONNX path; builds the small stand-ins when the torchvision exports are absent."""
    found = {p.stem: p for p in sorted(MODELS_DIR.glob("*.onnx"))}
    if found:
        return found
    from models import mobilenet_style_net, resnet_block_net

    out = Path(tempfile.mkdtemp())
    for name, build in {"resnet_block_net": resnet_block_net,
                        "mobilenet_style_net": mobilenet_style_net}.items():
        onnx.save(build(), out / f"{name}.onnx")
    return {p.stem: p for p in out.glob("*.onnx")}


def stock_tvm_ms(model_path: Path, inputs: dict, target) -> float:
    """Stock ``tvm.compile`` with the default pipeline (what a plain TVM user gets)."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from relaycomp.frontend.onnx_import import import_onnx

    # Stock from_onnx fails on some exports; fall back to our import (same graph, folded shapes).
    try:
        mod = from_onnx(onnx.load(str(model_path)), {k: v.shape for k, v in inputs.items()})
    except Exception:  # noqa: BLE001
        mod = import_onnx(onnx.load(str(model_path)), {k: v.shape for k, v in inputs.items()}).mod
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    tensors = [tvm.runtime.tensor(v) for v in inputs.values()]
    return median_ms(lambda: vm["main"](*tensors), repeat=5, warmup=1)


def main() -> None:
    import relaycomp
    from relaycomp.frontend.onnx_import import graph_inputs, pin_input_shapes
    from relaycomp.runtime.local import random_inputs

    print(f"threads: {THREADS}; ratios are latency / onnxruntime latency (lower is better)")
    for name, path in benchmark_models().items():
        specs, _ = pin_input_shapes(graph_inputs(onnx.load(str(path))), {})
        inputs = random_inputs(specs)
        with tempfile.TemporaryDirectory() as tmp:
            artifact = relaycomp.compile(path, Path(tmp) / "m.so", num_cores=THREADS)
            model = relaycomp.load(artifact.path)
            ours = model.time(inputs, repeat=20).median_ms
            target = artifact.manifest.target
        ort_ms = onnxruntime_ms(path, inputs)
        ov_ms = openvino_ms(path, inputs)
        stock = stock_tvm_ms(path, inputs, relaycomp.targets.resolve("host").tvm_target())
        print(f"\n{name}  ({target['name']}, mcpu={target['target'].get('mcpu', '-')})")
        print(f"  onnxruntime          {ort_ms:8.2f} ms ( 1.00x)")
        print(f"  openvino f32         {ratio(ov_ms, ort_ms)}")
        print(f"  stock TVM, untuned   {ratio(stock, ort_ms)}")
        print(f"  relaycomp, untuned   {ratio(ours, ort_ms)}")


if __name__ == "__main__":
    main()

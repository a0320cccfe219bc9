"""int8 vs fp32: relaycomp and onnxruntime, same run, 2 threads.

Models: benchmarks/models/{resnet18,mobilenet_v2}.onnx, quantized by onnxruntime's
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, random calibration data;
see tests/qdq.py), asked for ``reduce_range`` (onnxruntime's advice for x86 without VNNI) on
such a CPU unless ``--full-range``. onnxruntime 1.32 keeps per-channel QDQ weights 8-bit even
then (the table prints the weights' range), so relaycomp runs these models on its exact
``vpmaddwd`` kernel; ``bench_quantize.py`` shows its own 7-bit quantization on ``vpmaddubsw``. Four
builds per model: relaycomp fp32, relaycomp int8 (the QDQ model through
``lower_qdq_to_integer`` and the int8 kernels), onnxruntime fp32 and onnxruntime int8 (its QLinear
kernels). Prints median latencies, the int8/fp32 ratios, onnxruntime-int8 as the reference, the
artifact sizes and the agreement of relaycomp int8 with onnxruntime int8 (top-1, cosine).

    python benchmarks/bench_int8.py [--model resnet18] [--quantized path.onnx ...] [--full-range]
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

from common import MODELS_DIR, THREADS, onnxruntime_ms


def _relaycomp(model, inputs: dict, folder: Path, name: str):
    """(median ms, artifact bytes, outputs) of a relaycomp build of ``model``."""
    import relaycomp

    shapes = {k: v.shape for k, v in inputs.items()}
    artifact = relaycomp.compile(model, folder / f"{name}.so", inputs=shapes, num_cores=THREADS)
    loaded = relaycomp.load(artifact.path)
    outputs = next(iter(loaded.run(inputs).values()))
    return loaded.time(inputs, repeat=30).median_ms, artifact.path.stat().st_size, outputs


def _ort(model_path: Path, inputs: dict):
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0], onnxruntime_ms(model_path, inputs)


def bench(name: str, float_path: Path, quantized_path: Path | None,
          reduce_range: bool) -> None:
    """Time the four builds of one model and print the table."""
    from qdq import ort_qdq

    from relaycomp.frontend.onnx_import import graph_inputs, pin_input_shapes
    from relaycomp.runtime.local import random_inputs

    float_model = onnx.load(str(float_path))
    specs, _ = pin_input_shapes(graph_inputs(float_model), {})
    inputs = random_inputs(specs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if quantized_path is None:
            quantized_path = folder / "int8.onnx"
            onnx.save(ort_qdq(float_model, batches=4, reduce_range=reduce_range),
                      quantized_path)
        largest = max(int(np.abs(onnx.numpy_helper.to_array(init).astype(np.int32)).max())
                      for init in onnx.load(str(quantized_path)).graph.initializer
                      if init.data_type == onnx.TensorProto.INT8 and init.dims)
        ort_int8_out, ort_int8 = _ort(quantized_path, inputs)
        _, ort_fp32 = _ort(float_path, inputs)
        fp32, fp32_bytes, _ = _relaycomp(float_model, inputs, folder, "fp32")
        int8, int8_bytes, out = _relaycomp(onnx.load(str(quantized_path)), inputs, folder, "int8")
    from relaycomp.quantize.guard import compare_outputs

    agreement = compare_outputs(ort_int8_out, out)
    top1, cosine = agreement.top1_agreement, agreement.cosine
    print(f"\n{name}: median ms, {THREADS} threads (ratio to onnxruntime int8), int8 weights "
          f"within ±{largest}")
    for label, ms in (("relaycomp int8", int8), ("relaycomp fp32", fp32),
                      ("onnxruntime int8", ort_int8), ("onnxruntime fp32", ort_fp32)):
        print(f"  {label:<18} {ms:8.2f} ms ({ms / ort_int8:5.2f}x)")
    print(f"  int8/fp32: relaycomp {int8 / fp32:.2f}x, onnxruntime {ort_int8 / ort_fp32:.2f}x")
    print(f"  artifact: int8 {int8_bytes / 1e6:.1f} MB, fp32 {fp32_bytes / 1e6:.1f} MB "
          f"({int8_bytes / fp32_bytes:.0%})")
    print(f"  relaycomp int8 vs onnxruntime int8: top-1 agreement {top1:.0%}, "
          f"cosine {cosine:.4f}")


def main(argv: list[str] | None = None) -> None:
    """``--model NAME`` (default: all in benchmarks/models), ``--quantized PATH`` to reuse a
    QDQ model (one per ``--model``) instead of quantizing with onnxruntime."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="resnet18, mobilenet_v2, ...")
    parser.add_argument("--quantized", action="append", type=Path)
    parser.add_argument("--full-range", action="store_true", help="8-bit weights")
    args = parser.parse_args(argv)
    from relaycomp.schedules.cpu.int8 import prefers_pair_safe_weights

    reduce_range = not args.full_range and prefers_pair_safe_weights(None)
    names = args.model or sorted(p.stem for p in MODELS_DIR.glob("*.onnx"))
    quantized = args.quantized or [None] * len(names)
    for name, q in zip(names, quantized, strict=True):
        bench(name, MODELS_DIR / f"{name}.onnx", q, reduce_range)


if __name__ == "__main__":
    main()

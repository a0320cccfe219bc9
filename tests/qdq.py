"""QDQ models as onnxruntime's quantizer writes them, and their onnxruntime reference outputs.

``ort_qdq(model)`` runs ``quant_pre_process`` (Conv+BN folding, as for any deployed model) and
``quantize_static(..., QuantFormat.QDQ, per_channel=True, activation_type=QUInt8)`` on random
calibration data - the "import an already-quantized ONNX model" path of the int8 pipeline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process


class _RandomBatches(CalibrationDataReader):
    def __init__(self, model: onnx.ModelProto, batches: int, seed: int):
        rng = np.random.default_rng(seed)
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                  for i in model.graph.input}
        self._batches = iter([{name: rng.standard_normal(shape).astype(np.float32)
                               for name, shape in shapes.items()} for _ in range(batches)])

    def get_next(self):
        return next(self._batches, None)


def ort_qdq(model: onnx.ModelProto, batches: int = 8, seed: int = 0,
            reduce_range: bool = False) -> onnx.ModelProto:
    """``model`` quantized by onnxruntime (QDQ, per-channel int8 weights, uint8 activations)."""
    with tempfile.TemporaryDirectory() as folder:
        float_path, pre_path, out_path = (Path(folder) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        onnx.save(model, float_path)
        quant_pre_process(str(float_path), str(pre_path), skip_symbolic_shape=True)
        quantize_static(str(pre_path), str(out_path), _RandomBatches(model, batches, seed),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        return onnx.load(str(out_path))


def ort_run(model: onnx.ModelProto, inputs: dict, optimized: bool = True) -> np.ndarray:
    """onnxruntime's first output. ``optimized=False`` runs the QDQ graph op by op (float
    compute between exact Q/DQ), ``True`` with its fused QLinear kernels."""
    options = onnxruntime.SessionOptions()
    if not optimized:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def output_scale(model: onnx.ModelProto) -> float:
    """The scale of the last QuantizeLinear: one quantization step of the graph's output."""
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"][-1]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(inits[quantize.input[1]].reshape(-1)[0])

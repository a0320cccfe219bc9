"""Intermediate tensors of an ONNX model on calibration data (for activation-based importance
and bias compensation)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from relaycomp.errors import CalibrationError


def run_with_intermediates(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                           names: list[str]) -> dict[str, np.ndarray]:
    """Run ``model`` in onnxruntime and return the tensors ``names`` (graph inputs included)."""
    try:
        import onnxruntime
    except ImportError:
        raise CalibrationError("the 'activation' criterion on an ONNX model runs it in "
                               "onnxruntime, which is not installed",
                               hint="pip install onnxruntime (or prune with --importance l2)"
                               ) from None

    exposed = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in exposed.graph.output}
    graph_inputs = {i.name for i in exposed.graph.input}
    for name in names:
        if name not in existing and name not in graph_inputs:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    wanted = [n for n in names if n not in graph_inputs]
    try:
        session = onnxruntime.InferenceSession(exposed.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        runs = [session.run(wanted, feed) for feed in _batches(exposed, inputs)]
        values = {n: np.concatenate([run[i] for run in runs]) for i, n in enumerate(wanted)}
    except Exception as err:  # onnxruntime raises its own exception types
        raise CalibrationError(f"running the model on the calibration data failed: {err}",
                               hint="check the calibration arrays' names, shapes and dtypes"
                               ) from err
    values.update({n: np.asarray(inputs[n]) for n in names if n in graph_inputs})
    return values


def _batches(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> list[dict]:
    """The calibration feed, split into the batch size the model declares (e.g. fixed 1)."""
    inputs = {name: np.asarray(value) for name, value in inputs.items()}
    declared = {v.name: v.type.tensor_type.shape.dim for v in model.graph.input}
    step = None
    for name, value in inputs.items():
        dims = declared.get(name)
        if dims and dims[0].HasField("dim_value") and value.ndim and value.shape[0] > 0:
            step = dims[0].dim_value
    total = min(value.shape[0] for value in inputs.values()) if inputs else 0
    if not step or step >= total or total % step:
        return [inputs]
    return [{name: value[i:i + step] for name, value in inputs.items()}
            for i in range(0, total, step)]

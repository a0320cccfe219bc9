"""What is in an ONNX model: ops, inputs/outputs, parameters, MACs, unsupported ops.

Shapes come from ONNX shape inference after pinning the inputs (symbolic dims default to 1), so
MACs are those of the compiled shapes.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from relaycomp import ir
from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decompose_graph, is_decomposable
from relaycomp.frontend.fold import fold_shape_subgraphs, static_shapes
from relaycomp.frontend.onnx_import import (
    TensorSpec,
    graph_inputs,
    opset_of,
    pin_input_shapes,
    set_input_shapes,
)
from relaycomp.frontend.qoperator import convert_qoperator, is_convertible


@dataclass
class ModelInfo:
    """Summary of one model."""

    opset: int
    inputs: list[TensorSpec]
    outputs: list[str]
    op_counts: dict[str, int]
    params: int
    param_bytes: int
    macs: int
    unsupported: list[str]  # "OpType (node 'name')"

    def to_json(self) -> dict:
        """JSON form for ``relaycomp inspect --json``."""
        return {"opset": self.opset, "inputs": [s.to_json() for s in self.inputs],
                "outputs": self.outputs, "op_counts": self.op_counts, "params": self.params,
                "param_bytes": self.param_bytes, "macs": self.macs,
                "unsupported": self.unsupported}


def _conv_macs(node, shapes) -> int:
    out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
    if out is None or weight is None:
        return 0
    return int(np.prod(out)) * int(np.prod(weight[1:]))


def _matmul_macs(node, shapes) -> int:
    a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
    if a is None or out is None:
        return 0
    attrs = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    k = a[-2] if attrs.get("transA", 0) else a[-1]
    return int(np.prod(out)) * int(k)


# op type -> MACs(node, static shapes); ops not listed count as zero MACs.
MAC_COUNTERS: dict[str, Callable] = {
    "Conv": _conv_macs, "ConvTranspose": _conv_macs, "MatMul": _matmul_macs, "Gemm": _matmul_macs,
}


def model_info(model: onnx.ModelProto,
               input_shapes: Mapping[str, Sequence[int]] | None = None) -> ModelInfo:
    """Inspect ``model`` at the given (or default) input shapes."""
    inputs, _ = pin_input_shapes(graph_inputs(model), dict(input_shapes or {}))
    pinned = onnx.ModelProto.FromString(model.SerializeToString())
    set_input_shapes(pinned, inputs)
    try:  # LSTM, Loop, sequences, ... into standard ops (their MACs count too)
        pinned, _ = decompose_graph(pinned, opset_of(model))
        decomposed = True
    except OnnxImportError:  # then they are listed as unsupported: compile would refuse them
        decomposed = False
    with contextlib.suppress(OnnxImportError):  # a quantized op without a conversion is listed
        convert_qoperator(pinned)
    folded, _ = fold_shape_subgraphs(pinned, opset_of(model))
    shapes = static_shapes(folded)
    shapes.update({i.name: tuple(i.dims) for i in folded.graph.initializer})
    macs = sum(MAC_COUNTERS[n.op_type](n, shapes) for n in folded.graph.node
               if n.op_type in MAC_COUNTERS)
    supported = ir.supported_onnx_ops()
    unsupported = [f"{n.op_type} (node '{n.name or n.output[0]}')" for n in model.graph.node
                   if (n.op_type not in supported or n.domain not in ("", "ai.onnx"))
                   and not is_convertible(n) and not (decomposed and is_decomposable(n))]
    params = [init for init in model.graph.initializer]
    return ModelInfo(
        opset=opset_of(model), inputs=inputs, outputs=[o.name for o in model.graph.output],
        op_counts=dict(Counter(n.op_type for n in model.graph.node).most_common()),
        params=sum(int(np.prod(p.dims)) for p in params),
        param_bytes=sum(int(np.prod(p.dims)) * helper.tensor_dtype_to_np_dtype(p.data_type)
                        .itemsize for p in params),
        macs=macs, unsupported=unsupported,
    )

"""The ONNX names of a model's weight layers, to name the matching Relax layers after them."""

from __future__ import annotations

import onnx

WEIGHT_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def onnx_layer_names(model: onnx.ModelProto, ops: tuple[str, ...] = WEIGHT_LAYER_OPS,
                     ) -> list[str]:
    """Names of the ``ops`` nodes whose weight (second input) is a constant (an initializer
    or a ``Constant`` node), in graph order: the layers of the imported Relax module that
    quantization and pruning find, one to one. A node without a name is named by its output."""
    constants = {t.name for t in model.graph.initializer} | {
        n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [node.name or node.output[0] for node in model.graph.node
            if node.op_type in ops and len(node.input) > 1 and node.input[1] in constants]

"""OneHot in standard ops: ``Where(Unsqueeze(indices, axis) == range(depth), on, off)``.

TVM's converter wants ``values`` as a constant it can read (it refuses initializers it holds
as parameters) and leaves out-of-range indices to its kernel. Here ``depth`` must be known at
compile time (it sets the output shape); indices may be any numeric type (cast to int64, as
ONNX truncates them), negative ones count from ``depth``, and an index outside
``[-depth, depth)`` gives a row of off values, as ONNX specifies.
"""

from __future__ import annotations

import numpy as np
import onnx

from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decomposition, describe
from relaycomp.frontend.decompose.builder import GraphBuilder, attributes


@decomposition("", "OneHot")
def decompose_one_hot(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """OneHot-9/11 with a compile-time depth."""
    indices, depth_name, values = node.input[:3]
    depth_value = b.constant(depth_name)
    if depth_value is None or depth_value.size != 1:
        raise OnnxImportError(f"node {describe(node)}: its depth ('{depth_name}') must be known "
                              "at compile time", hint="make it a constant in the model")
    depth = int(depth_value.reshape(()))
    rank = len(b.shape(indices, node))
    axis = int(attributes(node).get("axis", -1))
    axis = axis + rank + 1 if axis < 0 else axis
    index = b.op("Cast", [indices], to=onnx.TensorProto.INT64)
    if b.opset >= 11:  # negative indices count from the end since OneHot-11
        negative = b.op("Less", [index, b.const(np.array(0, np.int64), hint="zero")])
        index = b.op("Where", [negative, b.op("Add", [index, b.const(np.array(depth, np.int64),
                                                                    hint="depth")]), index])
    classes = np.arange(depth, dtype=np.int64).reshape([depth] + [1] * (rank - axis))
    hot = b.op("Equal", [b.op("Unsqueeze", [index, b.const([axis], np.int64, "axes")]),
                         b.const(classes, hint="classes")])
    off, on = (b.op("Squeeze", [b.op("Slice", [values, b.const([i], np.int64, "start"),
                                               b.const([i + 1], np.int64, "end")]),
                                b.const([0], np.int64, "axes")]) for i in (0, 1))
    b.op("Where", [hot, on, off], [node.output[0]])

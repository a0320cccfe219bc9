"""Fully masked rows: ``Equal(ReduceMax(bias), -inf)``, the test ONNX's Attention makes.

TVM's max reduction starts from the lowest finite float, not -inf, so the maximum of a row
holding only -inf comes out as -3.4e38 and the test is false: ONNX's Attention body (and
exports that follow it) then let the NaN of that row's softmax through, where onnxruntime and
ONNX's reference give zeros. The test is rewritten as "every element is -inf" (a min over 0/1
flags, which TVM computes exactly); the ReduceMax itself and its other users are left alone.
A reduction of a zero-size tensor is not matched (``patch_nodes`` makes those constants first).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from relaycomp.frontend.patch_ops import elem_types


def patch_masked_rows(model: onnx.ModelProto) -> int:
    """Rewrite every ``Equal(ReduceMax(x), -inf)`` of ``model`` in place; returns how many."""
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    types = elem_types(model)
    nodes, changed = [], 0
    for node in graph.node:
        match = _masked_row_test(node, producers, constants)
        if match is None or types.get(match[0].input[0]) is None:
            nodes.append(node)
            continue
        reduce, bound = match
        nodes += _all_negative_infinity(node, reduce, bound, types[reduce.input[0]], graph)
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def _masked_row_test(node, producers, constants):
    """(the ReduceMax node, the -inf operand's shape) when ``node`` is the test, else None."""
    if node.op_type != "Equal" or len(node.input) != 2:
        return None
    for reduced, other in (node.input, reversed(node.input)):
        reduce = producers.get(reduced)
        value = _constant(other, producers, constants)
        if (reduce is not None and reduce.op_type == "ReduceMax" and value is not None
                and value.dtype.kind == "f" and value.size
                and np.all(np.isneginf(value.astype(np.float64)))):
            return reduce, value.shape
    return None


def _constant(name: str, producers, constants) -> np.ndarray | None:
    """The value of an initializer, seen through Cast/CastLike/Identity (an -inf cast to the
    bias's type, as the Attention body writes it); None for anything else."""
    for _ in range(8):
        if name in constants:
            return constants[name]
        producer = producers.get(name)
        if producer is None or producer.op_type not in ("Cast", "CastLike", "Identity"):
            return None
        name = producer.input[0]
    return None


def _all_negative_infinity(node, reduce, bound_shape, elem_type: int, graph) -> list:
    """``ReduceMin(Cast(Equal(x, -inf), float)) == 1`` over the ReduceMax's axes."""
    out = node.output[0]
    names = {k: f"{out}__masked_{k}" for k in ("neginf", "flags", "floats", "min", "one", "x")}
    x, cast = reduce.input[0], []
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    if dtype.itemsize < 4:  # a half compare fails TVM's vectorized codegen; -inf stays -inf
        cast = [helper.make_node("Cast", [x], [names["x"]], to=onnx.TensorProto.FLOAT)]
        x, dtype = names["x"], np.dtype(np.float32)
    for key, value in (("neginf", np.array(-np.inf, dtype)),
                       ("one", np.ones(bound_shape, np.float32))):
        graph.initializer.append(numpy_helper.from_array(value, names[key]))
    minimum = onnx.NodeProto()
    minimum.CopyFrom(reduce)
    minimum.op_type, minimum.name = "ReduceMin", f"{out}__masked_reduce"
    minimum.input[0] = names["floats"]
    del minimum.output[:]
    minimum.output.append(names["min"])
    return cast + [helper.make_node("Equal", [x, names["neginf"]], [names["flags"]]),
            helper.make_node("Cast", [names["flags"]], [names["floats"]],
                             to=onnx.TensorProto.FLOAT),
            minimum,
            helper.make_node("Equal", [names["min"], names["one"]], [out], name=node.name)]

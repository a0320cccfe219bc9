"""MatMulInteger and ConvInteger (``quantize_dynamic``'s ops, int32 out) as QDQ-lowerable graphs.

``(x - z_x) * (W - z_w)`` summed in int32 is the op's definition. With a constant weight whose
shifted values ``W - z_w`` fit int8, and a scalar ``z_x`` (DynamicQuantizeLinear's), it becomes

    Cast(Conv(DQ(x, 1, 0), DQ(W - z_w, 1, 0)) - z_x * S, int32)

where ``S`` is the sum of the weights each output position sees (``colsum(W)`` for a MatMul, a
border-aware constant for a padded conv: padding belongs to ``x - z_x``, so it adds no ``z_x``).
``lower_qdq_to_integer`` turns the contraction into a uint8/int8 x int8 kernel. float32 holds
every partial sum exactly when ``K * 255 * max|W - z_w|`` < 2^24; beyond that ConvInteger sums
in float64 and MatMulInteger is left to TVM's own (int32) converter. Other forms (runtime
weights, unknown shapes) take the exact float path without the integer kernel.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from relaycomp.frontend.qgraph import (
    CONVERTERS,
    QGraph,
    append_dequantize,
    append_op,
    attributes,
    input_at,
)

# Sums of integers below this are exact in float32.
FLOAT32_EXACT = 2**24


def _shifted_weight(graph: QGraph, weight: str, zero_point: str, axis: int) -> np.ndarray | None:
    """``W - z_w`` (int64) of a constant weight with a constant zero point, else ``None``."""
    value = graph.constant(weight)
    zero = graph.constant(zero_point) if zero_point else np.zeros(1, np.int64)
    if value is None or zero is None:
        return None
    shape = [1] * value.ndim
    if zero.size > 1:
        shape[axis] = -1
    return value.astype(np.int64) - zero.astype(np.int64).reshape(shape)


def _exact_in_float32(shifted: np.ndarray, reduced: int) -> bool:
    """Whether ``reduced`` products |x - z_x| <= 255 by ``shifted`` always sum below 2^24."""
    return reduced * 255 * int(np.abs(shifted).max(initial=0)) < FLOAT32_EXACT


def _fits_int8(shifted: np.ndarray) -> bool:
    return shifted.min(initial=0) >= -128 and shifted.max(initial=0) <= 127


def _subtract_zero_point(node, graph: QGraph, nodes: list, product: str, zero_point: str,
                         sums: np.ndarray) -> str:
    """``product - z_x * sums`` (``sums`` broadcast to the product)."""
    if not zero_point:
        return product
    zero = append_op(node, graph, nodes, "Cast", [zero_point], to=TensorProto.FLOAT)
    sums_name = graph.add_constant(sums.astype(np.float32), f"{node.name}_weight_sums")
    correction = append_op(node, graph, nodes, "Mul", [zero, sums_name])
    return append_op(node, graph, nodes, "Sub", [product, correction])


def _int32(node, graph: QGraph, nodes: list, value: str) -> list:
    nodes.append(helper.make_node("Cast", [value], [node.output[0]],
                                  name=graph.fresh(f"{node.name}_int32"), to=TensorProto.INT32))
    return nodes


def _integer_operands(node, graph: QGraph, nodes: list, data: str, shifted: np.ndarray):
    one = graph.add_constant(np.float32(1.0), f"{node.name}_unit_scale")
    weight = graph.add_constant(shifted.astype(np.int8), f"{node.input[1]}_int8")
    return [append_dequantize(node, graph, nodes, data, one, ""),
            append_dequantize(node, graph, nodes, weight, one, "")]


@CONVERTERS.register("MatMulInteger")
def _matmul_integer(node, graph: QGraph) -> list:
    a, b, z_a, z_b = (input_at(node, i) for i in range(4))
    shifted = _shifted_weight(graph, b, z_b, -1)
    if (shifted is None or shifted.ndim != 2 or not _fits_int8(shifted)
            or z_a and not graph.is_scalar(z_a)
            or not _exact_in_float32(shifted, shifted.shape[0])):
        return [node]  # TVM's MatMulInteger: int32, exact
    nodes: list = []
    product = append_op(node, graph, nodes, "MatMul",
                        _integer_operands(node, graph, nodes, a, shifted))
    product = _subtract_zero_point(node, graph, nodes, product, z_a, shifted.sum(axis=0))
    return _int32(node, graph, nodes, product)


def _window_sums(node, shifted: np.ndarray, data_shape: tuple[int, ...]) -> np.ndarray:
    """The sum of the weights each output position of the conv sees over in-bounds inputs:
    the conv of a ones image (batch 1), so padding contributes nothing."""
    ones = np.ones((1, *data_shape[1:]), np.float64)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], **attributes(node))
    graph = helper.make_graph(
        [conv], "sums", [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None)
                         for n in ("x", "w")],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, {"x": ones, "w": shifted.astype(np.float64)})[0]


@CONVERTERS.register("ConvInteger")
def _conv_integer(node, graph: QGraph) -> list:
    x, w, z_x, z_w = (input_at(node, i) for i in range(4))
    shifted = _shifted_weight(graph, w, z_w, 0)
    data_shape = graph.static_shape(x)
    reduced = None if shifted is None else int(np.prod(shifted.shape[1:]))
    nodes: list = []
    if (shifted is not None and data_shape is not None and _fits_int8(shifted)
            and (not z_x or graph.is_scalar(z_x)) and _exact_in_float32(shifted, reduced)):
        conv = append_op(node, graph, nodes, "Conv",
                         _integer_operands(node, graph, nodes, x, shifted), **attributes(node))
        sums = _window_sums(node, shifted, data_shape) if z_x else None
        return _int32(node, graph, nodes, _subtract_zero_point(node, graph, nodes, conv, z_x,
                                                               sums))
    # The shifted integers themselves (zero padding of x - z_x, as the op defines), summed in
    # float32 when provably exact, else in float64.
    one = graph.add_constant(np.float32(1.0), f"{node.name}_unit_scale")
    axis = None if not z_w or graph.is_scalar(z_w) else 0
    inputs = [append_dequantize(node, graph, nodes, x, one, z_x),
              append_dequantize(node, graph, nodes, w, one, z_w, axis)]
    if shifted is None or not _exact_in_float32(shifted, reduced):
        inputs = [append_op(node, graph, nodes, "Cast", [i], to=TensorProto.DOUBLE)
                  for i in inputs]
    conv = append_op(node, graph, nodes, "Conv", inputs, **attributes(node))
    return _int32(node, graph, nodes, conv)


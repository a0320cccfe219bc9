"""Rewrite onnxruntime's QOperator-format ops into the QDQ form the int8 pipeline lowers.

``quantize_static(..., quant_format=QuantFormat.QOperator)`` writes fused integer ops (QLinearConv,
QLinearMatMul, com.microsoft QGemm/QLinearAdd/QLinearGlobalAveragePool/...) that the Relax
importer mostly cannot translate; ``quantize_dynamic`` writes MatMulInteger/ConvInteger. Each is
rewritten, before import, into its exact QDQ equivalent::

    QLinearConv(x_q, s_x, z_x, W_q, s_w, z_w, s_y, z_y, B)
      -> QuantizeLinear(Conv(DequantizeLinear(x_q), DequantizeLinear(W_q, axis=0), B_f), s_y, z_y)

Guarantees:

- integer weights stay int8 initializers behind a ``DequantizeLinear`` (per-channel axis kept), so
  ``lower_qdq_to_integer`` turns the float op back into an integer kernel;
- an int32 bias (scale ``s_x * s_w``, zero point 0) becomes the float bias ``B * s_x * s_w``,
  computed in float64 and rounded once;
- MatMulInteger/ConvInteger (int32 out, :mod:`relaycomp.frontend.qoperator_integer`) stay exact;
- every output keeps its name and integer dtype; a quantized op without a converter is an
  :class:`OnnxImportError` naming the op and node.

Converters live in :data:`CONVERTERS`, keyed by op type: ``convert(node, graph) -> [nodes]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from relaycomp.errors import OnnxImportError
from relaycomp.frontend import qoperator_integer  # noqa: F401 - registers the integer ops
from relaycomp.frontend.qgraph import (
    CONVERTERS,
    Converter,
    QGraph,
    append_dequantize,
    append_op,
    attributes,
    input_at,
)


def _quantize(node, graph: QGraph, nodes: list, data: str, scale: str, zero_point: str) -> None:
    """Append ``QuantizeLinear(data) -> node.output[0]`` (the QOperator op's own output name)."""
    inputs = [data, scale] + ([zero_point] if zero_point else [])
    nodes.append(helper.make_node("QuantizeLinear", inputs, [node.output[0]],
                                  name=graph.fresh(f"{node.name}_q")))


def _weight_axis(graph: QGraph, scale: str, axis: int) -> int | None:
    """``axis`` for a per-channel weight scale, ``None`` for a per-tensor one."""
    value = graph.constant(scale)
    return None if value is None or value.size == 1 else axis


def _float_bias(node, graph: QGraph, bias: str, input_scale: str, weight_scale: str) -> str:
    """The int32 bias (scale ``s_x * s_w``, zero point 0) as float32 ``B * s_x * s_w``."""
    values = [graph.constant(name) for name in (bias, input_scale, weight_scale)]
    if any(v is None for v in values):
        raise OnnxImportError(
            f"{node.op_type} node '{node.name}': its bias and scales must be initializers")
    b, s_x, s_w = (v.astype(np.float64) for v in values)
    return graph.add_constant((b * s_x.reshape(-1)[0] * s_w.reshape(-1)).astype(np.float32),
                              f"{bias}_float")


# --- ai.onnx and com.microsoft QLinear ops ----------------------------------------------------

@CONVERTERS.register("QLinearConv")
def _qlinear_conv(node, graph: QGraph) -> list:
    x, s_x, z_x, w, s_w, z_w, s_y, z_y = (input_at(node, i) for i in range(8))
    _refuse_channels_last(node)
    nodes: list = []
    inputs = [append_dequantize(node, graph, nodes, x, s_x, z_x),
              append_dequantize(node, graph, nodes, w, s_w, z_w, _weight_axis(graph, s_w, 0))]
    if input_at(node, 8):
        inputs.append(_float_bias(node, graph, input_at(node, 8), s_x, s_w))
    attrs = attributes(node, drop=("channels_last",))
    conv = append_op(node, graph, nodes, "Conv", inputs, **attrs)
    _quantize(node, graph, nodes, conv, s_y, z_y)
    return nodes


@CONVERTERS.register("QLinearMatMul")
def _qlinear_matmul(node, graph: QGraph) -> list:
    a, s_a, z_a, b, s_b, z_b, s_y, z_y = (input_at(node, i) for i in range(8))
    if graph.elem_type(s_a) not in (None, onnx.TensorProto.FLOAT):
        return _qlinear_matmul_exact(node, graph)
    nodes: list = []
    inputs = [append_dequantize(node, graph, nodes, a, s_a, z_a),
              append_dequantize(node, graph, nodes, b, s_b, z_b, _weight_axis(graph, s_b, -1))]
    _quantize(node, graph, nodes, append_op(node, graph, nodes, "MatMul", inputs), s_y, z_y)
    return nodes


def _qlinear_matmul_exact(node, graph: QGraph) -> list:
    """QLinearMatMul with float16/bfloat16 scales, as ONNX defines it: the int32 product of the
    shifted operands times the multiplier ``s_a * s_b / s_y`` computed in the scales' own type
    (dequantizing to float16 first would round every operand: a step off onnxruntime), then
    rounded half to even in float64, shifted by ``z_y`` and saturated."""
    a, s_a, z_a, b, s_b, z_b, s_y, z_y = (input_at(node, i) for i in range(8))
    nodes: list = []
    operands = []
    for data, zero_point in ((a, z_a), (b, z_b)):
        value = append_op(node, graph, nodes, "Cast", [data], to=onnx.TensorProto.INT32)
        if zero_point:
            zero = append_op(node, graph, nodes, "Cast", [zero_point], to=onnx.TensorProto.INT32)
            value = append_op(node, graph, nodes, "Sub", [value, zero])
        operands.append(value)
    product = append_op(node, graph, nodes, "MatMul", operands)
    multiplier = append_op(node, graph, nodes, "Div",
                           [append_op(node, graph, nodes, "Mul", [s_a, s_b]), s_y])
    scaled = append_op(node, graph, nodes, "Mul", [
        append_op(node, graph, nodes, "Cast", [product], to=onnx.TensorProto.DOUBLE),
        append_op(node, graph, nodes, "Cast", [multiplier], to=onnx.TensorProto.DOUBLE)])
    out_type = graph.elem_type(z_y or a)
    if z_y:
        shift = append_op(node, graph, nodes, "Cast", [z_y], to=onnx.TensorProto.DOUBLE)
        scaled = append_op(node, graph, nodes, "Add", [scaled, shift])
    limits = np.iinfo(helper.tensor_dtype_to_np_dtype(out_type))
    low = graph.add_constant(np.float64(limits.min), f"{node.name}_qmin")
    high = graph.add_constant(np.float64(limits.max), f"{node.name}_qmax")
    rounded = append_op(node, graph, nodes, "Round", [scaled])
    clipped = append_op(node, graph, nodes, "Clip", [rounded, low, high])
    nodes.append(helper.make_node("Cast", [clipped], [node.output[0]],
                                  name=graph.fresh(f"{node.name}_cast"), to=out_type))
    return nodes


@CONVERTERS.register("QGemm")
def _qgemm(node, graph: QGraph) -> list:
    a, s_a, z_a, b, s_b, z_b, c, s_y, z_y = (input_at(node, i) for i in range(9))
    attrs = attributes(node)
    if attrs.get("alpha", 1.0) != 1.0:
        raise OnnxImportError(f"QGemm node '{node.name}' has alpha={attrs['alpha']}: only "
                              "alpha=1 (what onnxruntime's quantizer writes) is supported")
    nodes: list = []
    trans_b = attrs.get("transB", 0)
    inputs = [append_dequantize(node, graph, nodes, a, s_a, z_a),
              append_dequantize(node, graph, nodes, b, s_b, z_b,
                                _weight_axis(graph, s_b, 0 if trans_b else 1))]
    if c:
        inputs.append(_float_bias(node, graph, c, s_a, s_b))
    gemm = append_op(node, graph, nodes, "Gemm", inputs, transA=attrs.get("transA", 0),
                     transB=trans_b)
    if s_y:
        _quantize(node, graph, nodes, gemm, s_y, z_y)
    else:  # without an output scale QGemm returns float
        nodes.append(helper.make_node("Identity", [gemm], [node.output[0]],
                                      name=graph.fresh(node.name)))
    return nodes


def _refuse_channels_last(node) -> None:
    if attributes(node).get("channels_last", 0):
        raise OnnxImportError(f"{node.op_type} node '{node.name}' is channels_last (NHWC): only "
                              "NCHW (channels_last=0) is supported")


def _binary(float_op: str) -> Converter:
    def convert(node, graph: QGraph) -> list:
        a, s_a, z_a, b, s_b, z_b, s_y, z_y = (input_at(node, i) for i in range(8))
        nodes: list = []
        inputs = [append_dequantize(node, graph, nodes, a, s_a, z_a),
                  append_dequantize(node, graph, nodes, b, s_b, z_b)]
        _quantize(node, graph, nodes, append_op(node, graph, nodes, float_op, inputs), s_y, z_y)
        return nodes

    return convert


def _unary(float_op: str, keep: Sequence[str] = ()) -> Converter:
    """X, s_x, z_x, s_y, z_y -> Q(float_op(DQ(X))); ``keep`` names the attributes passed on."""

    def convert(node, graph: QGraph) -> list:
        x, s_x, z_x, s_y, z_y = (input_at(node, i) for i in range(5))
        _refuse_channels_last(node)
        attrs = attributes(node)
        nodes: list = []
        kept = {name: value for name, value in attrs.items() if name in keep}
        out = append_op(node, graph, nodes, float_op,
                        [append_dequantize(node, graph, nodes, x, s_x, z_x)], **kept)
        _quantize(node, graph, nodes, out, s_y, z_y)
        return nodes

    return convert


CONVERTERS.add("QLinearAdd", _binary("Add"))
CONVERTERS.add("QLinearMul", _binary("Mul"))
CONVERTERS.add("QLinearGlobalAveragePool", _unary("GlobalAveragePool"))
CONVERTERS.add("QLinearAveragePool", _unary("AveragePool", (
    "auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")))
CONVERTERS.add("QLinearLeakyRelu", _unary("LeakyRelu", ("alpha",)))
CONVERTERS.add("QLinearSigmoid", _unary("Sigmoid"))


@CONVERTERS.register("QLinearSoftmax")
def _qlinear_softmax(node, graph: QGraph) -> list:
    attrs = attributes(node)
    axis = attrs.get("axis", -1)
    if attrs.get("opset", 13) < 13 and axis != -1:
        # Softmax before opset 13 flattens from ``axis``: only the last axis means the same.
        raise OnnxImportError(f"QLinearSoftmax node '{node.name}': opset<13 semantics with "
                              f"axis={axis} are not supported (axis=-1 is)")
    x, s_x, z_x, s_y, z_y = (input_at(node, i) for i in range(5))
    nodes: list = []
    out = append_op(node, graph, nodes, "Softmax",
                    [append_dequantize(node, graph, nodes, x, s_x, z_x)], axis=axis)
    _quantize(node, graph, nodes, out, s_y, z_y)
    return nodes


@CONVERTERS.register("QLinearConcat")
def _qlinear_concat(node, graph: QGraph) -> list:
    s_y, z_y, *triples = node.input
    nodes: list = []
    inputs = [append_dequantize(node, graph, nodes, *triples[i:i + 3])
              for i in range(0, len(triples), 3)]
    concat = append_op(node, graph, nodes, "Concat", inputs, axis=attributes(node)["axis"])
    _quantize(node, graph, nodes, concat, s_y, z_y)
    return nodes


def _standard_domain(node, graph: QGraph) -> list:
    """com.microsoft Quantize/DequantizeLinear on 8-bit types are the standard ops."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.domain = ""
    return [copy]


CONVERTERS.add("QuantizeLinear", _standard_domain)
CONVERTERS.add("DequantizeLinear", _standard_domain)


# --- the rewrite ------------------------------------------------------------------------------

# Standard-domain ops the importer takes as they are (same names as com.microsoft ones).
_NATIVE = frozenset({"QuantizeLinear", "DequantizeLinear"})


def is_convertible(node: onnx.NodeProto) -> bool:
    """Whether :func:`convert_qoperator` rewrites ``node`` (QLinearConv, QGemm, ...)."""
    if node.op_type not in CONVERTERS:
        return False
    return node.domain == "com.microsoft" or node.op_type not in _NATIVE


# onnxruntime's other contrib ops on quantized tensors: named in an error, never passed on.
_QUANTIZED_CONTRIB = frozenset({
    "QAttention", "QEmbedLayerNormalization", "QMoE", "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "QuantizeBFP",
    "DequantizeBFP"})


def _is_quantized_op(node: onnx.NodeProto) -> bool:
    """A com.microsoft op working on quantized tensors (QAttention, QLinearWhere, ...)."""
    op = node.op_type
    return node.domain == "com.microsoft" and (
        op.startswith(("QLinear", "QOrdered")) or op in _QUANTIZED_CONTRIB or op in CONVERTERS)


def convert_qoperator(model: onnx.ModelProto) -> Counter:
    """Rewrite every QOperator/integer op of ``model`` in place into QDQ form (see the module
    docstring); returns how many nodes of each op type were converted."""
    graph = QGraph(model)
    unsupported = [n for n in model.graph.node if _is_quantized_op(n) and not is_convertible(n)]
    if unsupported:
        listed = "; ".join(f"{n.op_type} (node '{n.name or n.output[0]}')" for n in unsupported)
        raise OnnxImportError(
            f"{len(unsupported)} quantized op(s) without a QDQ conversion: {listed}",
            hint=f"supported QOperator ops: {', '.join(sorted(CONVERTERS.names()))}")
    converted: Counter = Counter()
    nodes = []
    for node in model.graph.node:
        if not is_convertible(node):
            nodes.append(node)
            continue
        if not node.name:  # converters name the nodes they write after it
            node.name = graph.fresh(node.output[0])
        replacement = CONVERTERS.get(node.op_type)(node, graph)
        if replacement != [node]:
            converted[node.op_type] += 1
        nodes.extend(replacement)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return converted


# The integer-output converters (quantize_dynamic) register themselves into CONVERTERS.
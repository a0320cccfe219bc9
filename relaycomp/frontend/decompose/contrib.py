"""onnxruntime's common com.microsoft ops (as its transformer optimizer writes them) in
standard ops: Gelu, BiasGelu, FastGelu, QuickGelu, FusedMatMul,
SkipLayerNormalization, SkipSimplifiedLayerNormalization, and SimplifiedLayerNormalization
(registered by onnxruntime in the default domain). Semantics are onnxruntime's contrib kernels';
normalizations of float16/bfloat16 inputs compute in float32, as onnxruntime's do.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decomposition, describe
from relaycomp.frontend.decompose.builder import GraphBuilder, attributes

MS = "com.microsoft"
HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _inputs(node: onnx.NodeProto, count: int) -> list[str]:
    return list(node.input) + [""] * (count - len(node.input))


def _scalar(b: GraphBuilder, like: str, value: float) -> str:
    return b.const(np.array(value, b.np_dtype(like)), hint="c")


def _gelu(b: GraphBuilder, x: str, typed: str, output: str) -> None:
    """0.5 * x * (1 + erf(x / sqrt(2))); ``typed`` is a graph value of x's element type."""
    inner = b.op("Erf", [b.op("Mul", [x, _scalar(b, typed, 1 / math.sqrt(2))])])
    half = b.op("Mul", [x, _scalar(b, typed, 0.5)])
    b.op("Mul", [half, b.op("Add", [inner, _scalar(b, typed, 1.0)])], [output])


@decomposition(MS, "Gelu")
def decompose_gelu(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Exact GELU."""
    _gelu(b, node.input[0], node.input[0], node.output[0])


@decomposition(MS, "BiasGelu")
def decompose_bias_gelu(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """GELU(A + bias)."""
    _gelu(b, b.op("Add", list(node.input[:2])), node.input[0], node.output[0])


@decomposition(MS, "FastGelu")
def decompose_fast_gelu(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """The tanh approximation of GELU, of X (+ bias)."""
    x, bias = _inputs(node, 2)[:2]
    if bias:
        x = b.op("Add", [x, bias])
    cubed = b.op("Mul", [b.op("Mul", [x, x]), x])
    inner = b.op("Add", [x, b.op("Mul", [cubed, _scalar(b, node.input[0], 0.044715)])])
    tanh = b.op("Tanh", [b.op("Mul", [inner, _scalar(b, node.input[0], math.sqrt(2 / math.pi))])])
    half = b.op("Mul", [x, _scalar(b, node.input[0], 0.5)])
    b.op("Mul", [half, b.op("Add", [tanh, _scalar(b, node.input[0], 1.0)])], [node.output[0]])


@decomposition(MS, "QuickGelu")
def decompose_quick_gelu(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """x * sigmoid(alpha * x)."""
    x = node.input[0]
    alpha = float(attributes(node).get("alpha", 1.702))
    gate = b.op("Sigmoid", [b.op("Mul", [x, _scalar(b, x, alpha)])])
    b.op("Mul", [x, gate], [node.output[0]])


@decomposition(MS, "FusedMatMul")
def decompose_fused_matmul(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """alpha * op(A) @ op(B), op a transpose of the last two axes when transA/transB."""
    attrs = attributes(node)
    if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
        raise OnnxImportError(f"node {describe(node)}: FusedMatMul with transBatchA/B is not "
                              "supported")
    operands = []
    for name, flag in zip(node.input[:2], ("transA", "transB")):
        if attrs.get(flag, 0):
            rank = len(b.shape(name, node))
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            name = b.op("Transpose", [name], perm=perm)
        operands.append(name)
    alpha = float(attrs.get("alpha", 1.0))
    if alpha == 1.0:
        b.op("MatMul", operands, [node.output[0]])
    else:
        b.op("Mul", [b.op("MatMul", operands), _scalar(b, node.input[0], alpha)],
             [node.output[0]])


def _normalize(node: onnx.NodeProto, b: GraphBuilder, x: str, scale: str, bias: str,
               epsilon: float, axis: int, centered: bool,
               outputs: dict[str, str]) -> None:
    """(x - mean) / sqrt(var + eps) * scale + bias over axes axis..-1 (RMS when not
    ``centered``); ``outputs`` maps "y", "mean", "inv_std" to output names (empty: unused)."""
    rank = len(b.shape(node.input[0], node))  # x may be new: its type is the node input's
    axes = list(range(axis % rank, rank))
    elem_type = b.elem_type(node.input[0])
    half = elem_type in HALF_TYPES
    if half:
        x = b.op("Cast", [x], to=onnx.TensorProto.FLOAT)
    mean = b.op("ReduceMean", [x, b.const(axes, np.int64, "axes")], keepdims=1)
    centred = b.op("Sub", [x, mean]) if centered else x
    variance = b.op("ReduceMean", [b.op("Mul", [centred, centred]),
                                   b.const(axes, np.int64, "axes")], keepdims=1)
    inv_std = b.op("Reciprocal", [b.op("Sqrt", [
        b.op("Add", [variance, b.const(np.array(epsilon, np.float32), hint="eps")])])])
    y = b.op("Mul", [centred, inv_std])
    if half:
        y = b.op("Cast", [y], to=elem_type)
    y = b.op("Mul", [y, scale])
    if bias:
        y = b.op("Add", [y, bias])
    b.identity(y, outputs["y"])
    for key, value in (("mean", mean), ("inv_std", inv_std)):
        if outputs.get(key):  # onnxruntime keeps these in float32
            b.identity(value, outputs[key])


def _skip_sum(node: onnx.NodeProto, b: GraphBuilder, bias_index: int) -> str:
    inputs = _inputs(node, bias_index + 1)
    total = b.op("Add", inputs[:2])
    return b.op("Add", [total, inputs[bias_index]]) if inputs[bias_index] else total


@decomposition(MS, "SkipLayerNormalization")
def decompose_skip_layer_normalization(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """LayerNorm(input + skip + bias) over the last axis."""
    inputs, outputs = _inputs(node, 5), list(node.output) + [""] * 3
    total = _skip_sum(node, b, 4)
    epsilon = float(attributes(node).get("epsilon", 1e-12))
    _normalize(node, b, total, inputs[2], inputs[3], epsilon, -1, True,
               {"y": outputs[0], "mean": outputs[1], "inv_std": outputs[2]})
    if outputs[3]:
        b.identity(total, outputs[3])


@decomposition(MS, "SkipSimplifiedLayerNormalization")
def decompose_skip_simplified_layer_normalization(node: onnx.NodeProto,
                                                  b: GraphBuilder) -> None:
    """RMSNorm(input + skip + bias) over the last axis."""
    inputs, outputs = _inputs(node, 4), list(node.output) + [""] * 3
    if outputs[1]:
        raise OnnxImportError(f"node {describe(node)}: its 'mean' output is unused by "
                              "onnxruntime's kernel and has no defined value")
    total = _skip_sum(node, b, 3)
    epsilon = float(attributes(node).get("epsilon", 1e-12))
    _normalize(node, b, total, inputs[2], "", epsilon, -1, False,
               {"y": outputs[0], "mean": outputs[1], "inv_std": outputs[2]})
    if outputs[3]:
        b.identity(total, outputs[3])


@decomposition("", "SimplifiedLayerNormalization")
def decompose_simplified_layer_normalization(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """RMSNorm over axes ``axis``..-1 (onnxruntime's op in the default domain)."""
    attrs = attributes(node)
    outputs = list(node.output) + [""] * 2
    _normalize(node, b, node.input[0], node.input[1], "", float(attrs.get("epsilon", 1e-5)),
               int(attrs.get("axis", -1)), False,
               {"y": outputs[0], "inv_std": outputs[1]})

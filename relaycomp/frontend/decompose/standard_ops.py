"""Standard ops TVM's importer lacks or gets partly wrong, in simpler standard ops.

- ``IsInf`` with ``detect_positive``/``detect_negative`` (TVM's converter ignores both):
  ``x == +inf`` / ``x == -inf``, or-ed.
- ``LpNormalization`` (p 1 or 2): ``x / norm(x)`` along ``axis`` (0 where the norm is 0, as
  onnxruntime and ONNX's reference give).
- ``ReverseSequence``: a ``GatherElements`` along the time axis with the index
  ``len - 1 - t`` for ``t < len`` (per batch entry; lengths may be run-time values), ``t``
  beyond it.
- ``SpaceToDepth`` in both modes (DCR, and CRD of opset 28, which the converter ignores):
  Reshape, Transpose, Reshape.
- ``LpPool`` (the converter ignores strides): ``(sum over the window of |x|^p)^(1/p)`` as a
  depthwise Conv with a kernel of ones (strides, pads, auto_pad, dilations); ``ceil_mode`` is
  refused.
"""

from __future__ import annotations

import numpy as np
import onnx

from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decomposition, describe
from relaycomp.frontend.decompose.builder import GraphBuilder, attributes


@decomposition("", "IsInf")
def decompose_is_inf(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """``(x == +inf if detect_positive) or (x == -inf if detect_negative)``."""
    attrs = attributes(node)
    x = node.input[0]
    dtype = b.np_dtype(x)
    tests = [b.op("Equal", [x, b.const(np.array(sign * np.inf, dtype), hint="inf")])
             for sign, flag in ((1, "detect_positive"), (-1, "detect_negative"))
             if attrs.get(flag, 1)]
    if not tests:  # neither sign: all false
        b.op("Equal", [x, b.const(np.array(np.nan, dtype), hint="nan")], [node.output[0]])
    elif len(tests) == 1:
        b.identity(tests[0], node.output[0])
    else:
        b.op("Or", tests, [node.output[0]])


@decomposition("", "LpNormalization")
def decompose_lp_normalization(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """``x / (sum |x|^p)^(1/p)`` along ``axis`` for p = 1 or 2."""
    attrs = attributes(node)
    p = int(attrs.get("p", 2))
    if p not in (1, 2):
        raise OnnxImportError(f"node {describe(node)}: LpNormalization with p={p} (ONNX "
                              "allows 1 and 2 only)")
    x = node.input[0]
    axis = int(attrs.get("axis", -1)) % len(b.shape(x, node))
    axes = b.const([axis], np.int64, "axes")
    if p == 1:
        norm = b.op("ReduceSum", [b.op("Abs", [x]), axes], keepdims=1)
    else:
        norm = b.op("Sqrt", [b.op("ReduceSum", [b.op("Mul", [x, x]), axes], keepdims=1)])
    # a zero norm means x is all zeros there: divide by 1 (onnxruntime and the reference give 0)
    zero, one = (b.const(np.array(v, b.np_dtype(x)), hint="c") for v in (0, 1))
    safe = b.op("Where", [b.op("Equal", [norm, zero]), one, norm])
    b.op("Div", [x, safe], [node.output[0]])


@decomposition("", "ReverseSequence")
def decompose_reverse_sequence(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Reverse the first ``sequence_lens[i]`` steps of every batch entry i."""
    attrs = attributes(node)
    x, lengths = node.input[:2]
    shape = b.shape(x, node)
    batch_axis, time_axis = int(attrs.get("batch_axis", 1)), int(attrs.get("time_axis", 0))
    steps_shape = [1] * len(shape)
    steps_shape[time_axis] = shape[time_axis]
    lengths_shape = [1] * len(shape)
    lengths_shape[batch_axis] = shape[batch_axis]
    steps = b.const(np.arange(shape[time_axis], dtype=np.int64).reshape(steps_shape),
                    hint="steps")
    length = b.op("Reshape", [b.op("Cast", [lengths], to=onnx.TensorProto.INT64),
                              b.const(lengths_shape, np.int64, "shape")])
    reversed_step = b.op("Sub", [b.op("Sub", [length, b.const(np.array(1, np.int64), hint="one")]),
                                 steps])
    index = b.op("Where", [b.op("Less", [steps, length]), reversed_step, steps])
    index = b.op("Expand", [index, b.const(list(shape), np.int64, "shape")])
    b.op("GatherElements", [x, index], [node.output[0]], axis=time_axis)


@decomposition("", "SpaceToDepth")
def decompose_space_to_depth(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """``[N, C, H, W]`` -> ``[N, C*bs*bs, H/bs, W/bs]``, DCR or CRD channel order."""
    attrs = attributes(node)
    block = int(attrs["blocksize"])
    batch, channels, height, width = b.shape(node.input[0], node)
    blocks = b.op("Reshape", [node.input[0], b.const(
        [batch, channels, height // block, block, width // block, block], np.int64, "shape")])
    perm = [0, 1, 3, 5, 2, 4] if attrs.get("mode", "DCR") == "CRD" else [0, 3, 5, 1, 2, 4]
    b.op("Reshape", [b.op("Transpose", [blocks], perm=perm), b.const(
        [batch, channels * block * block, height // block, width // block], np.int64, "shape")],
        [node.output[0]])


@decomposition("", "LpPool")
def decompose_lp_pool(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """A depthwise Conv of ones over ``|x|^p``, then the p-th root."""
    attrs = attributes(node)
    if attrs.get("ceil_mode", 0):
        raise OnnxImportError(f"node {describe(node)}: LpPool with ceil_mode=1 is not supported")
    x = node.input[0]
    shape = b.shape(x, node)
    dtype = b.np_dtype(x)
    p = float(attrs.get("p", 2))
    kernel = list(attrs["kernel_shape"])
    powered = b.op("Mul", [x, x]) if p == 2 else b.op("Pow", [
        b.op("Abs", [x]), b.const(np.array(p, dtype), hint="p")])
    conv_attrs = {key: attrs[key] for key in ("strides", "pads", "dilations", "auto_pad")
                  if key in attrs}
    ones = b.const(np.ones([shape[1], 1, *kernel], dtype), hint="window")
    total = b.op("Conv", [powered, ones], group=shape[1], kernel_shape=kernel, **conv_attrs)
    if p == 2:
        b.op("Sqrt", [total], [node.output[0]])
    else:
        b.op("Pow", [total, b.const(np.array(1.0 / p, dtype), hint="root")], [node.output[0]])

"""Blocked ``DequantizeLinear``/``QuantizeLinear`` (opset 21+, ``block_size`` > 0) in plain
float ops.

The importer has no blocked form. Each scale (and zero point) covers ``block_size``
consecutive elements along ``axis``: it is repeated that many times along the axis (Unsqueeze,
Expand, Reshape, cut to the input's length). Then, as ONNX's reference computes them in
float32: ``(float(x) - zero_point) * scale`` cast to the output type, and
``saturate(round_half_even(x / scale) + zero_point)`` cast to the zero point's type (uint8
without one). Scales may be run-time values; integer output types only.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from relaycomp.frontend.patch_ops import elem_types


def patch_blocked_dequantize(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Rewrite every blocked DequantizeLinear of ``model`` in place; returns how many."""
    graph = model.graph
    types = elem_types(model)
    nodes, changed = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        block = int(attrs.get("block_size", 0))
        if node.op_type not in ("DequantizeLinear", "QuantizeLinear") or block <= 0 \
                or shapes.get(node.input[0]) is None or types.get(node.input[1]) is None:
            nodes.append(node)
            continue
        shape = shapes[node.input[0]]
        axis = int(attrs.get("axis", 1)) % len(shape)
        out = node.output[0]

        def const(value, key, out=out):
            name = f"{out}__blocked_{key}"
            graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
            return name

        def repeated(name, key, axis=axis, shape=shape, block=block, out=out):
            """``name`` repeated ``block`` times along ``axis``, cut to ``shape``, float32."""
            blocks = -(-shape[axis] // block)
            wide = list(shape)
            wide[axis] = blocks * block
            expanded = list(shape[:axis]) + [blocks, block] + list(shape[axis + 1:])
            steps = [
                helper.make_node("Cast", [name], [f"{out}__{key}_f"], to=onnx.TensorProto.FLOAT),
                helper.make_node("Unsqueeze", [f"{out}__{key}_f", const([axis + 1], "axes")],
                                 [f"{out}__{key}_u"]),
                helper.make_node("Expand", [f"{out}__{key}_u", const(expanded, f"{key}_e")],
                                 [f"{out}__{key}_x"]),
                helper.make_node("Reshape", [f"{out}__{key}_x", const(wide, f"{key}_w")],
                                 [f"{out}__{key}_r"]),
                helper.make_node("Slice", [f"{out}__{key}_r", const([0], "start"),
                                           const([shape[axis]], "end"), const([axis], "axis")],
                                 [f"{out}__{key}"])]
            return steps, f"{out}__{key}"

        if node.op_type == "QuantizeLinear":
            quantized = _quantize(node, attrs, types, repeated, out)
            if quantized is None:
                nodes.append(node)
                continue
            nodes += quantized
            changed += 1
            continue
        emitted = [helper.make_node("Cast", [node.input[0]], [f"{out}__x"],
                                    to=onnx.TensorProto.FLOAT)]
        shifted = f"{out}__x"
        if len(node.input) > 2 and node.input[2]:
            steps, zero = repeated(node.input[2], "zero")
            emitted += steps + [helper.make_node("Sub", [shifted, zero], [f"{out}__shifted"])]
            shifted = f"{out}__shifted"
        steps, scale = repeated(node.input[1], "scale")
        out_type = int(attrs.get("output_dtype", 0)) or types[node.input[1]]
        emitted += steps + [helper.make_node("Mul", [shifted, scale], [f"{out}__y"]),
                            helper.make_node("Cast", [f"{out}__y"], [out], to=out_type)]
        nodes += emitted
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def _quantize(node, attrs, types, repeated, out) -> list | None:
    """The QuantizeLinear nodes, or None for a float (float8/float4) output type."""
    has_zero = len(node.input) > 2 and node.input[2]
    out_type = (types.get(node.input[2]) if has_zero else None) \
        or int(attrs.get("output_dtype", 0)) or onnx.TensorProto.UINT8
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(out_type))
    if dtype.kind not in "iu":
        return None
    limits = np.iinfo(dtype)
    steps, scale = repeated(node.input[1], "scale")
    emitted = steps + [
        helper.make_node("Cast", [node.input[0]], [f"{out}__x"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Div", [f"{out}__x", scale], [f"{out}__divided"]),
        helper.make_node("Round", [f"{out}__divided"], [f"{out}__rounded"])]
    value = f"{out}__rounded"
    if has_zero:
        zero_steps, zero = repeated(node.input[2], "zero")
        emitted += zero_steps + [helper.make_node("Add", [value, zero], [f"{out}__shifted"])]
        value = f"{out}__shifted"
    bounds = [helper.make_node("Constant", [], [f"{out}__{key}"],
                               value=numpy_helper.from_array(np.array(bound, np.float32)))
              for key, bound in (("qmin", limits.min), ("qmax", limits.max))]
    return emitted + bounds + [
        helper.make_node("Clip", [value, f"{out}__qmin", f"{out}__qmax"], [f"{out}__clipped"]),
        helper.make_node("Cast", [f"{out}__clipped"], [out], to=out_type)]

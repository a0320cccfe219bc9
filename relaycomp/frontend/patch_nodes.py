"""ONNX-level fixes applied after folding, before the Relax importer sees the graph.

- ``PRelu`` of opset < 7 with a 1-D slope of one value per channel: that opset applied the slope
  along axis 1 (PyTorch exports rely on it), the importer along the last axis; a constant slope
  is reshaped to ``[C, 1, ...]`` so numpy broadcasting puts it on axis 1.
- Binary ops and Gemm of opset < 7 with ``broadcast=1``: a constant B aligned at ``axis``
  gets trailing 1s (numpy broadcasting), the legacy attributes are dropped.
- Concat drops zero-size inputs (an empty past state would become an unloadable constant).
- A reduction of a zero-size tensor becomes a constant: the op's identity (0, 1, ±inf, NaN).
- ``Equal(ReduceMax(bias), -inf)``, Attention's fully-masked-row test, is computed exactly
  (:mod:`relaycomp.frontend.patch_masks`).
- Blocked DequantizeLinear becomes float ops (:mod:`relaycomp.frontend.patch_blocked`).
- Resize's ``axes``/``keep_aspect_ratio_policy`` spread to full-rank constant inputs
  (:mod:`relaycomp.frontend.patch_resize`).
- A Resize whose constant scales give a fractional output size is refused (ONNX then maps
  coordinates with the scale, the importer with the size ratio).
- Type and math fixes (:mod:`relaycomp.frontend.patch_ops`): integer Pow, TopK of 16/32-bit
  types, half-precision Elu/Selu/ThresholdedRelu, Cosh/Sinh.
- ``Slice`` of opset < 10 (starts/ends/axes as attributes) gets them as constant inputs.
- ``RMSNormalization`` over every axis runs on the input lifted to ``[1, *shape]``.
- Ops whose output size depends on the input values (:data:`VALUE_DEPENDENT_SIZES`, e.g.
  NonMaxSuppression) are refused, naming the nodes.
- Ops whose shape, sizes, repeats or k input must be known at compile time
  (:data:`COMPILE_TIME_INPUTS`) and still read a graph input after folding are refused, all at
  once, with an error naming the node and the input to make constant.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from relaycomp.errors import OnnxImportError
from relaycomp.frontend.patch_blocked import patch_blocked_dequantize
from relaycomp.frontend.patch_masks import patch_masked_rows
from relaycomp.frontend.patch_ops import elem_types, patch_ops
from relaycomp.frontend.patch_resize import patch_resize_axes

# op type -> (input position, what it is); the importer builds static shapes from these.
COMPILE_TIME_INPUTS = {
    "Expand": ((1, "shape"),), "Reshape": ((1, "shape"),), "Tile": ((1, "repeats"),),
    "Resize": ((1, "roi"), (2, "scales"), (3, "sizes")), "Upsample": ((1, "scales"),),
    "TopK": ((1, "k"),), "Slice": ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")),
    "ConstantOfShape": ((0, "shape"),), "OneHot": ((1, "depth"), (2, "values")),
    "Pad": ((1, "pads"), (3, "axes")), "Squeeze": ((1, "axes"),), "Unsqueeze": ((1, "axes"),),
    "Split": ((1, "split"),), "Range": ((0, "start"), (1, "limit"), (2, "delta")),
}


def patch_nodes(model: onnx.ModelProto, opset: int, shapes: dict[str, tuple[int, ...]]) -> int:
    """Apply the fixes to ``model`` in place (``shapes``: static shapes by tensor name);
    returns how many nodes were changed. Raises :class:`OnnxImportError` for run-time shapes."""
    check_compile_time_inputs(model)
    check_value_dependent_sizes(model)
    changed = patch_resize_axes(model, shapes)
    check_resize_scales(model, shapes)
    changed += _empty_reductions(model, shapes)
    changed += patch_masked_rows(model)
    changed += _drop_empty_concat_inputs(model, shapes)
    changed += patch_blocked_dequantize(model, shapes)
    changed += patch_ops(model, opset)
    if opset < 7:
        changed += _channel_prelu(model, shapes)
        changed += _legacy_broadcast(model, shapes)
    if opset < 10:
        changed += _slice_attributes_as_inputs(model)
    changed += _rms_norm_over_every_axis(model, shapes)
    return changed


def _drop_empty_concat_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Concat drops its zero-size inputs that depend on no graph input (an empty past state or
    KV cache, as exports start from): TVM folds them into a zero-size constant, which made an
    artifact it cannot load. Run-time zero-size inputs stay (dropping the empty part of a
    Split made TVM read the wrong part)."""
    initializers = {init.name for init in model.graph.initializer}
    run_time = {value.name for value in model.graph.input} - initializers
    for node in model.graph.node:  # topological order: what depends on a graph input's data
        # (CastLike reads only the type of its second input; shapes are static here)
        data = {"CastLike": node.input[:1], "Shape": [], "Size": []}.get(node.op_type,
                                                                          node.input)
        if run_time.intersection(data):
            run_time.update(node.output)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Concat":
            continue
        kept = [name for name in node.input
                if name in run_time or 0 not in shapes.get(name, (1,))]
        if kept and len(kept) < len(node.input):
            del node.input[:]
            node.input.extend(kept)
            changed += 1
    return changed


def _legacy_broadcast(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Before opset 7, binary ops and Gemm broadcast only with ``broadcast=1``, aligning B at
    ``axis`` of A (default: the trailing dims, as numpy does). The importer broadcasts the
    numpy way and ignores the attributes, so a constant B aligned elsewhere gets trailing 1s;
    the attributes are then dropped (one left in place is refused by the attribute guard)."""
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    changed = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("broadcast") != 1:
            continue
        if node.op_type != "Gemm":
            a_shape = shapes.get(node.input[0])
            b = constants.get(node.input[1])
            b_shape = tuple(b.dims) if b is not None else shapes.get(node.input[1])
            if a_shape is None or b_shape is None:
                continue
            trailing = len(a_shape) - attrs.get("axis", len(a_shape) - len(b_shape)) \
                - len(b_shape)
            if trailing < 0:
                continue
            if trailing:
                if b is None:
                    continue
                name = f"{b.name}__aligned_{len(a_shape)}_{trailing}"
                if name not in constants:
                    array = numpy_helper.to_array(b).reshape(b_shape + (1,) * trailing)
                    constants[name] = numpy_helper.from_array(array, name)
                    graph.initializer.append(constants[name])
                node.input[1] = name
        kept = [a for a in node.attribute if a.name not in ("broadcast", "axis")]
        del node.attribute[:]
        node.attribute.extend(kept)
        changed += 1
    return changed


def _rms_norm_over_every_axis(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """RMSNormalization over every axis (axis 0) fails inside TVM; it runs on the input
    reshaped to ``[1, *shape]`` with axis 1 (the same numbers) and is reshaped back."""
    graph = model.graph
    nodes, changed = [], 0
    for node in graph.node:
        shape = shapes.get(node.input[0]) if node.op_type == "RMSNormalization" else None
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"),
                    -1)
        if shape is None or axis % max(len(shape), 1) != 0 or not shape:
            nodes.append(node)
            continue
        out = node.output[0]
        lifted, result = f"{out}__rms_lifted", f"{out}__rms_result"
        for name, value in ((f"{out}__rms_in_shape", [1, *shape]), (f"{out}__rms_out_shape",
                                                                      list(shape))):
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
        nodes.append(helper.make_node("Reshape", [node.input[0], f"{out}__rms_in_shape"],
                                      [lifted]))
        for attribute in node.attribute:
            if attribute.name == "axis":
                attribute.i = 1
        if not any(a.name == "axis" for a in node.attribute):
            node.attribute.append(helper.make_attribute("axis", 1))
        node.input[0], node.output[0] = lifted, result
        nodes += [node, helper.make_node("Reshape", [result, f"{out}__rms_out_shape"], [out])]
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def check_compile_time_inputs(model: onnx.ModelProto) -> None:
    """Refuse every node whose compile-time input (:data:`COMPILE_TIME_INPUTS`) is a graph
    input, naming it."""
    graph = model.graph
    constant = {init.name for init in graph.initializer}
    fed = {value.name for value in graph.input} - constant
    found = []
    for node in graph.node:
        for position, role in COMPILE_TIME_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] in fed:
                found.append(f"{node.op_type} node '{node.name or node.output[0]}' takes its "
                             f"{role} from graph input '{node.input[position]}'")
    if found:
        names = sorted({text.rsplit("'", 2)[-2] for text in found})
        raise OnnxImportError(
            "inputs that must be constant are fed at run time: " + "; ".join(found),
            hint=f"make {', '.join(repr(n) for n in names)} a constant (an initializer) in the "
                 "model, with the value it will always have")

# Ops whose output size depends on the input values even when the graph declares a static
# shape (ONNX's NonMaxSuppression cases declare the count their data happens to select).
VALUE_DEPENDENT_SIZES = {"NonMaxSuppression": "how many boxes it selects"}


def check_value_dependent_sizes(model: onnx.ModelProto) -> None:
    """Refuse, naming them, the nodes whose output size depends on the input values: a static
    compile would pad or cut the result (a wrong answer) whatever shape the graph declares."""
    found = [f"{node.op_type} node '{node.name or node.output[0]}' "
             f"({VALUE_DEPENDENT_SIZES[node.op_type]})"
             for node in model.graph.node if node.op_type in VALUE_DEPENDENT_SIZES]
    if found:
        raise OnnxImportError(
            "output sizes that depend on the input values are not supported: " + "; ".join(found)
            + "; relaycomp compiles tensors of static shape only",
            hint="cut the model before these nodes (onnx.utils.extract_model) and run them "
                 "after the compiled part, e.g. with onnxruntime or numpy")


def _slice_attributes_as_inputs(model: onnx.ModelProto) -> int:
    """Slice before opset 10 took starts/ends/axes as attributes; the importer implements only
    the input form, and reads missing inputs as None."""
    graph = model.graph
    changed = 0
    for node in graph.node:
        if node.op_type != "Slice" or len(node.input) > 1:
            continue
        attrs = {a.name: list(helper.get_attribute_value(a)) for a in node.attribute}
        inputs = [node.input[0]]
        for role in ("starts", "ends", "axes"):
            if role in attrs:
                name = f"{node.output[0]}__slice_{role}"
                graph.initializer.append(
                    numpy_helper.from_array(np.array(attrs[role], dtype=np.int64), name))
                inputs.append(name)
        del node.attribute[:]
        del node.input[:]
        node.input.extend(inputs)
        changed += 1
    return changed


# Reduce op -> its value over no elements (its identity), by numpy dtype kind.
EMPTY_REDUCTION = {
    "ReduceSum": 0, "ReduceL1": 0, "ReduceL2": 0, "ReduceSumSquare": 0, "ReduceProd": 1,
    "ReduceMean": np.nan, "ReduceMin": np.inf, "ReduceMax": -np.inf, "ReduceLogSum": -np.inf,
    "ReduceLogSumExp": -np.inf,
}


def _empty_reductions(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """A reduction of a zero-size tensor is a constant (the op's identity, ±inf for Min/Max);
    the importer's kernels would read no element and leave garbage or zeros."""
    graph = model.graph
    types = elem_types(model)
    kept, changed = [], 0
    for node in graph.node:
        shape, out_shape = shapes.get(node.input[0] if node.input else ""), \
            shapes.get(node.output[0])
        if (node.op_type not in EMPTY_REDUCTION or shape is None or out_shape is None
                or 0 not in shape or node.input[0] not in types):
            kept.append(node)
            continue
        dtype = helper.tensor_dtype_to_np_dtype(types[node.input[0]])
        value = EMPTY_REDUCTION[node.op_type]
        if np.dtype(dtype).kind in "iu" and not np.isfinite(value):
            if np.isnan(value):
                kept.append(node)  # an integer mean of nothing: leave it to the importer
                continue
            info = np.iinfo(dtype)
            value = info.max if value > 0 else info.min
        graph.initializer.append(numpy_helper.from_array(
            np.full(out_shape, value, dtype=dtype), node.output[0]))
        changed += 1
    del graph.node[:]
    graph.node.extend(kept)
    return changed


def check_resize_scales(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a Resize/Upsample whose constant scales give a fractional output size: ONNX then
    maps coordinates with the scale, the importer with the rounded size ratio (a wrong answer)."""
    values = {init.name: init for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Resize", "Upsample") or node.input[0] not in shapes:
            continue
        position = 1 if node.op_type == "Upsample" or len(node.input) == 2 else 2
        has_sizes = len(node.input) > 3 and node.input[3]
        if has_sizes or position >= len(node.input) or node.input[position] not in values:
            continue
        scales = numpy_helper.to_array(values[node.input[position]]).astype(float).reshape(-1)
        shape = shapes[node.input[0]]
        if scales.size != len(shape):
            continue
        exact = [dim * scale for dim, scale in zip(shape, scales)]
        if any(abs(size - round(size)) > 1e-6 * max(1.0, size) for size in exact):
            found.append(f"{node.op_type} node '{node.name or node.output[0]}' (input "
                         f"{list(shape)}, scales {scales.tolist()})")
    if found:
        raise OnnxImportError(
            "Resize with scales that give a fractional output size is not supported: "
            + "; ".join(found),
            hint="give the output size (the 'sizes' input) instead of scales, or scales whose "
                 "products with the input dims are whole numbers")


def _channel_prelu(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int:
    graph = model.graph
    slopes = {init.name: init for init in graph.initializer}
    changed = 0
    for node in graph.node:
        x_shape = shapes.get(node.input[0]) if node.op_type == "PRelu" else None
        slope = slopes.get(node.input[1]) if x_shape is not None else None
        if (slope is None or len(slope.dims) != 1 or len(x_shape) <= 2 or slope.dims[0] == 1
                or slope.dims[0] != x_shape[1]):
            continue
        name = f"{slope.name}__per_channel"
        if name not in slopes:
            array = numpy_helper.to_array(slope).reshape([-1] + [1] * (len(x_shape) - 2))
            slopes[name] = numpy_helper.from_array(array, name)
            graph.initializer.append(slopes[name])
        node.input[1] = name
        changed += 1
    return changed

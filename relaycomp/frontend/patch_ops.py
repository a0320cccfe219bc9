"""Type and math fixes for ops the Relax importer or TVM's kernels mishandle (part of
:mod:`relaycomp.frontend.patch_nodes`; each rewrite keeps the ONNX semantics):

- ``Pow`` of an integer base is computed in float64 and cast back; a float base's exponent of
  another type is cast to the base's type.
- ``TopK`` of int16/uint16/uint32 sorts in int64 (the kernel's types); of uint64 is refused.
- Elu, Selu and ThresholdedRelu of float16/bfloat16 run in float32 (their converters mix
  float32 constants in); so do MatMul, Conv and Softmax (half sums drift from numpy's and
  onnxruntime's float32 ones).
- LayerNormalization's Mean/InvStdDev outputs are computed by standard ops.
- ``Cosh``/``Sinh`` become ``(exp(x) ± exp(-x)) / 2`` (LLVM has no cosh/sinh intrinsic).
- Float ``Mod`` (``fmod=0``) by ±inf: ``x - floor(x / y) * y`` gives NaN; Python's (and ONNX's)
  result is ``x`` when x is 0 or has y's sign, else ``y``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from relaycomp.errors import OnnxImportError


def patch_ops(model: onnx.ModelProto, opset: int) -> int:
    """Apply every fix of this module to ``model`` in place; returns the nodes changed."""
    return (_integer_pow(model) + _widen_topk(model, opset) + _float32_activations(model)
            + _hyperbolic(model) + _layer_norm_statistics(model, opset)
            + _float_mod_by_infinity(model))


def _layer_norm_statistics(model: onnx.ModelProto, opset: int) -> int:
    """LayerNormalization's optional Mean and InvStdDev outputs (the converter returns them
    with the wrong shape) are computed by standard ops over the normalized axes, in float32 as
    ``stash_type`` 1 asks; Y stays the converter's."""
    graph = model.graph
    types = elem_types(model)
    nodes, changed = [], 0
    for node in graph.node:
        extra = [name for name in node.output[1:] if name]
        if node.op_type != "LayerNormalization" or not extra or node.input[0] not in types:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, epsilon = attrs.get("axis", -1), attrs.get("epsilon", 1e-5)
        rank = _rank(model, node.input[0])
        if rank is None:
            nodes.append(node)
            continue
        axes = list(range(axis % rank, rank))
        out = node.output[0]
        name = {k: f"{out}__ln_{k}" for k in ("x", "mean", "centered", "square", "var", "eps",
                                               "var_eps", "std", "axes")}
        graph.initializer.append(numpy_helper.from_array(np.array(epsilon, np.float32),
                                                         name["eps"]))

        def reduce_mean(source, target, axes=axes, axes_name=name["axes"]):
            if opset >= 18:
                return helper.make_node("ReduceMean", [source, axes_name], [target])
            return helper.make_node("ReduceMean", [source], [target], axes=axes)

        if opset >= 18:
            graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64),
                                                             name["axes"]))
        mean = node.output[1] or name["mean"]
        nodes += [helper.make_node("Cast", [node.input[0]], [name["x"]],
                                   to=onnx.TensorProto.FLOAT),
                  reduce_mean(name["x"], mean),
                  helper.make_node("Sub", [name["x"], mean], [name["centered"]]),
                  helper.make_node("Mul", [name["centered"], name["centered"]], [name["square"]]),
                  reduce_mean(name["square"], name["var"]),
                  helper.make_node("Add", [name["var"], name["eps"]], [name["var_eps"]]),
                  helper.make_node("Sqrt", [name["var_eps"]], [name["std"]])]
        if len(node.output) > 2 and node.output[2]:
            nodes.append(helper.make_node("Reciprocal", [name["std"]], [node.output[2]]))
        del node.output[1:]
        nodes.append(node)
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    for info in list(model.graph.input) + list(model.graph.value_info):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    return None


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    return types


# TVM's run-time TopK kernel sorts these types only; the others are widened to int64 (exact).
TOPK_TYPES = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.INT32,
              onnx.TensorProto.INT64, onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT,
              onnx.TensorProto.DOUBLE}
TOPK_WIDENED = {onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32}


def _uint64_topk(node: onnx.NodeProto, graph: onnx.GraphProto) -> list:
    """uint64 TopK on int64 keys ``bits(x) ^ 2**63``: flipping the top bit maps unsigned order
    onto signed order exactly; the values are flipped back (indices are unchanged)."""
    out = node.output[0]
    names = {k: f"{out}__topk_u64_{k}" for k in ("bits", "sign", "keys", "values", "back")}
    graph.initializer.append(numpy_helper.from_array(np.array(-(2**63), np.int64),
                                                     names["sign"]))
    cast = helper.make_node("Cast", [node.input[0]], [names["bits"]], to=onnx.TensorProto.INT64)
    node.input[0], node.output[0] = names["keys"], names["values"]
    return [cast,
            helper.make_node("BitwiseXor", [names["bits"], names["sign"]], [names["keys"]]),
            node,
            helper.make_node("BitwiseXor", [names["values"], names["sign"]], [names["back"]]),
            helper.make_node("Cast", [names["back"]], [out], to=onnx.TensorProto.UINT64)]


def _widen_topk(model: onnx.ModelProto, opset: int) -> int:
    """TopK of int16/uint16/uint32 runs on int64 and casts the values back; of uint64 on int64
    keys with the top bit flipped (opset 18+, for BitwiseXor; refused below)."""
    graph = model.graph
    types = elem_types(model)
    nodes, changed = [], 0
    for node in graph.node:
        elem_type = types.get(node.input[0]) if node.op_type == "TopK" else None
        if elem_type == onnx.TensorProto.UINT64 and opset >= 18:
            nodes += _uint64_topk(node, graph)
            changed += 1
            continue
        if elem_type is None or elem_type in TOPK_TYPES or elem_type not in TOPK_WIDENED:
            if elem_type is not None and elem_type not in TOPK_TYPES:
                name = onnx.TensorProto.DataType.Name(elem_type)
                raise OnnxImportError(
                    f"TopK node '{node.name or node.output[0]}' sorts {name} values, which "
                    "relaycomp's TopK kernel does not support",
                    hint="cast its input to int64 or a float type in the model")
            nodes.append(node)
            continue
        wide, values = f"{node.output[0]}__topk_int64", f"{node.output[0]}__topk_values"
        nodes.append(helper.make_node("Cast", [node.input[0]], [wide],
                                      to=onnx.TensorProto.INT64))
        original = node.output[0]
        node.input[0], node.output[0] = wide, values
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [values], [original], to=elem_type))
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


# op -> the inputs computed in float32 when they are float16/bfloat16. Elu, Selu and
# ThresholdedRelu: their converters build float32 constants whatever the input type (Elu:
# 1.0 - exp(x)). MatMul, Conv and Softmax: TVM sums half values in half precision (a few
# steps off on long rows); numpy (ONNX's reference) and onnxruntime's CPU kernels sum in float32
# and round once.
FLOAT32_ONLY = {"Elu": (0,), "Selu": (0,), "ThresholdedRelu": (0,), "MatMul": (0, 1),
                "Softmax": (0,), "Conv": (0, 1, 2)}
HALF_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _float32_activations(model: onnx.ModelProto) -> int:
    """Run the :data:`FLOAT32_ONLY` ops of float16/bfloat16 tensors in float32."""
    graph = model.graph
    types = elem_types(model)
    nodes, changed = [], 0
    for node in graph.node:
        elem_type = types.get(node.input[0]) if node.op_type in FLOAT32_ONLY else None
        if elem_type not in HALF_TYPES:
            nodes.append(node)
            continue
        result, original = f"{node.output[0]}__float32_out", node.output[0]
        for position in FLOAT32_ONLY[node.op_type]:
            if position >= len(node.input) or not node.input[position]:
                continue  # an optional input left out (Conv's bias)
            wide = f"{node.output[0]}__float32_in{position}"
            nodes.append(helper.make_node("Cast", [node.input[position]], [wide],
                                          to=onnx.TensorProto.FLOAT))
            node.input[position] = wide
        node.output[0] = result
        nodes += [node, helper.make_node("Cast", [result], [original], to=elem_type)]
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def _integer_pow(model: onnx.ModelProto) -> int:
    """Pow of an integer base runs in float64 and is cast back (the importer's power op is
    float-only; exact while results stay below 2**53); a float base with an exponent of
    another type gets the exponent cast to its type (the importer wants one dtype)."""
    graph = model.graph
    types = elem_types(model)
    nodes, changed = [], 0
    for node in graph.node:
        base_type = types.get(node.input[0]) if node.op_type == "Pow" else None
        if base_type is None:
            nodes.append(node)
            continue
        if np.dtype(helper.tensor_dtype_to_np_dtype(base_type)).kind not in "iu":
            exponent_type = types.get(node.input[1])
            if exponent_type is not None and exponent_type != base_type:  # float ** int
                cast = f"{node.output[0]}__pow_exponent"
                nodes.append(helper.make_node("Cast", [node.input[1]], [cast], to=base_type))
                node.input[1] = cast
                changed += 1
            nodes.append(node)
            continue
        base, exponent = (f"{node.output[0]}__pow_{i}" for i in ("base", "exponent"))
        result = f"{node.output[0]}__pow_double"
        double = onnx.TensorProto.DOUBLE
        nodes += [helper.make_node("Cast", [node.input[0]], [base], to=double),
                  helper.make_node("Cast", [node.input[1]], [exponent], to=double),
                  helper.make_node("Pow", [base, exponent], [result]),
                  helper.make_node("Cast", [result], [node.output[0]], to=base_type)]
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def _hyperbolic(model: onnx.ModelProto) -> int:
    graph = model.graph
    types = elem_types(model)
    nodes, changed = [], 0
    for node in graph.node:
        if node.op_type not in ("Cosh", "Sinh") or node.input[0] not in types:
            nodes.append(node)
            continue
        x, out = node.input[0], node.output[0]
        half = f"{out}__half"
        dtype = helper.tensor_dtype_to_np_dtype(types[x])
        graph.initializer.append(numpy_helper.from_array(np.array(0.5, dtype=dtype), half))
        nodes += [helper.make_node("Exp", [x], [f"{out}__exp"]),
                  helper.make_node("Neg", [x], [f"{out}__neg"]),
                  helper.make_node("Exp", [f"{out}__neg"], [f"{out}__exp_neg"]),
                  helper.make_node("Add" if node.op_type == "Cosh" else "Sub",
                                   [f"{out}__exp", f"{out}__exp_neg"], [f"{out}__sum"]),
                  helper.make_node("Mul", [f"{out}__sum", half], [out])]
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def _float_mod_by_infinity(model: onnx.ModelProto) -> int:
    """Float Mod with ``fmod=0``: where y is infinite and x finite, select x or y."""
    graph = model.graph
    types = elem_types(model)
    nodes, changed = [], 0
    for node in graph.node:
        elem_type = types.get(node.input[0]) if node.op_type == "Mod" else None
        fmod = any(a.name == "fmod" and a.i for a in node.attribute)
        if elem_type is None or fmod or np.dtype(
                helper.tensor_dtype_to_np_dtype(elem_type)).kind != "f":
            nodes.append(node)
            continue
        x, y, out = node.input[0], node.input[1], node.output[0]
        name = {k: f"{out}__mod_{k}" for k in (
            "raw", "zero", "inf", "y_abs", "x_abs", "y_inf", "x_finite", "select", "x_pos",
            "y_pos", "same", "x_zero", "keep", "kept")}
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        for key, value in (("zero", 0), ("inf", np.inf)):
            graph.initializer.append(numpy_helper.from_array(np.array(value, dtype), name[key]))
        node.output[0] = name["raw"]
        # comparisons, not IsInf/IsNaN: those intrinsics fail LLVM's verifier once fused here
        nodes += [node,
                  helper.make_node("Abs", [y], [name["y_abs"]]),
                  helper.make_node("Abs", [x], [name["x_abs"]]),
                  helper.make_node("Equal", [name["y_abs"], name["inf"]], [name["y_inf"]]),
                  helper.make_node("Less", [name["x_abs"], name["inf"]], [name["x_finite"]]),
                  helper.make_node("And", [name["y_inf"], name["x_finite"]], [name["select"]]),
                  helper.make_node("Greater", [x, name["zero"]], [name["x_pos"]]),
                  helper.make_node("Greater", [y, name["zero"]], [name["y_pos"]]),
                  # Xor, not Equal of two bools: TVM lowers that to a float compare of i1s
                  helper.make_node("Xor", [name["x_pos"], name["y_pos"]], [name["same"]]),
                  helper.make_node("Not", [name["same"]], [f"{name['same']}_not"]),
                  helper.make_node("Equal", [x, name["zero"]], [name["x_zero"]]),
                  helper.make_node("Or", [f"{name['same']}_not", name["x_zero"]],
                                   [name["keep"]]),
                  helper.make_node("Where", [name["keep"], x, y], [name["kept"]]),
                  helper.make_node("Where", [name["select"], name["kept"], name["raw"]], [out])]
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return changed

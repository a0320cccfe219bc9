"""Newer standard ops the Relax importer lacks: ONNX's own function bodies, and CumProd.

Attention (opset 23+; TVM's ``Attention`` converter is com.microsoft's, with other inputs),
RotaryEmbedding, Swish, SwiGLU and every other standard op ONNX defines as a function of older
ops, when TVM has no converter for it, are replaced by that definition, specialised by ONNX for
the node's attributes and input types, so the rewrite is the standard's own. CumProd (opset 26)
has no function body: it becomes a log-depth scan of shifted products.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import defs, helper

from relaycomp import ir
from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decomposition, describe
from relaycomp.frontend.decompose.builder import GraphBuilder, attributes
from relaycomp.frontend.decompose.inline import inline_nodes

# Drawing random numbers is not a decomposition relaycomp can check against a reference.
RANDOM_OPS = frozenset({"Bernoulli"})
# Default-domain ops replaced by the function body ONNX defines for them: Attention (TVM's
# converter of that name is com.microsoft's) and every op with a body TVM has no converter for.
FUNCTION_OPS = tuple(sorted({"Attention"} | {
    schema.name for schema in defs.get_all_schemas()
    if schema.domain == "" and (schema.has_function or schema.has_context_dependent_function)
    and schema.name not in ir.supported_onnx_ops() and schema.name not in RANDOM_OPS}))


def _input_type(b: GraphBuilder, name: str) -> bytes:
    shape = b.shape(name) if b.has_shape(name) else None
    return helper.make_tensor_type_proto(b.elem_type(name), shape).SerializeToString()


def function_body(node: onnx.NodeProto, b: GraphBuilder) -> onnx.FunctionProto:
    """ONNX's function body for ``node`` at the model's opset."""
    try:
        schema = defs.get_schema(node.op_type, b.opset, "")
    except defs.SchemaError:
        raise OnnxImportError(f"node {describe(node)}: ONNX defines no {node.op_type} at opset "
                              f"{b.opset}") from None
    version = schema.since_version
    if schema.has_function:
        body = schema.get_function_with_opset_version(version)
    elif schema.has_context_dependent_function:
        types = [_input_type(b, name) if name else b"" for name in node.input]
        body = schema.get_context_dependent_function_with_opset_version(
            version, node.SerializeToString(), types)
    else:
        body = b""
    function = onnx.FunctionProto.FromString(body) if isinstance(body, bytes) else body
    if not function.node:
        raise OnnxImportError(f"node {describe(node)}: ONNX has no function body for "
                              f"{node.op_type}-{version} with these inputs")
    return function


def _resolve_attributes(function_node: onnx.NodeProto, node: onnx.NodeProto,
                        schema: defs.OpSchema) -> None:
    """Replace attribute references (``@alpha``) by the node's values or the defaults."""
    given = {a.name: a for a in node.attribute}
    kept = []
    for attr in function_node.attribute:
        if attr.ref_attr_name:
            source = given.get(attr.ref_attr_name)
            if source is None:
                default = schema.attributes.get(attr.ref_attr_name)
                source = default.default_value if default is not None else None
            if source is None or not source.name and source.type == 0:
                continue  # an optional attribute left unset
            value = onnx.AttributeProto()
            value.CopyFrom(source)
            value.name = attr.name
            kept.append(value)
        else:
            kept.append(attr)
    del function_node.attribute[:]
    function_node.attribute.extend(kept)


def expand_function(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Replace ``node`` by ONNX's function body for it."""
    function = function_body(node, b)
    schema = defs.get_schema(node.op_type, b.opset, "")
    nodes = []
    for inner in function.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        _resolve_attributes(copy, node, schema)
        nodes.append(copy)
    mapping = {formal: actual for formal, actual in zip(function.input, node.input)}
    mapping.update({formal: "" for formal in list(function.input)[len(node.input):]})
    inline_nodes(b, nodes, mapping, hint=node.op_type + "_")
    for formal, actual in zip(function.output, node.output):
        if actual:
            b.identity(mapping[formal], actual)


for _op in FUNCTION_OPS:
    decomposition("", _op)(expand_function)


@decomposition("", "CumProd")
def decompose_cumprod(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Cumulative product along ``axis`` (constant): log2(n) rounds of multiplying by the
    tensor shifted by 1, 2, 4, ... (padded with ones); ``exclusive`` shifts once more,
    ``reverse`` flips around it."""
    attrs = attributes(node)
    x = node.input[0]
    shape = b.shape(x, node)
    axis = b.int_constant(node.input[1], node, "axis") % len(shape)
    size = shape[axis]
    dtype = b.np_dtype(x)
    def starts(v: int) -> str:
        return b.const([v], np.int64, "start")

    axes = b.const([axis], np.int64, "axis")

    def flip(value: str) -> str:
        return b.op("Slice", [value, starts(-1), starts(-(2**62)), axes, starts(-1)])

    def shifted(value: str, by: int) -> str:
        pad_shape = list(shape)
        pad_shape[axis] = by
        ones = b.const(np.ones(pad_shape, dtype), hint="ones")
        head = b.op("Slice", [value, starts(0), starts(size - by), axes])
        return b.op("Concat", [ones, head], axis=axis)

    value = flip(x) if attrs.get("reverse", 0) else x
    if attrs.get("exclusive", 0) and size:
        value = shifted(value, 1) if size > 1 else b.const(np.ones(shape, dtype), hint="ones")
    step = 1
    while step < size:
        value = b.op("Mul", [value, shifted(value, step)])
        step *= 2
    if attrs.get("reverse", 0):
        value = flip(value)
    b.identity(value, node.output[0])

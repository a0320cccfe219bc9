"""Refuse nodes whose attributes the Relax importer would silently ignore.

The stock converters read the attributes they implement and ignore the rest, so an attribute
added in a newer opset (``SpaceToDepth``'s ``mode``) or one a converter never handled
(``IsInf``'s ``detect_negative``) compiles into a wrong answer. A node attribute that differs
from its ONNX default and whose name the converter never mentions is refused, all at once, as
are attribute values known to fail later inside TVM.
"""

from __future__ import annotations

import re
from functools import cache

import onnx
from onnx import defs, helper

from relaycomp import ir
from relaycomp.errors import OnnxImportError

# Attributes with no effect on inference results.
IGNORABLE = frozenset({"training_mode", "seed", "is_test", "consumed_inputs"})
# (op, attribute) -> values the converter reads but cannot compile (it fails deep in a pass).
UNSUPPORTED_VALUES = {
    ("Resize", "coordinate_transformation_mode"): {"half_pixel_symmetric"},
}


@cache
def _mentions(op_type: str, name: str) -> bool:
    return re.search(rf"""["']{re.escape(name)}["']""", ir.converter_source(op_type)) is not None


def _default(op_type: str, name: str, opset: int):
    try:
        schema = defs.get_schema(op_type, opset)
    except defs.SchemaError:
        return None
    attribute = schema.attributes.get(name)
    if attribute is None or not attribute.default_value.name:
        return None
    return helper.get_attribute_value(attribute.default_value)


def ignored_attributes(node: onnx.NodeProto, opset: int) -> list[str]:
    """Attributes of ``node`` that are set to a non-default value the converter of its op never
    reads, or to a value it cannot compile (:data:`UNSUPPORTED_VALUES`)."""
    if not ir.converter_source(node.op_type):
        return []
    ignored = []
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if text in UNSUPPORTED_VALUES.get((node.op_type, attribute.name), ()):
            ignored.append(f"{attribute.name}={text!r}")
            continue
        if attribute.name in IGNORABLE or _mentions(node.op_type, attribute.name):
            continue
        if value == _default(node.op_type, attribute.name, opset):
            continue
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        ignored.append(f"{attribute.name}={value!r}")
    return ignored


def check_attributes(model: onnx.ModelProto, opset: int) -> None:
    """Raise one :class:`OnnxImportError` naming every node with an ignored attribute."""
    found = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        ignored = ignored_attributes(node, opset)
        if ignored:
            found.append(f"{node.op_type} (node '{node.name or node.output[0]}') with "
                         f"{', '.join(ignored)}")
    if found:
        raise OnnxImportError(
            f"{len(found)} node(s) use attributes relaycomp cannot compile (opset {opset}): "
            + "; ".join(found),
            hint="these attribute values are not implemented; the default values are")

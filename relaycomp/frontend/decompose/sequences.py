"""Sequence ops resolved at compile time: a sequence becomes the list of its tensors' names.

SequenceEmpty/Construct/Insert/Erase build the list (positions must be known at compile time:
constants, or computed from constants and static shapes), SequenceAt and SequenceLength read it,
SplitToSequence splits into it (its length follows from static shapes or the split's shape even
when the split sizes are only known at run time) and ConcatFromSequence concatenates it. Anything
else, a sequence graph input or output, or a position known only at run time, is an error
naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx

from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decomposition, describe, is_decomposable
from relaycomp.frontend.decompose.builder import Deferred, GraphBuilder, attributes

# An element whose value (not just its existence) is only known at run time.
UNKNOWN = ""


def _sequence(node: onnx.NodeProto, b: GraphBuilder, name: str) -> list[str]:
    while name in b.state.sequence_aliases:  # a Loop's or If's output naming a body's sequence
        name = b.state.sequence_aliases[name]
    producer = b.producers.get(name)
    if name not in b.state.sequences and producer is not None and is_decomposable(producer):
        raise Deferred(name)  # built by nodes this round emitted: resolved in the next one
    try:
        return b.state.sequences[name]
    except KeyError:
        raise OnnxImportError(
            f"node {describe(node)}: sequence '{name}' is not built by sequence ops of the "
            "graph itself, so its contents are not known at compile time",
            hint="relaycomp compiles sequences whose lengths and positions are static") from None


def _position(node: onnx.NodeProto, b: GraphBuilder, index: int, length: int,
              default: int, inclusive_end: bool = False) -> int:
    """The node's position input ``index`` normalised to 0..length (or ``default``)."""
    if len(node.input) <= index or not node.input[index]:
        return default
    position = b.int_constant(node.input[index], node, "position")
    limit = length + 1 if inclusive_end else length
    if not -length <= position < limit:
        raise OnnxImportError(f"node {describe(node)}: position {position} is out of range for "
                              f"a sequence of {length}")
    return position + length if position < 0 else position


def _element(node: onnx.NodeProto, name: str) -> str:
    if name == UNKNOWN:
        raise OnnxImportError(
            f"node {describe(node)}: reads a sequence element whose shape is only known at run "
            "time (SplitToSequence with split sizes that are not constants)",
            hint="make the split sizes a constant in the model")
    return name


@decomposition("", "SequenceEmpty")
def sequence_empty(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """An empty list."""
    b.state.sequences[node.output[0]] = []


@decomposition("", "SequenceConstruct")
def sequence_construct(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """The list of the node's inputs."""
    b.state.sequences[node.output[0]] = list(node.input)


@decomposition("", "SequenceInsert")
def sequence_insert(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """A copy of the list with the tensor inserted (at the end by default)."""
    items = list(_sequence(node, b, node.input[0]))
    position = _position(node, b, 2, len(items), len(items), inclusive_end=True)
    items.insert(position, node.input[1])
    b.state.sequences[node.output[0]] = items


@decomposition("", "SequenceErase")
def sequence_erase(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """A copy of the list without one element (the last by default)."""
    items = list(_sequence(node, b, node.input[0]))
    if not items:
        raise OnnxImportError(f"node {describe(node)}: erases from an empty sequence")
    del items[_position(node, b, 1, len(items), len(items) - 1)]
    b.state.sequences[node.output[0]] = items


@decomposition("", "SequenceAt")
def sequence_at(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """The element, as an Identity."""
    items = _sequence(node, b, node.input[0])
    if not items:
        raise OnnxImportError(f"node {describe(node)}: reads from an empty sequence")
    element = items[_position(node, b, 1, len(items), 0)]
    b.identity(_element(node, element), node.output[0])


@decomposition("", "SequenceLength")
def sequence_length(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """The length, as a constant."""
    length = len(_sequence(node, b, node.input[0]))
    b.op("Constant", [], [node.output[0]],
         value=onnx.numpy_helper.from_array(np.array(length, np.int64)))


@decomposition("", "SplitToSequence")
def split_to_sequence(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Split (and squeeze when ``keepdims=0`` without split sizes) into a list of tensors."""
    attrs = attributes(node)
    split = node.input[1] if len(node.input) > 1 and node.input[1] else None
    value = b.constant(split) if split else None
    if split is not None and value is None:  # only the count is known: enough for a length
        count = 1 if len(b.shape(split, node)) == 0 else b.shape(split, node)[0]
        b.state.sequences[node.output[0]] = [UNKNOWN] * count
        return
    shape = b.shape(node.input[0], node)
    axis = int(attrs.get("axis", 0)) % max(len(shape), 1)
    size = shape[axis]
    if split is None:
        sizes, squeeze = [1] * size, not int(attrs.get("keepdims", 1))
    else:
        squeeze = False
        if value.ndim == 0:
            chunk = int(value)
            sizes = [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])
        else:
            sizes = [int(v) for v in value]
        if sum(sizes) != size:
            raise OnnxImportError(f"node {describe(node)}: split sizes {sizes} do not add up "
                                  f"to {size}")
    if not sizes:
        b.state.sequences[node.output[0]] = []
        return
    parts = b.op("Split", [node.input[0], b.const(sizes, np.int64, "split")], len(sizes),
                 axis=axis)
    parts = [parts] if isinstance(parts, str) else parts
    if squeeze:
        parts = [b.op("Squeeze", [p, b.const([axis], np.int64, "axes")]) for p in parts]
    elem_type = b.elem_type(node.input[0])
    for part, part_size in zip(parts, sizes):  # later ConcatFromSequence needs their rank
        part_shape = list(shape)
        part_shape[axis] = part_size
        b.set_type(part, elem_type, part_shape[:axis] + part_shape[axis + 1:] if squeeze
                   else part_shape)
    b.state.sequences[node.output[0]] = parts


@decomposition("", "ConcatFromSequence")
def concat_from_sequence(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Concat of the list (each element unsqueezed first when ``new_axis=1``)."""
    attrs = attributes(node)
    items = [_element(node, name) for name in _sequence(node, b, node.input[0])]
    if not items:
        raise OnnxImportError(f"node {describe(node)}: concatenates an empty sequence")
    axis = int(attrs["axis"])
    if int(attrs.get("new_axis", 0)):
        rank = len(b.shape(items[0], node)) if b.has_shape(items[0]) else None
        if axis < 0:
            if rank is None:
                raise OnnxImportError(f"node {describe(node)}: the rank of its elements is "
                                      "not known at compile time")
            axis += rank + 1
        items = [b.op("Unsqueeze", [item, b.const([axis], np.int64, "axes")]) for item in items]
    b.op("Concat", items, [node.output[0]], axis=axis)

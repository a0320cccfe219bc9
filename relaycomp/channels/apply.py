"""Rewrite an ONNX model to a pruning plan: slice constants, fix node attributes.

:func:`apply_plan` is the mechanical half of pruning: given the :class:`ChannelGraph` and the kept
channels of each group, it slices every recorded constant (``TensorCut``) and edits the nodes
whose attributes count channels (depthwise ``group``, ``Split`` sizes, ``Reshape`` targets).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

if TYPE_CHECKING:  # annotations only: the graph imports this module (through its view)
    from relaycomp.channels.graph import ChannelGraph



def by_space(graph: ChannelGraph, keep: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Space id → kept channel indices, for every space of every shrinking group."""
    return {s: np.asarray(idx) for gid, idx in keep.items() for s in graph.groups[gid].spaces}


def sliced_constants(graph: ChannelGraph, keep: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Constant name → its value with the removed channels cut out (only constants that shrink).

    Front-end neutral: the ONNX and Relax rewrites both write these values back.
    """
    spaces = by_space(graph, keep)
    values: dict[str, np.ndarray] = {}
    done = set()
    for cut in graph.cuts:
        if (cut.tensor, cut.axis) in done:
            continue
        done.add((cut.tensor, cut.axis))
        value = values.get(cut.tensor, graph.constant(cut.tensor))
        indices = cut.kept_indices(spaces)
        if len(indices) != value.shape[cut.axis]:
            values[cut.tensor] = np.take(value, indices, axis=cut.axis)
    return values


def apply_plan(model: onnx.ModelProto, graph: ChannelGraph, keep: Mapping[int, np.ndarray],
               constants: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with group ``g`` reduced to channels ``keep[g]``.

    ``constants``: the new values of the constants (default :func:`sliced_constants`); a name
    the model does not hold yet is a new Conv/Gemm bias from bias compensation, keyed
    ``<node name>:bias``.
    """
    out = onnx.ModelProto.FromString(model.SerializeToString())
    if not keep:
        return out
    values = dict(sliced_constants(graph, keep) if constants is None else constants)
    _add_new_biases(out, values)
    _write_constants(out, values)
    nodes = {n.name or n.output[0]: n for n in out.graph.node}
    spaces = by_space(graph, keep)
    for kind, node, payload in graph.edits:
        _edit_node(out, nodes[node.name], kind, payload, spaces)
    del out.graph.value_info[:]  # inferred shapes of pruned tensors are stale
    return out


def _add_new_biases(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    nodes = {n.name or n.output[0]: n for n in model.graph.node}
    for key in [k for k in values if k.endswith(":bias")]:
        node = nodes.get(key.removesuffix(":bias"))
        if node is None or (len(node.input) > 2 and node.input[2]):
            continue
        name = f"{node.name or node.output[0]}_compensation_bias"
        model.graph.initializer.append(numpy_helper.from_array(values.pop(key), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name


def kept_width(segments, by_space) -> int:
    """Channels left in ``segments`` (each ``repeat`` wide) after the plan."""
    return sum((len(by_space[s.space]) if s.space in by_space else s.size) * s.repeat
               for s in segments)


def _write_constants(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in values:
            for attr in node.attribute:
                if attr.name == "value":
                    attr.t.CopyFrom(numpy_helper.from_array(values[node.output[0]], attr.t.name))


def _edit_node(model, node, kind: str, payload, by_space) -> None:
    if kind == "group":
        _set_attr(node, "group", kept_width(payload, by_space))
    elif kind == "split":
        sizes = np.array([kept_width(p, by_space) for p in payload], dtype=np.int64)
        opset = {o.domain: o.version for o in model.opset_import}.get("", 13)
        if opset < 13 or any(a.name == "split" for a in node.attribute):  # an attribute
            _set_attr(node, "split", [int(s) for s in sizes])
        else:
            for i, attr in enumerate(node.attribute):
                if attr.name == "num_outputs":  # opset 18: exclusive with explicit sizes
                    del node.attribute[i]
                    break
            name = f"{node.name or node.output[0]}_pruned_split"
            model.graph.initializer.append(numpy_helper.from_array(sizes, name))
            while len(node.input) < 2:
                node.input.append("")
            node.input[1] = name
    elif kind == "slice":  # move the bounds on the channel axis to the pruned offsets
        before, piece, position, starts, ends = payload
        start = kept_width(before, by_space)
        starts, ends = starts.copy(), ends.copy()
        starts[position], ends[position] = start, start + kept_width(piece, by_space)
        for index, value in [(1, starts), (2, ends)]:
            name = f"{node.name or node.output[0]}_pruned_{'starts' if index == 1 else 'ends'}"
            model.graph.initializer.append(numpy_helper.from_array(value, name))
            node.input[index] = name
    elif kind == "reshape":  # [N, C*H*W] with a literal size: let -1 infer the pruned width
        name = f"{node.name or node.output[0]}_pruned_shape"
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([0, -1], dtype=np.int64), name))
        node.input[1] = name


def _set_attr(node, name: str, value) -> None:
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))

"""Copy a sub-graph or function body into the graph being rewritten, every value it defines
renamed uniquely (once per unrolled iteration or inlined branch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from relaycomp.frontend.decompose.builder import GraphBuilder


def inline_nodes(builder: GraphBuilder, nodes: Sequence[onnx.NodeProto],
                 mapping: dict[str, str], hint: str = "") -> dict[str, str]:
    """Emit copies of ``nodes`` (a sub-graph or function body) with every value they define
    renamed uniquely; ``mapping`` maps names of the body's inputs (and anything else to
    substitute) to outer names and is extended with the new names. Names neither mapped nor
    defined in the body are outer-scope values and stay as they are. Returns ``mapping``."""
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = builder.fresh(hint + (node.name or node.op_type))
        del copy.input[:]
        copy.input.extend(mapping.get(name, name) if name else "" for name in node.input)
        del copy.output[:]
        for name in node.output:
            if name:
                mapping[name] = builder.fresh(hint + name)
            copy.output.append(mapping[name] if name else "")
        for attr in copy.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_subgraph(builder, attr.g, mapping)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _rename_subgraph(builder, sub, mapping)
        builder.add_node(copy)
    return mapping


def _rename_subgraph(builder: GraphBuilder, graph: onnx.GraphProto,
                     outer: Mapping[str, str]) -> None:
    """Rename, in place, every value a nested sub-graph defines and every outer name it reads."""
    mapping = dict(outer)
    for value in graph.input:
        mapping[value.name] = value.name = builder.fresh(value.name)
    for init in graph.initializer:
        mapping[init.name] = init.name = builder.fresh(init.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                node.input[i] = mapping.get(name, name)
        for i, name in enumerate(node.output):
            if name:
                mapping[name] = node.output[i] = builder.fresh(name)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_subgraph(builder, attr.g, mapping)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _rename_subgraph(builder, sub, mapping)
    for value in [*graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)

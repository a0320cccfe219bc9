"""The graph a QOperator rewrite works on, and the converter registry: shared by the QLinear
converters (:mod:`relaycomp.frontend.qoperator`) and the integer ones
(:mod:`relaycomp.frontend.qoperator_integer`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from relaycomp.frontend.fold import infer_shapes, static_shapes
from relaycomp.registry import Registry

Converter = Callable[[onnx.NodeProto, "QGraph"], list[onnx.NodeProto]]
CONVERTERS: Registry[Converter] = Registry("QOperator converter")


class QGraph:
    """The model being rewritten: constant lookup and fresh initializers/names for converters."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self._shapes: dict | None = None
        self._types: dict | None = None
        self.constants = {init.name: init for init in self.graph.initializer}
        self._taken = set(self.constants) | {i.name for i in self.graph.input}
        self.producers = {name: node for node in self.graph.node for name in node.output}
        self._taken |= set(self.producers) | {node.name for node in self.graph.node}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of initializer ``name``, or ``None`` for a runtime tensor."""
        init = self.constants.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def is_scalar(self, name: str) -> bool:
        """Whether ``name`` is a one-element initializer or a DynamicQuantizeLinear scale/zero
        point (scalars by definition)."""
        value = self.constant(name)
        if value is not None:
            return value.size == 1
        producer = self.producers.get(name)
        return producer is not None and producer.op_type == "DynamicQuantizeLinear"

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of tensor ``name`` when ONNX shape inference pins it down."""
        if self._shapes is None:
            self._shapes = static_shapes(infer_shapes(self.model))
        return self._shapes.get(name)

    def elem_type(self, name: str) -> int | None:
        """The ONNX element type of tensor ``name`` when the graph declares or infers it."""
        if self._types is None:
            self._types = {}
            for graph in (infer_shapes(self.model).graph, self.graph):
                for info in list(graph.input) + list(graph.value_info) + list(graph.output):
                    if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                        self._types[info.name] = info.type.tensor_type.elem_type
            self._types.update({name: init.data_type for name, init in self.constants.items()})
        return self._types.get(name)

    def fresh(self, hint: str) -> str:
        """A tensor or node name not used anywhere in the graph yet."""
        name, count = hint, 0
        while name in self._taken:
            count += 1
            name = f"{hint}_{count}"
        self._taken.add(name)
        return name

    def add_constant(self, value: np.ndarray, hint: str) -> str:
        """Add ``value`` as an initializer and return its name."""
        name = self.fresh(hint)
        init = numpy_helper.from_array(np.asarray(value), name)
        self.graph.initializer.append(init)
        self.constants[name] = init
        return name


def input_at(node: onnx.NodeProto, index: int) -> str:
    """The name of input ``index``; "" when the optional input is absent."""
    return node.input[index] if index < len(node.input) else ""


def attributes(node: onnx.NodeProto, drop: Sequence[str] = ()) -> dict:
    """The node's attributes as Python values, without those in ``drop``."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}


def append_dequantize(node, graph: QGraph, nodes: list, data: str, scale: str,
                      zero_point: str, axis: int | None = None) -> str:
    """Append ``DequantizeLinear(data, scale, zero_point)``; returns its float output."""
    out = graph.fresh(f"{data}_dequantized")
    inputs = [data, scale] + ([zero_point] if zero_point else [])
    attrs = {} if axis is None else {"axis": axis}
    nodes.append(helper.make_node("DequantizeLinear", inputs, [out],
                                  name=graph.fresh(f"{node.name}_dq"), **attrs))
    return out


def append_op(node, graph: QGraph, nodes: list, op_type: str, inputs: Sequence[str],
              **attrs) -> str:
    """Append an ``op_type`` node computing an intermediate of ``node``; returns its output."""
    out = graph.fresh(f"{node.output[0]}_float")
    nodes.append(helper.make_node(op_type, list(inputs), [out], name=graph.fresh(node.name),
                                  **attrs))
    return out

"""What channel analysis reads: a front-end-neutral view of a graph, and its ONNX adapter.

:class:`relaycomp.channels.graph.ChannelGraph` never looks at ONNX or Relax objects directly: it
walks a :class:`GraphView`, a list of :class:`OpNode` (ONNX op vocabulary: ``Conv`` with a
``group`` attribute, ``Add``, ``Relu``, ``Reshape`` …, tensors named by strings) with the
constants and static shapes it needs. Each front end provides one adapter and the mechanical
half of pruning (:meth:`GraphView.apply`, rewriting its own graph to a plan), so both front ends
share one dependency analysis, one set of op handlers and one planner:

- :class:`OnnxView` (here): an ``onnx.ModelProto``, used by ``relaycomp prune -o pruned.onnx``;
- :class:`relaycomp.channels.relax_view.RelaxView`: ``main`` of a Relax module after
  ``simplify``, used
  by the ``prune_channels`` pass (``compile --prune``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from relaycomp.frontend.fold import infer_shapes, static_shapes
from relaycomp.frontend.onnx_import import graph_inputs, pin_input_shapes, set_input_shapes


@dataclass
class OpNode:
    """One op in ONNX vocabulary: ``op_type``, tensor names in and out, attribute values.

    ``opaque``: the analysis must not look inside (a foreign domain, sub-graphs); every tensor
    in ``input`` and ``hidden_reads`` is then blocked.
    """

    op_type: str
    name: str
    input: list[str]
    output: list[str]
    attrs: dict = field(default_factory=dict)
    opaque: bool = False
    hidden_reads: list[str] = field(default_factory=list)


class GraphView:
    """A graph as the channel analysis sees it. Adapters fill the fields and implement the rest.

    ``source``: the front end's own object; ``nodes`` in topological order; ``inputs`` and
    ``outputs``: tensor names; ``constants``: name → value; ``shapes``: name → static shape.
    """

    kind = "abstract"

    def __init__(self, source, nodes: list[OpNode], inputs: list[str], outputs: list[str],
                 constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]):
        self.source = source
        self.nodes = nodes
        self.inputs = inputs
        self.outputs = outputs
        self.constants = constants
        self.shapes = shapes

    def node_names(self) -> set[str]:
        """Names a user may use for protected/overridden layers."""
        return {n.name for n in self.nodes} | {n.output[0] for n in self.nodes if n.output}

    def apply(self, graph, keep: Mapping[int, np.ndarray], constants: dict[str, np.ndarray]):
        """The source rewritten to the plan: ``constants`` (sliced, compensated) replace the
        originals, and the node edits in ``graph.edits`` are applied."""
        raise NotImplementedError

    def totals(self, source) -> dict:
        """``params``, ``param_bytes`` and ``macs`` of ``source`` (this view's kind)."""
        raise NotImplementedError

    def activations(self, inputs: Mapping[str, np.ndarray], names: list[str]) -> dict:
        """Run the source on ``inputs`` and return the tensors ``names``."""
        raise NotImplementedError

    def new_bias_shape(self, node: OpNode, size: int) -> tuple[int, ...] | None:
        """Shape of a bias :meth:`apply` can add to ``node`` (key ``<node>:bias``), or None."""
        return None


class OnnxView(GraphView):
    """An ONNX model, inputs pinned to ``input_shapes`` (other dynamic dims 1)."""

    kind = "onnx"

    def __init__(self, model: onnx.ModelProto, input_shapes: Mapping | None = None):
        initializers = {t.name for t in model.graph.initializer}
        super().__init__(model, [_onnx_node(n) for n in model.graph.node],
                         [v.name for v in model.graph.input if v.name not in initializers],
                         [v.name for v in model.graph.output], _onnx_constants(model),
                         _static_shapes(model, dict(input_shapes or {})))
        self.input_shapes = dict(input_shapes or {})

    def apply(self, graph, keep, constants):
        from relaycomp.channels.apply import apply_plan

        return apply_plan(self.source, graph, keep, constants)

    def totals(self, source) -> dict:
        from relaycomp.frontend.model_info import model_info

        info = model_info(source, self.input_shapes)
        return {"params": info.params, "param_bytes": info.param_bytes, "macs": info.macs}

    def activations(self, inputs, names):
        from relaycomp.channels.activations import run_with_intermediates

        return run_with_intermediates(self.source, inputs, names)

    def new_bias_shape(self, node, size):
        return (size,) if node.op_type in ("Conv", "Gemm") else None


def _onnx_node(node: onnx.NodeProto) -> OpNode:
    subgraphs = [a for a in node.attribute
                 if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)]
    hidden = [name for a in subgraphs for sub in [a.g, *a.graphs] if sub is not None
              for inner in sub.node for name in inner.input]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a not in subgraphs}
    opaque = bool(subgraphs) or (node.domain not in ("", "ai.onnx"))
    return OpNode(node.op_type, node.name or node.output[0], list(node.input),
                  list(node.output), attrs, opaque, hidden)


def _onnx_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _static_shapes(model: onnx.ModelProto, requested: dict) -> dict[str, tuple[int, ...]]:
    inputs, _ = pin_input_shapes(graph_inputs(model), dict(requested))
    pinned = onnx.ModelProto.FromString(model.SerializeToString())
    set_input_shapes(pinned, inputs)
    return static_shapes(infer_shapes(pinned))

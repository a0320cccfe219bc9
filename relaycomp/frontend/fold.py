"""Fold shape sub-graphs of an ONNX model into constants before it reaches the Relax importer.

PyTorch and PaddlePaddle exports compute reshape targets at run time (``Shape → Gather → Concat →
Reshape``); once the inputs are pinned to static shapes these values are known, and the stock
importer only accepts them as constants. This module guarantees:

- every node whose inputs are all constants, and every ``Shape``/``Size`` of a tensor whose shape is
  fully static after ONNX shape inference, is replaced by an initializer (when the result is small:
  shape-like tensors, not weights, so the file does not grow);
- quantize/dequantize nodes and random ops are never folded (the quantizer needs them);
- nodes left without consumers are dropped; graph inputs and outputs are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from relaycomp.frontend.fold_pad_into_conv import fold_pad_into_conv

# Results larger than this stay in the graph: folding them would only copy weights around.
MAX_FOLDED_ELEMENTS = 4096
NEVER_FOLDED = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan",
})


# Ops folded even when they produce a graph output: the importer would return a shape value
# (not a tensor) or a sequence length it cannot compute.
OUTPUTS_FOLDED = frozenset({"Shape", "Size", "SequenceLength"})


@dataclass
class FoldReport:
    """What folding did: nodes replaced by constants, dead nodes removed, pads folded into convs."""

    folded: int = 0
    removed: int = 0
    pads_folded: int = 0


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with data propagation (so shape arithmetic is tracked)."""
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; the importer infers too
        return model


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Tensor name → fully static shape, for every tensor shape inference pinned down."""
    shapes = {}
    infos = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    for info in infos:
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(d.dim_value for d in dims)
    return shapes


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray], opset: int) -> list:
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
         for name in node.input if name],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
         for name in node.output],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {name: values[name] for name in node.input if name}
    return ReferenceEvaluator(model).run(None, feeds)


def _shape_of(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return np.array(shape[start:end], dtype=np.int64)


def _sequence_length(node: onnx.NodeProto, producers: dict, values: dict,
                     shapes: dict) -> np.ndarray | None:
    """The length of a sequence built by SequenceConstruct, or by SplitToSequence of a static
    shape with a constant (or no) split; None when it depends on run-time values."""
    source = producers.get(node.input[0])
    if source is None:
        return None
    if source.op_type == "SequenceConstruct":
        return np.array(len(source.input), dtype=np.int64)
    if source.op_type != "SplitToSequence" or source.input[0] not in shapes:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in source.attribute}
    shape = shapes[source.input[0]]
    if not shape:
        return None
    size = shape[attrs.get("axis", 0) % len(shape)]
    split_name = source.input[1] if len(source.input) > 1 else ""
    if not split_name:
        return np.array(size, dtype=np.int64)  # one element per index along the axis
    if split_name not in values:
        return None
    split = np.asarray(values[split_name])
    if split.ndim == 0:
        return np.array(-(-size // int(split)) if int(split) > 0 else 0, dtype=np.int64)
    return np.array(len(split), dtype=np.int64)


def _fold_once(model: onnx.ModelProto, opset: int, report: FoldReport) -> bool:
    graph = model.graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    shapes = static_shapes(model)
    outputs = {o.name for o in graph.output}
    producers = {name: node for node in graph.node for name in node.output}
    kept, changed = [], False
    for node in graph.node:
        result = None
        if node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLDED:
            pass
        elif node.op_type in ("Shape", "Size") and node.input[0] in shapes:
            result = [_shape_of(node, shapes[node.input[0]])]
        elif node.op_type == "SequenceLength":
            length = _sequence_length(node, producers, values, shapes)
            result = None if length is None else [length]
        elif all(not name or name in values for name in node.input):
            try:
                result = _evaluate(node, values, opset)
            except Exception:  # noqa: BLE001 - leave anything the evaluator rejects to TVM
                result = None
        if result is not None and len(result) == len(node.output) and all(
            np.asarray(r).size <= MAX_FOLDED_ELEMENTS for r in result
        ) and (not outputs.intersection(node.output) or node.op_type in OUTPUTS_FOLDED):
            for name, array in zip(node.output, result):
                values[name] = np.asarray(array)
                graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
            report.folded += 1
            changed = True
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return changed


def remove_dead_nodes(model: onnx.ModelProto) -> int:
    """Drop nodes and initializers no graph output depends on; returns the nodes removed."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            live.append(node)
            needed.update(name for name in node.input if name)
            for attr in node.attribute:  # sub-graphs read outer names
                for sub in [attr.g, *attr.graphs]:
                    needed.update(n for sn in sub.node for n in sn.input if n)
    removed = len(graph.node) - len(live)
    del graph.node[:]
    graph.node.extend(reversed(live))
    dead_inits = {init.name for init in graph.initializer if init.name not in needed}
    inits = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    # Old exporters list initializers as graph inputs too; a dead one must not become an input.
    inputs = [value for value in graph.input if value.name not in dead_inits]
    del graph.input[:]
    graph.input.extend(inputs)
    return removed


def fold_shape_subgraphs(model: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, FoldReport]:
    """Fold until nothing changes; returns the shape-inferred model and a report."""
    report = FoldReport()
    model = infer_shapes(model)
    for _ in range(32):  # each round can unlock the next; 32 is far beyond real models
        if not _fold_once(model, opset, report):
            break
        del model.graph.value_info[:]
        model = infer_shapes(model)
    report.pads_folded = fold_pad_into_conv(model)
    report.removed = remove_dead_nodes(model)
    return model, report

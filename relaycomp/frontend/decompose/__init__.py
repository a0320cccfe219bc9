"""Rewrite ONNX ops the Relax importer lacks into standard ops it has, before the import.

Each entry of :data:`DECOMPOSITIONS` maps ``(domain, op_type)`` to a function
``decompose(node, builder)`` that emits, through the :class:`GraphBuilder`, standard ONNX nodes
producing the node's outputs (same names) for the model's pinned static shapes, or raises an
:class:`OnnxImportError` naming the node when that is impossible (a shape or position only known
at run time). :func:`decompose_graph` applies them until none is left; what a rewrite emits may
itself be rewritten in the next round (the body of an unrolled ``Loop`` holding an ``If``).

Families: recurrent layers (LSTM, GRU, RNN, com.microsoft.DynamicQuantizeLSTM), control flow
(If, Loop, Scan), sequences (resolved at compile time), newer standard ops (Attention,
RotaryEmbedding, SwiGLU, Swish, CumProd, ...: ONNX's own function bodies where it has them) and
onnxruntime's common com.microsoft ops (Gelu, FastGelu, SkipLayerNormalization, ...; Attention,
MultiHeadAttention, GroupQueryAttention), and standard ops TVM lacks or mishandles (OneHot,
IsInf, LpNormalization, ReverseSequence).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx

from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose.builder import (
    DecomposeState,
    Deferred,
    GraphBuilder,
    node_label,
)
from relaycomp.frontend.fold import infer_shapes
from relaycomp.registry import Registry

Decomposition = Callable[[onnx.NodeProto, GraphBuilder], None]

# (domain, op_type) -> decomposition; the default domain is spelled "".
DECOMPOSITIONS: Registry[Decomposition] = Registry("decomposition")

# Rounds of rewriting: each can expose nodes of the next (nested sub-graphs, function bodies).
MAX_ROUNDS = 32


def decomposition(domain: str, op_type: str) -> Callable[[Decomposition], Decomposition]:
    """Register ``function`` as the decomposition of ``domain``/``op_type``."""
    return DECOMPOSITIONS.register((domain, op_type))


def key_of(node: onnx.NodeProto) -> tuple[str, str]:
    """The registry key of ``node`` ("ai.onnx" is the default domain)."""
    return ("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type)


def is_decomposable(node: onnx.NodeProto) -> bool:
    """Whether a decomposition is registered for ``node``'s op."""
    return key_of(node) in DECOMPOSITIONS


def decompose_graph(model: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, dict]:
    """Rewrite every node with a registered decomposition (its input shapes pinned first).

    Returns the rewritten model and a report ``{op_type: nodes rewritten}``. Graph inputs and
    outputs keep their names; nodes without a decomposition are untouched.
    """
    report: Counter = Counter()
    _check_declared_outputs(model)
    if not any(is_decomposable(node) for node in model.graph.node):
        return model, {}
    state = DecomposeState(model)
    for _ in range(MAX_ROUNDS):
        if not any(is_decomposable(node) for node in model.graph.node):
            break
        model = _fold_constants(infer_shapes(model), opset, state)
        builder = GraphBuilder(model, opset, state)
        nodes, deferred, progress = [], None, False
        for node in model.graph.node:
            if not is_decomposable(node):
                nodes.append(node)
                continue
            builder.emitted = []
            try:
                DECOMPOSITIONS.get(key_of(node))(node, builder)
            except Deferred as wait:
                nodes.append(node)
                deferred = deferred or (node, wait)
                continue
            nodes.extend(builder.emitted)
            report[node.op_type] += 1
            progress = True
        if not progress and deferred:
            raise OnnxImportError(f"cannot rewrite node {describe(deferred[0])}: {deferred[1]}",
                                  hint="pin the model's dynamic inputs with --input NAME:DIMS")
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(builder.initializers)
        del model.graph.value_info[:]
    else:
        left = sorted({n.op_type for n in model.graph.node if is_decomposable(n)})
        raise OnnxImportError(f"ops still left after {MAX_ROUNDS} rounds of rewriting: "
                              f"{', '.join(left)} (sub-graphs nested too deep?)")
    _check_no_sequence_outputs(model, state)
    _add_opset_imports(model)
    return model, dict(report)


def _fold_constants(model: onnx.ModelProto, opset: int, state: DecomposeState) -> onnx.ModelProto:
    """Replace top-level nodes computing small constants (reshape targets from ``Shape`` of
    static tensors, as PyTorch exports them) by initializers, so shape inference knows the
    shapes decompositions need. Nothing is removed; the fold after decomposition does that."""
    builder = GraphBuilder(model, opset, state)
    outputs = {o.name for o in model.graph.output}
    kept, folded = [], []
    for node in model.graph.node:
        if is_decomposable(node) or node.op_type == "Constant":
            kept.append(node)
            continue
        values = [builder.constant(name) for name in node.output]
        if (not node.output or any(v is None for v in values)
                or outputs.intersection(node.output)
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                       for a in node.attribute)):
            kept.append(node)
        else:
            folded.extend(onnx.numpy_helper.from_array(np.asarray(v), name)
                          for name, v in zip(node.output, values))
    if not folded:
        return model
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(folded)
    del model.graph.value_info[:]
    return infer_shapes(model)


# ONNX value kinds other than tensors, as messages name them.
NON_TENSOR_KINDS = {"sequence_type": "a sequence", "optional_type": "an optional",
                    "map_type": "a map", "sparse_tensor_type": "a sparse tensor", None: "untyped"}


def _check_declared_outputs(model: onnx.ModelProto) -> None:
    """Graph outputs declared as sequences or optionals are refused before any rewrite (an If
    returning one would otherwise fail on its branch shapes, a less telling error)."""
    for output in model.graph.output:
        kind = output.type.WhichOneof("value")
        if kind in NON_TENSOR_KINDS and kind is not None:  # untyped: inference may type it
            raise OnnxImportError(
                f"graph output '{output.name}' is {NON_TENSOR_KINDS[kind]}; relaycomp compiles "
                "tensor outputs only",
                hint="end the graph with ConcatFromSequence or SequenceAt (or "
                     "OptionalGetElement)")


def _check_no_sequence_outputs(model: onnx.ModelProto, state: DecomposeState) -> None:
    resolved = set(state.sequences) | set(state.sequence_aliases)
    for node in model.graph.node:
        taken = resolved.intersection(node.input)
        if taken:
            raise OnnxImportError(
                f"node {describe(node)} takes sequence '{min(taken)}'; relaycomp resolves "
                "sequences at compile time through the sequence ops only")
    for output in model.graph.output:
        if output.type.WhichOneof("value") == "sequence_type" or output.name in state.sequences \
                or output.name in state.sequence_aliases:
            raise OnnxImportError(
                f"graph output '{output.name}' is a sequence; relaycomp compiles tensor "
                "outputs only", hint="end the graph with ConcatFromSequence or SequenceAt")


def _add_opset_imports(model: onnx.ModelProto) -> None:
    # Decompositions emit default-domain ops only; a com.microsoft import may now be unused,
    # which is harmless.
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("", 17))


def describe(node: onnx.NodeProto) -> str:
    """``'name' (op OpType)`` for messages."""
    return f"'{node_label(node)}' (op {node.op_type})"


# The families register themselves on import.
from relaycomp.frontend.decompose import (  # noqa: F401
    contrib,
    contrib_attention,
    control_flow,
    newer_ops,
    one_hot,
    recurrent,
    sequences,
    standard_ops,
)

__all__ = ["DECOMPOSITIONS", "GraphBuilder", "decompose_graph", "decomposition",
           "is_decomposable"]

"""How each ONNX op moves channels: the handler registry of :class:`ChannelGraph`.

Handlers read :class:`relaycomp.channels.view.OpNode` (ONNX op vocabulary, whichever front end
the graph came from). A handler ``(graph, node, attrs)`` sets the layouts of the node's outputs,
records the constants
to slice (``graph.cut``) and node edits (``graph.edits``), and blocks what it cannot follow.
An op without a handler blocks every space that reaches it, so unknown ops are never broken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relaycomp.channels.layout import Layout
from relaycomp.channels.view import OpNode
from relaycomp.registry import Registry

if TYPE_CHECKING:  # annotations only: the graph's builder imports this module
    from relaycomp.channels.graph import ChannelGraph

HANDLERS: Registry = Registry("channel handler")

# Ops that act on each channel independently: output channels are the input's.
PASS_THROUGH = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Identity", "Dropout", "Cast", "MaxPool",
    "AveragePool", "GlobalAveragePool", "Silu", "GlobalMaxPool", "LpPool", "GlobalLpPool",
)
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "PRelu", "Pow")


def handle_node(graph: ChannelGraph, node: OpNode) -> None:
    """Propagate channels through ``node``, or block what reaches it."""
    if node.op_type == "Constant":
        handler = _constant
    elif node.opaque or node.op_type not in HANDLERS:
        handler = None
    else:
        handler = HANDLERS.get(node.op_type)
    if handler is None:
        _unknown(graph, node)
    else:
        handler(graph, node, node.attrs)


def _where(node) -> str:
    return f"{node.op_type} (node '{node.name}')"


def _unknown(graph: ChannelGraph, node, reason: str | None = None) -> None:
    for name in node.input:
        graph.block(graph.layouts.get(name), reason or f"read by {_where(node)}, "
                                                       "which pruning does not analyze")
    for name in node.hidden_reads:  # sub-graphs read outer tensors without listing them
        graph.block(graph.layouts.get(name), f"read inside {_where(node)}")
    for name in node.output:
        graph.layouts[name] = None


def _constant(graph, node, attrs) -> None:
    graph.layouts[node.output[0]] = None


def _fresh(graph: ChannelGraph, node, size: int, axis: int) -> Layout:
    return graph.fresh(size, node.name, axis)


def _unit(layout: Layout | None) -> bool:
    return layout is not None and all(s.repeat == 1 for s in layout.segments)


@HANDLERS.register("Conv")
def _conv(graph, node, attrs) -> None:
    x = graph.layouts.get(node.input[0])
    weight = graph.constant(node.input[1])
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if weight is None or (bias and graph.constant(bias) is None):
        return _unknown(graph, node, f"{_where(node)} has a weight that is not a constant")
    groups, cout = attrs.get("group", 1), weight.shape[0]
    cin = weight.shape[1] * groups
    x_ok = _unit(x) and x.axis == 1 and x.width == cin
    if groups == 1:
        if x_ok:
            graph.cut(node.input[1], 1, x.segments, "in", node, activation=node.input[0])
        out = _fresh(graph, node, cout, 1)
    elif groups == cin == cout and weight.shape[1] == 1 and x_ok:  # depthwise: channels pass
        out = x
        graph.edits.append(("group", node, x.segments))
    else:
        graph.block(x, f"{_where(node)} is a grouped conv (group={groups})")
        out = _fresh(graph, node, cout, 1)
        graph.block(out, f"{_where(node)} is a grouped conv (group={groups})")
    graph.cut(node.input[1], 0, out.segments, "out", node)
    if bias:
        graph.cut(bias, 0, out.segments, "param", node)
    graph.layouts[node.output[0]] = out


def _dense(graph, node, x_name: str, weight_name: str, k_axis: int, bias: str | None) -> None:
    x, weight = graph.layouts.get(x_name), graph.constant(weight_name)
    rank = graph.rank(x_name)
    if weight is None or weight.ndim != 2 or rank is None:
        return _unknown(graph, node, f"{_where(node)} has no constant 2-D weight")
    if x is not None and x.axis == rank - 1 and x.width == weight.shape[k_axis]:
        graph.cut(weight_name, k_axis, x.segments, "in", node, activation=x_name)
    else:
        graph.block(x, f"{_where(node)} reads its input along another axis")
    out = _fresh(graph, node, weight.shape[1 - k_axis], max(rank, 2) - 1)
    graph.cut(weight_name, 1 - k_axis, out.segments, "out", node)
    if bias:
        value = graph.constant(bias)
        if value is None:
            graph.block(out, f"{_where(node)} has a bias that is not a constant")
        elif value.ndim >= 1 and value.shape[-1] == out.width:
            graph.cut(bias, value.ndim - 1, out.segments, "param", node)
        elif value.ndim >= 1 and value.shape[-1] != 1:
            graph.block(out, f"{_where(node)} has a bias of shape {list(value.shape)}")
    graph.layouts[node.output[0]] = out


@HANDLERS.register("Gemm")
def _gemm(graph, node, attrs) -> None:
    if attrs.get("transA", 0):
        return _unknown(graph, node, f"{_where(node)} transposes its input")
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    _dense(graph, node, node.input[0], node.input[1], 1 if attrs.get("transB", 0) else 0, bias)


@HANDLERS.register("MatMul")
def _matmul(graph, node, attrs) -> None:
    if graph.constant(node.input[0]) is not None:
        return _unknown(graph, node)
    _dense(graph, node, node.input[0], node.input[1], 0, None)


@HANDLERS.register("BatchNormalization")
def _batchnorm(graph, node, attrs) -> None:
    x = graph.layouts.get(node.input[0])
    params = list(node.input[1:5])
    if x is None or x.axis != 1 or any(graph.constant(p) is None for p in params):
        graph.block(x, f"{_where(node)} has statistics that are not constants")
    else:
        for i, name in enumerate(params):
            graph.cut(name, 0, x.segments, "bn_scale" if i == 0 else "param", node)
    graph.layouts[node.output[0]] = x
    for extra in node.output[1:]:
        graph.layouts[extra] = None


for _op in PASS_THROUGH:
    HANDLERS.add(_op, lambda graph, node, attrs: _pass_through(graph, node))


def _pass_through(graph, node) -> None:
    graph.layouts[node.output[0]] = graph.layouts.get(node.input[0])
    for extra in node.output[1:]:
        graph.layouts[extra] = None


def _elementwise(graph, node, attrs) -> None:
    """Broadcasting binary/variadic ops: all channel-carrying operands share one channel set."""
    out_rank = graph.rank(node.output[0])
    tracked = [(n, graph.layouts[n]) for n in node.input if graph.layouts.get(n) is not None]
    if not tracked:
        return _untracked(graph, node)
    if out_rank is None or any(graph.rank(name) is None for name, _ in tracked):
        return _unknown(graph, node, f"{_where(node)} has operands of unknown rank")
    first_name, first = tracked[0]
    axis = first.axis + out_rank - graph.rank(first_name)
    out = Layout(axis, first.segments)
    ok = True
    for name, layout in tracked[1:]:
        if layout.axis + out_rank - graph.rank(name) != axis:
            graph.block(layout, f"{_where(node)} mixes channel axes")
            graph.block(first, f"{_where(node)} mixes channel axes")
            ok = False
        else:
            ok = graph.join(first, layout, _where(node)) and ok
    for name in node.input:
        if not name or graph.layouts.get(name) is not None:
            continue
        value, rank = graph.constant(name), graph.rank(name)
        shape = value.shape if value is not None else graph.shapes.get(name)
        local = axis - (out_rank - rank) if rank is not None else None
        if shape is None or local is None:
            graph.block(out, f"{_where(node)} has an operand of unknown shape")
        elif local < 0 or shape[local] == 1:
            continue  # broadcast along channels: nothing to slice
        elif value is not None and shape[local] == out.width:
            graph.cut(name, local, out.segments, "param", node)
        else:
            graph.block(out, f"{_where(node)} adds per-channel data that is not a constant")
    graph.layouts[node.output[0]] = out if ok else None


def _untracked(graph, node) -> None:
    for name in node.output:
        graph.layouts[name] = None


for _op in ELEMENTWISE:
    HANDLERS.add(_op, _elementwise)

"""Channel handlers for ops that move, cut or regroup the channel axis.

Concat (offsets), Split/Slice (pieces), Flatten/Reshape (channel x spatial blocks), Transpose,
Squeeze/Unsqueeze, reductions, Softmax, Pad, Resize, and ConvTranspose. Registered in
:data:`relaycomp.channels.ops.HANDLERS` on import.
"""

from __future__ import annotations

import numpy as np

from relaycomp.channels.layout import Layout, Segment
from relaycomp.channels.ops import (
    HANDLERS,
    _elementwise,
    _fresh,
    _pass_through,
    _unit,
    _unknown,
    _untracked,
    _where,
)


@HANDLERS.register("Concat")
def _concat(graph, node, attrs) -> None:
    layouts = [graph.layouts.get(n) for n in node.input]
    rank = graph.rank(node.output[0])
    if rank is None:
        return _unknown(graph, node)
    axis = attrs["axis"] % rank
    if not any(layouts):
        return _untracked(graph, node)
    channel_axis = next(layout.axis for layout in layouts if layout is not None)
    if axis != channel_axis:  # stacking along another axis: operands share channels
        return _elementwise(graph, node, attrs)
    segments = []
    for name, layout in zip(node.input, layouts):
        if layout is None or layout.axis != axis:
            shape = graph.constant(name).shape if graph.constant(name) is not None \
                else graph.shapes.get(name)
            if shape is None or layout is not None:
                graph.block(layout, f"{_where(node)} has an operand of unknown shape")
                for other in layouts:
                    graph.block(other, f"{_where(node)} has an operand of unknown shape")
                return _untracked(graph, node)
            segments.append(Segment(None, shape[axis]))
        else:
            segments.extend(layout.segments)
    graph.layouts[node.output[0]] = Layout(axis, tuple(segments))


@HANDLERS.register("Split")
def _split(graph, node, attrs) -> None:
    x = graph.layouts.get(node.input[0])
    rank = graph.rank(node.input[0])
    if x is None or rank is None:
        return _unknown(graph, node) if x is not None else _untracked(graph, node)
    axis = attrs.get("axis", 0) % rank
    if axis != x.axis:
        for name in node.output:
            graph.layouts[name] = x
        return
    has_input = len(node.input) > 1 and bool(node.input[1])
    sizes = attrs.get("split", graph.constant(node.input[1]) if has_input else None)
    if sizes is None and has_input:
        return _unknown(graph, node, f"{_where(node)} splits at computed sizes")
    if sizes is None:
        sizes = [x.width // len(node.output)] * len(node.output)
    pieces, start = [], 0
    bounds = np.cumsum([0] + [s.width for s in x.segments])
    for size in [int(s) for s in sizes]:
        first, last = np.searchsorted(bounds, [start, start + size])
        if bounds[first] != start or bounds[last] != start + size:
            # Cut the producers there in the next round; until then, leave them be.
            graph.request_cuts(x, [start, start + size])
            graph.block(x, f"{_where(node)} splits inside one layer's channels")
            return _untracked(graph, node)
        pieces.append(Layout(axis, x.segments[first:last]))
        start += size
    for name, piece in zip(node.output, pieces):
        graph.layouts[name] = piece
    graph.edits.append(("split", node, [p.segments for p in pieces]))


@HANDLERS.register("Flatten")
def _flatten(graph, node, attrs) -> None:
    x, shape = graph.layouts.get(node.input[0]), graph.shapes.get(node.input[0])
    if x is None:
        return _untracked(graph, node)
    if attrs.get("axis", 1) != 1 or x.axis != 1 or shape is None:
        return _unknown(graph, node, f"{_where(node)} flattens the channel axis away")
    _to_blocks(graph, node, x, int(np.prod(shape[2:], dtype=np.int64)))


def _to_blocks(graph, node, x: Layout, block: int) -> None:
    segments = tuple(Segment(s.space, s.size, s.repeat * block) for s in x.segments)
    graph.layouts[node.output[0]] = Layout(1, segments)


@HANDLERS.register("Reshape")
def _reshape(graph, node, attrs) -> None:
    x = graph.layouts.get(node.input[0])
    shape_in, shape_out = graph.shapes.get(node.input[0]), graph.shapes.get(node.output[0])
    if x is None:
        return _untracked(graph, node)
    target = graph.constant(node.input[1])
    if (shape_in is None or shape_out is None or target is None or x.axis != 1
            or len(shape_out) != 2 or shape_out[0] != shape_in[0] or attrs.get("allowzero")):
        return _unknown(graph, node, f"{_where(node)} reshapes the channel axis")
    graph.edits.append(("reshape", node, None))
    _to_blocks(graph, node, x, int(np.prod(shape_in[2:], dtype=np.int64)))


@HANDLERS.register("Transpose")
def _transpose(graph, node, attrs) -> None:
    x, rank = graph.layouts.get(node.input[0]), graph.rank(node.input[0])
    if x is None or rank is None:
        return _untracked(graph, node) if x is None else _unknown(graph, node)
    perm = list(attrs["perm"]) if "perm" in attrs else list(range(rank))[::-1]
    graph.layouts[node.output[0]] = Layout(perm.index(x.axis), x.segments)


def _reduce(graph, node, attrs) -> None:
    x, rank = graph.layouts.get(node.input[0]), graph.rank(node.input[0])
    if x is None:
        return _untracked(graph, node)
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = graph.constant(node.input[1])
    if axes is None or rank is None:
        return _unknown(graph, node, f"{_where(node)} may reduce over channels")
    axes = sorted(int(a) % rank for a in np.atleast_1d(axes))
    if x.axis in axes:
        return _unknown(graph, node, f"{_where(node)} reduces over channels")
    shift = 0 if attrs.get("keepdims", 1) else sum(a < x.axis for a in axes)
    graph.layouts[node.output[0]] = Layout(x.axis - shift, x.segments)


for _op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1"):
    HANDLERS.add(_op, _reduce)


def _softmax(graph, node, attrs) -> None:
    x, rank = graph.layouts.get(node.input[0]), graph.rank(node.input[0])
    if x is None:
        return _untracked(graph, node)
    if rank is None or attrs.get("axis", -1) % rank == x.axis:
        return _unknown(graph, node, f"{_where(node)} normalizes over channels")
    _pass_through(graph, node)


for _op in ("Softmax", "LogSoftmax"):
    HANDLERS.add(_op, _softmax)


@HANDLERS.register("Slice")
def _slice(graph, node, attrs) -> None:
    x, rank = graph.layouts.get(node.input[0]), graph.rank(node.input[0])
    if x is None:
        return _untracked(graph, node)
    def constant_input(index: int):
        has = len(node.input) > index and node.input[index]
        return graph.constant(node.input[index]) if has else None

    starts, ends, axes, steps = (constant_input(i) for i in range(1, 5))
    if starts is None or ends is None or rank is None:  # includes opset < 10 attribute form
        return _unknown(graph, node, f"{_where(node)} slices with computed bounds")
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
    if x.axis not in axes:
        return _pass_through(graph, node)
    position = axes.index(x.axis)
    if steps is not None and int(steps[position]) != 1:
        return _unknown(graph, node, f"{_where(node)} slices channels with a step")
    start, end = (int(np.clip(v if v >= 0 else v + x.width, 0, x.width))
                  for v in (int(starts[position]), int(ends[position])))
    piece = _piece(graph, node, x, start, end)
    if piece is not None:
        graph.layouts[node.output[0]] = Layout(x.axis, x.segments[piece[0]:piece[1]])
        graph.edits.append(("slice", node, (x.segments[:piece[0]],
                                            x.segments[piece[0]:piece[1]], position,
                                            np.array(starts), np.array(ends))))


def _piece(graph, node, x: Layout, start: int, end: int) -> tuple[int, int] | None:
    """Segment indices ``[first, last)`` spanning channels ``[start, end)``, if aligned."""
    bounds = np.cumsum([0] + [s.width for s in x.segments])
    first, last = np.searchsorted(bounds, [start, end])
    if first < len(bounds) and last < len(bounds) and bounds[first] == start \
            and bounds[last] == end:
        return int(first), int(last)
    graph.request_cuts(x, [start, end])  # the next round cuts the producers here
    graph.block(x, f"{_where(node)} takes part of one layer's channels")
    _untracked(graph, node)
    return None


def _axes(graph, node, attrs) -> list[int] | None:
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(node.input) > 1 and node.input[1]:
        value = graph.constant(node.input[1])
        return None if value is None else [int(a) for a in np.atleast_1d(value)]
    return None


@HANDLERS.register("Squeeze")
def _squeeze(graph, node, attrs) -> None:
    x, rank = graph.layouts.get(node.input[0]), graph.rank(node.input[0])
    if x is None:
        return _untracked(graph, node)
    axes = _axes(graph, node, attrs)
    if axes is None or rank is None:
        return _unknown(graph, node, f"{_where(node)} squeezes unknown axes")
    axes = [a % rank for a in axes]
    if x.axis in axes:
        return _unknown(graph, node, f"{_where(node)} squeezes the channel axis")
    graph.layouts[node.output[0]] = Layout(x.axis - sum(a < x.axis for a in axes), x.segments)


@HANDLERS.register("Unsqueeze")
def _unsqueeze(graph, node, attrs) -> None:
    x, rank = graph.layouts.get(node.input[0]), graph.rank(node.input[0])
    if x is None:
        return _untracked(graph, node)
    axes = _axes(graph, node, attrs)
    if axes is None or rank is None:
        return _unknown(graph, node, f"{_where(node)} inserts unknown axes")
    out_rank = rank + len(axes)
    inserted = {a % out_rank for a in axes}
    kept = [i for i in range(out_rank) if i not in inserted]
    graph.layouts[node.output[0]] = Layout(kept[x.axis], x.segments)


@HANDLERS.register("Pad")
def _pad(graph, node, attrs) -> None:
    x, rank = graph.layouts.get(node.input[0]), graph.rank(node.input[0])
    if x is None:
        return _untracked(graph, node)
    pads = attrs.get("pads")
    if pads is None and len(node.input) > 1:
        pads = graph.constant(node.input[1])
    has_axes = len(node.input) > 3 and node.input[3]
    if pads is None or rank is None or has_axes or pads[x.axis] or pads[x.axis + rank]:
        return _unknown(graph, node, f"{_where(node)} may pad the channel axis")
    _pass_through(graph, node)


@HANDLERS.register("Resize")
def _resize(graph, node, attrs) -> None:
    x = graph.layouts.get(node.input[0])
    if x is None:
        return _untracked(graph, node)
    scales = graph.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sized = len(node.input) > 3 and bool(node.input[3])
    if sized or (scales is not None and scales.size and scales[x.axis] != 1):
        return _unknown(graph, node, f"{_where(node)} resizes to sizes that name channels")
    _pass_through(graph, node)


@HANDLERS.register("ConvTranspose")
def _conv_transpose(graph, node, attrs) -> None:
    x, weight = graph.layouts.get(node.input[0]), graph.constant(node.input[1])
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if weight is None or attrs.get("group", 1) != 1 or (bias and graph.constant(bias) is None):
        return _unknown(graph, node, f"{_where(node)} is grouped or has non-constant weights")
    if _unit(x) and x.axis == 1 and x.width == weight.shape[0]:
        graph.cut(node.input[1], 0, x.segments, "in", node, activation=node.input[0])
    else:
        graph.block(x, f"{_where(node)} reads channels it cannot follow")
    out = _fresh(graph, node, weight.shape[1], 1)
    graph.cut(node.input[1], 1, out.segments, "out", node)
    if bias:
        graph.cut(bias, 0, out.segments, "param", node)
    graph.layouts[node.output[0]] = out

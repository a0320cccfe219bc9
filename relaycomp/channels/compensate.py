"""Bias compensation: fold the removed channels' mean contribution into the next layer's bias.

A removed input channel ``c`` of a consumer (a Conv with ``group=1``, a Gemm, a MatMul) used to
add ``sum_k W[o, c, k] * x_c`` to output ``o``. Replacing ``x_c`` by its mean ``m_c`` turns that
into a constant, added to the consumer's bias: ``b[o] += sum_k W[o, c, k] * m_c`` (for a Flatten
→ dense consumer, per column of the channel's block). ``m_c`` is

- with calibration data: the mean of the tensor the consumer reads, per channel, on that data
  (``GraphView.activations``: onnxruntime for ONNX, the Relax VM for Relax);
- without: the channel's value when its filter is taken as zero, i.e. its bias carried through
  what follows (BatchNorm, the ReLU/Clip/… activation, pooling, residual adds, depthwise convs,
  concat/split/slice, flatten), so ``relu(bias)`` for conv → ReLU → conv. Channels it cannot
  follow get no compensation.

Front-end neutral: works on :class:`relaycomp.channels.graph.ChannelGraph` and the view's nodes; the
consumer's bias is its bias input (ONNX Conv/Gemm), else an ``Add`` of a constant that alone reads
its output (Relax after ``simplify``, ONNX MatMul + Add), else a new bias ``<node>:bias`` when the
front end can add one. Border pixels of a padded conv see zeros, so a conv consumer's correction
is exact in the interior only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from relaycomp.channels.apply import by_space
from relaycomp.channels.compensate_values import ConstantChannels

CONSUMERS = ("Conv", "Gemm", "MatMul")


def compensated_constants(graph, keep: Mapping[int, np.ndarray],
                          constants: dict[str, np.ndarray],
                          calib: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``constants`` (the sliced ones) with the consumers' biases corrected."""
    view = graph.view
    spaces = by_space(graph, keep)
    nodes = {n.name: n for n in view.nodes}
    cuts = {}
    for cut in graph.cuts:
        shrinks = any(s.space in spaces for s in cut.segments if s.space is not None)
        node = nodes.get(cut.node)
        if cut.role == "in" and shrinks and node is not None and node.op_type in CONSUMERS \
                and node.attrs.get("group", 1) == 1 and not node.attrs.get("transA", 0) \
                and node.attrs.get("alpha", 1.0) == 1.0 and node.attrs.get("beta", 1.0) == 1.0:
            cuts.setdefault((cut.node, cut.tensor), cut)
    if not cuts:
        return constants
    if calib:
        names = sorted({c.activation for c in cuts.values()})
        acts = view.activations(calib, names)
        values = {n: _channel_means(acts[n], graph.layouts[n].axis) for n in names}
    else:
        estimate = ConstantChannels(graph)
        values = {c.activation: estimate(c.activation) for c in cuts.values()}
    result = dict(constants)
    deltas: dict[str, np.ndarray] = {}
    for (node_name, _tensor), cut in cuts.items():
        means = values.get(cut.activation)
        if means is None:
            continue
        delta = _contribution(graph.constant(cut.tensor), cut, spaces, means)
        deltas[node_name] = deltas.get(node_name, 0) + delta
    for node_name, delta in deltas.items():
        _add_to_bias(graph, nodes[node_name], delta, spaces, result)
    return result


def _channel_means(array: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(i for i in range(array.ndim) if i != axis)
    return np.asarray(array, np.float64).mean(axis=other)


def _contribution(weight: np.ndarray, cut, spaces, means: np.ndarray) -> np.ndarray:
    """Per output channel of the consumer: what the removed input positions added on average.

    Conv ``[O, I, kh, kw]`` (inputs on axis 1), Gemm ``[N, K]`` (axis 1) or ``[K, N]`` (axis 0):
    after moving the input axis to the front and contracting it with the means, the output axis
    comes first.
    """
    kept = set(cut.kept_indices(spaces).tolist())
    removed = np.array([i for i in range(weight.shape[cut.axis]) if i not in kept], np.int64)
    m = np.nan_to_num(np.asarray(means, np.float64)[removed])  # unknown channels: none
    taken = np.moveaxis(np.take(weight.astype(np.float64), removed, axis=cut.axis), cut.axis, 0)
    summed = np.tensordot(m, taken, axes=(0, 0))
    return summed.reshape(summed.shape[0], -1).sum(axis=1)


def _add_to_bias(graph, node, delta: np.ndarray, spaces, result: dict) -> None:
    view = graph.view
    bias_name = _bias_of(graph, node, delta.size)
    if bias_name is not None:
        original = graph.constant(bias_name)
        full = (original.astype(np.float64) + delta.reshape(original.shape)).astype(original.dtype)
        bias_cut = next((c for c in graph.cuts if c.tensor == bias_name and c.role == "param"),
                        None)
        if bias_cut is not None:
            full = np.take(full, bias_cut.kept_indices(spaces), axis=bias_cut.axis)
        result[bias_name] = full
        return
    out_cut = next((c for c in graph.cuts if c.node == node.name and c.role == "out"), None)
    kept = out_cut.kept_indices(spaces) if out_cut is not None else np.arange(delta.size)
    shape = view.new_bias_shape(node, len(kept))
    if shape is not None:
        result[f"{node.name}:bias"] = delta[kept].astype(np.float32).reshape(shape)


def _bias_of(graph, node, size: int) -> str | None:
    view = graph.view
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
        value = graph.constant(node.input[2])
        return node.input[2] if value is not None and value.size == size else None
    readers = [n for n in view.nodes if node.output[0] in n.input]
    if len(readers) == 1 and readers[0].op_type == "Add":
        for name in readers[0].input:
            value = graph.constant(name)
            if name != node.output[0] and value is not None and value.size == size:
                return name
    return None

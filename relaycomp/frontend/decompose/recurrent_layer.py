"""What LSTM, GRU and RNN share when unrolled: activations, sizes, step inputs, directions,
``sequence_lens`` masking and the per-direction time loop; ``recurrent`` holds the cells.

Semantics are onnxruntime's CPU kernels' (see ``recurrent``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import describe
from relaycomp.frontend.decompose.builder import GraphBuilder, attributes

# Sequence lengths beyond this would unroll into more nodes than any compile can take.
MAX_STEPS = 4096

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "RNN": ["Tanh"]}
# activation -> (default alpha, default beta); None where the activation takes none.
ACTIVATION_PARAMETERS = {
    "relu": (None, None), "tanh": (None, None), "sigmoid": (None, None),
    "softsign": (None, None), "softplus": (None, None), "affine": (1.0, 0.0),
    "leakyrelu": (0.01, None), "thresholdedrelu": (1.0, None), "scaledtanh": (1.0, 1.0),
    "hardsigmoid": (0.2, 0.5), "elu": (1.0, None),
}


@dataclass(frozen=True)
class Activation:
    """One activation function with its parameters."""

    name: str
    alpha: float | None
    beta: float | None

    def apply(self, b: GraphBuilder, x: str, dtype) -> str:
        """Emit the activation of ``x``."""
        name = self.name
        if name in ("relu", "tanh", "sigmoid", "softsign", "softplus"):
            return b.op({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid",
                         "softsign": "Softsign", "softplus": "Softplus"}[name], [x])
        if name == "affine":
            scaled = b.op("Mul", [x, b.const(self.alpha, dtype, "alpha")])
            return b.op("Add", [scaled, b.const(self.beta, dtype, "beta")])
        if name == "scaledtanh":
            inner = b.op("Tanh", [b.op("Mul", [x, b.const(self.beta, dtype, "beta")])])
            return b.op("Mul", [inner, b.const(self.alpha, dtype, "alpha")])
        if name == "leakyrelu":
            return b.op("LeakyRelu", [x], alpha=self.alpha)
        if name == "thresholdedrelu":
            return b.op("ThresholdedRelu", [x], alpha=self.alpha)
        if name == "hardsigmoid":
            return b.op("HardSigmoid", [x], alpha=self.alpha, beta=self.beta)
        return b.op("Elu", [x], alpha=self.alpha)


def activations_of(node: onnx.NodeProto, kind: str, directions: int) -> list[list[Activation]]:
    """Per direction, the activation functions of ``node`` (alphas/betas consumed in order)."""
    attrs = attributes(node)
    per_direction = len(DEFAULT_ACTIVATIONS[kind])
    names = attrs.get("activations") or DEFAULT_ACTIVATIONS[kind] * directions
    if len(names) == per_direction and directions == 2:
        names = list(names) * 2
    if len(names) != per_direction * directions:
        raise OnnxImportError(f"node {describe(node)}: {len(names)} activations given, "
                              f"{per_direction * directions} expected")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    result = []
    for name in names:
        key = name.lower()
        if key not in ACTIVATION_PARAMETERS:
            raise OnnxImportError(f"node {describe(node)}: unknown activation '{name}'",
                                  hint=f"known: {', '.join(sorted(ACTIVATION_PARAMETERS))}")
        alpha, beta = ACTIVATION_PARAMETERS[key]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        result.append(Activation(key, alpha, beta))
    return [result[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


@dataclass
class Layer:
    """What every recurrent kind shares: the node, its sizes and its step inputs."""

    node: onnx.NodeProto
    kind: str
    b: GraphBuilder
    dtype: np.dtype
    steps: int
    batch: int
    hidden: int
    directions: int
    layout: int
    clip: float | None
    x: str            # [steps, batch, input_size], time-major
    input_size: int
    lengths: str | None  # int64 [batch], None when every entry runs all steps

    def gate(self, pre: str, activation: Activation) -> str:
        """Clip (when set) and activate one gate's pre-activation."""
        if self.clip is not None:
            pre = self.b.op("Clip", [pre, self.b.const(-self.clip, self.dtype, "clip_min"),
                                     self.b.const(self.clip, self.dtype, "clip_max")])
        return activation.apply(self.b, pre, self.dtype)


def direction_weights(b: GraphBuilder, name: str, direction: int) -> np.ndarray | str:
    """Direction ``direction`` of weight ``name`` transposed to [in, gates*hidden]: a NumPy
    array when it is a constant, else graph ops."""
    value = b.constant(name) if name else None
    if value is not None:
        return np.ascontiguousarray(value[direction].T)
    return b.op("Transpose", [b.take(name, direction, 0)], perm=[1, 0])


def as_input(b: GraphBuilder, value: np.ndarray | str, hint: str) -> str:
    return b.const(value, hint=hint) if isinstance(value, np.ndarray) else value


def direction_bias(b: GraphBuilder, name: str, direction: int, gates: int, hidden: int, dtype,
          keep_recurrent: int | None = None) -> tuple[np.ndarray | str, np.ndarray | str | None]:
    """(input-side bias Wb + Rb, recurrent bias of gate ``keep_recurrent`` kept apart or None)."""
    size = gates * hidden
    if not name:
        return np.zeros(size, dtype), None
    value = b.constant(name)
    if value is None:
        row = b.take(name, direction, 0)
        wb, rb = b.op("Split", [row, b.const([size, size], np.int64, "split")], 2, axis=0)
        if keep_recurrent is None:
            return b.op("Add", [wb, rb]), None
        mask = np.ones(size, dtype)
        mask[keep_recurrent * hidden:(keep_recurrent + 1) * hidden] = 0
        kept = b.op("Slice", [rb, b.const([keep_recurrent * hidden], np.int64),
                              b.const([(keep_recurrent + 1) * hidden], np.int64)])
        return b.op("Add", [wb, b.op("Mul", [rb, b.const(mask, hint="mask")])]), kept
    wb, rb = value[direction, :size].astype(dtype), value[direction, size:].astype(dtype)
    if keep_recurrent is None:
        return wb + rb, None
    kept = rb[keep_recurrent * hidden:(keep_recurrent + 1) * hidden].copy()
    rb = rb.copy()
    rb[keep_recurrent * hidden:(keep_recurrent + 1) * hidden] = 0
    return wb + rb, kept


def initial_state(layer: Layer, name: str, direction: int) -> str:
    b = layer.b
    if not name:
        return b.const(np.zeros((layer.batch, layer.hidden), layer.dtype), hint="zero_state")
    axis = 1 if layer.layout else 0
    return b.take(name, direction, axis)


def _time_index(layer: Layer, reverse: bool) -> str | None:
    """For a reverse direction with lengths: int64 [steps, batch], the time each step reads
    (and writes) per batch entry: its valid steps backwards, the padding in place."""
    if not reverse or layer.lengths is None:
        return None
    b = layer.b
    steps = b.const(np.arange(layer.steps, dtype=np.int64).reshape(-1, 1), hint="steps")
    lengths = b.op("Unsqueeze", [layer.lengths, b.const([0], np.int64)])
    inside = b.op("Less", [steps, lengths])
    backwards = b.op("Sub", [b.op("Sub", [lengths, b.const(1, np.int64)]), steps])
    return b.op("Where", [inside, backwards, steps])


def _step_masks(layer: Layer) -> list[str | None]:
    """Per step, a bool [batch, 1]: which entries are still inside their sequence."""
    if layer.lengths is None:
        return [None] * layer.steps
    b = layer.b
    steps = b.const(np.arange(layer.steps, dtype=np.int64).reshape(-1, 1, 1), hint="steps")
    lengths = b.op("Reshape", [layer.lengths, b.const([1, -1, 1], np.int64)])
    inside = b.op("Less", [steps, lengths])  # [steps, batch, 1]
    return b.unstack(inside, layer.steps, 0)


def _gather_time(layer: Layer, tensor: str, index: str, width: int) -> str:
    """``tensor[index[t, n], n, :]`` for a [steps, batch, width] tensor."""
    b = layer.b
    if b.opset < 11:  # no GatherElements: multiply by the one-hot permutation instead
        steps = b.const(np.arange(layer.steps, dtype=np.int64), hint="steps")
        picks = b.op("Equal", [b.op("Unsqueeze", [index, b.const([2], np.int64)]), steps])
        picks = b.op("Transpose", [b.op("Cast", [picks], to=b.elem_type(layer.node.input[0]))],
                     perm=[1, 0, 2])  # [batch, steps out, steps in]
        by_batch = b.op("Transpose", [tensor], perm=[1, 0, 2])
        return b.op("Transpose", [b.op("MatMul", [picks, by_batch])], perm=[1, 0, 2])
    full = b.op("Expand", [b.op("Unsqueeze", [index, b.const([2], np.int64)]),
                           b.const([layer.steps, layer.batch, width], np.int64, "shape")])
    return b.op("GatherElements", [tensor, full], axis=0)


def run_direction(layer: Layer, direction: int, reverse: bool, w: str, r: np.ndarray | str,
                  bias: np.ndarray | str, states: list[str], cell) -> tuple[str, list[str]]:
    """Unroll one direction. ``cell(projection_t, states) -> (output_t, new_states)`` is the
    per-step arithmetic; returns Y of this direction [steps, batch, hidden] and final states."""
    b = layer.b
    index = _time_index(layer, reverse)
    x = layer.x if index is None else _gather_time(layer, layer.x, index, layer.input_size)
    projection = b.op("Add", [b.op("MatMul", [x, w]), as_input(b, bias, "bias")])
    masks = _step_masks(layer)
    order = range(layer.steps)
    times = list(reversed(order)) if reverse and index is None else list(order)
    outputs = [None] * layer.steps
    zeros = None
    projections = b.unstack(projection, layer.steps, 0)
    for step, t in enumerate(times):
        x_t = projections[t]
        output, new_states = cell(x_t, states)
        mask = masks[step]  # with a time index, step k reads each entry's k-th valid step
        if mask is not None:
            zeros = zeros or b.const(np.zeros((), layer.dtype), hint="zero")
            new_states = [b.op("Where", [mask, new, old]) for new, old in zip(new_states, states)]
            output = b.op("Where", [mask, output, zeros])
        states = new_states
        outputs[t] = b.op("Unsqueeze", [output, b.const([0], np.int64)])
    y = b.op("Concat", outputs, axis=0)
    if index is not None:
        y = _gather_time(layer, y, index, layer.hidden)
    return y, states


def finish(layer: Layer, ys: list[str], finals: list[list[str]]) -> None:
    """Write the node's outputs: Y from the per-direction ys, then one output per state."""
    b, node = layer.b, layer.node
    outputs = list(node.output)
    if outputs and outputs[0]:
        stacked = b.op("Concat", [b.op("Unsqueeze", [y, b.const([1], np.int64)]) for y in ys],
                       axis=1)  # [steps, directions, batch, hidden]
        if layer.layout:
            b.op("Transpose", [stacked], [outputs[0]], perm=[2, 0, 1, 3])
        else:
            b.identity(stacked, outputs[0])
    for index, name in enumerate(outputs[1:]):
        if not name:
            continue
        parts = [b.op("Unsqueeze", [f[index], b.const([0], np.int64)]) for f in finals]
        stacked = b.op("Concat", parts, axis=0)
        if layer.layout:
            b.op("Transpose", [stacked], [name], perm=[1, 0, 2])
        else:
            b.identity(stacked, name)


def make_layer(node: onnx.NodeProto, b: GraphBuilder, kind: str) -> Layer:
    """Read the shared inputs and attributes of a recurrent node."""
    attrs = attributes(node)
    x = node.input[0]
    layout = int(attrs.get("layout", 0))
    shape = b.shape(x, node)
    steps, batch = (shape[1], shape[0]) if layout else (shape[0], shape[1])
    if steps > MAX_STEPS:
        raise OnnxImportError(f"node {describe(node)}: sequence length {steps} is above "
                              f"{MAX_STEPS}, too long to unroll", hint="pin a shorter --input")
    if layout:
        x = b.op("Transpose", [x], perm=[1, 0, 2])
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise OnnxImportError(f"node {describe(node)}: unknown direction '{direction}'")
    lengths = node.input[4] if len(node.input) > 4 and node.input[4] else None
    if lengths is not None:
        known = b.constant(lengths)
        if known is not None and np.all(known == steps):
            lengths = None  # every entry runs every step: no masking
        else:
            lengths = b.op("Cast", [lengths], to=onnx.TensorProto.INT64)
    if "hidden_size" not in attrs:
        hidden = b.shape(node.input[2], node)[-1]
    else:
        hidden = int(attrs["hidden_size"])
    clip = attrs.get("clip")
    return Layer(node, kind, b, b.np_dtype(node.input[0]), steps, batch, hidden,
                 2 if direction == "bidirectional" else 1, layout,
                 None if clip is None else float(clip), x, shape[2], lengths)


def directions_of(node: onnx.NodeProto) -> list[tuple[int, bool]]:
    direction = attributes(node).get("direction", "forward")
    return {"forward": [(0, False)], "reverse": [(0, True)],
            "bidirectional": [(0, False), (1, True)]}[direction]


def split_gates(b: GraphBuilder, tensor: str, parts: int, hidden: int) -> list[str]:
    if parts == 1:
        return [tensor]
    return b.op("Split", [tensor, b.const([hidden] * parts, np.int64, "split")], parts, axis=1)

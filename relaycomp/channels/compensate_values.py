"""Data-free channel values for bias compensation: each channel as a constant equal to its bias.

``ConstantChannels(graph)(name)`` is a vector along the channel axis of tensor ``name`` (NaN where
unknown): the value each channel takes when every conv/dense filter is zero, so a layer outputs
its bias, carried through BatchNorm, activations, pooling, adds, depthwise convs, concat, split,
slice and flatten. Ops are evaluated from :data:`VALUE_RULES`, keyed by ONNX op type.

One better estimate where the graph still shows it: a ReLU right after a BatchNorm (ONNX; Relax
has folded BatchNorm into the conv by the ``prune`` stage) reads a channel whose mean and spread
over the training data are the BatchNorm's ``beta`` and ``|gamma|``, so its mean output is
``E[relu(z)], z ~ N(beta, gamma²)`` rather than ``relu`` of one value.
"""

from __future__ import annotations

import math

import numpy as np

from relaycomp.registry import Registry

VALUE_RULES: Registry = Registry("constant-channel rule")

UNARY = {
    "Relu": lambda v, a: np.maximum(v, 0.0),
    "LeakyRelu": lambda v, a: np.where(v >= 0, v, v * a.get("alpha", 0.01)),
    "Sigmoid": lambda v, a: 1.0 / (1.0 + np.exp(-v)),
    "Tanh": lambda v, a: np.tanh(v),
    "Silu": lambda v, a: v / (1.0 + np.exp(-v)),
    "HardSigmoid": lambda v, a: np.clip(v * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda v, a: v * np.clip(v / 6.0 + 0.5, 0, 1),
    "Gelu": lambda v, a: v * 0.5 * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0))),
}
SAME = ("Identity", "Dropout", "Cast", "MaxPool", "AveragePool", "GlobalAveragePool",
        "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceMin", "Transpose", "Squeeze",
        "Unsqueeze", "Pad", "Resize")
BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
          "Max": np.maximum, "Min": np.minimum}


class ConstantChannels:
    """Per-channel constant value of a tensor of ``graph`` (memoized)."""

    def __init__(self, graph):
        self.graph = graph
        self.producer = {out: n for n in graph.view.nodes for out in n.output}
        self.memo: dict[str, np.ndarray | None] = {}

    def __call__(self, name: str) -> np.ndarray | None:
        if name not in self.memo:
            self.memo[name] = None  # cycles cannot happen in a DAG; this guards re-entry
            self.memo[name] = self._value(name)
        return self.memo[name]

    def width(self, name: str) -> int | None:
        """Extent of the channel axis of ``name``."""
        layout = self.graph.layouts.get(name)
        return None if layout is None else layout.width

    def broadcast(self, name: str, axis: int, rank: int, width: int) -> np.ndarray | None:
        """A constant operand as a vector along output axis ``axis`` (rank ``rank``)."""
        value = self.graph.constant(name)
        if value is None:
            return None
        local = axis - (rank - value.ndim)
        if value.size == 1:
            return np.full(width, float(value.reshape(-1)[0]))
        if 0 <= local < value.ndim and value.shape[local] == width \
                and value.size == width:
            return value.reshape(-1).astype(np.float64)
        return None

    def _batchnorm(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(beta, |gamma|)``: the mean and spread of a BatchNorm's output over the data it
        was trained on, when ``name`` is one."""
        node = self.producer.get(name)
        if node is None or node.op_type != "BatchNormalization":
            return None
        gamma, beta = (self.graph.constant(n) for n in node.input[1:3])
        if gamma is None or beta is None:
            return None
        return beta.astype(np.float64), np.abs(gamma.astype(np.float64))

    def _value(self, name: str) -> np.ndarray | None:
        node = self.producer.get(name)
        width = self.width(name)
        if node is None or width is None or node.opaque:
            return None
        if node.op_type == "Relu" and self._batchnorm(node.input[0]) is not None:
            return _relu_of_gaussian(*self._batchnorm(node.input[0]))
        if node.op_type in UNARY:
            inner = self(node.input[0])
            return None if inner is None else UNARY[node.op_type](inner, node.attrs)
        if node.op_type in SAME:
            return self(node.input[0])
        if node.op_type in VALUE_RULES:
            return VALUE_RULES.get(node.op_type)(self, node, name, width)
        return None


def _relu_of_gaussian(mean: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """E[relu(z)] for z ~ N(mean, spread²) (data-free bias correction, Nagel et al. 2019)."""
    spread = np.maximum(spread, 1e-12)
    ratio = mean / spread
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(ratio / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * ratio ** 2) / math.sqrt(2.0 * math.pi)
    return mean * cdf + spread * pdf


@VALUE_RULES.register("Clip")
def _clip(values: ConstantChannels, node, name, width):
    inner = values(node.input[0])
    if inner is None:
        return None
    low, high = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
    for index, default in ((1, None), (2, None)):
        if len(node.input) > index and node.input[index]:
            bound = values.graph.constant(node.input[index])
            if bound is None:
                return None
            if index == 1:
                low = float(bound)
            else:
                high = float(bound)
    return np.clip(inner, low, high)


def _binary(values: ConstantChannels, node, name, width):
    graph = values.graph
    axis, rank = graph.layouts[name].axis, graph.rank(name)
    result = None
    for operand in node.input:
        if graph.layouts.get(operand) is not None:
            vector = values(operand)
        else:
            vector = values.broadcast(operand, axis, rank, width)
        if vector is None or vector.shape != (width,):
            return None
        result = vector if result is None else BINARY[node.op_type](result, vector)
    return result


for _op in BINARY:
    VALUE_RULES.add(_op, _binary)


@VALUE_RULES.register("BatchNormalization")
def _batchnorm(values: ConstantChannels, node, name, width):
    inner = values(node.input[0])
    stats = [values.graph.constant(n) for n in node.input[1:5]]
    if inner is None or any(s is None for s in stats):
        return None
    gamma, beta, mean, var = (s.astype(np.float64) for s in stats)
    return (inner - mean) / np.sqrt(var + node.attrs.get("epsilon", 1e-5)) * gamma + beta


@VALUE_RULES.register("Conv")
def _conv(values: ConstantChannels, node, name, width):
    graph = values.graph
    bias = graph.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    bias = np.zeros(width) if bias is None else bias.astype(np.float64).reshape(-1)
    if node.attrs.get("group", 1) == 1:
        return bias  # a removed filter taken as zero: the channel is its bias
    inner = values(node.input[0])  # depthwise: each channel scales its own input
    weight = graph.constant(node.input[1])
    if inner is None or weight is None or weight.shape[0] != width:
        return None
    return bias + inner * weight.reshape(width, -1).sum(axis=1)


def _dense(values: ConstantChannels, node, name, width):
    bias = values.graph.constant(node.input[2]) \
        if node.op_type != "MatMul" and len(node.input) > 2 and node.input[2] else None
    if bias is None:
        return np.zeros(width)
    return bias.astype(np.float64).reshape(-1) if bias.size == width else None


for _op in ("Gemm", "MatMul", "ConvTranspose"):
    VALUE_RULES.add(_op, _dense)


@VALUE_RULES.register("Concat")
def _concat(values: ConstantChannels, node, name, width):
    parts = []
    for operand in node.input:
        part = values(operand) if values.graph.layouts.get(operand) is not None else None
        size = values.width(operand)
        if size is None:
            shape = values.graph.shapes.get(operand)
            size = shape[values.graph.layouts[name].axis] if shape else None
        if size is None:
            return None
        parts.append(np.full(size, np.nan) if part is None else part)
    joined = np.concatenate(parts)
    return joined if joined.shape == (width,) else None


def _blocks(values: ConstantChannels, node, name, width):
    inner = values(node.input[0])
    if inner is None or width % inner.size:
        return None
    return np.repeat(inner, width // inner.size)  # each channel's H*W block


for _op in ("Flatten", "Reshape"):
    VALUE_RULES.add(_op, _blocks)


@VALUE_RULES.register("Split")
def _split(values: ConstantChannels, node, name, width):
    inner = values(node.input[0])
    if inner is None:
        return None
    index = list(node.output).index(name)
    sizes = node.attrs.get("split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        sizes = values.graph.constant(node.input[1])
    if sizes is None:
        sizes = [inner.size // len(node.output)] * len(node.output)
    start = int(np.sum(np.asarray(sizes)[:index]))
    return inner[start:start + width]


@VALUE_RULES.register("Slice")
def _slice(values: ConstantChannels, node, name, width):
    inner = values(node.input[0])
    layout = values.graph.layouts.get(node.input[0])
    if inner is None or layout is None:
        return None
    starts = values.graph.constant(node.input[1])
    axes = values.graph.constant(node.input[3]) if len(node.input) > 3 and node.input[3] \
        else np.arange(len(starts))
    rank = values.graph.rank(node.input[0])
    positions = [int(a) % rank for a in axes]
    if layout.axis not in positions:
        return inner
    start = int(starts[positions.index(layout.axis)])
    start = start + inner.size if start < 0 else start
    return inner[start:start + width]

"""Small ONNX test models, each standing for a pattern real exporters emit.

Every builder returns a fresh ``onnx.ModelProto`` (opset 17, IR version 8, seeded weights) that
passes ``onnx.checker`` and runs in onnxruntime. Shapes are tiny so tests stay fast.
``random_inputs(model)`` makes a matching feed for any of them.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that shipped with opset 17; older onnxruntime builds accept it


class _Graph:
    """Accumulates nodes and seeded initializers, naming each node after its op type."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: Counter[str] = Counter()

    def _fresh(self, prefix: str) -> str:
        self._counts[prefix] += 1
        return f"{prefix}_{self._counts[prefix]}"

    def const(self, value: np.ndarray, prefix: str = "const") -> str:
        """Add ``value`` as an initializer and return its name."""
        name = self._fresh(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, *values: int) -> str:
        """An int64 1-D initializer, the form shape arithmetic and axes inputs use."""
        return self.const(np.array(values, dtype=np.int64), "ints")

    def weight(self, shape: Sequence[int], fan_in: int, prefix: str = "w") -> str:
        """He-initialised float32 weight, so activations stay O(1) through the net."""
        scale = np.sqrt(2.0 / fan_in)
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), prefix)

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, name: str | None = None,
           **attrs) -> str | list[str]:
        """Append a node; returns its output name, or a list when ``outputs`` > 1."""
        name = name or self._fresh(op_type.lower())
        out_names = [name] if outputs == 1 else [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), out_names, name=name, **attrs))
        return out_names[0] if outputs == 1 else out_names

    def conv(self, x: str, cin: int, cout: int, kernel: int = 3, stride: int = 1,
             group: int = 1, bias: bool = True) -> str:
        """Conv2d with 'same'-style padding, as PyTorch exports ``nn.Conv2d(padding=k // 2)``."""
        w = self.weight((cout, cin // group, kernel, kernel), cin // group * kernel * kernel)
        inputs = [x, w]
        if bias:
            inputs.append(self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32)))
        pad = kernel // 2
        return self.op("Conv", inputs, kernel_shape=[kernel, kernel], strides=[stride, stride],
                       pads=[pad] * 4, group=group)

    def batchnorm(self, x: str, channels: int) -> str:
        """Inference BatchNormalization with non-trivial running statistics."""
        rng = self.rng
        params = [
            rng.uniform(0.5, 1.5, channels),  # scale
            rng.standard_normal(channels) * 0.1,  # bias
            rng.standard_normal(channels) * 0.1,  # running mean
            rng.uniform(0.5, 1.5, channels),  # running variance
        ]
        names = [self.const(p.astype(np.float32), "bn") for p in params]
        return self.op("BatchNormalization", [x, *names], epsilon=1e-5)

    def linear(self, x: str, fan_in: int, fan_out: int) -> str:
        """Gemm with a transposed weight, the form ``nn.Linear`` exports to."""
        w = self.weight((fan_out, fan_in), fan_in)
        b = self.const((self.rng.standard_normal(fan_out) * 0.1).astype(np.float32))
        return self.op("Gemm", [x, w, b], transB=1)

    def classifier_head(self, x: str, channels: int, classes: int) -> str:
        """GlobalAveragePool → Flatten → Gemm, the tail of every torchvision CNN."""
        pooled = self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)
        return self.linear(pooled, channels, classes)

    def model(self, name: str, inputs: list[onnx.ValueInfoProto],
              outputs: Mapping[str, str], output_types: Mapping[str, tuple]) -> onnx.ModelProto:
        """Close the graph: rename the chosen tensors to ``outputs`` keys and check the model."""
        for out_name, tensor in outputs.items():
            self.op("Identity", [tensor], name=out_name)
        value_infos = [
            helper.make_tensor_value_info(out_name, elem_type, shape)
            for out_name, (elem_type, shape) in output_types.items()
        ]
        graph = helper.make_graph(self.nodes, name, inputs, value_infos, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="relaycomp-tests")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def _float_input(name: str, shape: Sequence[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _float_output(shape: Sequence[int | str | None]) -> tuple:
    return (TensorProto.FLOAT, list(shape))


def conv_net() -> onnx.ModelProto:
    """A VGG-style image classifier: conv(pad)+BN+ReLU, maxpool, strided conv, GAP, Gemm.

    Input "x" [1,3,32,32] → "logits" [1,10]. Stands for the plain CNN every exporter emits.
    """
    g = _Graph(seed=0)
    y = g.op("Relu", [g.batchnorm(g.conv("x", 3, 8), 8)])
    y = g.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = g.op("Relu", [g.conv(y, 8, 16, stride=2)])
    logits = g.classifier_head(y, 16, 10)
    return g.model("conv_net", [_float_input("x", [1, 3, 32, 32])], {"logits": logits},
                   {"logits": _float_output([1, 10])})


def _residual_block(g: _Graph, x: str, cin: int, cout: int, stride: int) -> str:
    """ResNet basic block; the shortcut is a 1x1 conv+BN projection when the shape changes."""
    y = g.op("Relu", [g.batchnorm(g.conv(x, cin, cout, stride=stride, bias=False), cout)])
    y = g.batchnorm(g.conv(y, cout, cout, bias=False), cout)
    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = g.batchnorm(g.conv(x, cin, cout, kernel=1, stride=stride, bias=False), cout)
    return g.op("Relu", [g.op("Add", [y, shortcut])])


def resnet_block_net() -> onnx.ModelProto:
    """A ResNet-18 in miniature: stem, an identity block, a strided block with a projection.

    Input "x" [1,3,32,32] → "logits" [1,10]. Convs have no bias (BN follows), as torchvision's.
    """
    g = _Graph(seed=1)
    y = g.op("Relu", [g.batchnorm(g.conv("x", 3, 8, bias=False), 8)])
    y = _residual_block(g, y, 8, 8, stride=1)
    y = _residual_block(g, y, 8, 16, stride=2)
    logits = g.classifier_head(y, 16, 10)
    return g.model("resnet_block_net", [_float_input("x", [1, 3, 32, 32])], {"logits": logits},
                   {"logits": _float_output([1, 10])})


def _inverted_residual(g: _Graph, x: str, cin: int, cout: int, expand: int, stride: int) -> str:
    """MobileNetV2 block: 1x1 expand + ReLU6, depthwise 3x3 + ReLU6, 1x1 linear project."""
    hidden = cin * expand
    zero, six = g.const(np.float32(0.0), "clip_min"), g.const(np.float32(6.0), "clip_max")
    y = g.op("Clip", [g.batchnorm(g.conv(x, cin, hidden, kernel=1, bias=False), hidden), zero, six])
    y = g.conv(y, hidden, hidden, stride=stride, group=hidden, bias=False)
    y = g.op("Clip", [g.batchnorm(y, hidden), zero, six])
    y = g.batchnorm(g.conv(y, hidden, cout, kernel=1, bias=False), cout)
    if stride == 1 and cin == cout:
        y = g.op("Add", [x, y])
    return y


def mobilenet_style_net() -> onnx.ModelProto:
    """A MobileNetV2/V3 in miniature: HardSwish stem, inverted residuals with depthwise convs.

    Input "x" [1,3,32,32] → "logits" [1,10]. ReLU6 is Clip(0, 6) with min/max as inputs
    (opset ≥ 11 form); one block has the residual add, one is strided without it.
    """
    g = _Graph(seed=2)
    y = g.op("HardSwish", [g.batchnorm(g.conv("x", 3, 8, stride=2, bias=False), 8)])
    y = _inverted_residual(g, y, 8, 8, expand=4, stride=1)
    y = _inverted_residual(g, y, 8, 16, expand=4, stride=2)
    logits = g.classifier_head(y, 16, 10)
    return g.model("mobilenet_style_net", [_float_input("x", [1, 3, 32, 32])],
                   {"logits": logits}, {"logits": _float_output([1, 10])})


def mlp() -> onnx.ModelProto:
    """A tabular/classifier MLP as exported from ``x @ W + b`` code: MatMul+Add+Relu, Softmax.

    Input "x" [4,64] → "probs" [4,10].
    """
    g = _Graph(seed=3)
    y = "x"
    widths = [64, 32, 32, 10]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = g.weight((fan_in, fan_out), fan_in)
        b = g.const((g.rng.standard_normal(fan_out) * 0.1).astype(np.float32))
        y = g.op("Add", [g.op("MatMul", [y, w]), b])
        if i < len(widths) - 2:
            y = g.op("Relu", [y])
    probs = g.op("Softmax", [y], axis=-1)
    return g.model("mlp", [_float_input("x", [4, 64])], {"probs": probs},
                   {"probs": _float_output([4, 10])})


def multi_io_net() -> onnx.ModelProto:
    """A detector/recommender-style net: an image and a metadata vector in, three heads out.

    Inputs "image" [1,3,16,16], "meta" [1,8] → "features" [1,8,16,16] (conv feature map),
    "embedding" [1,16] (pooled image ++ projected metadata), "score" [1,1] (Sigmoid).
    """
    g = _Graph(seed=4)
    features = g.op("Relu", [g.conv("image", 3, 8)])
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [features])], axis=1)
    meta = g.op("Relu", [g.linear("meta", 8, 8)])
    embedding = g.op("Concat", [pooled, meta], axis=1)
    score = g.op("Sigmoid", [g.linear(embedding, 16, 1)])
    return g.model(
        "multi_io_net",
        [_float_input("image", [1, 3, 16, 16]), _float_input("meta", [1, 8])],
        {"features": features, "embedding": embedding, "score": score},
        {"features": _float_output([1, 8, 16, 16]), "embedding": _float_output([1, 16]),
         "score": _float_output([1, 1])},
    )


def int64_inputs_net() -> onnx.ModelProto:
    """A text classifier: token embedding lookup, masked mean pooling, a linear head.

    Inputs "token_ids" int64 [1,16] (vocabulary 100), "mask" bool [1,16] → "logits" [1,4].
    Padding positions are zeroed with Where and excluded from the mean via Cast(mask).
    """
    g = _Graph(seed=5)
    table = g.const(g.rng.standard_normal((100, 32)).astype(np.float32), "embedding_table")
    embedded = g.op("Gather", [table, "token_ids"], axis=0)  # [1,16,32]
    keep = g.op("Unsqueeze", ["mask", g.ints(-1)])  # [1,16,1]
    masked = g.op("Where", [keep, embedded, g.const(np.float32(0.0))])
    total = g.op("ReduceSum", [masked, g.ints(1)], keepdims=0)  # [1,32]
    count = g.op("ReduceSum", [g.op("Cast", ["mask"], to=TensorProto.FLOAT), g.ints(1)])
    count = g.op("Max", [count, g.const(np.float32(1.0))])  # an all-padding row divides by 1
    logits = g.linear(g.op("Div", [total, count]), 32, 4)
    inputs = [
        helper.make_tensor_value_info("token_ids", TensorProto.INT64, [1, 16]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 16]),
    ]
    return g.model("int64_inputs_net", inputs, {"logits": logits},
                   {"logits": _float_output([1, 4])})


def dynamic_reshape_net() -> onnx.ModelProto:
    """What the TorchScript exporter emits for ``x.view(x.size(0), -1)`` with a dynamic batch.

    Input "x" ["N",3,16,16] → "logits" ["N",10]. The target shape is computed at run time:
    Shape → Gather(0) → Unsqueeze → Concat([-1]) → Reshape, node for node (Constant nodes
    included) what torch 2.14's legacy exporter writes. Stock TVM 0.27's Relax importer
    handles it, with "N" pinned in shape_dict or left symbolic: no "Reshape requires the input
    new shape to be Shape" and no dynamic-shape error. Kept as a regression guard.
    """
    g = _Graph(seed=6)
    y = g.op("Relu", [g.conv("x", 3, 4)])  # [N,4,16,16]
    index = g.op("Constant", [], value=numpy_helper.from_array(np.array(0, np.int64)))
    axes = g.op("Constant", [], value=numpy_helper.from_array(np.array([0], np.int64)))
    minus_one = g.op("Constant", [], value=numpy_helper.from_array(np.array([-1], np.int64)))
    batch = g.op("Gather", [g.op("Shape", [y]), index], axis=0)
    target = g.op("Concat", [g.op("Unsqueeze", [batch, axes]), minus_one], axis=0)
    flat = g.op("Reshape", [y, target])  # [N,1024]
    logits = g.linear(flat, 4 * 16 * 16, 10)
    return g.model("dynamic_reshape_net", [_float_input("x", ["N", 3, 16, 16])],
                   {"logits": logits}, {"logits": _float_output(["N", 10])})


def shape_subgraph_net() -> onnx.ModelProto:
    """The PaddleOCR pattern: target shapes computed by integer arithmetic on Shape outputs.

    Input "x" ["N",4,8,8] → "out" ["N",4,128]. Shape → Slice → Div/Mul/ReduceProd → Concat
    feeds a Reshape, an Expand of a positional table and a ConstantOfShape bias.

    Stock TVM 0.27 rejects it because of the ReduceProd over a shape slice; Div and Mul on
    shape slices alone import fine. With "N" pinned: ``TypeError: Reshape requires the input
    new shape to be Shape. However, the given one is relax.TensorType``; with "N" symbolic:
    ``relax.concat ... expects the input to be a Tuple of Tensors. However, the given input
    is T.Tuple(R.Shape([N]), R.Tensor((T.int64(1),), ...), ...)``.
    """
    g = _Graph(seed=7)
    y = g.op("Relu", [g.conv("x", 4, 8)])  # [N,8,8,8]
    shape = g.op("Shape", [y])
    batch = g.op("Slice", [shape, g.ints(0), g.ints(1)])
    half_channels = g.op("Div", [g.op("Slice", [shape, g.ints(1), g.ints(2)]), g.ints(2)])
    area = g.op("ReduceProd", [g.op("Slice", [shape, g.ints(2), g.ints(4)])], keepdims=1)
    length = g.op("Mul", [area, g.ints(2)])
    target = g.op("Concat", [batch, half_channels, length], axis=0)  # [N, 4, 128]
    tokens = g.op("Reshape", [y, target])
    position_table = g.const((g.rng.standard_normal((1, 1, 128)) * 0.1).astype(np.float32))
    positions = g.op("Expand", [position_table, target])
    bias_shape = g.op("Concat", [batch, half_channels, g.ints(1)], axis=0)
    half = numpy_helper.from_array(np.array([0.5], np.float32))
    bias = g.op("ConstantOfShape", [bias_shape], value=half)
    summed = g.op("Add", [g.op("Add", [tokens, positions]), bias])
    out = g.op("Softmax", [summed], axis=-1)
    return g.model("shape_subgraph_net", [_float_input("x", ["N", 4, 8, 8])], {"out": out},
                   {"out": _float_output(["N", 4, 128])})


def dynamic_dims_net() -> onnx.ModelProto:
    """A fully convolutional segmenter/detector exported with batch, height and width dynamic.

    Input "x" ["N",3,"H","W"] → "heatmap" ["N",4,?,?] (stride 2). Users pin the dims, e.g.
    ``--input x:1,3,64,64``.
    """
    g = _Graph(seed=8)
    y = g.op("Relu", [g.conv("x", 3, 8)])
    y = g.op("Relu", [g.conv(y, 8, 8, stride=2)])
    heatmap = g.conv(y, 8, 4, kernel=1)
    return g.model("dynamic_dims_net", [_float_input("x", ["N", 3, "H", "W"])],
                   {"heatmap": heatmap}, {"heatmap": _float_output(["N", 4, None, None])})


def unsupported_op_net() -> onnx.ModelProto:
    """An audio front end whose DFT node TVM's Relax ONNX importer has no converter for.

    Input "signal" [1,64] → "features" [1,8]. Unsqueeze → DFT (node "spectrum_dft", onesided)
    → power spectrum (Mul, ReduceSum) → MatMul+Add. onnxruntime runs it; stock TVM 0.27
    raises ``tvm.error.OpNotImplemented: The following operators are not supported for
    frontend ONNX: DFT``, naming neither the node nor the opset.
    """
    g = _Graph(seed=9)
    frames = g.op("Unsqueeze", ["signal", g.ints(-1)])  # [1,64,1], a real signal
    spectrum = g.op("DFT", [frames], name="spectrum_dft", axis=1, onesided=1)  # [1,33,2]
    power = g.op("ReduceSum", [g.op("Mul", [spectrum, spectrum]), g.ints(-1)], keepdims=0)
    features = g.op("Add", [g.op("MatMul", [power, g.weight((33, 8), 33 * 64)]),
                            g.const(np.zeros(8, np.float32))])
    return g.model("unsupported_op_net", [_float_input("signal", [1, 64])],
                   {"features": features}, {"features": _float_output([1, 8])})


def save_with_external_data(model: onnx.ModelProto, path: str | Path) -> Path:
    """Save ``model`` at ``path`` with every initializer in one ``<name>.data`` file beside it.

    The caller's model is left untouched (onnx rewrites tensors in place while saving).
    """
    path = Path(path)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=0)
    return path


def _gather_table_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """For graph inputs used as Gather indices into an initializer: the table's row count."""
    tables = {t.name: t.dims for t in model.graph.initializer}
    sizes = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in tables:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            sizes[node.input[1]] = tables[node.input[0]][axis]
    return sizes


def random_inputs(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int] | int] | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """A feed for every graph input, with the input's dtype.

    ``shapes`` maps an input name to its full shape, or a symbolic dim name (e.g. "N") to a
    size; other symbolic dims are 1. Floats are standard normal, bools fair coin flips, and
    integers index validly into the Gather table they feed (else lie in [0, 10)).
    """
    shapes = dict(shapes or {})
    rng = np.random.default_rng(seed)
    table_sizes = _gather_table_sizes(model)
    initializer_names = {t.name for t in model.graph.initializer}
    feed = {}
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        if value.name in shapes:
            shape = tuple(shapes[value.name])
        else:
            shape = tuple(
                dim.dim_value if dim.HasField("dim_value") else int(shapes.get(dim.dim_param, 1))
                for dim in tensor_type.shape.dim
            )
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if dtype == np.bool_:
            feed[value.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            feed[value.name] = rng.integers(0, table_sizes.get(value.name, 10), shape, dtype=dtype)
        else:
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
    return feed


ALL_BUILDERS = (
    conv_net, resnet_block_net, mobilenet_style_net, mlp, multi_io_net, int64_inputs_net,
    dynamic_reshape_net, shape_subgraph_net, dynamic_dims_net, unsupported_op_net,
)

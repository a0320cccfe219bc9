"""LSTM, GRU, RNN and DynamicQuantizeLSTM rewritten into standard ops match onnxruntime.

The rewrite itself is checked by running the rewritten ONNX graph in onnxruntime (every variant,
fast); a few variants go end to end through ``relaycomp.compile`` and the runtime. onnxruntime
refuses ``layout=1``; there the reference is the ``layout=0`` model on transposed data.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import relaycomp
from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decompose_graph
from relaycomp.runtime.reference import compare

onnxruntime.set_default_logger_severity(3)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(kind: str, *, steps=4, batch=3, size=5, hidden=6, direction="forward",
                    layout=0, lengths=None, initial=False, peepholes=False, clip=None,
                    activations=None, alphas=None, betas=None, before_reset=0, seed=0,
                    opset=14):
    """One ``kind`` node with constant weights; returns (model, feeds)."""
    rng = np.random.default_rng(seed)
    gates, directions = GATES[kind], 2 if direction == "bidirectional" else 1
    weights = {"W": (directions, gates * hidden, size), "R": (directions, gates * hidden, hidden),
               "B": (directions, 2 * gates * hidden)}
    if peepholes:
        weights["P"] = (directions, 3 * hidden)
    initializers = [helper.make_tensor(name, TensorProto.FLOAT, shape,
                                       (rng.normal(size=shape) * 0.5).astype(np.float32).ravel())
                    for name, shape in weights.items()]
    x_shape = (batch, steps, size) if layout else (steps, batch, size)
    feeds = {"X": rng.normal(size=x_shape).astype(np.float32)}
    inputs = ["X", "W", "R", "B", "", ""] + (["", ""] if kind == "LSTM" else [])
    if lengths is not None:
        feeds["L"] = np.array(lengths, np.int32)
        inputs[4] = "L"
    if initial:
        state = (batch, directions, hidden) if layout else (directions, batch, hidden)
        for index, name in enumerate(["h0", "c0"] if kind == "LSTM" else ["h0"]):
            feeds[name] = rng.normal(size=state).astype(np.float32)
            inputs[5 + index] = name
    if peepholes:
        inputs[7] = "P"
    while inputs[-1] == "":
        inputs.pop()
    attrs = {"hidden_size": hidden, "direction": direction}
    if opset >= 14:
        attrs["layout"] = layout
    if clip is not None:
        attrs["clip"] = clip
    if kind == "GRU":
        attrs["linear_before_reset"] = before_reset
    for name, value in (("activations", activations), ("activation_alpha", alphas),
                        ("activation_beta", betas)):
        if value:
            attrs[name] = value
    outputs = ["Y", "Y_h", "Y_c"][:3 if kind == "LSTM" else 2]
    graph = helper.make_graph(
        [helper.make_node(kind, inputs, outputs, **attrs)], "recurrent",
        [helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(v.dtype),
                                       v.shape) for name, v in feeds.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), feeds


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """onnxruntime's outputs in graph order."""
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def reference(kind: str, feeds: dict, **options) -> list[np.ndarray]:
    """onnxruntime's outputs; for ``layout=1`` computed time-major and transposed back."""
    if not options.get("layout"):
        return run_ort(recurrent_model(kind, **options)[0], feeds)
    model, _ = recurrent_model(kind, **{**options, "layout": 0})
    major = {name: value.transpose(1, 0, 2) if value.ndim == 3 else value
             for name, value in feeds.items()}
    y, *states = run_ort(model, major)
    return [y.transpose(2, 0, 1, 3)] + [s.transpose(1, 0, 2) for s in states]


def rewritten(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model after decomposition (the caller's copy untouched)."""
    opset = model.opset_import[0].version
    result, report = decompose_graph(onnx.ModelProto.FromString(model.SerializeToString()), opset)
    onnx.checker.check_model(result)  # valid at the model's own opset
    assert sum(report.values()) >= 1
    assert not {n.op_type for n in result.graph.node} & {"LSTM", "GRU", "RNN"}
    return result


def assert_close(actual: list[np.ndarray], expected: list[np.ndarray], rtol=1e-5) -> None:
    """Same shapes, and each output within ``rtol`` of the reference's largest magnitude."""
    for got, want in zip(actual, expected, strict=True):
        assert got.shape == want.shape
        worst = compare({"y": got}, {"y": want})["y"]["max_rel"]
        assert worst <= rtol, worst


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]])
@pytest.mark.parametrize("initial", [False, True])
def test_rewrite_matches_onnxruntime(kind, direction, layout, lengths, initial):
    # initial states come with clip, GRU's linear_before_reset and LSTM's peepholes
    options = {"direction": direction, "layout": layout, "lengths": lengths, "initial": initial,
                   "peepholes": kind == "LSTM", "clip": 1.5 if initial else None,
                   "before_reset": int(initial)}
    model, feeds = recurrent_model(kind, **options)
    assert_close(run_ort(rewritten(model), feeds), reference(kind, feeds, **options))


@pytest.mark.parametrize("opset", [9, 10, 12])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_rewrite_at_older_opsets(kind, opset):
    # before opset 13 Squeeze/Unsqueeze/Split take attributes; before 11 no GatherElements
    options = {"direction": "bidirectional", "lengths": [4, 2, 1], "initial": True, "clip": 1.0,
                   "opset": opset}
    model, feeds = recurrent_model(kind, **options)
    assert_close(run_ort(rewritten(model), feeds), reference(kind, feeds, **options))


@pytest.mark.parametrize("kind, direction, activations, alphas, betas", [
    ("LSTM", "forward", ["HardSigmoid", "ScaledTanh", "Affine"], [0.3, 0.8, 0.9],
     [0.4, 1.1, 0.2]),
    ("GRU", "bidirectional", ["LeakyRelu", "Elu", "Softsign", "Softplus"], [0.2, 0.5], None),
    ("GRU", "forward", ["HardSigmoid", "Tanh"], [0.3], None),  # beta left at its default
    ("RNN", "bidirectional", ["Relu", "ThresholdedRelu"], [0.1], None),
])
def test_non_default_activations(kind, direction, activations, alphas, betas):
    options = {"direction": direction, "activations": activations, "alphas": alphas, "betas": betas}
    model, feeds = recurrent_model(kind, **options)
    assert_close(run_ort(rewritten(model), feeds), reference(kind, feeds, **options))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_weights_known_only_at_run_time(kind):
    # as in QDQ models, where W and R come out of DequantizeLinear
    options = {"direction": "bidirectional", "lengths": [4, 2, 1], "initial": True,
               "peepholes": kind == "LSTM", "before_reset": 1}
    model, feeds = recurrent_model(kind, **options)
    expected = run_ort(model, feeds)
    for init in list(model.graph.initializer):
        feeds[init.name] = numpy_helper.to_array(init)
        model.graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT,
                                                               list(init.dims)))
    del model.graph.initializer[:]
    assert_close(run_ort(rewritten(model), feeds), expected)


def test_lstm_input_forget_couples_the_forget_gate():
    options = {"direction": "bidirectional", "lengths": [4, 2, 1], "initial": True,
               "peepholes": True}
    model, feeds = recurrent_model("LSTM", **options)
    model.graph.node[0].attribute.append(helper.make_attribute("input_forget", 1))
    expected = run_ort(model, feeds)
    assert_close(run_ort(rewritten(model), feeds), expected)


def test_inspect_lists_recurrent_ops_as_supported_and_counts_their_macs():
    model, feeds = recurrent_model("LSTM", steps=4, batch=3, size=5, hidden=6,
                                   direction="bidirectional")
    info = relaycomp.model_info(model, {name: v.shape for name, v in feeds.items()})
    assert info.unsupported == []
    assert info.op_counts == {"LSTM": 1}
    # per direction: input projection 4*3 rows x 5 x 24, recurrent 3 x 6 x 24 per step but the
    # first (its zero initial state times R folds to a constant)
    assert info.macs == 2 * (4 * 3 * 5 * 24 + 3 * 3 * 6 * 24)


def test_import_report_counts_decomposed_nodes():
    model, feeds = recurrent_model("GRU", direction="bidirectional")
    imported = relaycomp.import_onnx(model, {name: v.shape for name, v in feeds.items()})
    assert imported.report["nodes_decomposed"] == {"GRU": 1}


def test_input_projection_is_one_matmul_per_direction():
    model, _ = recurrent_model("LSTM", steps=5, direction="bidirectional")
    ops = [n.op_type for n in rewritten(model).graph.node]
    # 2 input projections + one recurrent MatMul per step and direction
    assert ops.count("MatMul") == 2 + 2 * 5


@pytest.mark.parametrize("kind, options", [
    ("LSTM", {"direction": "bidirectional", "lengths": [4, 3, 1], "initial": True,
              "peepholes": True}),
    ("GRU", {"direction": "reverse", "layout": 1, "lengths": [2, 4, 3], "before_reset": 1,
             "clip": 2.0}),
    ("RNN", {"direction": "bidirectional", "initial": True}),
])
def test_compiled_matches_onnxruntime(kind, options, tmp_path):
    model, feeds = recurrent_model(kind, **options)
    artifact = relaycomp.compile(model, tmp_path / "model.so",
                                 inputs={name: v.shape for name, v in feeds.items()})
    actual = relaycomp.load(artifact.path).run(feeds)
    assert list(actual) == [o.name for o in model.graph.output]
    assert_close(list(actual.values()), reference(kind, feeds, **options), rtol=1e-4)


def _dynamic_quantized_lstm(tmp_path, per_channel: bool):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, feeds = recurrent_model("LSTM", steps=5, batch=2, size=16, hidden=16,
                                   direction="bidirectional", initial=True)
    onnx.save(model, tmp_path / "float.onnx")
    quantize_dynamic(str(tmp_path / "float.onnx"), str(tmp_path / "int8.onnx"),
                     weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=["LSTM"])
    quantized = onnx.load(tmp_path / "int8.onnx")
    assert [n.op_type for n in quantized.graph.node] == ["DynamicQuantizeLSTM"]
    return quantized, feeds


def _dequantized_float_lstm(quantized: onnx.ModelProto) -> onnx.ModelProto:
    """The plain LSTM with the quantized model's weights dequantized: the same math as the
    rewrite, in onnxruntime's own LSTM kernel."""
    values = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer}
    node = quantized.graph.node[0]
    names = list(node.input)
    weights = []
    for q, s, z in ((1, 8, 9), (2, 10, 11)):
        scale = values[names[s]].reshape(2, 1, -1).astype(np.float32)
        zero = values[names[z]].reshape(2, 1, -1).astype(np.float32)
        weights.append(((values[names[q]] - zero) * scale).transpose(0, 2, 1))
    initializers = [onnx.numpy_helper.from_array(weights[0].astype(np.float32), "Wf"),
                    onnx.numpy_helper.from_array(weights[1].astype(np.float32), "Rf"),
                    onnx.numpy_helper.from_array(values[names[3]], "Bf")]
    lstm = helper.make_node("LSTM", [names[0], "Wf", "Rf", "Bf", *names[4:7]],
                            list(node.output))
    lstm.attribute.extend(node.attribute)
    graph = helper.make_graph([lstm], "float", list(quantized.graph.input),
                              list(quantized.graph.output), initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_quantize_lstm_is_its_dequantized_lstm(per_channel, tmp_path):
    quantized, feeds = _dynamic_quantized_lstm(tmp_path, per_channel)
    expected = run_ort(_dequantized_float_lstm(quantized), feeds)
    assert_close(run_ort(rewritten(quantized), feeds), expected)
    # onnxruntime's kernel also quantizes the activations: close, not equal
    assert_close(run_ort(rewritten(quantized), feeds), run_ort(quantized, feeds), rtol=0.05)


def test_dynamic_quantize_lstm_compiles(tmp_path):
    quantized, feeds = _dynamic_quantized_lstm(tmp_path, per_channel=True)
    artifact = relaycomp.compile(quantized, tmp_path / "model.so",
                                 inputs={name: v.shape for name, v in feeds.items()})
    actual = list(relaycomp.load(artifact.path).run(feeds).values())
    assert_close(actual, run_ort(_dequantized_float_lstm(quantized), feeds), rtol=1e-4)


def crnn_model(seed: int = 0) -> onnx.ModelProto:
    """An OCR-style CRNN as PyTorch exports it: conv, pool, a reshape whose target is computed
    from Shape, a bidirectional LSTM, then a per-step classifier."""
    rng = np.random.default_rng(seed)

    def weight(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)

    ints = {"zero": [0], "features": [16], "minus_one": [-1], "width": [8]}
    initializers = [weight("conv_w", 4, 1, 3, 3), weight("conv_b", 4),
                    weight("W", 2, 32, 16), weight("R", 2, 32, 8), weight("B", 2, 64),
                    weight("fc_w", 16, 10), weight("fc_b", 10)]
    initializers += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in ints.items()]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["pool"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "features", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["pool", "target"], ["flat"]),          # [N, C*H, W]
        helper.make_node("Transpose", ["flat"], ["steps"], perm=[2, 0, 1]),  # [W, N, C*H]
        helper.make_node("LSTM", ["steps", "W", "R", "B"], ["Y"], hidden_size=8,
                         direction="bidirectional"),
        helper.make_node("Transpose", ["Y"], ["by_batch"], perm=[2, 0, 1, 3]),
        helper.make_node("Concat", ["batch", "width", "minus_one"], ["target2"], axis=0),
        helper.make_node("Reshape", ["by_batch", "target2"], ["seq"]),      # [N, W, 2*H]
        helper.make_node("MatMul", ["seq", "fc_w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_crnn_compiles_and_matches_onnxruntime(tmp_path):
    model = crnn_model()
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 16)).astype(np.float32)
    artifact = relaycomp.compile(model, tmp_path / "model.so", inputs={"x": x.shape})
    (actual,) = relaycomp.load(artifact.path).run({"x": x}).values()
    assert_close([actual], run_ort(model, {"x": x}), rtol=1e-4)


@pytest.mark.slow  # calibration and the int8 build take a while
def test_crnn_quantized_to_int8_stays_close(tmp_path):
    from relaycomp.quantize.quantizer import QuantConfig

    model = crnn_model()
    rng = np.random.default_rng(2)
    calibration = {"x": rng.normal(size=(32, 1, 8, 16)).astype(np.float32)}
    artifact = relaycomp.compile(model, tmp_path / "model.so", inputs={"x": (1, 1, 8, 16)},
                                 quantize=QuantConfig(), calibration=calibration)
    loaded = relaycomp.load(artifact.path)
    for sample in rng.normal(size=(4, 1, 1, 8, 16)).astype(np.float32):
        (actual,) = loaded.run({"x": sample}).values()
        (expected,) = run_ort(model, {"x": sample})
        cosine = np.sum(actual * expected) / np.linalg.norm(actual) / np.linalg.norm(expected)
        assert cosine >= 0.99, cosine
        assert_close([actual], [expected], rtol=0.1)  # the CLI's --check tolerance for int8


def test_sequence_longer_than_the_limit_is_refused():
    from relaycomp.frontend.decompose import recurrent

    model, _ = recurrent_model("RNN", steps=recurrent.MAX_STEPS + 1, batch=1, size=1, hidden=1)
    with pytest.raises(OnnxImportError, match="too long to unroll"):
        decompose_graph(model, 14)

"""onnxruntime QOperator models (QLinearConv, QGemm, com.microsoft QLinear* ops) and
quantize_dynamic models (MatMulInteger, ConvInteger) import, compile to integer kernels and
match onnxruntime.

References: onnxruntime running the original QOperator model (its fused integer kernels), and
onnxruntime running our QDQ rewrite op by op (exact Q/DQ, float compute between) - the
mathematical definition the integer kernels must reproduce.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import op_counts, run_cli
from models import conv_net, mlp, mobilenet_style_net, random_inputs, resnet_block_net
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from qdq import ort_run

import relaycomp
from relaycomp.errors import OnnxImportError
from relaycomp.frontend.model_info import model_info
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.frontend.qoperator import CONVERTERS, convert_qoperator

MODELS = {"conv_net": conv_net, "resnet_block_net": resnet_block_net,
          "mobilenet_style_net": mobilenet_style_net, "mlp": mlp}
# reduce_range: 7-bit weights, what onnxruntime recommends on AVX2 CPUs without VNNI.
SCHEMES = {"per_tensor": {"per_channel": False},
           "per_channel_7bit": {"per_channel": True, "reduce_range": True},
           "per_channel": {"per_channel": True}}
CONTRACTIONS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger")
MS = "com.microsoft"


class _RandomBatches(CalibrationDataReader):
    def __init__(self, model: onnx.ModelProto, count: int = 8):
        self._batches = iter([random_inputs(model, seed=seed) for seed in range(count)])

    def get_next(self):
        return next(self._batches, None)


@functools.cache
def ort_qoperator(name: str, scheme: str) -> onnx.ModelProto:
    """``MODELS[name]`` quantized by onnxruntime in QOperator format (uint8 activations, int8
    weights) after its usual pre-processing."""
    model = MODELS[name]()
    with tempfile.TemporaryDirectory() as folder:
        float_path, pre_path, out_path = (Path(folder) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        onnx.save(model, float_path)
        quant_pre_process(str(float_path), str(pre_path), skip_symbolic_shape=True)
        quantize_static(str(pre_path), str(out_path), _RandomBatches(model),
                        quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, **SCHEMES[scheme])
        return onnx.load(str(out_path))


def ort_dynamic(model: onnx.ModelProto, op_types: list[str]) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as folder:
        float_path, out_path = Path(folder) / "f.onnx", Path(folder) / "q.onnx"
        onnx.save(model, float_path)
        quantize_dynamic(str(float_path), str(out_path), weight_type=QuantType.QInt8,
                         op_types_to_quantize=op_types)
        return onnx.load(str(out_path))


def compile_and_run(model: onnx.ModelProto, inputs: dict, folder: Path):
    """Our compiled output and the integer rewrites lower_qdq_to_integer made."""
    artifact = relaycomp.compile(model, folder / "q.so",
                                 inputs={k: v.shape for k, v in inputs.items()})
    fired = artifact.pipeline.facts("lower_qdq_to_integer")
    return next(iter(relaycomp.load(artifact.path).run(inputs).values())), fired


def qdq_rewrite(model: onnx.ModelProto) -> onnx.ModelProto:
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    convert_qoperator(rewritten)
    return rewritten


def output_step(model: onnx.ModelProto) -> float:
    """The scale of the final DequantizeLinear: one quantization step of the output."""
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"][-1]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(inits[dequantize.input[1]].reshape(-1)[0])


# --- onnxruntime-quantized test models -------------------------------------------------------

@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("name", list(MODELS))
def test_qoperator_model_runs_on_integer_kernels(name, scheme, tmp_path):
    model = ort_qoperator(name, scheme)
    assert op_counts(model)["QLinearConv"] + op_counts(model)["QGemm"] > 0
    inputs = random_inputs(model, seed=100)
    actual, fired = compile_and_run(model, inputs, tmp_path)
    # Every conv and Gemm of the QOperator model became a uint8 x int8 -> int32 kernel (a
    # strided depthwise conv sums the same integers in float32: see lower_qdq_to_integer).
    contractions = sum(op_counts(model)[op] for op in CONTRACTIONS)
    assert fired.get("conv2d_int8", 0) + fired.get("matmul_int8", 0) == contractions
    # The integer kernels compute what the QDQ form defines; products and sums are exact, only
    # the float rescale may round a value to the neighbouring step.
    step = output_step(model)
    exact = ort_run(qdq_rewrite(model), inputs, optimized=False)
    assert np.abs(actual - exact).max() / step <= 2
    kernels = ort_run(model, inputs)  # onnxruntime's QLinearConv/QGemm/... kernels
    assert np.argmax(actual, -1).tolist() == np.argmax(kernels, -1).tolist()
    if scheme != "per_channel":
        # Full-range per-channel weights make onnxruntime's AVX2 u8s8 kernels (vpmaddubsw)
        # saturate int16 pair sums, so its outputs leave the QDQ definition (up to 22 steps
        # measured on mobilenet_style_net); 7-bit or per-tensor weights do not.
        steps = np.abs(actual - kernels).max() / step
        assert steps <= 2, f"{steps:.1f} output steps from onnxruntime"


def test_import_reports_the_rewrite_and_leaves_no_qoperator_op():
    imported = import_onnx(ort_qoperator("resnet_block_net", "per_channel"))
    assert imported.report["qoperator_nodes_converted"] == {
        "QLinearConv": 6, "QLinearAdd": 2, "QLinearGlobalAveragePool": 1, "QGemm": 1}
    left = op_counts(imported.onnx_model)
    assert not any(op.startswith("QLinear") or op == "QGemm" for op in left)
    assert all(n.domain in ("", "ai.onnx") for n in imported.onnx_model.graph.node)


def test_inspect_counts_a_qoperator_model_as_supported():
    quantized = model_info(ort_qoperator("conv_net", "per_tensor"))
    assert quantized.unsupported == []
    assert quantized.macs == model_info(conv_net()).macs


def test_qlinear_conv_becomes_dequantize_conv_quantize_with_int8_weights():
    model = qdq_rewrite(ort_qoperator("conv_net", "per_channel"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    data, weight, bias = (producers.get(name) for name in conv.input)
    assert data.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear"
    assert inits[weight.input[0]].dtype == np.int8
    assert helper.get_attribute_value(weight.attribute[0]) == 0  # per-channel axis kept
    assert bias is None and inits[conv.input[2]].dtype == np.float32
    quantize = next(n for n in model.graph.node if conv.output[0] in n.input)
    assert quantize.op_type == "QuantizeLinear"


def test_int32_bias_is_dequantized_exactly():
    original = ort_qoperator("conv_net", "per_channel")
    first = next(n for n in original.graph.node if n.op_type == "QLinearConv")
    inits = {i.name: numpy_helper.to_array(i) for i in original.graph.initializer}
    b, s_x, s_w = (inits[first.input[i]].astype(np.float64) for i in (8, 1, 4))
    model = qdq_rewrite(original)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    bias = next(numpy_helper.to_array(i) for i in model.graph.initializer
                if i.name == conv.input[2])
    np.testing.assert_array_equal(bias, (b * s_x * s_w).astype(np.float32))


# --- hand-built QOperator ops the test models do not produce ---------------------------------

def _qoperator_chain() -> onnx.ModelProto:
    """QuantizeLinear -> QLinearConcat -> QLinearLeakyRelu -> QLinearSigmoid ->
    QLinearAveragePool -> Reshape (uint8) -> QLinearMatMul (per-column int8 weight) ->
    QLinearSoftmax -> DequantizeLinear."""
    rng = np.random.default_rng(0)
    # 7-bit weights (onnxruntime's reduce_range): its AVX2 u8s8 kernels saturate on wider ones.
    weight = rng.integers(-63, 64, (16, 10)).astype(np.int8)
    weight[0] = 63
    inits = {
        "s_x": np.float32(0.05), "z_x": np.uint8(128), "s_c": np.float32(0.06),
        "z_c": np.uint8(120), "s_l": np.float32(0.04), "z_l": np.uint8(30),
        "s_s": np.float32(1 / 256), "z_s": np.uint8(0), "s_p": np.float32(1 / 300),
        "z_p": np.uint8(10), "shape": np.array([8, 16], np.int64), "w": weight,
        "s_w": rng.uniform(0.01, 0.02, 10).astype(np.float32), "z_w": np.zeros(10, np.int8),
        "s_m": np.float32(0.15), "z_m": np.uint8(100), "s_y": np.float32(1 / 256),
        "z_y": np.uint8(0),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["xq"]),
        helper.make_node("QLinearConcat", ["s_c", "z_c", "xq", "s_x", "z_x", "xq", "s_x", "z_x"],
                         ["cat"], name="concat", domain=MS, axis=1),
        helper.make_node("QLinearLeakyRelu", ["cat", "s_c", "z_c", "s_l", "z_l"], ["leaky"],
                         name="leaky", domain=MS, alpha=0.1),
        helper.make_node("QLinearSigmoid", ["leaky", "s_l", "z_l", "s_s", "z_s"], ["sig"],
                         name="sigmoid", domain=MS),
        helper.make_node("QLinearAveragePool", ["sig", "s_s", "z_s", "s_p", "z_p"], ["pool"],
                         name="pool", domain=MS, kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["pool", "shape"], ["rows"]),
        helper.make_node("QLinearMatMul", ["rows", "s_p", "z_p", "w", "s_w", "z_w", "s_m", "z_m"],
                         ["mm"], name="matmul"),
        helper.make_node("QLinearSoftmax", ["mm", "s_m", "z_m", "s_y", "z_y"], ["soft"],
                         name="softmax", domain=MS, axis=-1, opset=13),
        helper.make_node("DequantizeLinear", ["soft", "s_y", "z_y"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 10])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(MS, 1)])


def test_every_other_qlinear_op_matches_onnxruntime(tmp_path):
    model = _qoperator_chain()
    inputs = {"x": np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)}
    actual, fired = compile_and_run(model, inputs, tmp_path)
    assert fired.get("matmul_int8") == 1
    steps = np.abs(actual - ort_run(model, inputs)).max() * 256
    assert steps <= 2, f"{steps} output steps from onnxruntime"


def test_qgemm_without_output_scale_returns_float(tmp_path):
    rng = np.random.default_rng(2)
    weight = rng.integers(-63, 64, (10, 32)).astype(np.int8)  # transB: N x K, per row (N)
    weight[:, 0] = 63
    inits = {"s_x": np.float32(0.03), "z_x": np.uint8(110), "w": weight,
             "s_w": rng.uniform(0.01, 0.02, 10).astype(np.float32), "z_w": np.zeros(10, np.int8),
             "b": rng.integers(-3000, 3000, 10).astype(np.int32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["xq"]),
             helper.make_node("QGemm", ["xq", "s_x", "z_x", "w", "s_w", "z_w", "b"], ["y"],
                              name="gemm", domain=MS, transB=1)]
    graph = helper.make_graph(
        nodes, "qgemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 10])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(MS, 1)])
    inputs = {"x": np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)}
    actual, fired = compile_and_run(model, inputs, tmp_path)
    assert fired == {"matmul_int8": 1}
    expected = ort_run(model, inputs)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_an_unsupported_quantized_op_is_named(tmp_path):
    model = _qoperator_chain()
    model.graph.node[3].op_type = "QLinearWhere"
    with pytest.raises(OnnxImportError, match=r"QLinearWhere \(node 'sigmoid'\)") as err:
        import_onnx(model)
    assert "QLinearConv" in err.value.hint and len(CONVERTERS) >= 12
    assert model_info(model).unsupported == ["QLinearWhere (node 'sigmoid')"]
    onnx.save(model, tmp_path / "where.onnx")
    result = run_cli("compile", tmp_path / "where.onnx", "-o", tmp_path / "m.so")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "QLinearWhere (node 'sigmoid')" in result.stderr


def test_cli_compiles_a_qoperator_file(tmp_path):
    onnx.save(ort_qoperator("mlp", "per_tensor"), tmp_path / "mlp_qop.onnx")
    result = run_cli("compile", tmp_path / "mlp_qop.onnx", "-o", tmp_path / "m.so")
    assert result.returncode == 0, result.stderr
    model = relaycomp.load(tmp_path / "m.so")
    inputs = random_inputs(ort_qoperator("mlp", "per_tensor"), seed=100)
    actual = next(iter(model.run(inputs).values()))
    expected = ort_run(ort_qoperator("mlp", "per_tensor"), inputs)
    assert np.abs(actual - expected).max() <= 2 / 256  # softmax output: 1/256 steps


# --- quantize_dynamic ------------------------------------------------------------------------

def test_dynamic_mlp_runs_on_integer_kernels(tmp_path):
    model = ort_dynamic(mlp(), ["MatMul"])
    assert op_counts(model)["MatMulInteger"] == 3
    inputs = random_inputs(model, seed=100)
    actual, fired = compile_and_run(model, inputs, tmp_path)
    assert fired.get("matmul_int8") == 3
    expected = ort_run(model, inputs)
    np.testing.assert_allclose(actual, expected, atol=1e-6, rtol=0)
    assert np.argmax(actual, -1).tolist() == np.argmax(expected, -1).tolist()


def test_dynamic_conv_integer_is_exact(tmp_path):
    model = ort_dynamic(conv_net(), ["Conv", "MatMul"])
    assert op_counts(model)["ConvInteger"] == 2
    inputs = random_inputs(model, seed=100)
    actual, fired = compile_and_run(model, inputs, tmp_path)
    assert fired == {"conv2d_int8": 2, "matmul_int8": 1}
    expected = ort_run(model, inputs)
    np.testing.assert_allclose(actual, expected, atol=1e-5 * np.abs(expected).max(), rtol=0)


def _integer_contraction(op: str, weight: np.ndarray, x_shape: list[int]) -> onnx.ModelProto:
    """x -> DynamicQuantizeLinear -> op(x_q, W int8, z_x) -> int32 output; convs are padded
    (the padding is of x - z_x: zero) and strided."""
    attrs = {"pads": [1, 1, 1, 1], "strides": [2, 1]} if op == "ConvInteger" else {}
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "sx", "zx"]),
             helper.make_node(op, ["xq", "w", "zx"], ["y"], name="contraction", **attrs)]
    out_shape = [x_shape[0], weight.shape[1]] if op == "MatMulInteger" else None
    graph = helper.make_graph(
        nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.INT32, out_shape)],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op, weight_shape, x_shape, float32_exact", [
    ("MatMulInteger", (64, 8), [4, 64], True),
    ("MatMulInteger", (1024, 8), [4, 1024], False),   # K * 255 * 127 >= 2^24
    ("ConvInteger", (4, 8, 3, 3), [1, 8, 6, 6], True),
    ("ConvInteger", (4, 64, 3, 3), [1, 64, 6, 6], False),
])
def test_integer_contractions_are_bit_exact(op, weight_shape, x_shape, float32_exact, tmp_path):
    weight = np.random.default_rng(0).integers(-127, 128, weight_shape).astype(np.int8)
    model = _integer_contraction(op, weight, x_shape)
    rewritten = op_counts(qdq_rewrite(model))
    if op == "MatMulInteger":  # beyond float32's exact range TVM's int32 MatMulInteger stays
        assert (rewritten["MatMulInteger"] == 0) == float32_exact
    else:  # else a float64 conv
        assert (rewritten["Cast"] == 2) == float32_exact, rewritten
    x = np.random.default_rng(1).uniform(-1, 3, x_shape).astype(np.float32)
    actual, fired = compile_and_run(model, {"x": x}, tmp_path)
    kernel = "matmul_int8" if op == "MatMulInteger" else "conv2d_int8"
    assert fired.get(kernel, 0) == (1 if float32_exact else 0)
    assert actual.dtype == np.int32
    # ONNX's reference implementation: the integer definition. (onnxruntime's AVX2 u8s8
    # MatMulInteger saturates int16 pair sums on full-range weights: not a reference here.)
    np.testing.assert_array_equal(actual, ReferenceEvaluator(model).run(None, {"x": x})[0])

"""int8 quantization end to end: config, data validation, accuracy on real digits, test models,
weight-only, keep-float, the accuracy guard, the report and the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import ort_outputs, run_cli
from models import mlp, mobilenet_style_net, resnet_block_net

import relaycomp
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.errors import CalibrationError
from relaycomp.frontend.examples import get_example
from relaycomp.frontend.inputs import load_batches
from relaycomp.frontend.onnx_import import TensorSpec
from relaycomp.quantize.quantizer import (
    QuantConfig,
    QuantizeError,
    QuantReport,
    quantize,
    weight_params,
)

X = [TensorSpec("x", (2, 3), "float32")]


def random_samples(count: int, shape=(3, 32, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)


def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 360 test digits of tools/make_digits_example.py's split (the CNN never saw them)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    _, test_images, _, test_labels = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=0)
    return test_images, test_labels


def run_batches(artifact, name: str, samples: np.ndarray, batch: int) -> np.ndarray:
    model = relaycomp.load(artifact.path)
    return np.concatenate([model.run({name: samples[i:i + batch]})[model.manifest.outputs[0].name]
                           for i in range(0, len(samples), batch)])


def integer_contractions(dump: Path) -> int:
    """conv2d/matmul calls on integers after lower_qdq_to_integer (none left float): int32
    accumulators, or float32 ones for a depthwise conv (same integers, summed exactly)."""
    after = next(dump.glob("*_quantize_lower_qdq_to_integer.py")).read_text()
    calls = [line for line in after.splitlines() if "R.nn.conv2d(" in line or "R.matmul(" in line]
    assert all('out_dtype="int32"' in line or _depthwise(line) for line in calls), \
        "a float contraction is left"
    return len(calls)


def _depthwise(conv: str) -> bool:
    groups = re.search(r"groups=(\d+)", conv)
    return groups is not None and int(groups[1]) > 1 and 'out_dtype="float32"' in conv


def model_layers(model) -> list[str]:
    from relaycomp.frontend.layer_names import onnx_layer_names
    from relaycomp.quantize.quantizer import QUANTIZED_OPS

    return onnx_layer_names(model, QUANTIZED_OPS)


# --- configuration and data -------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"dtype": "int4"}, "unsupported quantization dtype"),
    ({"calibration": "kl"}, "unknown calibration method"),
    ({"activations": "signed"}, "unknown activation scheme"),
    ({"max_accuracy_drop": 1.5}, "max_accuracy_drop must be in"),
])
def test_config_refuses_bad_options(options, message):
    with pytest.raises(Exception, match=message):
        QuantConfig(**options)


def test_data_forms_single_stacked_samples_directory_and_iterable(tmp_path):
    one = np.ones((2, 3), np.float32)
    assert len(load_batches({"x": one}, X)[0]) == 1
    assert len(load_batches({"x": np.stack([one] * 5)}, X)[0]) == 5  # K batches stacked
    assert len(load_batches({"x": np.ones((8, 3), np.float32)}, X)[0]) == 4  # samples
    np.save(tmp_path / "x.npy", np.stack([one] * 3))
    assert len(load_batches(tmp_path, X)[0]) == 3
    np.savez(tmp_path / "d.npz", x=np.stack([one] * 2), labels=np.arange(4))
    batches, labels = load_batches(tmp_path / "d.npz", X, allow_labels=True)
    assert len(batches) == 2 and labels.tolist() == [0, 1, 2, 3]
    assert len(load_batches(iter([{"x": one}, {"x": one}]), X)[0]) == 2
    assert load_batches({"x": one.astype(np.float64)}, X)[0][0]["x"].dtype == np.float32


@pytest.mark.parametrize("data, message", [
    ({"y": np.ones((2, 3), np.float32)}, r"unknown input\(s\) \['y'\]"),
    ({}, r"lacks input\(s\) \['x'\]"),
    ({"x": np.ones((2, 4), np.float32)}, r"has shape \[2, 4\]; the model is compiled for \[2, 3\]"),
    ({"x": np.ones((2, 3), np.int64)}, "has dtype int64; the input is float32"),
    ({"x": np.array([[1, np.nan, 2], [0, 0, np.inf]], np.float32)}, r"2 NaN/Inf value\(s\)"),
    ([{"x": np.ones((2, 3), np.float32)}, {"x": np.ones((2, 4), np.float32)}],
     r"batch 1: 'x' has shape \[2, 4\]"),
    ("/no/such/file.npz", "no such calibration file or directory"),
    (42, "cannot use a int as calibration data"),
])
def test_bad_calibration_data_is_one_clear_error(data, message):
    with pytest.raises(CalibrationError, match=message):
        load_batches(data, X)


def test_calibration_samples_that_leave_a_batch_short_are_cycled_evaluation_ones_refused():
    samples = np.arange(9, dtype=np.float32).reshape(3, 3)
    batches, _ = load_batches({"x": samples}, X)
    assert len(batches) == 2  # [s0 s1], [s2 s0]
    np.testing.assert_array_equal(batches[1]["x"], samples[[2, 0]])
    with pytest.raises(CalibrationError, match="holds 3 sample"):  # distinct samples count
        load_batches({"x": samples}, X, min_samples=4)
    with pytest.raises(CalibrationError, match=r"has shape \[3, 3\]"):
        load_batches({"x": samples}, X, what="evaluation")


def test_too_few_samples_and_mismatched_labels_are_refused():
    with pytest.raises(CalibrationError, match="holds 2 sample"):
        load_batches({"x": np.ones((2, 3), np.float32)}, X, min_samples=8)
    with pytest.raises(CalibrationError, match="3 labels for 2 samples"):
        load_batches({"x": np.ones((2, 3), np.float32), "labels": np.zeros(3)}, X,
                     allow_labels=True)


def test_int8_needs_calibration_data_and_known_keep_float_names():
    with pytest.raises(CalibrationError, match="needs calibration data"):
        quantize(mlp(), QuantConfig())
    with pytest.raises(QuantizeError, match=r"keep_float names no layer or kind: \['conv9'\]"):
        quantize(mlp(), QuantConfig(keep_float=("conv9",)), calib={"x": np.ones((8, 64))})


# --- accuracy ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_int8(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    images, labels = held_out_digits()
    config = CompileConfig(input_shapes={"input": (8, 1, 8, 8)}, features=(QuantConfig(),),
                           calibration="example:digits", dump_ir=folder / "ir",
                           evaluation={"input": images, "labels": labels})
    return compile_model("example:digits", folder / "digits.so", config), folder


def test_digits_int8_accuracy_is_within_one_point_of_float(digits_int8):
    artifact, _ = digits_int8
    images, labels = held_out_digits()
    float_logits = ort_outputs(relaycomp.load_onnx(get_example("digits").model_path),
                               {"input": images})["logits"]
    int8_logits = run_batches(artifact, "input", images, 8)
    float_accuracy = np.mean(float_logits.argmax(1) == labels)
    int8_accuracy = np.mean(int8_logits.argmax(1) == labels)
    assert float_accuracy > 0.97
    assert int8_accuracy >= float_accuracy - 0.01
    report = artifact.manifest.report["quantize"]
    assert report["accuracy"]["float_accuracy"] == pytest.approx(float_accuracy, abs=1e-6)
    # The guard runs the integer kernels the artifact ships, not a float QDQ graph: the same
    # predictions, but for a float rounding tie in the rescale (one image at most).
    assert abs(report["accuracy"]["quant_accuracy"] - int8_accuracy) <= 1 / len(labels)


def test_digits_runs_int32_accumulating_integer_kernels(digits_int8):
    _, folder = digits_int8
    after = next((folder / "ir").glob("*_quantize_lower_qdq_to_integer.py")).read_text()
    convs = [line for line in after.splitlines() if "R.nn.conv2d(" in line]
    assert len(convs) == 3 and all('out_dtype="int32"' in line for line in convs)
    assert 'R.matmul(' in after and after.count('out_dtype="int32"') == 4
    assert "R.dequantize(" not in after.split("R.nn.conv2d(")[0]  # no float weights before


def test_report_has_per_layer_scales_and_weights_under_30_percent(digits_int8):
    artifact, _ = digits_int8
    report = QuantReport.from_json(artifact.manifest.report["quantize"])
    assert [la["onnx_name"] for la in report.layers] == [
        "/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/fc/Gemm"]
    assert all(la["weight_scheme"] == "per-channel" for la in report.layers)
    assert all(la["input_scale"] > 0 and -128 <= la["input_zero_point"] <= 127
               for la in report.layers)
    assert report.weight_bytes_quantized <= 0.30 * report.weight_bytes_float
    assert report.samples["calibration"] == 32
    assert "quantized 4/4 layers" in report.summary()


def test_per_tensor_symmetric_digits_also_stay_within_one_point():
    images, labels = held_out_digits()
    config = QuantConfig(per_channel=False, activations="symmetric", calibration="percentile")
    _, report = quantize("example:digits", config, calib="example:digits",
                         eval_data={"input": images, "labels": labels})
    assert all(la["weight_scheme"] == "per-tensor" and la["input_zero_point"] == 0
               for la in report.layers)
    accuracy = report.accuracy
    assert accuracy["quant_accuracy"] >= accuracy["float_accuracy"] - 0.01
    assert report.model_bytes_quantized <= 0.30 * report.model_bytes_float


@pytest.mark.parametrize("build", [resnet_block_net, mobilenet_style_net])
def test_test_models_agree_with_float_on_random_inputs(build, tmp_path):
    model = build()
    config = CompileConfig(calibration={"x": random_samples(64)},
                           dump_ir=tmp_path / "ir", features=(QuantConfig(),))
    artifact = compile_model(model, tmp_path / "m.so", config)
    assert integer_contractions(tmp_path / "ir") == len(model_layers(model))
    samples = random_samples(200, seed=1)
    int8 = run_batches(artifact, "x", samples, 1)
    reference = np.concatenate([ort_outputs(model, {"x": s[None]})["logits"] for s in samples])
    agreement = np.mean(int8.argmax(1) == reference.argmax(1))
    cosine = np.sum(int8 * reference) / np.linalg.norm(int8) / np.linalg.norm(reference)
    assert agreement >= 0.99 and cosine >= 0.99
    report = artifact.manifest.report["quantize"]
    assert all(la["mode"] == "int8" for la in report["layers"])
    if build is mobilenet_style_net:
        assert [la["kind"] for la in report["layers"]].count("depthwise_conv2d") == 2
    else:
        assert report["weight_bytes_quantized"] <= 0.30 * report["weight_bytes_float"]


# --- options and the guard ----------------------------------------------------------------------

def test_keep_float_by_kind_and_by_onnx_name():
    calib = {"x": random_samples(16, (4, 64))}
    _, report = quantize(mlp(), QuantConfig(keep_float=("matmul_2",)), calib=calib)
    assert [la["mode"] for la in report.layers] == ["int8", "float", "int8"]  # ONNX names
    assert report.layers[1]["reason"] == "kept float by request"
    mod, report = quantize(resnet_block_net(), QuantConfig(keep_float=("matmul", "conv_1")),
                           calib={"x": random_samples(8)})
    modes = {la["onnx_name"]: la["mode"] for la in report.layers}
    assert modes["conv_1"] == "float" and modes["gemm_1"] == "float" and modes["conv_2"] == "int8"
    # five int8 layers; the strided block's conv and its projection share one quantize
    assert relaycomp.ir.op_counts(mod)["quantize"] == 4


def test_accuracy_guard_returns_the_most_sensitive_layers_to_float_until_within_budget():
    calib = {"x": random_samples(16, (4, 64))}
    held_out = {"x": random_samples(50, (4, 64), seed=3)}
    _, unguarded = quantize(mlp(), QuantConfig(), calib=calib, eval_data=held_out)
    assert unguarded.accuracy["top1_agreement"] < 1.0  # int8 flips a few of 200 decisions
    _, report = quantize(mlp(), QuantConfig(max_accuracy_drop=0.0), calib=calib,
                         eval_data=held_out)
    assert report.accuracy["top1_agreement"] == 1.0
    fallen = [la for la in report.layers if la["mode"] == "float"]
    assert fallen and all("accuracy guard" in la["reason"] for la in fallen)
    assert all("sensitivity" in la for la in report.layers)
    most_sensitive = max(report.layers, key=lambda la: (la["sensitivity"]["drop_recovered"],
                                                        la["sensitivity"]["cosine_recovered"]))
    assert most_sensitive["mode"] == "float"


def test_weight_only_needs_no_calibration_and_stores_int8_weights(tmp_path):
    model = mlp()
    artifact = compile_model(model, tmp_path / "m.so",
                             CompileConfig(features=(QuantConfig(weight_only=True),)))
    report = artifact.manifest.report["quantize"]
    assert [la["mode"] for la in report["layers"]] == ["weight_only"] * 3
    assert report["weight_bytes_quantized"] <= 0.30 * report["weight_bytes_float"]
    x = random_samples(1, (4, 64), seed=5)[0]
    out = relaycomp.load(artifact.path).run({"x": x})["probs"]
    np.testing.assert_allclose(out, ort_outputs(model, {"x": x})["probs"], atol=5e-3)


def test_int4_weight_only_runs_the_model_with_int4_rounded_weights_stored_two_a_byte(tmp_path):
    """The artifact computes exactly the float model whose matmul weights are rounded to the
    int4 grid (per output channel, [-7, 7]); the weights are stored packed, an eighth of float
    plus the scales, and stay packed in the build (not unpacked at compile time)."""
    model = mlp()
    artifact = compile_model(model, tmp_path / "m.so", CompileConfig(
        features=(QuantConfig(weight_only=True, weight_bits=4),)))
    report = artifact.manifest.report["quantize"]
    assert [la["weight_bits"] for la in report["layers"]] == [4, 4, 4]
    floats = report["weight_bytes_float"]
    assert report["weight_bytes_quantized"] <= floats / 8 + floats / 16  # + one scale a column
    assert report["model_bytes_quantized"] < 0.2 * report["model_bytes_float"]
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    weights = {node.input[1] for node in rounded.graph.node if node.op_type == "MatMul"}
    for init in rounded.graph.initializer:
        if init.name in weights:
            weight_q, scale = weight_params(onnx.numpy_helper.to_array(init), 1, True, 7)
            assert np.abs(weight_q).max() == 7
            init.CopyFrom(onnx.numpy_helper.from_array(weight_q * scale, init.name))
    x = random_samples(1, (4, 64), seed=5)[0]
    out = relaycomp.load(artifact.path).run({"x": x})["probs"]
    np.testing.assert_allclose(out, ort_outputs(rounded, {"x": x})["probs"], atol=1e-5)
    with pytest.raises(QuantizeError, match="weight_bits 4"):
        QuantConfig(weight_bits=4)


# --- command line -------------------------------------------------------------------------------

def test_cli_compiles_digits_to_int8_and_prints_the_report(tmp_path):
    result = run_cli("compile", "example:digits", "--quantize", "int8", "--calib",
                     "example:digits", "--eval", "example:digits", "--calib-method", "entropy",
                     "--keep-float", "/fc/Gemm", "-o", tmp_path / "d.so")
    assert result.returncode == 0, result.stderr
    assert "int8: quantized 3/4 layers" in result.stdout
    assert "/fc/Gemm: float (kept float by request)" in result.stdout
    line = next(li for li in result.stdout.splitlines() if "accuracy" in li)
    float_accuracy, int8_accuracy = _two(line)
    assert int8_accuracy >= float_accuracy - 1.0


def _two(line: str) -> tuple[float, float]:
    """The first two percentages of a line (float and int8 accuracy)."""
    tokens = [token.rstrip(",") for token in line.split()]
    percents = [float(token.rstrip("%")) for token in tokens if token.endswith("%")]
    return percents[0], percents[1]


@pytest.mark.parametrize("args, message", [
    (["--calib", "x.npz"], "--calib need(s) --quantize int8"),
    (["--quantize", "int8"], "int8 quantization needs calibration data"),
    (["--quantize", "int8", "--calib", "BAD"], "no such calibration file or directory: BAD"),
    (["--weight-bits", "4"], "--weight-bits need(s) --quantize int8"),
    (["--quantize", "int8", "--calib", "example:digits", "--weight-bits", "4"],
     "weight_bits 4 is not supported"),
])
def test_cli_errors_are_one_line(args, message, tmp_path):
    result = run_cli("compile", "example:digits", *args, "-o", tmp_path / "d.so")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_float16_mixed_precision_builds_for_cuda_and_is_refused_on_cpus(tmp_path):
    config = CompileConfig(target="cuda", features=(QuantConfig(dtype="float16"),),
                           dump_ir=tmp_path / "ir")
    artifact = compile_model(mlp(), tmp_path / "m.so", config)
    report = artifact.manifest.report["quantize"]
    assert [la["mode"] for la in report["layers"]] == ["float16"] * 3
    after = next((tmp_path / "ir").glob("*_quantize_quantize_int8.py")).read_text()
    matmuls = [line for line in after.splitlines() if "R.matmul(" in line]
    assert len(matmuls) == 3 and all('out_dtype="float32"' in line for line in matmuls)
    assert after.count('dtype="float16"') >= 6  # fp16 operands of the three matmuls
    with pytest.raises(Exception, match="float16 mixed precision is for CUDA targets"):
        compile_model(mlp(), tmp_path / "c.so",
                      CompileConfig(features=(QuantConfig(dtype="float16"),)))

"""Import edges: scalars, zero-size dims, every standard dtype, a lenient checker, shapes known
only at run time, computed Resize sizes, and a sample of ONNX's own conformance cases."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_matches_ort, ort_outputs, run_cli
from onnx import TensorProto, helper, numpy_helper

import relaycomp
from relaycomp.errors import InputSpecError, OnnxImportError
from relaycomp.frontend.onnx_import import import_onnx, parse_input_spec

ROOT = Path(__file__).resolve().parent.parent
BACKEND_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def _model(nodes, inputs, outputs, initializers=(), opset=13, ir_version=None):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
                              opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def scalar_input_net() -> onnx.ModelProto:
    """A voice-activity-style model: a 0-d int64 sample rate scales the signal; a 0-d sum out."""
    return _model(
        [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "srf"], ["y"]),
         helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [])])


SCALAR_INPUTS = {"x": np.arange(4, dtype=np.float32).reshape(1, 4),
                 "sr": np.array(16000, dtype=np.int64)}


def test_scalar_input_and_output_run_through_the_python_api(tmp_path):
    outputs = assert_matches_ort(scalar_input_net(), SCALAR_INPUTS, tmp_path)
    assert outputs["total"].shape == ()
    manifest = json.loads((tmp_path / "model.so.json").read_text())
    assert {i["name"]: i["shape"] for i in manifest["inputs"]}["sr"] == []
    assert {o["name"]: o["shape"] for o in manifest["outputs"]}["total"] == []


def test_scalar_input_runs_and_checks_through_the_cli(tmp_path):
    model = tmp_path / "vad.onnx"
    onnx.save(scalar_input_net(), model)
    np.savez(tmp_path / "in.npz", **SCALAR_INPUTS)
    compiled = run_cli("compile", model, "--input", "sr:", "-o", tmp_path / "vad.so")
    assert compiled.returncode == 0, compiled.stderr
    ran = run_cli("run", tmp_path / "vad.so", "--inputs", tmp_path / "in.npz", "--check", model)
    assert ran.returncode == 0, ran.stderr
    assert "total: float32[]" in ran.stdout and "max abs error 0," in ran.stdout


@pytest.mark.parametrize(("text", "shape"), [("sr:", ()), ("x:0,3", (0, 3)), ("a:b:2", (2,))])
def test_input_specs_accept_scalars_and_zero_size_dims(text, shape):
    assert parse_input_spec(text)[1] == shape


def test_negative_dims_are_refused():
    with pytest.raises(InputSpecError, match="cannot be negative"):
        parse_input_spec("x:2,-1")


def test_zero_size_dims_compile_and_run(tmp_path):
    model = _model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Concat", ["r", "w"], ["y"], axis=0),
         helper.make_node("ReduceMin", ["x"], ["low"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("low", TensorProto.FLOAT, None)], opset=13)
    inputs = {"x": np.zeros((0, 3), np.float32), "w": np.ones((2, 3), np.float32)}
    outputs = assert_matches_ort(model, inputs, tmp_path)
    assert outputs["low"] == np.inf  # the minimum of nothing, as onnxruntime gives it


@pytest.mark.parametrize("elem_type", ["UINT16", "UINT32", "UINT64", "FLOAT16", "BFLOAT16"])
def test_every_standard_dtype_goes_in_and_out(elem_type, tmp_path):
    onnx_type = getattr(TensorProto, elem_type)
    model = _model(
        [helper.make_node("Identity", ["x"], ["y"]),
         helper.make_node("Cast", ["x"], ["z"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("x", onnx_type, [2, 3])],
        [helper.make_tensor_value_info("y", onnx_type, [2, 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])])
    data = (np.arange(6).reshape(2, 3) * 7).astype(helper.tensor_dtype_to_np_dtype(onnx_type))
    relaycomp.compile(model, tmp_path / "m.so")
    outputs = relaycomp.load(tmp_path / "m.so").run({"x": data})
    assert outputs["y"].dtype == data.dtype and np.array_equal(outputs["y"], data)
    np.testing.assert_array_equal(outputs["z"], data.astype(np.float32))


def test_unsigned_arithmetic_matches_onnxruntime(tmp_path):
    model = _model([helper.make_node("Mod", ["a", "b"], ["y"])],
                   [helper.make_tensor_value_info(n, TensorProto.UINT32, [5]) for n in "ab"],
                   [helper.make_tensor_value_info("y", TensorProto.UINT32, [5])])
    inputs = {"a": np.array([7, 4_000_000_000, 9, 0, 13], np.uint32),
              "b": np.array([3, 7, 9, 5, 4], np.uint32)}
    assert_matches_ort(model, inputs, tmp_path)


def test_ir3_model_without_initializers_as_inputs_compiles_with_a_note(tmp_path):
    model = _model([helper.make_node("Add", ["x", "conv1_b_0"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                   [_const("conv1_b_0", np.array([1, 2, 3], np.float32))], opset=7, ir_version=3)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)  # the strict checker refuses it; onnxruntime does not
    path = tmp_path / "ir3.onnx"
    onnx.save(model, path)
    imported = import_onnx(path)
    assert any("IR version 3" in note for note in imported.report["notes"])
    assert_matches_ort(model, {"x": np.ones((1, 3), np.float32)}, tmp_path)


def test_a_real_structural_error_is_still_refused(tmp_path):
    model = _model([helper.make_node("Add", ["x", "nowhere"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    with pytest.raises(OnnxImportError, match="not a valid ONNX model.*nowhere"):
        import_onnx(path)


def _resize_net(kind: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    roi = _const("roi", np.array([], np.float32))
    shape = helper.make_node("Shape", ["x"], ["shape"])
    if kind == "sizes":  # Shape -> Slice -> Mul -> Concat, as PyTorch exports interpolate
        return _model(
            [shape, helper.make_node("Slice", ["shape", "s", "e"], ["hw"]),
             helper.make_node("Mul", ["hw", "two"], ["hw2"]),
             helper.make_node("Concat", ["nc", "hw2"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "roi", "", "sizes"], ["y"], mode="linear")],
            [x], [y], [roi, _const("s", [2]), _const("e", [4]), _const("two", np.array([2])),
                       _const("nc", np.array([1, 3]))])
    return _model(  # scales = target size / input size
        [shape, helper.make_node("Cast", ["shape"], ["shapef"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["target"], ["targetf"], to=TensorProto.FLOAT),
         helper.make_node("Div", ["targetf", "shapef"], ["scales"]),
         helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="nearest")],
        [x], [y], [roi, _const("target", np.array([1, 3, 10, 12]))])


@pytest.mark.parametrize("kind", ["sizes", "scales"])
def test_resize_with_computed_sizes_or_scales(kind, tmp_path):
    x = np.random.default_rng(0).random((1, 3, 5, 6), dtype=np.float32)
    outputs = assert_matches_ort(_resize_net(kind), {"x": x}, tmp_path)
    assert outputs["y"].shape == (1, 3, 10, 12)


def test_resize_scales_with_a_fractional_output_size_are_refused():
    model = _model([helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="linear")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                   [_const("roi", np.array([], np.float32)),
                    _const("scales", np.array([1, 1, 0.6, 0.6], np.float32))])
    with pytest.raises(OnnxImportError, match="fractional output size.*node 'y'"):
        import_onnx(model)


@pytest.mark.parametrize(("op", "position"), [("Expand", 1), ("Reshape", 1), ("Tile", 1)])
def test_a_shape_fed_at_run_time_is_a_clear_error(op, position):
    model = _model([helper.make_node(op, ["x", "shape"], ["y"], name="the_node")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1]),
                    helper.make_tensor_value_info("shape", TensorProto.INT64, [3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(OnnxImportError, match=f"{op} node 'the_node'.*graph input 'shape'") as info:
        import_onnx(model)
    assert "constant" in info.value.hint


def test_an_attribute_the_converter_ignores_is_refused():
    model = _model([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2],
                                     storage_order=1)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3, 3]),
                    helper.make_tensor_value_info("i", TensorProto.INT64, [1, 1, 3, 3])])
    with pytest.raises(OnnxImportError, match="MaxPool .*storage_order=1"):
        import_onnx(model)


def scalar_input_matmul_net() -> onnx.ModelProto:
    """A MatMul int8 can quantize, a 0-d input (listed first) scaling it, a 0-d output first."""
    weight = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    return _model(
        [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Mul", ["m", "srf"], ["y"]),
         helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0)],
        [helper.make_tensor_value_info("sr", TensorProto.INT64, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [_const("w", weight)])


def test_scalar_input_compiles_with_int8_quantization_and_its_guard(tmp_path):
    # Calibration and the accuracy guard run the model on 0-d inputs and a 0-d first output.
    rng = np.random.default_rng(1)
    calibration = {"x": rng.standard_normal((4, 4, 16)).astype(np.float32),
                   "sr": np.array([2, 3, 4, 5], dtype=np.int64)}
    config = relaycomp.QuantConfig(min_samples=1, max_accuracy_drop=0.5)
    artifact = relaycomp.compile(scalar_input_matmul_net(), tmp_path / "q.so",
                                 quantize=config, calibration=calibration)
    feeds = {"x": calibration["x"][0], "sr": np.array(3, dtype=np.int64)}
    outputs = relaycomp.load(artifact.path).run(feeds)
    expected = ort_outputs(scalar_input_matmul_net(), feeds)
    assert outputs["total"].shape == () and outputs["y"].shape == (4, 8)
    scale = np.abs(expected["y"]).max()
    np.testing.assert_allclose(outputs["y"], expected["y"], atol=0.05 * scale)


def test_integer_pow_matches_onnxruntime(tmp_path):
    model = _model([helper.make_node("Pow", ["x", "y"], ["z"])],
                   [helper.make_tensor_value_info("x", TensorProto.INT32, [4]),
                    helper.make_tensor_value_info("y", TensorProto.INT32, [4])],
                   [helper.make_tensor_value_info("z", TensorProto.INT32, [4])], opset=15)
    inputs = {"x": np.array([2, -3, 5, 7], np.int32), "y": np.array([10, 3, 0, 2], np.int32)}
    assert_matches_ort(model, inputs, tmp_path)


@pytest.mark.parametrize("case", ["pytorch-converted/test_PReLU_2d_multiparam",
                                  "simple/test_sequence_model6",
                                  "pytorch-operator/test_operator_add_broadcast",
                                  "pytorch-operator/test_operator_index",
                                  "pytorch-converted/test_BatchNorm2d_eval"])
def test_backend_model_cases(case, tmp_path):
    folder = BACKEND_DATA / case
    model = onnx.load(folder / "model.onnx")
    feeds = {}
    for value, path in zip(model.graph.input, sorted(folder.glob("test_data_set_0/input_*.pb"))):
        feeds[value.name] = numpy_helper.to_array(onnx.load_tensor(str(path)))
    want = [numpy_helper.to_array(onnx.load_tensor(str(p)))
            for p in sorted(folder.glob("test_data_set_0/output_*.pb"))]
    relaycomp.compile(model, tmp_path / "m.so", inputs={k: v.shape for k, v in feeds.items()})
    got = list(relaycomp.load(tmp_path / "m.so").run(feeds).values())
    for have, expected in zip(got, want, strict=True):
        np.testing.assert_allclose(have, expected, rtol=1e-3, atol=1e-6)


def _conformance_tool():
    spec = importlib.util.spec_from_file_location(
        "onnx_conformance", ROOT / "tools" / "onnx_conformance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Operator cases this work made pass (0-d inputs, unsigned types, Shape outputs, empty
# reductions, integer Pow, Cosh, RMSNormalization over every axis, LayerNormalization's Mean
# and InvStdDev); each must keep passing.
CONFORMANCE_SAMPLE = ["test_clip_example", "test_mod_uint32", "test_less_uint16",
                      "test_size", "test_shape_start_1", "test_reduce_min_empty_set",
                      "test_pow_types_int32_int32", "test_cast_FLOAT_to_BFLOAT16",
                      "test_cosh_example", "test_rms_normalization_2d_axis0",
                      "test_layer_normalization_4d_axis_negative_4", "test_elu_default",
                      # float16 scales in QLinearMatMul, fully masked attention rows, half
                      # MatMul/Softmax summed in float32, Scan-8, a zero-size past state
                      "test_qlinearmatmul_3D_uint8_float16",
                      "test_attention_23_boolmask_fullymasked_row_nan_robustness_expanded",
                      "test_attention_4d_fp16_expanded", "test_scan_sum",
                      "test_causal_conv_with_state_kernel_size_one",
                      "test_onehot_negative_indices", "test_onehot_with_bfloat16_values",
                      "test_isinf_positive", "test_l2normalization_axis_0",
                      "test_reversesequence_time", "test_dequantizelinear_blocked",
                      "test_quantizelinear_blocked_asymmetric",
                      "test_mod_float_edge_cases_fmod_0_float32", "test_lppool_2d_strides",
                      "test_spacetodepth_crd_mode_example"]


@pytest.fixture(scope="module")
def conformance():
    tool = _conformance_tool()
    return tool, tool.node_cases()


@pytest.mark.parametrize("name", CONFORMANCE_SAMPLE)
def test_conformance_sample(name, conformance, tmp_path):
    tool, cases = conformance
    result = tool.run_case(cases[name], str(tmp_path))
    assert result["class"] == "pass", result["detail"]


def test_conformance_tool_allows_half_outputs_one_rounding_step(conformance):
    tool, _ = conformance
    want = np.array([1.0, -0.5, np.nan], np.float16)
    one_step = np.array([1.0 + 2.0**-10, -0.5, np.nan], np.float16)
    two_steps = np.array([1.0 + 2.0**-9, -0.5, np.nan], np.float16)
    assert tool.outputs_match(one_step, want, 0.0, 0.0) is None
    assert "beyond tolerance" in tool.outputs_match(two_steps, want, 0.0, 0.0)
    assert "nan" in tool.outputs_match(np.zeros(3, np.float16), want, 0.0, 0.0)


def test_non_max_suppression_is_refused_naming_the_node(conformance, tmp_path):
    # its output size depends on the data, whatever static shape the graph declares
    tool, cases = conformance
    result = tool.run_case(cases["test_nonmaxsuppression_single_box"], str(tmp_path))
    assert result["class"] == "refused", result["detail"]
    assert "NonMaxSuppression node 'selected_indices'" in result["detail"]


def test_sequence_inputs_and_outputs_are_refused_by_name():
    element = helper.make_tensor_type_proto(TensorProto.FLOAT, [2])
    sequence = helper.make_value_info("s", helper.make_sequence_type_proto(element))
    model = _model([helper.make_node("SequenceLength", ["s"], ["n"])], [sequence],
                   [helper.make_tensor_value_info("n", TensorProto.INT64, [])], opset=17)
    with pytest.raises(OnnxImportError, match="input 's' is a sequence"):
        import_onnx(model)
    model = _model([helper.make_node("SplitToSequence", ["x"], ["s"], axis=0)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])], [sequence],
                   opset=17)
    with pytest.raises(OnnxImportError, match="graph output 's' is a sequence"):
        import_onnx(model)


def test_conformance_tool_reports_a_wrong_answer(conformance, tmp_path):
    tool, cases = conformance
    model, inputs, outputs, rtol, atol = cases["test_abs"]
    broken = (model, inputs, [outputs[0] + 1], rtol, atol)
    assert tool.run_case(broken, str(tmp_path))["class"] == "wrong"



def test_a_single_npy_file_feeds_a_single_input_model(tmp_path):
    from relaycomp.frontend.inputs import read_arrays

    np.save(tmp_path / "x.npy", np.array(16000, dtype=np.int64))
    arrays = read_arrays(tmp_path / "x.npy", "--inputs", ["sr"], InputSpecError)
    assert arrays["sr"].shape == () and int(arrays["sr"]) == 16000
    with pytest.raises(InputSpecError, match="single .npy array, but the model takes 2"):
        read_arrays(tmp_path / "x.npy", "--inputs", ["x", "sr"], InputSpecError)


def test_an_input_declared_without_a_shape_takes_its_shape_from_the_caller(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(InputSpecError, match="'x' has no shape in the model") as info:
        import_onnx(model)
    assert "--input x:DIMS" in info.value.hint
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    assert_matches_ort(model, {"x": x}, tmp_path)

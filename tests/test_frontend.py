"""ONNX import: validation, input pinning, shape sub-graph folding, clear errors."""

import onnx
import pytest
from helpers import assert_matches_ort
from models import (
    conv_net,
    dynamic_dims_net,
    dynamic_reshape_net,
    int64_inputs_net,
    mlp,
    multi_io_net,
    random_inputs,
    save_with_external_data,
    shape_subgraph_net,
    unsupported_op_net,
)

from relaycomp.errors import InputSpecError, OnnxImportError
from relaycomp.frontend.onnx_import import graph_inputs, import_onnx, load_onnx, parse_input_spec


@pytest.mark.parametrize("text, expected", [
    ("x:1,3,224,224", ("x", (1, 3, 224, 224))),
    ("input.1:8", ("input.1", (8,))),
    ("ns:x:2,2", ("ns:x", (2, 2))),
])
def test_input_spec_parses_name_and_dims(text, expected):
    assert parse_input_spec(text) == expected


@pytest.mark.parametrize("text", ["x", ":1,2", "x:1,a", "x:1,,2", "x:-1"])
def test_bad_input_spec_is_refused_with_the_expected_syntax(text):
    with pytest.raises(InputSpecError, match="--input"):
        parse_input_spec(text)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(OnnxImportError, match="no such ONNX file"):
        load_onnx(tmp_path / "absent.onnx")


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    data = conv_net().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxImportError, match="not a (readable|valid) ONNX model"):
        load_onnx(path)


def test_garbage_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    with pytest.raises(OnnxImportError, match="not a (readable|valid) ONNX model"):
        load_onnx(path)


def test_unsupported_ops_are_all_named_with_node_and_opset():
    model = unsupported_op_net()
    with pytest.raises(OnnxImportError) as info:
        import_onnx(model)
    assert "DFT (node 'spectrum_dft'" in str(info.value)
    assert "opset 17" in str(info.value)
    assert "Unsqueeze" not in str(info.value), "supported ops must not be listed"


def test_unknown_input_name_lists_the_real_inputs():
    with pytest.raises(InputSpecError, match="no input named 'y'") as info:
        import_onnx(conv_net(), {"y": (1, 3, 32, 32)})
    assert "x:float32" in info.value.hint


def test_wrong_rank_is_refused():
    with pytest.raises(InputSpecError, match="rank 4"):
        import_onnx(conv_net(), {"x": (1, 3, 32)})


def test_conflicting_static_dim_is_refused():
    with pytest.raises(InputSpecError, match="dim 1 is fixed to 3"):
        import_onnx(conv_net(), {"x": (1, 4, 32, 32)})


def test_symbolic_dims_default_to_one_and_say_so():
    imported = import_onnx(dynamic_dims_net())
    assert all(isinstance(d, int) for spec in imported.inputs for d in spec.shape)
    assert imported.report["notes"], "defaulted dims must be reported"


def test_dynamic_reshape_is_folded_to_constants_and_matches_ort(tmp_path):
    model = dynamic_reshape_net()
    imported = import_onnx(model, {"x": (2, 3, 16, 16)})
    assert imported.report["shape_nodes_folded"] >= 3
    assert "Shape" not in {n.op_type for n in imported.onnx_model.graph.node}
    assert_matches_ort(model, random_inputs(model, {"x": (2, 3, 16, 16)}), tmp_path)


def test_shape_arithmetic_subgraph_matches_ort(tmp_path):
    model = shape_subgraph_net()
    assert_matches_ort(model, random_inputs(model), tmp_path)


def test_pinned_dynamic_dims_match_ort(tmp_path):
    model = dynamic_dims_net()
    name = graph_inputs(model)[0].name
    assert_matches_ort(model, random_inputs(model, {name: (1, 3, 24, 40)}), tmp_path)


def test_output_names_and_order_are_kept():
    model = multi_io_net()
    imported = import_onnx(model)
    assert [o.name for o in imported.outputs] == [o.name for o in model.graph.output]


def test_int64_and_bool_inputs_keep_their_dtypes(tmp_path):
    model = int64_inputs_net()
    imported = import_onnx(model)
    assert {s.dtype for s in imported.inputs} >= {"int64", "bool"}
    assert_matches_ort(model, random_inputs(model), tmp_path)


def test_external_data_model_loads_and_matches_ort(tmp_path):
    model = mlp()
    path = tmp_path / "mlp.onnx"
    save_with_external_data(model, path)
    assert len(list(tmp_path.iterdir())) == 2, "weights must live in a separate file"
    loaded = load_onnx(path)
    inputs = random_inputs(loaded)
    assert_matches_ort(loaded, inputs, tmp_path)


def test_import_does_not_modify_the_callers_model():
    model = dynamic_reshape_net()
    before = model.SerializeToString()
    import_onnx(model, {"x": (2, 3, 16, 16)})
    assert model.SerializeToString() == before


def test_onnx_model_keeps_working_after_fold():
    model = dynamic_reshape_net()
    imported = import_onnx(model, {"x": (2, 3, 16, 16)})
    onnx.checker.check_model(imported.onnx_model)
    assert [o.name for o in imported.onnx_model.graph.output] == \
        [o.name for o in model.graph.output]

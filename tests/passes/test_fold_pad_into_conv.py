"""fold_pad_into_conv: a zero Pad before a Conv becomes the Conv's own padding."""

import numpy as np
import pytest
from helpers import assert_matches_ort, op_counts
from onnx import TensorProto, helper, numpy_helper

from relaycomp.frontend.onnx_import import import_onnx


def pad_conv_model(pads=(0, 0, 1, 2, 0, 0, 1, 2), value=0.0, conv_pads=(1, 1, 1, 1)):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.random((4, 3, 3, 3), np.float32), "w"),
             numpy_helper.from_array(np.array(pads, np.int64), "pads"),
             numpy_helper.from_array(np.array(value, np.float32), "value")]
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["p"], mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["y"], pads=list(conv_pads))]
    graph = helper.make_graph(
        nodes, "pad_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_zero_pad_is_folded_into_the_conv(tmp_path):
    model = pad_conv_model()
    imported = import_onnx(model)
    assert imported.report["pads_folded_into_conv"] == 1
    assert "Pad" not in op_counts(imported.onnx_model)
    x = np.random.default_rng(1).random((1, 3, 8, 8), np.float32)
    assert_matches_ort(model, {"x": x}, tmp_path)


@pytest.mark.parametrize("kwargs", [
    {"value": 1.0},                         # non-zero fill changes the result
    {"pads": (1, 0, 0, 0, 0, 0, 0, 0)},     # batch padding is not conv padding
])
def test_pads_a_conv_cannot_express_are_kept(kwargs, tmp_path):
    model = pad_conv_model(**kwargs)
    imported = import_onnx(model)
    assert imported.report["pads_folded_into_conv"] == 0
    x = np.random.default_rng(1).random((1, 3, 8, 8), np.float32)
    assert_matches_ort(model, {"x": x}, tmp_path)

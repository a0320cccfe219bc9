"""Sequence ops resolved at compile time: ONNX's sequence model cases and generated graphs.

``test_sequence_model1..8`` ship in the onnx package (``backend/test/data/simple``) with
reference inputs and outputs; the ones ONNX semantics allow to resolve statically compile and
match. Positions only known at run time, and sequence graph outputs, are clear errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import relaycomp
from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decompose_graph

SIMPLE = Path(onnx.__file__).parent / "backend" / "test" / "data" / "simple"


def _load_case(number: int):
    folder = SIMPLE / f"test_sequence_model{number}"
    model = onnx.load(folder / "model.onnx")

    def read(path):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(path.read_bytes())
        return tensor.name, numpy_helper.to_array(tensor)

    inputs = dict(read(p) for p in sorted((folder / "test_data_set_0").glob("input_*.pb")))
    outputs = dict(read(p) for p in sorted((folder / "test_data_set_0").glob("output_*.pb")))
    return model, inputs, outputs


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5, 6, 7])
def test_onnx_sequence_model_rewrite_matches(number):
    model, inputs, expected = _load_case(number)
    rewritten, report = decompose_graph(model, model.opset_import[0].version)
    assert not any(n.op_type.startswith("Sequence") or "Sequence" in n.op_type
                   for n in rewritten.graph.node), report
    feeds = {name: inputs[name] for name in (i.name for i in rewritten.graph.input)
             if name in inputs}
    for got, want in zip(ReferenceEvaluator(rewritten).run(None, feeds), expected.values(),
                         strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("number", [3, 5, 6])  # insert/erase/at, new-axis concat, length
def test_onnx_sequence_model_compiles_and_matches(number, tmp_path):
    model, inputs, expected = _load_case(number)
    artifact = relaycomp.compile(model, tmp_path / "model.so",
                                 inputs={name: a.shape for name, a in inputs.items()})
    actual = relaycomp.load(artifact.path).run(inputs)
    assert list(actual) == list(expected)
    for name, want in expected.items():
        assert actual[name].shape == want.shape
        np.testing.assert_allclose(actual[name], want, rtol=1e-6)


def test_split_with_run_time_sizes_still_has_a_static_length():
    # test_sequence_model8: Splits is a graph input, but its shape [3] fixes the length
    model, inputs, expected = _load_case(8)
    rewritten, report = decompose_graph(model, 12)
    assert report == {"SplitToSequence": 1, "SequenceLength": 1}
    (length,) = ReferenceEvaluator(rewritten).run(None, inputs)
    assert length == expected["len"] == 3


def _graph(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "sequences", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_positions_computed_from_static_shapes(tmp_path):
    # the insert position is Shape(x)[0] - 1, computed at compile time
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["parts"], axis=0, keepdims=0),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["rows"], axis=0),
        helper.make_node("Sub", ["rows", "one"], ["last"]),
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("Slice", ["doubled", "zero1", "one1"], ["doubled_row2"]),
        helper.make_node("Squeeze", ["doubled_row2", "zero1"], ["doubled_row"]),
        helper.make_node("SequenceInsert", ["parts", "doubled_row", "last"], ["longer"]),
        helper.make_node("SequenceErase", ["longer", "zero"], ["shorter"]),
        helper.make_node("ConcatFromSequence", ["shorter"], ["y"], axis=-1, new_axis=1),
        helper.make_node("SequenceAt", ["shorter", "minus_one"], ["z"]),
    ]
    constants = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                 [("zero", 0), ("one", 1), ("minus_one", -1), ("zero1", [0]), ("one1", [1])]]
    constants.append(numpy_helper.from_array(np.array(2, np.float32), "two"))
    model = _graph(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                                helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                   constants)
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}
    expected = ReferenceEvaluator(model).run(None, feeds)
    artifact = relaycomp.compile(model, tmp_path / "model.so", inputs={"x": (3, 4)})
    actual = list(relaycomp.load(artifact.path).run(feeds).values())
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_sequence_built_in_a_loop(tmp_path):
    # the common export of "collect a tensor per iteration": SequenceInsert in a Loop body
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["i_f"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "i_f"], ["row"]),
         helper.make_node("SequenceInsert", ["seq_in", "row"], ["seq_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("seq_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("seq_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("SequenceEmpty", [], ["empty"], dtype=TensorProto.FLOAT),
             helper.make_node("Loop", ["trips", "", "empty"], ["seq"], body=body),
             helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=0, new_axis=1),
             helper.make_node("SequenceLength", ["seq"], ["n"])]
    model = _graph(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info("n", TensorProto.INT64, None)],
                   [numpy_helper.from_array(np.array(4, np.int64), "trips")])
    feeds = {"x": np.array([1, 2, 3], np.float32)}
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    artifact = relaycomp.compile(model, tmp_path / "model.so", inputs={"x": (3,)})
    actual = list(relaycomp.load(artifact.path).run(feeds).values())
    for got, want in zip(actual, session.run(None, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


def test_position_known_only_at_run_time_is_an_error_naming_the_node():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    pos = helper.make_tensor_value_info("pos", TensorProto.INT64, [])
    nodes = [helper.make_node("SequenceConstruct", ["x", "x"], ["s"]),
             helper.make_node("SequenceAt", ["s", "pos"], ["y"], name="pick")]
    model = _graph(nodes, [x, pos], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                   None)])
    with pytest.raises(OnnxImportError, match="'pick'.*position.*compile time"):
        decompose_graph(model, 17)


def test_sequence_graph_output_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    out = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    model = _graph([helper.make_node("SequenceConstruct", ["x"], ["s"])], [x], [out])
    with pytest.raises(OnnxImportError, match="graph output 's' is a sequence"):
        decompose_graph(model, 17)

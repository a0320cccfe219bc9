"""If, Loop and Scan inlined or unrolled at compile time match onnxruntime end to end."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import relaycomp
from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decompose_graph

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def value(name, elem_type, shape):
    """A ValueInfo (shape None: unknown)."""
    return helper.make_tensor_value_info(name, elem_type, shape)


def model_of(nodes, inputs, outputs, initializers=(), opset=17):
    """A model of one graph."""
    graph = helper.make_graph(nodes, "control_flow", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), n)
                               for n, v in dict(initializers).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compiled_and_ort(model, feeds_list, tmp_path):
    """Compile once for the shapes of the first feeds; yields (actual, expected) per feeds."""
    shapes = {name: array.shape for name, array in feeds_list[0].items()}
    loaded = relaycomp.load(relaycomp.compile(model, tmp_path / "model.so", inputs=shapes).path)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    for feeds in feeds_list:
        yield list(loaded.run(feeds).values()), session.run(None, feeds)


def assert_all_close(pairs):
    for actual, expected in pairs:
        for got, want in zip(actual, expected, strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _branch(name, nodes, outputs):
    return helper.make_graph(nodes, name, [], outputs)


def _if_model(condition_input: bool, else_shape=(2, 3)):
    then = _branch("then", [helper.make_node("Mul", ["x", "x"], ["t"])],
                   [value("t", FLOAT, [2, 3])])
    if else_shape == (2, 3):
        otherwise = _branch("else", [helper.make_node("Sub", ["x", "w"], ["e"])],
                            [value("e", FLOAT, [2, 3])])
    else:
        otherwise = _branch("else", [helper.make_node("ReduceSum", ["x"], ["e"], keepdims=1)],
                            [value("e", FLOAT, list(else_shape))])
    nodes = [helper.make_node("If", ["c"], ["y"], name="choose", then_branch=then,
                              else_branch=otherwise)]
    inputs = [value("x", FLOAT, [2, 3])]
    initializers = {"w": np.full((2, 3), 0.5, np.float32)}
    if condition_input:
        inputs.append(value("c", BOOL, []))
    else:
        initializers["c"] = np.array(False)
    return model_of(nodes, inputs, [value("y", FLOAT, None)], initializers)


def test_if_with_constant_condition_becomes_its_branch(tmp_path):
    model = _if_model(condition_input=False)
    rewritten, report = decompose_graph(
        onnx.ModelProto.FromString(model.SerializeToString()), 17)
    assert report == {"If": 1}
    assert "Mul" not in {n.op_type for n in rewritten.graph.node}  # then-branch dropped
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert_all_close(compiled_and_ort(model, [{"x": x}], tmp_path))


def test_if_with_run_time_condition_selects_between_both_branches(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    feeds = [{"x": x, "c": np.array(True)}, {"x": x, "c": np.array(False)}]
    assert_all_close(compiled_and_ort(_if_model(condition_input=True), feeds, tmp_path))


def test_if_with_run_time_condition_and_different_shapes_is_an_error():
    model = _if_model(condition_input=True, else_shape=(1, 1))
    with pytest.raises(OnnxImportError, match="'choose'.*shapes"):
        decompose_graph(model, 17)


def _loop_body(data_dependent_stop: bool):
    """acc += x * (i + 1) + outer; scan out: acc; stop once acc's sum passes `limit`."""
    nodes = [
        helper.make_node("Cast", ["i"], ["i_f"], to=FLOAT),
        helper.make_node("Add", ["i_f", "one"], ["factor"]),
        helper.make_node("Mul", ["x", "factor"], ["scaled"]),
        helper.make_node("Add", ["acc_in", "scaled"], ["partial"]),
        helper.make_node("Add", ["partial", "outer"], ["acc_out"]),
        helper.make_node("Identity", ["acc_out"], ["scan_out"]),
    ]
    if data_dependent_stop:
        nodes += [helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
                  helper.make_node("Less", ["total", "limit"], ["cond_out"])]
    else:
        nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    outputs = [value("cond_out", BOOL, []), value("acc_out", FLOAT, [2, 2])]
    if not data_dependent_stop:
        outputs.append(value("scan_out", FLOAT, [2, 2]))
    return helper.make_graph(
        nodes, "body", [value("i", INT64, []), value("cond_in", BOOL, []),
                        value("acc_in", FLOAT, [2, 2])], outputs)


def _loop_model(data_dependent_stop: bool, trips: int = 4):
    body = _loop_body(data_dependent_stop)
    outputs = ["acc"] + ([] if data_dependent_stop else ["stacked"])
    nodes = [helper.make_node("Loop", ["trips", "start", "acc0"], outputs, name="repeat",
                              body=body)]
    initializers = {"trips": np.array(trips, np.int64), "start": np.array(True),
                    "one": np.array(1, np.float32), "outer": np.full((2, 2), 0.25, np.float32),
                    "acc0": np.zeros((2, 2), np.float32)}
    inputs = [value("x", FLOAT, [2, 2])]
    if data_dependent_stop:
        inputs.append(value("limit", FLOAT, []))
    return model_of(nodes, inputs, [value(n, FLOAT, None) for n in outputs], initializers)


def test_loop_with_static_trip_count_unrolls_with_scan_outputs(tmp_path):
    model = _loop_model(data_dependent_stop=False)
    x = np.array([[1, 2], [3, 4]], np.float32)
    assert_all_close(compiled_and_ort(model, [{"x": x}], tmp_path))


def test_loop_with_data_dependent_stop_freezes_after_the_condition_drops(tmp_path):
    model = _loop_model(data_dependent_stop=True, trips=6)
    x = np.array([[1, 2], [3, 4]], np.float32)
    # stops after 1, 2, 3 iterations, and never (all 6)
    feeds = [{"x": x, "limit": np.array(limit, np.float32)} for limit in (5, 40, 70, 1e9)]
    pairs = list(compiled_and_ort(model, feeds, tmp_path))
    assert len({float(expected[0].sum()) for _, expected in pairs}) == 4  # four distinct stops
    assert_all_close(pairs)


def test_loop_with_data_dependent_stop_and_scan_outputs_is_an_error():
    body = _loop_body(data_dependent_stop=True)
    body.output.append(value("scan_out", FLOAT, [2, 2]))
    model = _loop_model(data_dependent_stop=True)
    model.graph.node[0].attribute[0].g.CopyFrom(body)
    model.graph.node[0].output.append("stacked")
    with pytest.raises(OnnxImportError, match="'repeat'.*scan outputs"):
        decompose_graph(model, 17)


def test_loop_body_with_an_if_on_the_iteration_number(tmp_path):
    # nested sub-graph: after unrolling, each If's condition is a constant
    then = _branch("then", [helper.make_node("Add", ["acc_in", "x"], ["t"])],
                   [value("t", FLOAT, [2, 2])])
    otherwise = _branch("else", [helper.make_node("Mul", ["acc_in", "x"], ["e"])],
                        [value("e", FLOAT, [2, 2])])
    body = helper.make_graph(
        [helper.make_node("Mod", ["i", "two"], ["parity"]),
         helper.make_node("Equal", ["parity", "zero"], ["even"]),
         helper.make_node("If", ["even"], ["acc_out"], then_branch=then, else_branch=otherwise),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [value("i", INT64, []), value("cond_in", BOOL, []),
                 value("acc_in", FLOAT, [2, 2])],
        [value("cond_out", BOOL, []), value("acc_out", FLOAT, [2, 2])])
    model = model_of([helper.make_node("Loop", ["trips", "", "acc0"], ["acc"], body=body)],
                     [value("x", FLOAT, [2, 2])], [value("acc", FLOAT, None)],
                     {"trips": np.array(5, np.int64), "two": np.array(2, np.int64),
                      "zero": np.array(0, np.int64), "acc0": np.ones((2, 2), np.float32)})
    _, report = decompose_graph(onnx.ModelProto.FromString(model.SerializeToString()), 17)
    assert report == {"Loop": 1, "If": 5}
    x = np.array([[0.5, 1.5], [2.0, -1.0]], np.float32)
    assert_all_close(compiled_and_ort(model, [{"x": x}], tmp_path))


def test_loop_without_a_static_trip_count_is_an_error():
    model = _loop_model(data_dependent_stop=False)
    model.graph.input.append(value("n", INT64, []))
    model.graph.node[0].input[0] = "n"
    with pytest.raises(OnnxImportError, match="'repeat'.*trip count"):
        decompose_graph(model, 17)


@pytest.mark.parametrize("directions, out_axis", [((0, 1), 0), ((1, 0), 1)])
def test_scan_unrolls_over_its_inputs(directions, out_axis, tmp_path):
    """Running sum of rows of a and b (b possibly reversed), stacked along ``out_axis``."""
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "a_t"], ["s1"]),
         helper.make_node("Add", ["s1", "b_t"], ["sum_out"]),
         helper.make_node("Mul", ["sum_out", "scale"], ["y_t"])],
        "body", [value("sum_in", FLOAT, [3]), value("a_t", FLOAT, [3]),
                 value("b_t", FLOAT, [3])],
        [value("sum_out", FLOAT, [3]), value("y_t", FLOAT, [3])])
    node = helper.make_node("Scan", ["s0", "a", "b"], ["total", "ys"], body=body,
                            num_scan_inputs=2, scan_input_axes=[0, 1],
                            scan_input_directions=list(directions),
                            scan_output_axes=[out_axis])
    model = model_of([node], [value("a", FLOAT, [4, 3]), value("b", FLOAT, [3, 4])],
                     [value("total", FLOAT, None), value("ys", FLOAT, None)],
                     {"s0": np.zeros(3, np.float32), "scale": np.array(0.5, np.float32)})
    rng = np.random.default_rng(0)
    feeds = {"a": rng.normal(size=(4, 3)).astype(np.float32),
             "b": rng.normal(size=(3, 4)).astype(np.float32)}
    assert_all_close(compiled_and_ort(model, [feeds], tmp_path))


def test_scan_8_unrolls_each_batch_entry(tmp_path):
    """Opset 8: batch axis 0, scan axis 1; a running sum and a reversed input, batch 2."""
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "a_t"], ["s1"]),
         helper.make_node("Mul", ["s1", "b_t"], ["sum_out"]),
         helper.make_node("Identity", ["sum_out"], ["y_t"])],
        "body", [value("sum_in", FLOAT, [3]), value("a_t", FLOAT, [3]),
                 value("b_t", FLOAT, [3])],
        [value("sum_out", FLOAT, [3]), value("y_t", FLOAT, [3])])
    node = helper.make_node("Scan", ["", "s0", "a", "b"], ["total", "ys"], body=body,
                            num_scan_inputs=2, directions=[0, 1])
    model = model_of([node], [value("s0", FLOAT, [2, 3]), value("a", FLOAT, [2, 4, 3]),
                              value("b", FLOAT, [2, 4, 3])],
                     [value("total", FLOAT, [2, 3]), value("ys", FLOAT, [2, 4, 3])], opset=8)
    rng = np.random.default_rng(0)
    feeds = {"s0": rng.normal(size=(2, 3)).astype(np.float32),
             "a": rng.normal(size=(2, 4, 3)).astype(np.float32),
             "b": rng.uniform(0.5, 1.5, size=(2, 4, 3)).astype(np.float32)}
    assert_all_close(compiled_and_ort(model, [feeds], tmp_path))


def test_scan_8_with_shorter_sequence_lengths_is_an_error():
    body = helper.make_graph([helper.make_node("Add", ["s_in", "x_t"], ["s_out"])], "body",
                             [value("s_in", FLOAT, [3]), value("x_t", FLOAT, [3])],
                             [value("s_out", FLOAT, [3])])
    node = helper.make_node("Scan", ["lens", "s0", "x"], ["total"], body=body,
                            num_scan_inputs=1)
    model = model_of([node], [value("s0", FLOAT, [2, 3]), value("x", FLOAT, [2, 4, 3])],
                     [value("total", FLOAT, [2, 3])], {"lens": np.array([4, 2], np.int32)},
                     opset=8)
    with pytest.raises(OnnxImportError, match="sequence_lens other than the full length 4"):
        decompose_graph(model, 8)


def greedy_decoder_model(max_steps: int = 6, vocab: int = 5, hidden: int = 4, eos: int = 0):
    """A Loop greedy decoder as seq2seq exports write it: embed the last token, update the
    state, pick the arg-max token, write it into a fixed-size buffer, stop at EOS."""
    rng = np.random.default_rng(4)
    body = helper.make_graph(
        [helper.make_node("Gather", ["embedding", "token_in"], ["embedded"], axis=0),
         helper.make_node("MatMul", ["state_in", "recurrent"], ["carried"]),
         helper.make_node("Add", ["embedded", "carried"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["state_out"]),
         helper.make_node("MatMul", ["state_out", "readout"], ["logits"]),
         helper.make_node("ArgMax", ["logits"], ["token_out"], axis=1, keepdims=0),
         helper.make_node("Unsqueeze", ["i", "zero1"], ["position"]),
         helper.make_node("Unsqueeze", ["position", "zero1"], ["index"]),
         helper.make_node("ScatterND", ["buffer_in", "index", "token_out"], ["buffer_out"]),
         helper.make_node("Equal", ["token_out", "eos"], ["ended"]),
         helper.make_node("Not", ["ended"], ["going"]),
         helper.make_node("Squeeze", ["going", "zero1"], ["cond_out"])],
        "step", [value("i", INT64, []), value("cond_in", BOOL, []),
                 value("token_in", INT64, [1]), value("state_in", FLOAT, [1, hidden]),
                 value("buffer_in", INT64, [max_steps])],
        [value("cond_out", BOOL, []), value("token_out", INT64, [1]),
         value("state_out", FLOAT, [1, hidden]), value("buffer_out", INT64, [max_steps])])
    nodes = [helper.make_node("Loop", ["steps", "", "start", "state0", "buffer0"],
                              ["last", "state", "tokens"], name="decode", body=body)]
    initializers = {
        "steps": np.array(max_steps, np.int64), "start": np.array([1], np.int64),
        "buffer0": np.full(max_steps, -1, np.int64), "zero1": np.array([0], np.int64),
        "eos": np.array([eos], np.int64),
        "embedding": rng.normal(size=(vocab, hidden)).astype(np.float32),
        "recurrent": rng.normal(size=(hidden, hidden)).astype(np.float32),
        "readout": rng.normal(size=(hidden, vocab)).astype(np.float32)}
    return model_of(nodes, [value("state0", FLOAT, [1, hidden])],
                    [value("last", INT64, None), value("state", FLOAT, None),
                     value("tokens", INT64, None)], initializers)


def test_greedy_decoder_loop_stops_at_eos_like_onnxruntime(tmp_path):
    model = greedy_decoder_model()
    rng = np.random.default_rng(5)
    feeds = [{"state0": rng.normal(size=(1, 4)).astype(np.float32) * 2} for _ in range(6)]
    pairs = list(compiled_and_ort(model, feeds, tmp_path))
    lengths = {int((expected[2] >= 0).sum()) for _, expected in pairs}
    assert len(lengths) >= 2, lengths  # the inputs stop the decoder at different steps
    for actual, expected in pairs:
        for got, want in zip(actual, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

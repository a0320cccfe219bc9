"""Newer standard ops (Attention-23, RotaryEmbedding, Swish, SwiGLU, CumProd) compile and match
onnxruntime, or ONNX's reference evaluator where onnxruntime has no kernel for the op yet."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import relaycomp
from relaycomp.frontend.decompose import decompose_graph

FLOAT = TensorProto.FLOAT


def single_op_model(op_type, inputs, opset, constants=None, outputs=("y",), **attrs):
    """A model of one ``op_type`` node; ``inputs`` maps graph inputs to arrays."""
    constants = constants or {}
    names = list(inputs) + list(constants)
    graph = helper.make_graph(
        [helper.make_node(op_type, names, list(outputs), **attrs)], op_type,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(
            next(iter(inputs.values())).dtype), None) for n in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compiled(model, feeds, tmp_path) -> list[np.ndarray]:
    """relaycomp's outputs, in graph order."""
    artifact = relaycomp.compile(model, tmp_path / "model.so",
                                 inputs={n: a.shape for n, a in feeds.items()})
    return list(relaycomp.load(artifact.path).run(feeds).values())


def onnxruntime_outputs(model, feeds) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_all_close(actual, expected, rtol=1e-5):
    for got, want in zip(actual, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


def test_attention_23_grouped_causal_with_past(tmp_path):
    rng = np.random.default_rng(0)
    feeds = {"Q": rng.normal(size=(2, 3, 16)).astype(np.float32),   # 4 heads of 4
             "K": rng.normal(size=(2, 3, 8)).astype(np.float32),    # 2 kv heads
             "V": rng.normal(size=(2, 3, 8)).astype(np.float32),
             "mask": rng.normal(size=(3, 5)).astype(np.float32),
             "past_k": rng.normal(size=(2, 2, 2, 4)).astype(np.float32),
             "past_v": rng.normal(size=(2, 2, 2, 4)).astype(np.float32)}
    model = single_op_model("Attention", feeds, 23, outputs=("y", "present_k", "present_v"),
                            q_num_heads=4, kv_num_heads=2, is_causal=1, softcap=3.0)
    assert_all_close(compiled(model, feeds, tmp_path), onnxruntime_outputs(model, feeds),
                     rtol=1e-4)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding(interleaved, tmp_path):
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(2, 3, 5, 8)).astype(np.float32)}  # batch, heads, seq, dim
    angles = rng.uniform(0, 3, size=(10, 4)).astype(np.float32)
    constants = {"cos": np.cos(angles), "sin": np.sin(angles),
                 "positions": np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], np.int64)}
    model = single_op_model("RotaryEmbedding", feeds, 23, constants, interleaved=interleaved)
    assert_all_close(compiled(model, feeds, tmp_path), onnxruntime_outputs(model, feeds))


def test_swish_and_swiglu_follow_their_onnx_definition(tmp_path):
    rng = np.random.default_rng(2)
    feeds = {"a": rng.normal(size=(3, 4)).astype(np.float32),
             "b": rng.normal(size=(3, 4)).astype(np.float32)}
    model = single_op_model("SwiGLU", feeds, 28, alpha=1.5)
    _, report = decompose_graph(onnx.ModelProto.FromString(model.SerializeToString()), 28)
    assert report == {"SwiGLU": 1, "Swish": 1}  # SwiGLU's body holds a Swish
    assert_all_close(compiled(model, feeds, tmp_path),
                     ReferenceEvaluator(model).run(None, feeds))


@pytest.mark.parametrize("exclusive, reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("axis", [1, -3])
def test_cumprod(exclusive, reverse, axis, tmp_path):
    rng = np.random.default_rng(3)
    feeds = {"x": rng.uniform(0.5, 1.5, size=(3, 7, 2)).astype(np.float32)}
    model = single_op_model("CumProd", feeds, 26, {"axis": np.array(axis, np.int64)},
                            exclusive=exclusive, reverse=reverse)
    expected = ReferenceEvaluator(model).run(None, feeds)
    # the rewrite itself, in onnxruntime (it runs CumProd's replacement, not CumProd)
    rewritten, _ = decompose_graph(onnx.ModelProto.FromString(model.SerializeToString()), 26)
    assert "CumProd" not in {n.op_type for n in rewritten.graph.node}
    assert_all_close(ReferenceEvaluator(rewritten).run(None, feeds), expected)
    if (exclusive, reverse, axis) == (1, 1, 1):  # one end-to-end compile is enough
        assert_all_close(compiled(model, feeds, tmp_path), expected)


def test_cumprod_of_integers_is_exact(tmp_path):
    feeds = {"x": np.array([[1, -2, 3, 0, 5], [2, 2, 2, 2, 2]], np.int32)}
    model = single_op_model("CumProd", feeds, 26, {"axis": np.array(1, np.int64)})
    np.testing.assert_array_equal(compiled(model, feeds, tmp_path)[0],
                                  ReferenceEvaluator(model).run(None, feeds)[0])

"""onnxruntime's attention contrib ops (com.microsoft Attention, MultiHeadAttention,
GroupQueryAttention) decomposed into standard ops match onnxruntime's CPU kernels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import relaycomp
from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decompose_graph

FLOAT = TensorProto.FLOAT
BATCH, LENGTH, WIDTH, HEADS = 2, 5, 32, 4  # head size 8: onnxruntime's GQA needs a multiple of 8
HEAD = WIDTH // HEADS


def _model(node, feeds, outputs, initializers=()):
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype),
                                            list(a.shape)) for name, a in feeds.items()]
    graph = helper.make_graph([node], "attention", inputs,
                              [helper.make_tensor_value_info(n, FLOAT, None) for n in outputs],
                              [numpy_helper.from_array(v, n) for n, v in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def assert_matches_onnxruntime(model, feeds, tmp_path):
    expected = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    artifact = relaycomp.compile(model, tmp_path / "m.so",
                                 inputs={k: v.shape for k, v in feeds.items()})
    actual = list(relaycomp.load(artifact.path).run(feeds).values())
    for got, want in zip(actual, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _normal(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("unidirectional, mask", [(0, "raw"), (1, "ends"), (1, None)])
def test_attention_with_masks_matches_onnxruntime(unidirectional, mask, tmp_path):
    feeds = {"x": _normal(BATCH, LENGTH, WIDTH)}
    inputs = ["x", "w", "b"]
    if mask == "raw":  # [B, T], 0 = masked
        feeds["mask"] = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
    elif mask == "ends":  # [B] end positions
        feeds["mask"] = np.array([5, 2], np.int32)
    if mask:
        inputs.append("mask")
    node = helper.make_node("Attention", inputs, ["y"], domain="com.microsoft", num_heads=HEADS,
                            unidirectional=unidirectional)
    weights = [("w", _normal(WIDTH, 3 * WIDTH, seed=1, scale=0.3)),
               ("b", _normal(3 * WIDTH, seed=2, scale=0.1))]
    assert_matches_onnxruntime(_model(node, feeds, ["y"], weights), feeds, tmp_path)


def test_attention_with_past_returns_the_present(tmp_path):
    feeds = {"x": _normal(BATCH, LENGTH, WIDTH), "past": _normal(2, BATCH, HEADS, 3, HEAD, seed=3)}
    node = helper.make_node("Attention", ["x", "w", "b", "", "past"], ["y", "present"],
                            domain="com.microsoft", num_heads=HEADS, unidirectional=1)
    weights = [("w", _normal(WIDTH, 3 * WIDTH, seed=1, scale=0.3)),
               ("b", _normal(3 * WIDTH, seed=2, scale=0.1))]
    assert_matches_onnxruntime(_model(node, feeds, ["y", "present"], weights), feeds, tmp_path)


def test_multi_head_cross_attention_with_bias_mask_and_attention_bias(tmp_path):
    keys = 7
    feeds = {"q": _normal(BATCH, LENGTH, WIDTH), "k": _normal(BATCH, keys, WIDTH, seed=1),
             "v": _normal(BATCH, keys, WIDTH, seed=2),
             "mask": np.array([[1] * 5 + [0] * 2, [1] * 7], np.int32),
             "attention_bias": _normal(1, HEADS, LENGTH, keys, seed=3)}
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v", "b", "mask", "attention_bias"],
                            ["y"], domain="com.microsoft", num_heads=HEADS, scale=0.3)
    bias = [("b", _normal(3 * WIDTH, seed=4, scale=0.1))]
    assert_matches_onnxruntime(_model(node, feeds, ["y"], bias), feeds, tmp_path)


def test_multi_head_self_attention_with_past_is_causal(tmp_path):
    feeds = {"q": _normal(BATCH, LENGTH, WIDTH), "k": _normal(BATCH, LENGTH, WIDTH, seed=1),
             "v": _normal(BATCH, LENGTH, WIDTH, seed=2),
             "past_k": _normal(BATCH, HEADS, 3, HEAD, seed=3),
             "past_v": _normal(BATCH, HEADS, 3, HEAD, seed=4)}
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "", "", "past_k", "past_v"],
                            ["y", "present_k", "present_v"], domain="com.microsoft",
                            num_heads=HEADS, unidirectional=1)
    outputs = ["y", "present_k", "present_v"]
    assert_matches_onnxruntime(_model(node, feeds, outputs), feeds, tmp_path)


def _gqa(feeds, past: int, length: int, **attrs):
    inputs = ["q", "k", "v"] + (["past_k", "past_v"] if past else ["", ""]) + ["seqlens", "total"]
    constants = [("seqlens", np.full(BATCH, past + length - 1, np.int32)),
                 ("total", np.array(past + length, np.int32))]
    node = helper.make_node("GroupQueryAttention", inputs, ["y", "present_k", "present_v"],
                            domain="com.microsoft", num_heads=HEADS, kv_num_heads=2, **attrs)
    return _model(node, feeds, ["y", "present_k", "present_v"], constants)


def test_group_query_attention_prompt_with_a_local_window(tmp_path):
    feeds = {"q": _normal(BATCH, LENGTH, WIDTH), "k": _normal(BATCH, LENGTH, 2 * HEAD, seed=1),
             "v": _normal(BATCH, LENGTH, 2 * HEAD, seed=2)}
    assert_matches_onnxruntime(_gqa(feeds, 0, LENGTH, local_window_size=2), feeds, tmp_path)


def test_group_query_attention_decode_step_with_past_and_softcap(tmp_path):
    feeds = {"q": _normal(BATCH, 1, WIDTH), "k": _normal(BATCH, 1, 2 * HEAD, seed=1),
             "v": _normal(BATCH, 1, 2 * HEAD, seed=2),
             "past_k": _normal(BATCH, 2, 3, HEAD, seed=3),
             "past_v": _normal(BATCH, 2, 3, HEAD, seed=4)}
    assert_matches_onnxruntime(_gqa(feeds, 3, 1, softcap=5.0), feeds, tmp_path)


def test_group_query_attention_with_run_time_lengths_is_refused():
    feeds = {"q": _normal(BATCH, LENGTH, WIDTH), "k": _normal(BATCH, LENGTH, 2 * HEAD, seed=1),
             "v": _normal(BATCH, LENGTH, 2 * HEAD, seed=2),
             "seqlens": np.full(BATCH, LENGTH - 1, np.int32)}
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens", "total"],
                            ["y"], domain="com.microsoft", num_heads=HEADS, kv_num_heads=2)
    model = _model(node, feeds, ["y"], [("total", np.array(LENGTH, np.int32))])
    with pytest.raises(OnnxImportError, match="unpadded sequences known at compile time"):
        decompose_graph(onnx.shape_inference.infer_shapes(model), 17)


def test_attention_with_rotary_inside_is_refused():
    feeds = {"x": _normal(BATCH, LENGTH, WIDTH)}
    node = helper.make_node("Attention", ["x", "w"], ["y"], domain="com.microsoft",
                            num_heads=HEADS, do_rotary=1)
    model = _model(node, feeds, ["y"], [("w", _normal(WIDTH, 3 * WIDTH))])
    with pytest.raises(OnnxImportError, match="do_rotary=1 is not supported"):
        decompose_graph(model, 17)

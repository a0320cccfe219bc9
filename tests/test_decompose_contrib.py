"""onnxruntime's com.microsoft transformer ops rewritten into standard ops match its kernels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import relaycomp
from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decompose_graph

onnxruntime.set_default_logger_severity(3)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 3, 8)).astype(np.float32)
V8 = RNG.normal(size=(8,)).astype(np.float32)


def contrib_model(op, domain, inputs, constants, outputs, opset=17, **attrs):
    """One ``op`` node; graph inputs first, then constants, in the node's input order."""
    elem_type = helper.np_dtype_to_tensor_dtype(next(iter(inputs.values())).dtype)
    graph = helper.make_graph(
        [helper.make_node(op, [*inputs, *constants], outputs, domain=domain, **attrs)], op,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [helper.make_tensor_value_info(o, elem_type if i in (0, 3) else TensorProto.FLOAT, None)
         for i, o in enumerate(outputs) if o],
        [numpy_helper.from_array(a, n) for n, a in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("com.microsoft", 1)])


def ort_run(model, feeds):
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


CASES = {
    "Gelu": ({"x": X}, {}, ["y"], {}),
    "BiasGelu": ({"x": X}, {"b": V8}, ["y"], {}),
    "FastGelu": ({"x": X}, {"b": V8}, ["y"], {}),
    "QuickGelu": ({"x": X}, {}, ["y"], {"alpha": 1.5}),
    "FusedMatMul": ({"a": X, "b": RNG.normal(size=(2, 5, 8)).astype(np.float32)}, {}, ["y"],
                    {"transB": 1, "alpha": 0.5}),
    "SkipLayerNormalization": ({"x": X, "skip": X * 0.5},
                               {"gamma": V8, "beta": V8 * 2, "bias": V8 * 3},
                               ["y", "mean", "inv_std", "sum"], {"epsilon": 1e-5}),
    "SkipSimplifiedLayerNormalization": ({"x": X, "skip": X * 0.5}, {"gamma": V8, "bias": V8},
                                         ["y", "", "inv_std", "sum"], {"epsilon": 1e-5}),
}


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("op", sorted(CASES))
def test_rewrite_matches_onnxruntime(op, opset):
    inputs, constants, outputs, attrs = CASES[op]
    model = contrib_model(op, "com.microsoft", inputs, constants, outputs, opset, **attrs)
    rewritten, report = decompose_graph(onnx.ModelProto.FromString(model.SerializeToString()),
                                        opset)
    assert report == {op: 1}
    assert {n.domain for n in rewritten.graph.node} <= {""}
    expected = ort_run(model, inputs)
    for got, want in zip(ort_run(rewritten, inputs), expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_simplified_layer_normalization_in_the_default_domain():
    model = contrib_model("SimplifiedLayerNormalization", "", {"x": X}, {"scale": V8},
                          ["y", "inv_std"], epsilon=1e-5, axis=-1)
    rewritten, _ = decompose_graph(onnx.ModelProto.FromString(model.SerializeToString()), 17)
    for got, want in zip(ort_run(rewritten, {"x": X}), ort_run(model, {"x": X}), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_half_precision_normalization_computes_in_float32():
    half = {"x": X.astype(np.float16), "skip": X.astype(np.float16)}
    model = contrib_model("SkipLayerNormalization", "com.microsoft", half,
                          {"gamma": V8.astype(np.float16), "beta": V8.astype(np.float16)},
                          ["y"], epsilon=1e-5)
    rewritten, _ = decompose_graph(onnx.ModelProto.FromString(model.SerializeToString()), 17)
    (got,), (want,) = ort_run(rewritten, half), ort_run(model, half)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3)


def test_undefined_mean_output_is_refused():
    inputs, constants, _, attrs = CASES["SkipSimplifiedLayerNormalization"]
    model = contrib_model("SkipSimplifiedLayerNormalization", "com.microsoft", inputs, constants,
                          ["y", "mean"], **attrs)
    with pytest.raises(OnnxImportError, match="'mean' output"):
        decompose_graph(model, 17)


def test_transformer_block_ops_compile(tmp_path):
    # SkipLayerNormalization -> FastGelu, as onnxruntime's transformer optimizer writes them
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["n"],
                              domain="com.microsoft", epsilon=1e-5),
             helper.make_node("FastGelu", ["n", "bias"], ["y"], domain="com.microsoft")]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 8])
                         for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in
         (("gamma", V8), ("beta", V8 * 0.1), ("bias", V8 * 0.2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    feeds = {"x": X, "skip": X * 0.5}
    artifact = relaycomp.compile(model, tmp_path / "model.so",
                                 inputs={n: a.shape for n, a in feeds.items()})
    (got,) = relaycomp.load(artifact.path).run(feeds).values()
    np.testing.assert_allclose(got, ort_run(model, feeds)[0], rtol=1e-5, atol=1e-5)

"""Graph fusion end to end: fewer kernels than stock TVM's fusion, numerics unchanged."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from helpers import assert_matches_ort, ort_outputs
from models import mobilenet_style_net, random_inputs, resnet_block_net
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.relax.dpl import is_op, wildcard

import relaycomp
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.compiler.plugins import load_pass_spec
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.ir import kernel_traffic, op_counts
from relaycomp.passes import fold_batchnorm, fuse_by_pattern, merge_parallel_convs
from relaycomp.passes.fuse_by_pattern import FUSION_PATTERNS, register_fusion_pattern

FIXTURES = Path(__file__).parents[1] / "fixtures"


def inception_style_net() -> onnx.ModelProto:
    """An Inception (BN-Inception) block: 1x1, 1x1→3x3, 1x1→5x5 and pool→1x1 branches, each
    conv followed by BatchNormalization, concatenated."""
    rng = np.random.default_rng(3)

    def weight(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32),
                                       name)

    inits = [weight("w_a", (8, 16, 1, 1)), weight("w_b1", (6, 16, 1, 1)),
             weight("w_b2", (8, 6, 3, 3)), weight("w_c1", (4, 16, 1, 1)),
             weight("w_c2", (4, 4, 5, 5)), weight("w_d", (4, 16, 1, 1))]
    nodes = []

    def conv_bn(data, name, out_channels, pads=(0, 0, 0, 0)):
        nodes.append(helper.make_node("Conv", [data, f"w_{name}"], [f"{name}_conv"],
                                      pads=list(pads)))
        stats = [f"{name}_{s}" for s in ("gamma", "beta", "mean", "var")]
        inits.extend([
            numpy_helper.from_array(rng.uniform(0.5, 1.5, out_channels).astype(np.float32),
                                    stats[0]),
            numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32) * 0.1,
                                    stats[1]),
            numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32) * 0.1,
                                    stats[2]),
            numpy_helper.from_array(rng.uniform(0.5, 1.5, out_channels).astype(np.float32),
                                    stats[3])])
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_conv", *stats], [name]))

    conv_bn("x", "a", 8)
    conv_bn("x", "b1", 6)
    nodes.append(helper.make_node("Relu", ["b1"], ["b1r"]))
    conv_bn("b1r", "b2", 8, (1, 1, 1, 1))
    conv_bn("x", "c1", 4)
    nodes.append(helper.make_node("Relu", ["c1"], ["c1r"]))
    conv_bn("c1r", "c2", 4, (2, 2, 2, 2))
    nodes.append(helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3],
                                  pads=[1, 1, 1, 1]))
    conv_bn("p", "d", 4)
    nodes += [
        helper.make_node("Concat", ["a", "b2", "c2", "d"], ["cat"], axis=1),
        helper.make_node("Relu", ["cat"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "inception",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def attention_block() -> tuple[onnx.ModelProto, dict]:
    model = onnx.load(str(FIXTURES / "torch_attention_block.onnx"))
    with np.load(FIXTURES / "torch_attention_block.npz") as data:
        return model, {"x": data["x"]}


def stock_pipeline_kernels(model, shapes) -> int:
    """Kernels of stock ``tvm.compile``'s default pipeline, which legalizes but never fuses."""
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = relax.transform.LegalizeOps()(import_onnx(model, shapes).mod)
    return kernel_traffic(mod)["kernels"]


def stock_kernels(model, shapes) -> int:
    """Kernels after stock TVM's CPU fusion (LegalizeOps + FuseOps + FuseTIR)."""
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = tvm.transform.Sequential(cpu_generic.legalize_passes(target))(
            import_onnx(model, shapes).mod)
    return kernel_traffic(mod)["kernels"]


CONV_NETS = ("resnet_block_net", "mobilenet_style_net", "inception_style_net")
CASES = {
    "resnet_block_net": lambda: (resnet_block_net(), random_inputs(resnet_block_net())),
    "mobilenet_style_net": lambda: (mobilenet_style_net(), random_inputs(mobilenet_style_net())),
    "inception_style_net": lambda: (inception_style_net(), random_inputs(inception_style_net())),
    "attention_block": attention_block,
}


@pytest.mark.parametrize("name", CASES)
def test_fused_build_matches_ort_with_no_more_kernels_than_stock(name, tmp_path):
    model, inputs = CASES[name]()
    shapes = {k: v.shape for k, v in inputs.items()}
    assert_matches_ort(model, inputs, tmp_path)
    artifact = relaycomp.compile(model, tmp_path / "fused.so", inputs=shapes)
    fusion = artifact.manifest.report["fusion"]
    assert fusion["kernels_after"] < stock_pipeline_kernels(model, shapes)
    stock = stock_kernels(model, shapes)
    if name in CONV_NETS:  # BatchNorm folds away: strictly fewer kernels
        assert fusion["kernels_after"] < stock
    else:  # the attention block already has one packed QKV matmul: parity with stock FuseOps
        assert fusion["kernels_after"] <= stock
    assert fusion["intermediate_bytes_after"] < fusion["intermediate_bytes_before"]


def test_sibling_convs_are_merged_into_one_and_still_match_ort(tmp_path):
    model = inception_style_net()
    mod = import_onnx(model).mod
    report = {}
    merged = merge_parallel_convs.merge_parallel_convs(report=report)(
        fold_batchnorm.fold_batchnorm()(mod))
    assert report == {"merged": 3, "groups": 1}
    assert op_counts(merged)["nn.conv2d"] == op_counts(mod)["nn.conv2d"] - 2
    config = CompileConfig(extra_passes=(load_pass_spec("merge_parallel_convs@simplify"),))
    artifact = compile_model(model, tmp_path / "merged.so", config)
    assert "simplify/merge_parallel_convs" in artifact.manifest.passes
    inputs = random_inputs(model)
    expected = ort_outputs(model, inputs)["y"]
    actual = relaycomp.load(artifact.path).run(inputs)["y"]
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)


def test_user_pattern_fuses_into_one_kernel(tmp_path):
    from models import mlp

    x, w, b = wildcard(), wildcard(), wildcard()
    pattern = is_op("relax.nn.softmax")(is_op("relax.add")(is_op("relax.matmul")(x, w), b))
    with FUSION_PATTERNS.scoped():
        register_fusion_pattern("dense_bias_softmax", pattern)
        grouped = fuse_by_pattern.fuse_by_pattern()(import_onnx(mlp()).mod)
        assert fuse_by_pattern.fused_groups(grouped) == {"dense_bias_softmax": 1}
        assert_matches_ort(mlp(), random_inputs(mlp()), tmp_path)
        artifact = relaycomp.compile(mlp(), tmp_path / "with_pattern.so")
    plain = relaycomp.compile(mlp(), tmp_path / "plain.so")
    assert artifact.manifest.report["kernels"] < plain.manifest.report["kernels"]


def qkv_attention() -> onnx.ModelProto:
    """Single-head attention with separate Q, K and V projections of one input (BERT-style)."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 32)) * 0.2).astype(np.float32), n)
             for n in ("wq", "wk", "wv")]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_separate_qkv_projections_are_merged_into_fewer_kernels(tmp_path):
    model = qkv_attention()
    inputs = random_inputs(model)
    assert_matches_ort(model, inputs, tmp_path)
    artifact = relaycomp.compile(model, tmp_path / "qkv.so")
    assert artifact.manifest.report["fusion"]["kernels_after"] < stock_kernels(model, {})

"""decompose_conv_transpose: a stride-equals-kernel transposed conv becomes a 1x1 conv and a
depth-to-space, computing the same outputs; other transposed convs are left alone."""

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.passes.decompose_conv_transpose import decompose_conv_transpose
from relaycomp.targets import resolve
from tests.helpers import assert_matches_ort
from tests.models import _float_input, _float_output, _Graph

W = np.arange(2 * 3 * 2 * 2, dtype="float32").reshape(2, 3, 2, 2) / 10  # [C=2, O=3, 2, 2]
W_POINTWISE = np.ascontiguousarray(W.transpose(1, 2, 3, 0).reshape(12, 2, 1, 1))


def _transposed(weight, **attrs):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, weight.shape[0], 4, 5), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d_transpose(x, relax.const(weight), **attrs))
        bb.emit_func_output(y)
    return bb.get()


def test_a_stride_2_2x2_transposed_conv_becomes_a_pointwise_conv_and_depth_to_space():
    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 5), "float32")) -> R.Tensor((1, 3, 8, 10), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(W_POINTWISE))
                blocks = R.reshape(conv, R.shape([1, 3, 2, 2, 4, 5]))
                spread = R.permute_dims(blocks, [0, 1, 4, 2, 5, 3])
                y = R.reshape(spread, R.shape([1, 3, 8, 10]))
                R.output(y)
            return y

    report = {}
    before = _transposed(W, strides=2)
    after = decompose_conv_transpose(report=report)(before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert report == {"decomposed": 1}
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 5)).astype("float32")
    outputs = [relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy() for m in (before, after)]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", [{"strides": 1}, {"strides": 2, "padding": 1},
                                   {"strides": 2, "output_padding": 1}])
def test_overlapping_or_padded_transposed_convs_are_left_alone(attrs):
    before = _transposed(W, **attrs)
    report = {}
    tvm.ir.assert_structural_equal(decompose_conv_transpose(report=report)(before), before)
    assert report == {}


def _upsampling_head() -> onnx.ModelProto:
    """PP-OCR's DB head in small: a 3x3 conv, then a 2x2 stride-2 transposed conv."""
    g = _Graph(seed=5)
    features = g.op("Relu", [g.conv("x", 16, 32)])
    weight = g.weight((32, 32, 2, 2), 32 * 4)
    up = g.op("ConvTranspose", [features, weight], kernel_shape=[2, 2], strides=[2, 2])
    return g.model("head", [_float_input("x", [1, 16, 8, 8])], {"y": g.op("Relu", [up])},
                   {"y": _float_output([1, 32, 16, 16])})


def test_on_cpus_the_layout_plan_takes_the_pointwise_conv_and_the_build_matches_onnxruntime(
        tmp_path):
    target = resolve("x86-64-avx512", num_cores=2).tvm_target()
    stages, _ = split_before(default_stages("llvm"), "dispatch")
    _, report = run_stages(import_onnx(_upsampling_head()).mod, stages, target)
    assert report.facts("decompose_conv_transpose") == {"decomposed": 1}
    assert report.facts("plan_conv_layout")["planned"] == 2  # the 3x3 conv and the 1x1 one
    x = np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype("float32")
    assert_matches_ort(_upsampling_head(), {"x": x}, tmp_path)

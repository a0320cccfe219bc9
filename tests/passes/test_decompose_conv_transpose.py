"""decompose_conv_transpose: a stride-equals-kernel transposed conv becomes a 1x1 conv and a
depth-to-space, computing the same outputs; other transposed convs are left alone."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from relaycomp.passes.decompose_conv_transpose import decompose_conv_transpose

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

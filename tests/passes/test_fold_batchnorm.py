"""fold_batchnorm: every conv+BN pair becomes one conv + bias, numerics unchanged."""

import numpy as np
import tvm
from helpers import assert_matches_ort
from models import _float_input, _float_output, _Graph, conv_net, random_inputs, resnet_block_net

from relaycomp.frontend.examples import get_example
from relaycomp.frontend.onnx_import import import_onnx, load_onnx
from relaycomp.ir import op_counts
from relaycomp.passes import fold_batchnorm as pass_module


def fold(model, report=None):
    mod = import_onnx(model).mod
    return mod, pass_module.fold_batchnorm(report=report)(mod)


def test_every_batchnorm_after_a_conv_is_folded():
    report = {}
    before, after = fold(load_onnx(get_example("digits").model_path), report)
    assert op_counts(before)["nn.batch_norm"] == 3
    assert "nn.batch_norm" not in op_counts(after)
    assert op_counts(after)["nn.conv2d"] == 3
    assert report == {"fold_batchnorm": 3}


def test_folding_keeps_the_signature():
    before, after = fold(resnet_block_net())
    tvm.ir.assert_structural_equal(before["main"].params[0].ty, after["main"].params[0].ty)
    assert str(before["main"].ret_ty) == str(after["main"].ret_ty)


def test_folded_builds_match_onnxruntime(tmp_path):
    for model in (conv_net(), resnet_block_net()):
        assert_matches_ort(model, random_inputs(model), tmp_path, rtol=1e-4)


def _upsampling_with_batchnorm():
    """PP-OCR's DB head's upsampling: ConvTranspose (2x2, stride 2) + bias + BatchNorm + ReLU."""
    g = _Graph(seed=7)
    up = g.op("ConvTranspose", ["x", g.weight((16, 8, 2, 2), 16 * 4)], kernel_shape=[2, 2],
              strides=[2, 2])
    biased = g.op("Add", [up, g.const(g.rng.standard_normal((1, 8, 1, 1)).astype(np.float32))])
    normed = g.batchnorm(biased, 8)
    return g.model("up", [_float_input("x", [1, 16, 6, 6])], {"y": g.op("Relu", [normed])},
                   {"y": _float_output([1, 8, 12, 12])})


def test_a_batchnorm_after_a_transposed_conv_is_folded_and_matches_onnxruntime(tmp_path):
    report = {}
    before, after = fold(_upsampling_with_batchnorm(), report)
    assert op_counts(before)["nn.batch_norm"] == 1
    assert "nn.batch_norm" not in op_counts(after)
    assert report == {"fold_batchnorm_transpose": 1}
    model = _upsampling_with_batchnorm()
    assert_matches_ort(model, random_inputs(model), tmp_path, rtol=1e-4)

"""fold_batchnorm: every conv+BN pair becomes one conv + bias, numerics unchanged."""

import tvm
from helpers import assert_matches_ort
from models import conv_net, random_inputs, resnet_block_net

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

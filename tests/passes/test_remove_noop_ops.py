"""remove_noop_ops: identity reshapes/transposes/casts and x+0, x*1 disappear; others stay."""

import numpy as np
import onnx
import tvm
from helpers import assert_matches_ort
from onnx import TensorProto, helper, numpy_helper
from tvm.script import ir as I
from tvm.script import relax as R

from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.ir import op_counts
from relaycomp.passes import remove_noop_ops as pass_module


def noop_model(transpose_perm=(0, 1, 2, 3), add_value=0.0):
    weight = numpy_helper.from_array(np.random.default_rng(0).random((4, 3, 3, 3), np.float32),
                                     "w")
    addend = numpy_helper.from_array(np.full((1, 1, 1, 1), add_value, np.float32), "zero")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["t"], perm=list(transpose_perm)),
        helper.make_node("Cast", ["t"], ["k"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["k", "zero"], ["y"]),
    ]
    out_shape = [[1, 4, 8, 8][axis] for axis in transpose_perm]
    graph = helper.make_graph(
        nodes, "noops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [weight, addend])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_identity_ops_are_removed():
    report = {}
    after = pass_module.remove_noop_ops(report=report)(import_onnx(noop_model()).mod)
    assert op_counts(after) == {"nn.conv2d": 1}
    assert report == {"identity_transpose": 1, "identity_cast": 1,
                                         "add_zero": 1}


def test_real_transposes_and_adds_are_kept():
    after = pass_module.remove_noop_ops()(
        import_onnx(noop_model(transpose_perm=(0, 2, 3, 1), add_value=0.5)).mod)
    counts = op_counts(after)
    assert counts["permute_dims"] == 1 and counts["add"] == 1


def test_result_matches_onnxruntime(tmp_path):
    model = noop_model(add_value=0.0)
    onnx.checker.check_model(model)
    x = np.random.default_rng(1).random((1, 3, 8, 8), np.float32)
    assert_matches_ort(model, {"x": x}, tmp_path)


def test_every_rule_drops_its_noop_and_keeps_the_rest():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 3), "float32")) -> R.Tensor((3, 2), "float32"):
            with R.dataflow():
                a = R.reshape(x, (2, 3))
                b = R.permute_dims(a, [0, 1])
                c = R.astype(b, "float32")
                d = R.add(c, R.const(np.zeros((1, 3), "float32")))
                e = R.multiply(R.const(1.0, "float32"), d)
                f = R.subtract(e, R.const(0.0, "float32"))
                g = R.divide(f, R.const(np.ones(3, "float32")))
                y = R.permute_dims(g, [1, 0])
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 3), "float32")) -> R.Tensor((3, 2), "float32"):
            with R.dataflow():
                y = R.permute_dims(x, [1, 0])
                R.output(y)
            return y

    report = {}
    tvm.ir.assert_structural_equal(pass_module.remove_noop_ops(report=report)(Before), Expected)
    assert report == {"identity_reshape": 1, "identity_transpose": 1, "identity_cast": 1,
                      "add_zero": 1, "subtract_zero": 1, "multiply_one": 1, "divide_one": 1}


def test_ops_that_change_type_or_value_are_kept():
    # Each op below looks like a no-op but is not: a zero that broadcasts the input to a larger
    # shape, a multiplication by 2, a real reshape, a narrowing cast, a real transpose.
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 3), "float32"), s: R.Tensor((1, 3), "float32"),
                 ) -> R.Tensor((3, 2), "float16"):
            with R.dataflow():
                a = R.add(s, R.const(np.zeros((2, 1), "float32")))
                m = R.multiply(a, R.const(2.0, "float32"))
                r = R.reshape(R.add(x, m), (3, 2))
                c = R.astype(r, "float16")
                y = R.permute_dims(R.reshape(c, (2, 3)), [1, 0])
                R.output(y)
            return y

    report = {}
    after = pass_module.remove_noop_ops(report=report)(Before)
    tvm.ir.assert_structural_equal(after, Before)
    assert report == {}


def test_a_transpose_without_axes_is_kept():  # it reverses the axes: on a square tensor too
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((3, 3), "float32")) -> R.Tensor((3, 3), "float32"):
            with R.dataflow():
                y = R.permute_dims(x)
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(pass_module.remove_noop_ops()(Before), Before)

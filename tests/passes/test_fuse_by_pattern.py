"""fuse_by_pattern: each match of a registered pattern becomes one primitive function."""

import numpy as np
import pytest
import tvm
from tvm.relax.dpl import is_op, wildcard
from tvm.script import ir as I
from tvm.script import relax as R

from relaycomp.passes import fuse_by_pattern as pass_module
from relaycomp.passes.fuse_by_pattern import FUSION_PATTERNS, fused_groups, register_fusion_pattern

BIAS = np.arange(3, dtype="float32")


def matmul_add():
    return is_op("relax.add")(is_op("relax.matmul")(wildcard(), wildcard()), wildcard())


def add_relu():
    return is_op("relax.nn.relu")(is_op("relax.add")(wildcard(), wildcard()))


@pytest.fixture(autouse=True)
def no_patterns():
    """Each test starts without registered patterns and leaves none behind."""
    with FUSION_PATTERNS.scoped():
        for name in FUSION_PATTERNS.names():
            FUSION_PATTERNS.remove(name)
        yield


@I.ir_module
class Dense:
    @R.function
    def main(x: R.Tensor((2, 4), "float32"), w: R.Tensor((4, 3), "float32"),
             ) -> R.Tensor((2, 3), "float32"):
        with R.dataflow():
            m = R.matmul(x, w)
            a = R.add(m, R.const(BIAS))
            r = R.nn.relu(a)
            y = R.nn.softmax(r)
            R.output(y)
        return y


def test_a_match_becomes_one_primitive_function_and_constants_stay_outside():
    @I.ir_module
    class Expected:
        @R.function(private=True)
        def fused_relax_matmul_relax_add_relax_nn_relu(
                x: R.Tensor((2, 4), "float32"), w: R.Tensor((4, 3), "float32"),
                b: R.Tensor((3,), "float32")) -> R.Tensor((2, 3), "float32"):
            R.func_attr({"Composite": "dense_bias_relu", "Primitive": True})
            with R.dataflow():
                m = R.matmul(x, w)
                a = R.add(m, b)
                gv = R.nn.relu(a)
                R.output(gv)
            return gv

        @R.function
        def main(x: R.Tensor((2, 4), "float32"), w: R.Tensor((4, 3), "float32"),
                 ) -> R.Tensor((2, 3), "float32"):
            cls = Expected
            with R.dataflow():
                lv = cls.fused_relax_matmul_relax_add_relax_nn_relu(x, w, R.const(BIAS))
                y = R.nn.softmax(lv)
                R.output(y)
            return y

    register_fusion_pattern("dense_bias_relu", is_op("relax.nn.relu")(matmul_add()))
    after = pass_module.fuse_by_pattern()(Dense)
    tvm.ir.assert_structural_equal(after, Expected)
    assert fused_groups(after) == {"dense_bias_relu": 1}


def test_the_pattern_registered_first_wins_an_overlap():
    @I.ir_module
    class Expected:
        @R.function(private=True)
        def fused_relax_matmul_relax_add(
                x: R.Tensor((2, 4), "float32"), w: R.Tensor((4, 3), "float32"),
                b: R.Tensor((3,), "float32")) -> R.Tensor((2, 3), "float32"):
            R.func_attr({"Composite": "matmul_add", "Primitive": True})
            with R.dataflow():
                m = R.matmul(x, w)
                gv = R.add(m, b)
                R.output(gv)
            return gv

        @R.function
        def main(x: R.Tensor((2, 4), "float32"), w: R.Tensor((4, 3), "float32"),
                 ) -> R.Tensor((2, 3), "float32"):
            cls = Expected
            with R.dataflow():
                lv = cls.fused_relax_matmul_relax_add(x, w, R.const(BIAS))
                r = R.nn.relu(lv)
                y = R.nn.softmax(r)
                R.output(y)
            return y

    register_fusion_pattern("matmul_add", matmul_add())
    register_fusion_pattern("add_relu", add_relu())
    after = pass_module.fuse_by_pattern()(Dense)
    tvm.ir.assert_structural_equal(after, Expected)
    assert fused_groups(after) == {"matmul_add": 1}


def test_a_vetoed_match_is_not_fused():
    register_fusion_pattern("dense_bias_relu", is_op("relax.nn.relu")(matmul_add()),
                            check=lambda context: False)
    after = pass_module.fuse_by_pattern()(Dense)
    tvm.ir.assert_structural_equal(after, Dense)
    assert fused_groups(after) == {}


def test_without_registered_patterns_nothing_changes():
    tvm.ir.assert_structural_equal(pass_module.fuse_by_pattern()(Dense), Dense)

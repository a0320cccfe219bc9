"""unstack_max_min: max/min over a stack of tensors becomes elementwise maximum/minimum; a
reduction over other axes stays."""

import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from relaycomp.passes.unstack_max_min import unstack_max_min


def test_max_and_min_of_a_stack_become_elementwise():
    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((2, 3), "float32"), b: R.Tensor((2, 3), "float32"),
                 c: R.Tensor((2, 3), "float32")) -> R.Tensor((2, 3), "float32"):
            with R.dataflow():
                s = R.stack((a, b, c), axis=0)
                hi = R.max(s, axis=[0], keepdims=False)
                t = R.stack((hi, a), axis=2)
                y = R.min(t, axis=[-1], keepdims=False)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(a: R.Tensor((2, 3), "float32"), b: R.Tensor((2, 3), "float32"),
                 c: R.Tensor((2, 3), "float32")) -> R.Tensor((2, 3), "float32"):
            with R.dataflow():
                hi = R.maximum(R.maximum(a, b), c)
                y = R.minimum(hi, a)
                R.output(y)
            return y

    report = {}
    after = unstack_max_min(report=report)(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert report == {"max_of_stack": 1, "min_of_stack": 1}


def test_a_reduction_over_other_axes_stays():
    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((2, 3), "float32"), b: R.Tensor((2, 3), "float32"),
                 ) -> R.Tensor((3,), "float32"):
            with R.dataflow():
                s = R.stack((a, b), axis=0)
                y = R.max(s, axis=[0, 1], keepdims=False)
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(unstack_max_min()(Before), Before)

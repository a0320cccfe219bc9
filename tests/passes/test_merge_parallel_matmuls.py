"""merge_parallel_matmuls: Q/K/V-style matmuls of one tensor by constant [K, N_i] weights become
one matmul by the weights side by side, split back along the last axis; others stay apart."""

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from relaycomp.passes import merge_parallel_matmuls as pass_module

WQ = np.full((4, 3), 1.0, "float32")
WK = np.full((4, 3), 2.0, "float32")
WV = np.full((4, 5), 3.0, "float32")
BATCHED = np.full((1, 4, 3), 4.0, "float32")
LEFT = np.full((3, 4), 5.0, "float32")
Tokens = R.Tensor((1, 2, 4), "float32")


def merge(mod, report=None):
    return pass_module.merge_parallel_matmuls(report=report)(mod)


def test_projections_of_one_tensor_merge_into_one_matmul():
    @I.ir_module
    class Before:
        @R.function
        def main(x: Tokens):
            with R.dataflow():
                q = R.matmul(x, R.const(WQ))
                k = R.matmul(x, R.const(WK))
                v = R.matmul(x, R.const(WV))
                y = (q, k, v)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: Tokens):
            with R.dataflow():
                merged = R.matmul(x, R.const(np.concatenate([WQ, WK, WV], axis=1)))
                merged_split = R.split(merged, [3, 6], axis=-1)
                q = merged_split[0]
                k = merged_split[1]
                v = merged_split[2]
                y = (q, k, v)
                R.output(y)
            return y

    report = {}
    tvm.ir.assert_structural_equal(merge(Before, report), Expected)
    assert report == {"merged": 3, "groups": 1}


def test_matmuls_that_differ_or_are_not_plain_stay_apart():
    # b differs from a in its output dtype, c reads another tensor, d's weight is a parameter;
    # the batched-weight pair and the pair sharing its right operand are identical but not
    # matmuls of one left operand by constant 2-D weights.
    @I.ir_module
    class Before:
        @R.function
        def main(x: Tokens, z: Tokens, w: R.Tensor((4, 3), "float32"),
                 t: R.Tensor((4, 2), "float32")):
            with R.dataflow():
                a = R.matmul(x, R.const(WQ))
                b = R.matmul(x, R.const(WK), out_dtype="float16")
                c = R.matmul(z, R.const(WV))
                d = R.matmul(x, w)
                e1 = R.matmul(x, R.const(BATCHED))
                e2 = R.matmul(x, R.const(BATCHED))
                f1 = R.matmul(R.const(LEFT), t)
                f2 = R.matmul(R.const(LEFT), t)
                y = (a, b, c, d, e1, e2, f1, f2)
                R.output(y)
            return y

    report = {}
    tvm.ir.assert_structural_equal(merge(Before, report), Before)
    assert report == {"merged": 0, "groups": 0}


def test_only_siblings_in_one_dataflow_block_merge():
    @I.ir_module
    class Before:
        @R.function
        def main(x: Tokens):
            with R.dataflow():
                q = R.matmul(x, R.const(WQ))
                R.output(q)
            k = R.matmul(x, R.const(WK))
            v = R.matmul(x, R.const(WV))
            return (q, k, v)

    report = {}
    tvm.ir.assert_structural_equal(merge(Before, report), Before)
    assert report == {"merged": 0, "groups": 0}

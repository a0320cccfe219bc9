"""merge_parallel_convs: convs with one input and compatible constant weights become one wider
conv whose output is split back into the branches' values; other convs stay as they are."""

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from relaycomp.passes import merge_parallel_convs as pass_module

W1 = np.full((2, 3, 1, 1), 1.0, "float32")
W2 = np.full((4, 3, 1, 1), 2.0, "float32")
W3 = np.full((2, 3, 3, 3), 3.0, "float32")
W4 = np.full((2, 3, 3, 3), 4.0, "float32")
DEPTHWISE = np.full((3, 1, 1, 1), 5.0, "float32")
Image = R.Tensor((1, 3, 4, 4), "float32")


def merge(mod, report=None):
    return pass_module.merge_parallel_convs(report=report)(mod)


def test_siblings_with_one_kernel_size_merge_into_one_conv_per_group():
    @I.ir_module
    class Before:
        @R.function
        def main(x: Image) -> R.Tensor((1, 10, 4, 4), "float32"):
            with R.dataflow():
                a = R.nn.conv2d(x, R.const(W1))
                r = R.nn.relu(x)
                b = R.nn.conv2d(x, R.const(W2))
                c = R.nn.conv2d(x, R.const(W3), padding=[1, 1, 1, 1])
                d = R.nn.conv2d(r, R.const(W1))  # another input: not a sibling
                y = R.concat((a, b, c, d), axis=1)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: Image) -> R.Tensor((1, 10, 4, 4), "float32"):
            with R.dataflow():
                merged = R.nn.conv2d(x, R.const(np.concatenate([W1, W2])))
                merged_split = R.split(merged, [2], axis=1)
                a = merged_split[0]
                r = R.nn.relu(x)
                b = merged_split[1]
                c = R.nn.conv2d(x, R.const(W3), padding=[1, 1, 1, 1])
                d = R.nn.conv2d(r, R.const(W1))
                y = R.concat((a, b, c, d), axis=1)
                R.output(y)
            return y

    report = {}
    tvm.ir.assert_structural_equal(merge(Before, report), Expected)
    assert report == {"merged": 2, "groups": 1}


def test_each_group_of_siblings_merges_on_its_own():
    @I.ir_module
    class Before:
        @R.function
        def main(x: Image) -> R.Tensor((1, 10, 4, 4), "float32"):
            with R.dataflow():
                a = R.nn.conv2d(x, R.const(W1))
                c = R.nn.conv2d(x, R.const(W3), padding=[1, 1, 1, 1])
                b = R.nn.conv2d(x, R.const(W1))
                d = R.nn.conv2d(x, R.const(W4), padding=[1, 1, 1, 1])
                y = R.concat((a, b, c, d), axis=1)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: Image) -> R.Tensor((1, 10, 4, 4), "float32"):
            with R.dataflow():
                merged = R.nn.conv2d(x, R.const(np.concatenate([W1, W1])))
                merged_split = R.split(merged, [2], axis=1)
                a = merged_split[0]
                merged1 = R.nn.conv2d(x, R.const(np.concatenate([W3, W4])),
                                      padding=[1, 1, 1, 1])
                merged_split1 = R.split(merged1, [2], axis=1)
                c = merged_split1[0]
                b = merged_split[1]
                d = merged_split1[1]
                y = R.concat((a, b, c, d), axis=1)
                R.output(y)
            return y

    report = {}
    tvm.ir.assert_structural_equal(merge(Before, report), Expected)
    assert report == {"merged": 4, "groups": 2}


def test_convs_that_differ_or_are_not_plain_stay_apart():
    # b, e, d, p differ from a or c in one attribute; f's weight is a parameter; the depthwise,
    # HWIO-kernel and NHWC-data pairs are identical but not plain NCHW/OIHW convs with groups=1.
    @I.ir_module
    class Before:
        @R.function
        def main(x: Image, w: R.Tensor((2, 3, 1, 1), "float32"),
                 x_nhwc: R.Tensor((1, 4, 4, 3), "float32")):
            with R.dataflow():
                a = R.nn.conv2d(x, R.const(W1))
                b = R.nn.conv2d(x, R.const(W1), strides=[2, 2])
                e = R.nn.conv2d(x, R.const(W1), out_dtype="float16")
                c = R.nn.conv2d(x, R.const(W3), padding=[1, 1, 1, 1])
                d = R.nn.conv2d(x, R.const(W3), padding=[1, 1, 1, 1], dilation=[2, 2])
                p = R.nn.conv2d(x, R.const(W3))
                f = R.nn.conv2d(x, w)
                g1 = R.nn.conv2d(x, R.const(DEPTHWISE), groups=3)
                g2 = R.nn.conv2d(x, R.const(DEPTHWISE), groups=3)
                h1 = R.nn.conv2d(x, R.const(W1.transpose(2, 3, 1, 0)), kernel_layout="HWIO")
                h2 = R.nn.conv2d(x, R.const(W1.transpose(2, 3, 1, 0)), kernel_layout="HWIO")
                n1 = R.nn.conv2d(x_nhwc, R.const(W1), data_layout="NHWC")
                n2 = R.nn.conv2d(x_nhwc, R.const(W1), data_layout="NHWC")
                y = (a, b, e, c, d, p, f, g1, g2, h1, h2, n1, n2)
                R.output(y)
            return y

    report = {}
    tvm.ir.assert_structural_equal(merge(Before, report), Before)
    assert report == {"merged": 0, "groups": 0}

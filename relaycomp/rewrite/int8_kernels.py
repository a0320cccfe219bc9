"""The int8 conv kernels of the planned ``NCHW16c`` uint8 layout (:mod:`int8_layout`), as TE
computes, and the rewrite of the convs ``ConvertLayout`` left on that layout into them.

Scheduled by :mod:`relaycomp.schedules.cpu.int8_nchwc` (``vpdpbusd``, AVX-512 VNNI).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from relaycomp.rewrite.conv_window import SlidingWindow

BLOCK = 16  # channels a block: the int32 lanes of one 512-bit vpdpbusd
GROUP = 4  # input channels one vpdpbusd lane sums
TAPS = 4  # kernel row width of the integer depthwise kernel (int8_depthwise.TAPS)
LAYOUT = f"NCHW{BLOCK}c"
CONV_OP = "relax.nn.conv2d"
KERNEL = "conv2d_nchwc_int8"
DEPTHWISE_KERNEL = "depthwise_conv2d_nchwc_int8"


def conv2d_nchwc_int8(data: te.Tensor, weight: te.Tensor, strides, padding,
                      dilation) -> te.Tensor:
    """``out[n, fo, y, x, fi] = sum(int32(data[n, co, y', x', 4q + k])
    * int32(weight[fo, co, ry, rx, q, fi, k]))`` over ``co, ry, rx, q, k``: uint8 ``NCHW16c``
    activations, int8 weights with each output channel's four input channels adjacent (the
    ``vpdpbusd`` operands as they lie), int32 sums; padding with zeros (the quantized zero of a
    conv ``lower_qdq_to_integer`` left padded)."""
    out_blocks, in_blocks, kernel_h, kernel_w, quads, out_block, group = weight.shape
    window = SlidingWindow(data, (kernel_h, kernel_w), strides, padding, dilation)
    co = te.reduce_axis((0, in_blocks), name="co")
    q = te.reduce_axis((0, quads), name="q")
    k = te.reduce_axis((0, group), name="k")
    return te.compute(
        (data.shape[0], out_blocks, window.height, window.width, out_block),
        lambda n, fo, y, x, fi: te.sum(
            window.padded[n, co, *window.at(y, x), q * group + k].astype("int32")
            * weight[fo, co, window.ry, window.rx, q, fi, k].astype("int32"),
            axis=[co, window.ry, window.rx, q, k]),
        name=KERNEL, tag=KERNEL)


def depthwise_conv2d_nchwc_int8(data: te.Tensor, weight: te.Tensor, strides, padding,
                                dilation) -> te.Tensor:
    """``out[n, c, y, x, i] = sum(int32(data[n, c, y', x' + k, i]) * int32(weight[c, ry, i, k]))``
    over ``ry, k``: one filter per channel, ``TAPS``-wide kernel rows (``lower_qdq_to_integer``
    widens 3x3 kernels with a zero column), each channel's taps adjacent in the weight; the four
    pixels a kernel row reads are 64 adjacent bytes of the input."""
    blocks, kernel_h, block, taps = weight.shape
    window = SlidingWindow(data, (kernel_h, taps), strides, padding, dilation)
    return te.compute(
        (data.shape[0], blocks, window.height, window.width, block),
        lambda n, c, y, x, i: te.sum(
            window.padded[n, c, *window.at(y, x), i].astype("int32")
            * weight[c, window.ry, i, window.rx].astype("int32"), axis=[window.ry, window.rx]),
        name=DEPTHWISE_KERNEL, tag=DEPTHWISE_KERNEL)


@relax.expr_functor.mutator
class BlockedToKernels(relax.PyExprMutator):
    """``conv2d`` to ``NCHW16c`` (as ``ConvertLayout`` left the planned ones: from ``NCHW16c``
    with an ``OIHW16i16o`` constant weight, a depthwise one ``OIHW1i16o``, the stem from
    ``NCHW4c`` with ``OIHW4i16o``) -> a :func:`conv2d_nchwc_int8` /
    :func:`depthwise_conv2d_nchwc_int8` kernel."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP
                and call.attrs.data_layout in (LAYOUT, f"NCHW{GROUP}c")
                and call.attrs.out_layout == LAYOUT):
            return call
        data, weight = call.args
        attrs = call.attrs
        out_blocks, in_blocks, kernel_h, kernel_w, in_block, out_block = (
            weight.value.numpy().shape)
        if int(attrs.groups) == 1:  # [fo, co, ry, rx, ci, fi] -> [fo, co, ry, rx, ci/4, fi, ci%4]
            kernel, name = conv2d_nchwc_int8, KERNEL
            packed = weight.value.numpy().reshape(
                out_blocks, in_blocks, kernel_h, kernel_w, in_block // GROUP, GROUP, out_block,
            ).transpose(0, 1, 2, 3, 4, 6, 5)
        else:  # [c, 0, ry, rx, 0, i] -> [c, ry, i, rx]
            kernel, name = depthwise_conv2d_nchwc_int8, DEPTHWISE_KERNEL
            packed = weight.value.numpy()[:, 0, :, :, 0, :].transpose(0, 1, 3, 2)
        return self.builder_.call_te(
            kernel, data, relax.const(np.ascontiguousarray(packed)),
            [int(s) for s in attrs.strides], [int(p) for p in attrs.padding],
            [int(d) for d in attrs.dilation], primfunc_name_hint=name)

"""The int8 conv kernels of the planned ``NCHW[b]c`` uint8 layout (:mod:`int8_layout`), as TE
computes, and the rewrite of the convs ``ConvertLayout`` left on that layout into them.

The block ``b`` is the int32 lanes of the target's dot product: 16 (``vpdpbusd`` on zmm,
AVX-512 VNNI), 8 (AVX2, ymm). On AVX2 the kernels' operands say which exact instruction
sequence sums them (:class:`BlockedToKernels` with ``pairs``): weights whose input-channel /
tap pairs are pair-safe (``int8.pair_safe``) as int8, dense ones in groups of 4 (``vpmaddubsw``
+ ``vpmaddwd``); others as int16 (widened at compile time for ``vpmaddwd``), dense ones in
groups of 2. Scheduled by :mod:`relaycomp.schedules.cpu.int8_nchwc` and
``int8_nchwc_depthwise``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from relaycomp.rewrite.conv_window import SlidingWindow
from relaycomp.schedules.cpu.int8_isa import pair_safe

BLOCK = 16  # channels a block on AVX-512 VNNI: the int32 lanes of one 512-bit vpdpbusd
AVX2_BLOCK = 8  # on AVX2: the int32 lanes of a 256-bit vpmaddwd
GROUP = 4  # input channels one vpdpbusd lane sums
PAIR_GROUP = 2  # on AVX2, for weights vpmaddubsw's int16 pair sums would not hold exactly
TAPS = 4  # kernel row width of the integer depthwise kernel (int8_depthwise.TAPS)
LAYOUT = f"NCHW{BLOCK}c"
CONV_OP = "relax.nn.conv2d"
KERNEL = "conv2d_nchwc_int8"
DEPTHWISE_KERNEL = "depthwise_conv2d_nchwc_int8"


def conv2d_nchwc_int8(data: te.Tensor, weight: te.Tensor, strides, padding,
                      dilation) -> te.Tensor:
    """``out[n, fo, y, x, fi] = sum(int32(data[n, co, y', x', G q + k])
    * int32(weight[fo, co, ry, rx, q, fi, k]))`` over ``co, ry, rx, q, k``: uint8 ``NCHW[b]c``
    activations, weights with each output channel's ``G`` input channels adjacent (the
    dot-product operands as they lie: int8 with ``G = 4``, int16 with ``G = 2`` on AVX2), int32
    sums; padding with zeros (the quantized zero of a conv ``lower_qdq_to_integer`` left
    padded)."""
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
    widens 3x3 kernels with a zero column), each channel's taps adjacent in the weight (int8, or
    int16 widened for ``vpmaddwd``); the four pixels a kernel row reads are ``4 b`` adjacent
    bytes of the input."""
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
    """``conv2d`` to ``NCHW[b]c`` (as ``ConvertLayout`` left the planned ones: from ``NCHW[b]c``
    with an ``OIHW[b]i[b]o`` constant weight, a depthwise one ``OIHW1i[b]o``, the stem from
    ``NCHW4c`` with ``OIHW4i[b]o``) -> a :func:`conv2d_nchwc_int8` /
    :func:`depthwise_conv2d_nchwc_int8` kernel; ``b`` is ``block``. With ``pairs`` (AVX2)
    weights that are not pair-safe are widened to int16, dense ones in groups of
    :data:`PAIR_GROUP` input channels (module docstring)."""

    def __init__(self, mod=None, block: int = BLOCK, pairs: bool = False):
        super().__init__(mod)
        self.layout, self.pairs = f"NCHW{block}c", pairs

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP
                and call.attrs.data_layout in (self.layout, f"NCHW{GROUP}c")
                and call.attrs.out_layout == self.layout):
            return call
        data, weight = call.args
        attrs = call.attrs
        out_blocks, in_blocks, kernel_h, kernel_w, in_block, out_block = (
            weight.value.numpy().shape)
        values = weight.value.numpy()
        if int(attrs.groups) == 1:  # [fo, co, ry, rx, ci, fi] -> [fo, co, ry, rx, ci/G, fi, ci%G]
            kernel, name = conv2d_nchwc_int8, KERNEL
            oihw = values.transpose(0, 5, 1, 4, 2, 3).reshape(
                out_blocks * out_block, in_blocks * in_block, kernel_h, kernel_w)
            group = GROUP if not self.pairs or pair_safe(oihw) else PAIR_GROUP
            packed = values.reshape(
                out_blocks, in_blocks, kernel_h, kernel_w, in_block // group, group, out_block,
            ).transpose(0, 1, 2, 3, 4, 6, 5)
            if group == PAIR_GROUP:  # vpmaddwd multiplies int16: widened once, here
                packed = packed.astype(np.int16)
        else:  # [c, 0, ry, rx, 0, i] -> [c, ry, i, rx]
            kernel, name = depthwise_conv2d_nchwc_int8, DEPTHWISE_KERNEL
            packed = values[:, 0, :, :, 0, :].transpose(0, 1, 3, 2)
            # tap pairs: pair_safe over [c, rx, ry] (its pairs: adjacent input "channels")
            taps = packed.transpose(0, 2, 3, 1).reshape(-1, kernel_w, kernel_h)
            if self.pairs and not pair_safe(np.ascontiguousarray(taps)):
                packed = packed.astype(np.int16)
        return self.builder_.call_te(
            kernel, data, relax.const(np.ascontiguousarray(packed)),
            [int(s) for s in attrs.strides], [int(p) for p in attrs.padding],
            [int(d) for d in attrs.dilation], primfunc_name_hint=name)

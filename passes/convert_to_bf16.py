"""Run convolutions in bf16: bf16 weights and activations, fp32 accumulation.

Matches: ``conv2d(x, W)`` with an fp32 input, a constant fp32 weight and one group, either in
NCHW/OIHW or in the blocked layout ``plan_conv_layout`` gives conv chains (``NCHW[b]c`` data and
output, ``OIHW[b]i[b]o`` weight). The bf16 instructions take two input channels at a time
(``vdpbf16ps``, ``bfdot``): an NCHW conv with an odd channel count (an RGB stem) gets one zero
channel, in the rounded input and in the weight; a blocked conv's channels come in whole blocks.
A squeeze-excite block's conv (one output pixel, a small weight: :func:`_excitation`) stays fp32.
Produces: ``conv2d_bf16(round_to_bf16(x), W_bits)``, two kernels (``call_tir``):

- ``round_to_bf16``: fp32 -> bf16 bits (``uint16``), rounded to nearest even, NaN kept NaN
  (``relaycomp.schedules.cpu.bf16_round``: on AVX-512 BF16 one ``vcvtneps2bf16``, which also
  flushes fp32 denormals to zero).
  Elementwise, so FuseOps puts it in the producing kernel's epilogue where it can: activations
  cross memory as bf16, half the bytes.
- ``conv2d_bf16`` (NCHW) or ``conv2d_nchwc_bf16`` (blocked, its weight laid out
  ``OIHW[b/2]i[b]o2i``: each output channel's input pairs adjacent, as the instructions read
  them): the conv over bf16 bits (the weight rounded the same way at compile time, half the
  bytes), each operand widened to fp32 exactly (``bits << 16``) and summed in fp32; bias,
  activation and residual adds stay fp32 in its epilogue, as before. Trailing input-channel
  pairs whose weights are all zero (the channels ``pad_channels`` added to fill a block) are
  not read: a zero weight adds nothing to the sum unless its input is inf or NaN, and those
  channels hold zeros. On CPUs that split 512-bit operations (Zen 4:
  ``int8_isa.bf16_output_lanes``) a blocked conv whose last output block is part padding
  computes its output channels on blocks of 8 up to the last real one (:func:`narrowed_outputs`)
  and reads them back into the output's blocks, zeros in the lanes left out
  (:func:`_lanes_conv2d_nchwc_bf16`): a ymm ``vdpbf16ps`` costs half a zmm one there.
- A blocked 3x3 stride-1 conv that ``lower_convs_to_winograd.fits`` (14x14 outputs or more) over
  ``WINOGRAD_MIN_CHANNELS`` or more input and output channels as Winograd F(2x2, 3x3) instead:
  the input transform of the bf16 bits computed in fp32 and rounded to bf16
  (``winograd_input_bf16``), the 16 tile products on the bf16 dot product with
  fp32 sums (``winograd_products_bf16``, the weight transformed at compile time, then rounded),
  the output transform in fp32 with the epilogue fused. 2.25x fewer multiply-adds; its error is
  about 1.7x the direct bf16 conv's (F(4x4)'s larger coefficients: 5x); ResNet-18's cosine to
  fp32 0.99994 against 0.99995 direct (OpenVINO's bf16: 0.99992).

bf16 travels as ``uint16`` bits because TVM 0.27 cannot keep a bf16 buffer inside a kernel (its
``BF16ComputeLegalize`` widens every one to fp32), and the kernel must hand bf16 pairs to the
instruction. In the blocked layout the RGB stem (an NCHW input) takes its pairs along the kernel
row and a depthwise conv reads bf16 inputs into fp32 sums; a ``matmul`` with a constant 2-D
weight (a classifier) gets that weight in bf16, packed in blocks of columns over few rows
(``relaycomp.rewrite.matvec``). An activation rounded for a conv is rounded once,
and its other readers (a residual add) read those bits widened; a max pool feeding a converted
conv reads bits too (``max_pool2d_bf16``: max commutes with rounding).
Keeps: the function signature; outputs within the bf16 rounding of each conv's operands (8
significant bits; sums in fp32) - the bf16 feature measures the loss against fp32.
Runs: at the end of stage ``layout`` when ``--precision bf16`` asks for it (after
``plan_conv_layout``, which plans the fp32 convs; ``fold_batchnorm`` ran before: the folded
weights are the ones rounded). Reports: ``convert_to_bf16`` ops converted, ``by_kind`` (``nchw``,
``blocked``, ``winograd``, ``stem``, ``depthwise``, ``matmul``) and the constants' bytes before
and after.
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import tvm
from tvm import relax, te, tirx, topi

from relaycomp.ir import static_shape, tensor_bytes
from relaycomp.passes.lower_convs_to_winograd import call_input_transform, oihw
from relaycomp.passes.lower_convs_to_winograd import fits as winograd_fits
from relaycomp.registry import register_pass
from relaycomp.rewrite import winograd
from relaycomp.rewrite.conv_window import SlidingWindow, pad_spatial
from relaycomp.rewrite.matvec import call_matvec, pack_columns
from relaycomp.rewrite.matvec import fits as matvec_fits
from relaycomp.rewrite.pad_channels import used_inputs, without_unused_inputs
from relaycomp.schedules.cpu.bf16_nchwc import LANES_STAGE
from relaycomp.schedules.cpu.bf16_round import rounding
from relaycomp.schedules.cpu.int8_isa import bf16_output_lanes

ROUND_KERNEL, CONV_KERNEL = "round_to_bf16", "conv2d_bf16"
BLOCKED_KERNEL, DEPTHWISE_KERNEL = "conv2d_nchwc_bf16", "depthwise_conv2d_nchwc_bf16"
MATMUL_KERNEL = "matmul_bf16"
WINOGRAD_INPUT, WINOGRAD_PRODUCTS = "winograd_input_bf16", "winograd_products_bf16"
WINOGRAD_TILE = 2  # F(2x2, 3x3)
# Input and output channels, at least: F(2x2)'s transformed input is 4x the input, and over fewer
# channels its traffic outweighs the saved multiply-adds (PP-OCRv4 det's 96 -> 32 convs at
# 160x160 measured 2x slower than the direct bf16 conv; ResNet-18's 64 -> 64 at 56x56 faster).
WINOGRAD_MIN_CHANNELS = 64
# Blocks of narrower lanes a conv's output channels may take (:func:`narrowed_outputs`), at most:
# one register tile holds them all.
MAX_LANE_BLOCKS = 4
# A one-pixel conv with a weight this small or smaller stays fp32 (:func:`_excitation`).
EXCITATION_WEIGHT_BYTES = 1 << 20


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits as ``uint16``, round to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def _round_to_bf16(x: te.Tensor, channels: int, round_value) -> te.Tensor:
    """``x`` as bf16 bits (each value rounded by ``round_value``: ``bf16_round.rounding``), with
    zero channels up to ``channels`` (axis 1)."""

    def rounded(*index):
        return round_value(x(*index))

    if int(x.shape[1]) == channels:
        return te.compute(x.shape, rounded, name="round_to_bf16")
    shape = (x.shape[0], channels, *x.shape[2:])
    return te.compute(shape, lambda n, c, *rest: tirx.if_then_else(
        c < x.shape[1], rounded(n, c, *rest), tirx.const(0, "uint16")), name="round_to_bf16")


def widen(bits):
    """bf16 bits (``uint16``) -> the fp32 of the same value, exactly."""
    return tirx.reinterpret("float32", bits.astype("uint32") << tirx.const(16, "uint32"))


def _conv2d_bf16(data: te.Tensor, weight: te.Tensor, strides, padding, dilation) -> te.Tensor:
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    window = SlidingWindow(data, (kernel_h, kernel_w), strides, padding, dilation)
    rc = te.reduce_axis((0, in_channels), name="rc")
    return te.compute(
        (data.shape[0], out_channels, window.height, window.width),
        lambda n, f, y, x: te.sum(
            widen(window.padded[n, rc, *window.at(y, x)])
            * widen(weight[f, rc, window.ry, window.rx]), axis=[rc, window.ry, window.rx]),
        name="conv2d_nchw", tag="conv2d_nchw")


def _conv2d_nchwc_bf16(data: te.Tensor, weight: te.Tensor, strides, padding,
                       dilation) -> te.Tensor:
    """``out[n, fo, y, x, fi] = sum(widen(data[n, co, y', x', 2p + k])
    * widen(weight[fo, co, ry, rx, p, fi, k]))``: the blocked conv of ``plan_conv_layout`` over
    bf16 bits, each output channel's input pairs (``k``) adjacent in the weight."""
    out_blocks, in_blocks, kernel_h, kernel_w, pairs, out_block, _ = weight.shape
    window = SlidingWindow(data, (kernel_h, kernel_w), strides, padding, dilation)
    co = te.reduce_axis((0, in_blocks), name="co")
    p = te.reduce_axis((0, pairs), name="p")
    k = te.reduce_axis((0, 2), name="k")
    block_pairs = int(data.shape[4]) // 2

    def data_pair(n, y, x):  # the input channel pair ``(co, p)`` reads
        if pairs == block_pairs:
            return window.padded[n, co, *window.at(y, x), p * 2 + k]
        return window.padded[n, p // block_pairs, *window.at(y, x), p % block_pairs * 2 + k]

    return te.compute(
        (data.shape[0], out_blocks, window.height, window.width, out_block),
        lambda n, fo, y, x, fi: te.sum(
            widen(data_pair(n, y, x)) * widen(weight[fo, co, window.ry, window.rx, p, fi, k]),
            axis=[co, window.ry, window.rx, p, k]),
        name="conv2d_nchwc_bf16", tag="conv2d_nchwc_bf16")


def _lanes_conv2d_nchwc_bf16(data: te.Tensor, weight: te.Tensor, out_blocks: int, out_block: int,
                             strides, padding, dilation) -> te.Tensor:
    """:func:`_conv2d_nchwc_bf16` over ``weight``'s blocks of ``L`` output channels (the real
    ones, :func:`narrowed_outputs`), read back as ``out_blocks`` blocks of ``out_block``: channel
    ``c`` is lane ``c % L`` of block ``c // L``, and zero past the last block. The same values
    as the whole blocks over zero filters, on fewer lanes (:data:`LANES_STAGE`); past the last
    block zeros even where an inf or NaN input would have made a zero filter's sum NaN."""
    narrow = _conv2d_nchwc_bf16(data, weight, strides, padding, dilation)
    blocks, lanes = int(weight.shape[0]), int(weight.shape[5])

    def channel(n, fo, y, x, fi):
        block = (fo * out_block + fi) // lanes
        return tirx.if_then_else(block < blocks,
                                 narrow[n, block, y, x, (fo * out_block + fi) % lanes],
                                 tirx.const(0.0, "float32"))

    return te.compute((data.shape[0], out_blocks, *narrow.shape[2:4], out_block), channel,
                      name=LANES_STAGE, tag=LANES_STAGE)


def _stem_conv2d_bf16(data: te.Tensor, weight: te.Tensor, strides, padding,
                      kernel_w: int) -> te.Tensor:
    """``out[n, fo, y, x, fi] = sum(widen(data[n, c, y', x' + 2j + k])
    * widen(weight[fo, c, ry, j, 0, fi, k]))``: an NCHW input (an RGB image) written blocked,
    the instructions' pairs taken along the kernel's row - two adjacent pixels of a channel,
    adjacent in NCHW - so the input needs no layout change; an odd kernel width gets a zero
    column (and the input one more column of padding)."""
    out_blocks, channels, kernel_h, pair_columns, _, out_block, _ = weight.shape
    top, left, bottom, right = padding
    window = SlidingWindow(data, (kernel_h, kernel_w), strides, padding, (1, 1))
    padded = pad_spatial(data, (top, left, bottom, right + 2 * pair_columns - kernel_w))
    c = te.reduce_axis((0, channels), name="c")
    j = te.reduce_axis((0, pair_columns), name="j")
    p = te.reduce_axis((0, 1), name="p")
    k = te.reduce_axis((0, 2), name="k")
    stride_h, stride_w = strides
    return te.compute(
        (data.shape[0], out_blocks, window.height, window.width, out_block),
        lambda n, fo, y, x, fi: te.sum(
            widen(padded[n, c, y * stride_h + window.ry, x * stride_w + 2 * j + k + p])
            * widen(weight[fo, c, window.ry, j, p, fi, k]), axis=[c, window.ry, j, p, k]),
        name="conv2d_nchwc_bf16", tag="conv2d_nchwc_bf16")


def _depthwise_conv2d_nchwc_bf16(data: te.Tensor, weight: te.Tensor, strides, padding,
                                 dilation) -> te.Tensor:
    """``plan_conv_layout``'s depthwise conv over bf16 bits: ``data`` widened, fp32 weights
    (no dot product to feed: the inputs cross memory in half the bytes)."""
    blocks, _, kernel_h, kernel_w, _, block = weight.shape
    window = SlidingWindow(data, (kernel_h, kernel_w), strides, padding, dilation)
    return te.compute(
        (data.shape[0], blocks, window.height, window.width, block),
        lambda n, c, y, x, i: te.sum(
            widen(window.padded[n, c, *window.at(y, x), i])
            * weight[c, 0, window.ry, window.rx, 0, i], axis=[window.ry, window.rx]),
        name="depthwise_conv2d_nchwc_bf16", tag="depthwise_conv2d_nchwc_bf16")


def _matmul_bf16(data: te.Tensor, weight: te.Tensor) -> te.Tensor:
    """``out[m, n] = sum(data[m, k] * widen(weight[k, n]))``: a classifier's constant weight
    in bf16 (half the bytes it streams), its input and sums fp32."""
    k = te.reduce_axis((0, weight.shape[0]), name="k")
    return te.compute((data.shape[0], weight.shape[1]),
                      lambda m, n: te.sum(data[m, k] * widen(weight[k, n]), axis=k),
                      name="matmul_bf16")


def _winograd_input_bits(bits: te.Tensor, padding, out_size, round_value) -> te.Tensor:
    """Winograd F(2x2, 3x3)'s input transform of bf16 bits, computed in fp32 and rounded back:
    ``V`` as the tile products' bf16 operand, channel pairs adjacent."""
    widened = te.compute(bits.shape, lambda *index: widen(bits(*index)), name="widen_bf16")
    transformed = winograd.input_transform(widened, WINOGRAD_TILE, padding, out_size)
    return te.compute(transformed.shape, lambda *index: round_value(transformed(*index)),
                      name="round_to_bf16")


def _winograd_products_bf16(transformed: te.Tensor, weight: te.Tensor) -> te.Tensor:
    """``M[e, p, k] = sum(V[e, p, 2q + j] * U[e, q, k, j])`` over bf16 bits, summed in fp32:
    the tile products as ``vdpbf16ps`` takes them (``U``'s pairs adjacent per output)."""
    pairs = te.reduce_axis((0, weight.shape[1]), name="q")
    j = te.reduce_axis((0, 2), name="j")
    return te.compute(
        (transformed.shape[0], transformed.shape[1], weight.shape[2]),
        lambda e, p, k: te.sum(widen(transformed[e, p, pairs * 2 + j]) * widen(
            weight[e, pairs, k, j]), axis=[pairs, j]),
        name=WINOGRAD_PRODUCTS, tag=WINOGRAD_PRODUCTS)


def _channels(expr: relax.Expr) -> int | None:
    """``expr``'s static size along axis 1 (channels, or channel blocks), else ``None``."""
    shape = getattr(expr.ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None or len(values) < 2 or not isinstance(values[1], tvm.tirx.IntImm):
        return None
    return int(values[1])


def _excitation(call: relax.Call) -> bool:
    """Whether conv ``call`` is a squeeze-excite block's: one output pixel (over pooled features)
    and a weight of at most ``EXCITATION_WEIGHT_BYTES``. Its multiply-adds and weight reads are
    negligible, and its output is broadcast over a whole map in the kernel FuseOps makes of it,
    which in bf16 measured 5x slower (1.57 against 0.33 ms in PP-OCRv4 det's neck). A large
    weight over one pixel (a classifier's 1x1 conv) is read faster in bf16 and is converted."""
    shape = static_shape(call)
    return (shape is not None and len(shape) >= 4 and shape[2] == shape[3] == 1
            and tensor_bytes(call.args[1].ty) <= EXCITATION_WEIGHT_BYTES)


def _kind(call: relax.Call) -> str | None:
    """Which conv of :data:`_CONVERTERS` ``call`` is: ``nchw``, or in ``plan_conv_layout``'s
    blocked layout ``winograd`` (3x3 stride 1, see :func:`_winograd`), ``blocked`` (one group),
    ``stem`` (an NCHW input) or ``depthwise``; ``None`` for what stays fp32."""
    if not (isinstance(call.op, tvm.ir.Op)
            and call.op.name in ("relax.nn.conv2d", "relax.matmul")):
        return None
    data, weight = call.args
    if not (isinstance(weight, tvm.ir.expr.Constant) and str(data.ty.dtype) == "float32"
            and str(weight.ty.dtype) == "float32" and str(call.ty.dtype) == "float32"):
        return None
    if call.op.name == "relax.matmul":
        return "matmul" if data.ty.ndim == 2 and weight.value.numpy().ndim == 2 else None
    if _excitation(call):
        return None
    attrs = call.attrs
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    groups, out = int(attrs.groups), layouts[2]
    if layouts == ("NCHW", "OIHW", "NCHW"):
        return "nchw" if groups == 1 else None
    if not (out.startswith("NCHW") and out.endswith("c") and out[4:-1].isdigit()
            and _channels(data) is not None):
        return None
    block = out[4:-1]
    if (winograd_fits(call, WINOGRAD_TILE, element_bytes=2)
            and min(weight.value.shape[:2]) * int(block) >= WINOGRAD_MIN_CHANNELS):
        return "winograd"
    return {("NCHW", f"OIHW{block}o", 1): "stem",
            (out, f"OIHW{block}i{block}o", 1): "blocked",
            (out, f"OIHW1i{block}o", _channels(data) * int(block)): "depthwise",
            }.get((layouts[0], layouts[1], groups))


def _nchw(builder, rounded, data, weight: np.ndarray, conv_args):
    if weight.shape[1] % 2:  # one zero channel: the instructions take channel pairs
        weight = np.concatenate([weight, np.zeros_like(weight[:, :1])], axis=1)
    bits = rounded(weight.shape[1])
    return builder.call_te(_conv2d_bf16, bits, relax.const(bf16_bits(weight)), *conv_args,
                           primfunc_name_hint=CONV_KERNEL)


def narrowed_outputs(pairs: np.ndarray, lanes: int | None) -> np.ndarray | None:
    """A blocked bf16 weight ``[O, I, kh, kw, p, b, 2]`` on blocks of ``lanes`` output channels
    that stop at the last block with a nonzero weight, ``[B, I, kh, kw, p, lanes, 2]``: the
    padded output channels of ``pad_channels`` left out. ``None`` when ``lanes`` is ``None`` (the
    target computes whole blocks), when that leaves out fewer than ``lanes`` channels, or when
    ``B`` exceeds :data:`MAX_LANE_BLOCKS`."""
    if lanes is None:
        return None
    out_blocks, *middle, out_block, pair = pairs.shape
    flat = np.moveaxis(pairs, 5, 1).reshape(out_blocks * out_block, *middle, pair)
    blocks = -(-used_inputs(flat, axis=0) // lanes)
    if blocks * lanes > out_blocks * out_block - lanes or blocks > MAX_LANE_BLOCKS:
        return None
    return np.moveaxis(flat[:blocks * lanes].reshape(blocks, lanes, *middle, pair), 1, 5)


def _blocked(builder, rounded, data, weight: np.ndarray, conv_args, lanes: int | None = None):
    """``OIHW[b]i[b]o`` -> ``OIHW[b/2]i[b]o2i``: each output channel's input pairs adjacent;
    on blocks of ``lanes`` output channels where :func:`narrowed_outputs` leaves some out."""
    out_blocks, in_blocks, kernel_h, kernel_w, in_block, out_block = weight.shape
    pairs = weight.reshape(out_blocks, in_blocks, kernel_h, kernel_w, in_block // 2, 2,
                           out_block).transpose(0, 1, 2, 3, 4, 6, 5)
    pairs = without_unused_inputs(pairs)
    bits = rounded(_channels(data))
    narrowed = narrowed_outputs(pairs, lanes)
    if narrowed is not None:
        return builder.call_te(_lanes_conv2d_nchwc_bf16, bits, relax.const(bf16_bits(narrowed)),
                               out_blocks, out_block, *conv_args,
                               primfunc_name_hint=BLOCKED_KERNEL)
    return builder.call_te(_conv2d_nchwc_bf16, bits, relax.const(bf16_bits(pairs)),
                           *conv_args, primfunc_name_hint=BLOCKED_KERNEL)


def _stem(builder, rounded, data, weight: np.ndarray, conv_args):
    """``OIHW[b]o`` -> ``OIH(W/2)1i[b]o2w``: pairs of adjacent kernel columns (a zero column
    after an odd width); a dilated stem stays fp32."""
    strides, padding, dilation = conv_args
    out_blocks, channels, kernel_h, kernel_w, out_block = weight.shape
    if dilation != [1, 1]:
        return None
    if kernel_w % 2:
        weight = np.concatenate([weight, np.zeros_like(weight[:, :, :, :1])], axis=3)
    pairs = weight.reshape(out_blocks, channels, kernel_h, -1, 2, 1, out_block).transpose(
        0, 1, 2, 3, 5, 6, 4)
    bits = rounded(channels)
    return builder.call_te(_stem_conv2d_bf16, bits, relax.const(bf16_bits(pairs)), strides,
                           padding, kernel_w, primfunc_name_hint=BLOCKED_KERNEL)


def _matmul(builder, rounded, data, weight: np.ndarray, conv_args):
    """A product of few rows (a classifier) streams its weight packed in blocks of columns
    (``relaycomp.rewrite.matvec``), others read it as ``[K, N]``."""
    rows = (static_shape(data) or (None,))[0]
    if matvec_fits(rows, weight.shape, weight.size * 2):
        return call_matvec(builder, data, pack_columns(bf16_bits(weight)), weight.shape[1],
                           widen)
    return builder.call_te(_matmul_bf16, data, relax.const(bf16_bits(weight)),
                           primfunc_name_hint=MATMUL_KERNEL)


def _depthwise(builder, rounded, data, weight: np.ndarray, conv_args):
    bits = rounded(_channels(data))
    return builder.call_te(_depthwise_conv2d_nchwc_bf16, bits, relax.const(weight), *conv_args,
                           primfunc_name_hint=DEPTHWISE_KERNEL)


def _winograd(builder, rounded, data, weight: np.ndarray, conv_args):
    """A planned 3x3 stride-1 conv as Winograd F(2x2, 3x3): the input transform and the tile
    products in bf16 (2.25x fewer multiply-adds; F(4x4)'s larger coefficients would lose 5x the
    accuracy of the direct bf16 conv, F(2x2)'s about 1.7x), the output transform in fp32."""
    _, padding, _ = conv_args
    bits = rounded(_channels(data))
    shape = static_shape(data)
    top, left, bottom, right = padding
    out_size = (shape[2] + top + bottom - 2, shape[3] + left + right - 2)
    v = call_input_transform(builder, bits, lambda x: _winograd_input_bits(
        x, (top, left), out_size, rounded.value), WINOGRAD_INPUT)
    u = winograd.transform_weight(oihw(weight), WINOGRAD_TILE)  # [e, C, K]
    elements, channels, outputs = u.shape
    u = u.reshape(elements, channels // 2, 2, outputs).transpose(0, 1, 3, 2)
    products = builder.emit_te(_winograd_products_bf16, v, relax.const(bf16_bits(u)),
                               primfunc_name_hint=WINOGRAD_PRODUCTS)
    return builder.call_te(winograd.output_transform, products, WINOGRAD_TILE, shape[0],
                           out_size, shape[4], primfunc_name_hint=winograd.OUTPUT_TRANSFORM)


# conv kind (``_kind``) -> its bf16 form: (builder, rounded, data, fp32 weight, conv args) ->
# the call (``None``: it stays fp32); ``rounded(channels)`` is ``data`` as bf16 bits, made once,
# and ``rounded.value`` rounds one fp32 value in a kernel (``_Rounded``).
_CONVERTERS = {"nchw": _nchw, "blocked": _blocked, "stem": _stem, "depthwise": _depthwise,
               "winograd": _winograd,
               "matmul": _matmul}


def _is_max_pool(expr) -> bool:
    return (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)
            and expr.op.name == "relax.nn.max_pool2d")


def _max_pool2d_bits(bits: te.Tensor, pool_size, strides, dilation, padding, ceil_mode: bool,
                     layout: str) -> te.Tensor:
    """A max pool over bf16 bits, widened as it reads them: one kernel, half the bytes in."""
    return topi.nn.pool2d(_widen_bits(bits), pool_size, strides, dilation, padding, "max",
                          ceil_mode, layout)


def _widen_bits(bits: te.Tensor) -> te.Tensor:
    return te.compute(bits.shape, lambda *index: widen(bits(*index)), name="widen_bf16")


class _Rounded:
    """``data`` as bf16 bits for a converter: ``rounded(channels)`` emits the ``round_to_bf16``
    kernel once per activation (zero channels up to ``channels``); ``rounded.value`` is how the
    target's kernels round one fp32 value (``bf16_round.rounding``)."""

    def __init__(self, mutator: _ConvsToBf16, data: relax.Expr):
        self.mutator, self.data, self.value = mutator, data, mutator.round_value

    def __call__(self, channels: int) -> relax.Expr:
        data, known, builder = self.data, self.mutator.bits, self.mutator.builder_
        same_shape = _channels(data) == channels
        if same_shape and data in known:
            return known[data]
        bits = builder.emit(builder.call_te(
            lambda x: _round_to_bf16(x, channels, self.value), data,
            primfunc_name_hint=ROUND_KERNEL))
        if same_shape and isinstance(data, relax.Var):
            known[data] = bits
        return bits


@relax.expr_functor.mutator
class _ConvsToBf16(relax.PyExprMutator):
    """Converts the convs; an activation rounded for a conv is rounded once, and its other
    readers (a residual add) read the rounded bits widened, so that the kernel making it writes
    bf16 only - half the bytes - and no fp32 copy is kept alive for them."""

    def __init__(self, mod: tvm.IRModule, round_value, output_lanes: int | None = None):
        super().__init__(mod)
        self.round_value = round_value
        self.converters = {**_CONVERTERS,
                           "blocked": functools.partial(_blocked, lanes=output_lanes)}
        self.converted = Counter()
        self.bits: dict[relax.Var, relax.Var] = {}  # activation -> its bf16 bits, same shape
        self.pooled: set[relax.Var] = set()  # inputs of max pools whose output a conv rounds

    def convert(self, func: relax.Function) -> relax.Function:
        """``func`` converted; a max pool feeding a converted conv reads bf16 bits (max commutes
        with rounding: the same values), so the kernel before it writes bf16 too."""
        values = {binding.var: binding.value for block in func.body.blocks
                  for binding in block.bindings}
        self.pooled = {values[call.args[0]].args[0] for call in values.values()
                       if isinstance(call, relax.Call) and _kind(call) is not None
                       and _is_max_pool(values.get(call.args[0]))
                       and isinstance(values[call.args[0]].args[0], relax.Var)}
        return self.visit_expr(func)

    def _rounded(self, data: relax.Expr) -> _Rounded:
        return _Rounded(self, data)

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if (_is_max_pool(call) and call.args[0] in self.pooled
                and _channels(call.args[0]) is not None):
            data, attrs = call.args[0], call.attrs
            bits = self._rounded(data)(_channels(data))
            return self.builder_.call_te(
                _max_pool2d_bits, bits, [int(k) for k in attrs.pool_size],
                [int(k) for k in attrs.strides], [int(k) for k in attrs.dilation],
                [int(k) for k in attrs.padding], bool(attrs.ceil_mode), str(attrs.layout),
                primfunc_name_hint="max_pool2d_bf16")
        kind = _kind(call)
        if kind is None:
            return self._read_bits(call)
        data, weight = call.args
        attrs = call.attrs
        conv_args = None if kind == "matmul" else (
            [int(s) for s in attrs.strides], [int(p) for p in attrs.padding],
            [int(d) for d in attrs.dilation])
        converted = self.converters[kind](self.builder_, self._rounded(data), data,
                                      weight.value.numpy(), conv_args)
        if converted is None:
            return call
        self.converted[kind] += 1
        return converted

    def _read_bits(self, call: relax.Call) -> relax.Call:
        """``call`` (an op) reading the bf16 bits of the activations rounded already."""
        if not isinstance(call.op, tvm.ir.Op) or not any(
                isinstance(arg, relax.Var) and arg in self.bits for arg in call.args):
            return call
        args = [self.builder_.emit(self.builder_.call_te(
                    _widen_bits, self.bits[arg], primfunc_name_hint="widen_bf16"))
                if isinstance(arg, relax.Var) and arg in self.bits else arg
                for arg in call.args]
        return relax.Call(call.op, args, call.attrs, call.ty_args)


def constant_bytes(mod: tvm.IRModule) -> int:
    """Bytes of every constant in ``mod``'s Relax functions."""
    total = 0

    def visit(expr) -> None:
        nonlocal total
        if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy"):
            total += expr.value.numpy().nbytes

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return total


@register_pass("convert_to_bf16", stage="layout")
def convert_to_bf16(target: tvm.target.Target | None = None, report: dict | None = None,
                    ) -> tvm.transform.Pass:
    """Convert every matching conv2d to bf16 operands with fp32 accumulation."""

    @tvm.transform.module_pass(opt_level=0, name="convert_to_bf16")
    def _convert(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        before = constant_bytes(mod)
        mutator = _ConvsToBf16(mod, rounding(target), bf16_output_lanes(target))
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gvar, mutator.convert(func))
        converted = relax.transform.DeadCodeElimination()(mutator.builder_.get())
        if report is not None:
            report.update({"convert_to_bf16": sum(mutator.converted.values()),
                           "by_kind": dict(mutator.converted),
                           "constant_bytes": {"before": before,
                                              "after": constant_bytes(converted)}})
        return converted

    return _convert

"""Lower quantize/dequantize (QDQ) around conv2d and matmul to integer kernels.

Matches: ``conv2d(dequantize(x_q, s_x, zp_x), W)`` (NCHW/OIHW, any groups: depthwise included)
and ``matmul(dequantize(x_q, s_x, zp_x), W)`` with ``x_q`` uint8/int8 and per-tensor constant
``s_x``/``zp_x``, where the weight ``W`` is ``dequantize(W_q, s_w, 0)`` of an int8 constant
(per output channel or per tensor; ``permute_dims`` of it for a Gemm), or a float constant that
``fold_constant`` made of such a dequantize and that lies exactly on an int8 grid (recovered,
whatever each channel's largest integer: imported QDQ models keep their int8 weights).
Produces: ``astype(conv2d(x_q, W_q, out_dtype="int32") - zp_x * sum(W_q), "float32") *
(s_x * s_w)`` - an integer contraction whose zero-point correction is a per-channel int32
constant and whose rescale is one per-channel multiply; a padded conv pads ``x_q`` with ``zp_x``
(the quantized zero), a dense conv's ``x_q`` is shifted by 128 (zero point along) to the dtype
the target's kernels multiply (uint8 on x86, int8 for AArch64 ``sdot``), and an odd number of
input channels (an RGB stem) gets one more channel with zero weights, as the int8 kernels take
channels in pairs. A depthwise conv on a target with an integer depthwise kernel (AVX-512 VNNI:
``schedules/cpu/int8_depthwise``, for the row widths it tiles) sums in int32 too, its kernel
rows padded with zero weights to the kernel's 4 taps and its input with as many more columns on
the right (the same outputs); elsewhere a depthwise conv (no channel reduction for a dot
product) reads the integers and sums them in float32 - exact below 2^24 - where the CPU schedule
vectorizes it well. The following bias,
activation and the next ``quantize`` are elementwise and fuse into the same kernel (FuseOps), so
int8 tensors flow between kernels.
Also: ``quantize(dequantize(q, s, z), s, z)`` → ``q`` (cancelling pairs, e.g. after a reshape),
and ``quantize(max_pool2d(dequantize(q, s, z)), s, z)`` → ``max_pool2d(q)`` (exact: max commutes
with the monotone dequantize; an integer max pool pads with the dtype's minimum).
Keeps: each output within a couple of quantization steps of the QDQ float graph (the products
and sums are exact in int32; only the float rescale rounds differently); float models unchanged.
Runs: stage ``quantize``, after the annotate pass ``quantize_int8``; before ``legalize``.
Reports: rewrites per rule into the runner's report dict (``conv2d_int8``, ``matmul_int8``, ...).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard

from relaycomp.registry import register_pass
from relaycomp.rewrite.rules import Rule, rule_pass
from relaycomp.schedules.cpu.int8 import int8_data_dtype
from relaycomp.schedules.cpu.int8_depthwise import depthwise_taps, row_lanes

INTEGER_DTYPES = ("uint8", "int8")
# A float weight is taken as int8 when W / s rounds back to itself within this relative error.
GRID_TOLERANCE = 1e-5
GRID_MAXIMA = (127, 63, 64, *(m for m in range(1, 129) if m not in (127, 63, 64)))
PROBE = 16  # values per channel a candidate scale is tried on first

_x_q, _s_x, _zp_x = wildcard(), is_const(), is_const()
_x_dq = is_op("relax.dequantize")(_x_q, _s_x, _zp_x)
_w_dq = is_op("relax.dequantize")(is_const(), is_const(), is_const())
_w_perm = is_op("relax.permute_dims")(_w_dq)
_w_float = is_const()
_weight = _w_dq | _w_perm | _w_float
CONV = is_op("relax.nn.conv2d")(_x_dq, _weight)
MATMUL = is_op("relax.matmul")(_x_dq, _weight)

_q_in, _s_in, _zp_in, _s_out, _zp_out = wildcard(), is_const(), is_const(), is_const(), is_const()
_dq_in = is_op("relax.dequantize")(_q_in, _s_in, _zp_in)
REQUANTIZE = is_op("relax.quantize")(_dq_in, _s_out, _zp_out)
_pool = is_op("relax.nn.max_pool2d")(_dq_in)
POOL = is_op("relax.quantize")(_pool, _s_out, _zp_out)


def _array(expr) -> np.ndarray:
    return expr.value.numpy()


def _scalar(expr) -> float | None:
    value = _array(expr)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _activation(matches) -> tuple[float, int] | None:
    """``(s_x, zp_x)`` of the dequantized input, when it is a per-tensor uint8/int8 tensor."""
    x_q, dq = matches[_x_q], matches[_x_dq]
    if str(x_q.ty.dtype) not in INTEGER_DTYPES or str(dq.attrs.out_dtype) != "float32":
        return None
    scale, zero_point = _scalar(matches[_s_x]), _scalar(matches[_zp_x])
    if scale is None or zero_point is None or scale <= 0:
        return None
    return scale, int(zero_point)


def int8_weight(matches, out_axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(W_q int8, s_w float32 per output channel)`` of the matched weight, with
    ``W == W_q * s_w`` along ``out_axis``, or ``None`` when it is no such weight."""
    perm = None
    if _w_perm in matches:
        call = matches[_w_perm]
        axes = call.attrs.axes
        perm = (list(range(len(call.ty.shape)))[::-1] if axes is None
                else [int(a) for a in axes])
    source_axis = out_axis if perm is None else perm[out_axis]
    if _w_dq in matches:
        found = _dequantized_weight(matches[_w_dq], source_axis)
    else:
        found = _on_int8_grid(_array(matches[_w_float]), source_axis)
    if found is None:
        return None
    weight, scale = found
    return (weight if perm is None else np.ascontiguousarray(np.transpose(weight, perm))), scale


def _dequantized_weight(call, out_axis: int):
    data, scale, zero_point = call.args
    if str(data.ty.dtype) != "int8" or str(call.attrs.out_dtype) != "float32":
        return None
    if np.any(_array(zero_point)):
        return None
    weight, scale = _array(data), _array(scale).astype(np.float32).reshape(-1)
    channels = weight.shape[out_axis]
    axis = int(call.attrs.axis) % weight.ndim
    if scale.size == 1:
        return weight, np.full(channels, scale[0], np.float32)
    if axis != out_axis % weight.ndim or scale.size != channels:
        return None
    return weight, scale


def _on_int8_grid(weight: np.ndarray, out_axis: int):
    """Recover ``(W_q, s_w)`` from a float weight that is exactly ``W_q * s_w`` per output
    channel (a per-tensor grid is one too), or ``None``. A channel's scale is its largest
    magnitude over its largest integer, tried from the usual ones (127, 63, 64) up from 1: the
    first that puts every value on the grid wins, the smallest integers representing the channel
    exactly (a 7-bit channel stays 7-bit, so pair-safe). Each candidate is first tried on a few
    values per channel, so a weight on no grid costs little."""
    if weight.dtype != np.float32 or weight.ndim < 2:
        return None
    moved = np.moveaxis(weight, out_axis, 0).reshape(weight.shape[out_axis], -1)
    absmax = np.abs(moved).max(axis=1)
    tolerance = GRID_TOLERANCE * max(float(absmax.max()), 1e-30)
    scale = np.ones(len(moved), np.float32)
    quantized = np.zeros(moved.shape, np.float32)
    unresolved = absmax > 0  # an all-zero channel is q = 0 at scale 1
    for qmax in GRID_MAXIMA:
        rows = np.flatnonzero(unresolved)
        if not len(rows):
            break
        candidate = (absmax[rows] / qmax).astype(np.float32)
        probe = moved[rows, :PROBE] / candidate[:, None]
        close = np.abs(probe - np.round(probe)).max(axis=1) * candidate <= tolerance
        rows, candidate = rows[close], candidate[close]
        values = np.round(moved[rows] / candidate[:, None])
        exact = ((np.abs(values * candidate[:, None] - moved[rows]).max(axis=1, initial=0)
                  <= tolerance) & (values.min(axis=1, initial=0) >= -128)
                 & (values.max(axis=1, initial=0) <= 127))
        scale[rows[exact]], quantized[rows[exact]] = candidate[exact], values[exact]
        unresolved[rows[exact]] = False
    if unresolved.any():
        return None
    shape = np.moveaxis(weight, out_axis, 0).shape
    return np.moveaxis(quantized.reshape(shape), 0, out_axis).astype(np.int8), scale


def _rescale(acc, correction: np.ndarray, scale: np.ndarray, shape: tuple[int, ...],
             dtype: str = "int32"):
    """``astype(acc - correction, float32) * scale``, both per channel in ``shape``; ``acc``
    is of ``dtype``."""
    if np.any(correction):
        acc = relax.op.subtract(acc, relax.const(correction.astype(dtype).reshape(shape)))
    if dtype != "float32":
        acc = relax.op.astype(acc, "float32")
    return relax.op.multiply(acc,
                             relax.const(scale.astype(np.float32).reshape(shape)))


def _depthwise_taps(w_q: np.ndarray, conv, channels: int, taps: int | None) -> int | None:
    """``taps`` when ``conv`` is a depthwise conv the integer kernel takes (one input channel
    per group, no dilation, kernel rows at most ``taps`` wide, output rows it tiles:
    :func:`row_lanes`), else ``None``."""
    attrs, groups = conv.attrs, int(conv.attrs.groups)
    if not taps or groups == 1 or groups != channels or w_q.shape[0] != channels:
        return None
    if row_lanes(int(conv.ty.shape[3]), int(attrs.strides[1])) is None:
        return None
    if any(int(d) != 1 for d in attrs.dilation) or not 1 < w_q.shape[3] <= taps:
        return None
    return taps


def _lower_conv(expr, matches, data_dtype: str, depthwise_taps: int | None = None):
    conv = matches[CONV]
    attrs = conv.attrs
    if (attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
            or str(conv.ty.dtype) != "float32"):
        return expr
    activation, weight = _activation(matches), int8_weight(matches, 0)
    if activation is None or weight is None:
        return expr
    (s_x, zp_x), (w_q, s_w) = activation, weight
    x_q = matches[_x_q]
    padding = [int(p) for p in attrs.padding]
    channels = int(x_q.ty.shape[1])
    if str(x_q.ty.dtype) != data_dtype and int(attrs.groups) == 1:
        # The dot-product kernels take u8 x s8 (x86) or s8 x s8 (AArch64 sdot): x + 128 (or
        # x - 128) with the zero point moved along is the same tensor (an elementwise op that
        # fuses into the producer).
        shift = 128 if data_dtype == "uint8" else -128
        x_q = relax.op.astype(relax.op.add(relax.op.astype(x_q, "int16"),
                                           relax.const(shift, "int16")), data_dtype)
        zp_x += shift
    extra = channels % 2 if int(attrs.groups) == 1 else 0
    if extra:
        w_q = np.concatenate([w_q, np.zeros((w_q.shape[0], extra, *w_q.shape[2:]), np.int8)], 1)
    groups = int(attrs.groups)
    taps = _depthwise_taps(w_q, conv, channels, depthwise_taps)
    if taps:
        extra_columns = taps - w_q.shape[3]
        # The target's integer depthwise kernel sums kernel rows ``taps`` wide: zero weights
        # on the right, and as many more columns of padding there, give the same outputs.
        w_q = np.concatenate(
            [w_q, np.zeros((*w_q.shape[:3], extra_columns), np.int8)], axis=3)
        padding[3] += extra_columns
    if extra or zp_x != 0 and any(padding):
        # Float zero is zp_x in the quantized domain: pad with it, not with 0.
        top, left, bottom, right = padding if zp_x != 0 else (0, 0, 0, 0)
        x_q = relax.op.nn.pad(x_q, [0, 0, 0, extra, top, bottom, left, right],
                              pad_value=float(zp_x))
        padding = [0, 0, 0, 0] if zp_x != 0 else padding
    weight, accumulator = relax.const(w_q), "int32"
    if not taps and groups > 1 and groups == channels:
        # A depthwise conv has no channel reduction for an int8 dot product, and its lanes
        # vectorize far better in float32: the same integers, summed exactly (|sum| < 2^24),
        # in float units, the uint8 input converted as it is read (no float copy of it).
        # Weights are C x kh x kw: their size does not matter.
        weight, accumulator = relax.const(w_q.astype(np.float32)), "float32"
    acc = relax.op.nn.conv2d(x_q, weight, strides=attrs.strides, padding=padding,
                             dilation=attrs.dilation, groups=groups, out_dtype=accumulator)
    correction = zp_x * w_q.astype(np.int64).reshape(w_q.shape[0], -1).sum(axis=1)
    return _rescale(acc, correction, s_x * s_w.astype(np.float64), (1, -1, 1, 1), accumulator)


def _lower_matmul(expr, matches):
    matmul = matches[MATMUL]
    if str(matmul.ty.dtype) != "float32" or len(matmul.args[1].ty.shape) != 2:
        return expr
    activation, weight = _activation(matches), int8_weight(matches, 1)
    if activation is None or weight is None:
        return expr
    (s_x, zp_x), (w_q, s_w) = activation, weight
    acc = relax.op.matmul(matches[_x_q], relax.const(w_q), out_dtype="int32")
    correction = zp_x * w_q.astype(np.int64).sum(axis=0)
    return _rescale(acc, correction, s_x * s_w.astype(np.float64), (-1,))


def _same_qparams(matches) -> bool:
    pairs = ((_s_in, _s_out), (_zp_in, _zp_out))
    same = all(np.array_equal(_array(matches[a]), _array(matches[b])) for a, b in pairs)
    quantize = matches[REQUANTIZE] if REQUANTIZE in matches else matches[POOL]
    return same and str(quantize.attrs.out_dtype) == str(matches[_q_in].ty.dtype)


def _cancel(expr, matches):
    return matches[_q_in]


def _pool_integers(expr, matches):
    pool = matches[_pool]
    return relax.Call(pool.op, [matches[_q_in]], pool.attrs)


# After the conv rule, which :func:`lower_qdq_to_integer` makes for its target's activation dtype.
RULES = (
    Rule("matmul_int8", MATMUL, _lower_matmul),
    Rule("requantize_cancelled", REQUANTIZE, _cancel, _same_qparams),
    Rule("max_pool2d_int8", POOL, _pool_integers, _same_qparams),
)


@register_pass("lower_qdq_to_integer", stage="quantize")
def lower_qdq_to_integer(target: tvm.target.Target | None = None, report: dict | None = None,
                         ) -> tvm.transform.Pass:
    """Lower QDQ-annotated conv2d/matmul to int8 x int8 -> int32 kernels, dense convs reading
    the activation dtype ``target``'s int8 kernels multiply (:func:`int8_data_dtype`)."""
    conv = Rule("conv2d_int8", CONV, partial(_lower_conv, data_dtype=int8_data_dtype(target),
                                             depthwise_taps=depthwise_taps(target)))
    return rule_pass("lower_qdq_to_integer", (conv, *RULES), report)

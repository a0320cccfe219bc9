"""Pad the channels of conv chains up to a multiple of a block, as onnxruntime's NCHWc does.

A conv with 24 output channels cannot run on ``NCHW16c`` activations; given 32 (eight filters of
zeros) it can, and so can the ops after it. :func:`pad_channels` gives such convs zero filters
(and zero biases), carries the wider tensor through the ops that keep padded channels finite
(bias and residual adds, ReLU/ReLU6, depthwise convs, which get zero filters too, a
squeeze-excite's mean over rows and columns), gives the next
conv zero weights for the extra input channels, and slices the real channels back out before
anything else reads them (other pooling, reshapes, the function's outputs).

Guarantees: every tensor that leaves the padded region is the same as before, up to summation
order. (A padded channel holds a finite value, multiplied by zero weights downstream; an input
holding an infinity makes it ``0 * inf = NaN``, which can turn an infinite output into NaN:
onnxruntime's NCHWc padding behaves the same way.) Convs gain at most ``MAX_GROWTH`` of their
channels.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from relaycomp.ir import emit_rebound, mutate_relax_functions

CONV_OP = "relax.nn.conv2d"
MAX_GROWTH = 0.5  # 24 -> 32 channels (+33%) pads, 16 -> 32 (+100%) does not
BINARY = {"relax.add", "relax.subtract", "relax.multiply", "relax.maximum", "relax.minimum"}
# Unary ops that map the zeros of a padded channel to finite values (casts and rounding: an
# int8 conv's epilogue once its quantize is decomposed).
UNARY = {"relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh", "relax.nn.silu",
         "relax.nn.gelu", "relax.nn.leakyrelu", "relax.astype", "relax.round"}
# Divided by a scalar constant (a decomposed quantize's scale), a padded channel stays finite.
DIVIDE = "relax.divide"
PAD = "relax.nn.pad"
MEAN = "relax.mean"  # over rows and columns (a squeeze-excite's pool): a channel's mean


def used_inputs(weight: np.ndarray, axis: int) -> int:
    """How many of ``weight``'s inputs along ``axis`` a conv must read: up to the last one with
    a nonzero weight (at least one). The zero weights :func:`pad_channels` gives a conv's padded
    input channels come last, so a kernel that stops there computes the same sums - and reads a
    quarter less of a 24-channel input padded to 32."""
    others = tuple(i for i in range(weight.ndim) if i != axis % weight.ndim)
    nonzero = np.flatnonzero(np.any(weight != 0, axis=others))
    return int(nonzero[-1]) + 1 if nonzero.size else 1


def without_unused_inputs(weight: np.ndarray) -> np.ndarray:
    """A blocked conv weight ``[O, I, kh, kw, i, ...]`` (input channels, or bf16 channel pairs,
    in blocks of ``i``) without its trailing inputs whose weights are all zero
    (:func:`used_inputs`), as ``[O, 1, kh, kw, used, ...]``: the inputs of all blocks along one
    axis, which the kernel reads as ``data[input // i, ..., input % i]``; ``weight`` itself when
    no input is left out."""
    out_blocks, in_blocks, kernel_h, kernel_w, in_block, *rest = weight.shape
    flat = weight.transpose(0, 2, 3, 1, *range(4, weight.ndim)).reshape(
        out_blocks, kernel_h, kernel_w, in_blocks * in_block, *rest)
    used = used_inputs(flat, axis=3)
    if used == in_blocks * in_block:
        return weight
    return flat[:, :, :, :used][:, None]


def padded_width(channels: int, block: int) -> int:
    """``channels`` rounded up to a multiple of ``block``, or ``channels`` when that would grow
    them by more than ``MAX_GROWTH``."""
    width = -(-channels // block) * block
    return width if width <= channels * (1 + MAX_GROWTH) else channels


def pad_channels(mod: tvm.IRModule, block: int, report: dict | None = None,
                 weight_dtype: str = "float32") -> tvm.IRModule:
    """``mod`` with its NCHW convs' channels padded to multiples of ``block`` (module docstring);
    ``mod`` itself when no conv needs it. ``report["padded"]``: the convs given zero filters.
    ``weight_dtype``: the convs padded, ``float32`` ones for the float plan or ``int8`` ones
    (uint8 x int8 -> int32, as ``lower_qdq_to_integer`` leaves them) for the int8 plan; a
    padded channel of an int8 chain holds its zero point after each requantization."""
    mutator = _ChannelPadder(mod, block, weight_dtype)
    mutated = mutate_relax_functions(mod, mutator)
    if report is not None:
        report["padded"] = mutator.padded
    return relax.transform.DeadCodeElimination()(mutated) if mutator.padded else mod


def _is_op(expr, names) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in names


def _pad_axis(array: np.ndarray, axis: int, width: int) -> np.ndarray:
    pads = [(0, 0)] * array.ndim
    pads[axis] = (0, width - array.shape[axis])
    return np.pad(array, pads)


@relax.expr_functor.mutator
class _ChannelPadder(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, block: int, weight_dtype: str):
        super().__init__(mod)
        self.block = block
        self.weight_dtype = weight_dtype
        self.real = {}  # padded var -> its real channel count
        self.sliced = {}  # padded var -> the var holding its real channels
        self.padded = 0  # convs given zero filters

    def visit_var_binding_(self, binding):
        value, real = binding.value, None
        if isinstance(value, relax.Call):
            # The arguments remapped, not yet normalized: a padded argument would fail the
            # shape inference of the call as it is.
            value, real = self._rewrite(relax.Call(
                value.op, [self.visit_expr(arg) for arg in value.args], value.attrs,
                value.ty_args))
        else:
            value = self._real_channels(self.visit_expr(value))
        output = not isinstance(binding.var, relax.DataflowVar)
        if real is not None and output:  # what leaves the block has its real channels
            value, real = self._slice(self.builder_.emit(value), real), None
        new_var = emit_rebound(self.builder_, binding.var, value)
        if real is not None:
            self.real[new_var] = real
        self.set_var_remap(binding.var, new_var)

    def _rewrite(self, call) -> tuple[relax.Expr, int | None]:
        """The call to emit, and the real channel count if its result is padded."""
        if _is_op(call, {CONV_OP}):
            return self._conv(call)
        if _is_op(call, BINARY):
            return self._binary(call)
        if _is_op(call, UNARY) and call.args and self.real.get(call.args[0]) is not None:
            return call, self.real[call.args[0]]
        if (_is_op(call, {DIVIDE, PAD, MEAN}) and self.real.get(call.args[0]) is not None
                and _keeps_channels(call)):
            return call, self.real[call.args[0]]
        return self._with_real_args(call), None

    def _conv(self, call) -> tuple[relax.Expr, int | None]:
        data, weight = call.args
        attrs = call.attrs
        if not (isinstance(weight, tvm.ir.expr.Constant) and attrs.data_layout == "NCHW"
                and attrs.kernel_layout == "OIHW" and attrs.out_layout == "NCHW"
                and str(weight.ty.dtype) == self.weight_dtype):
            # a conv of the other plan (int8 for the float plan) is left as it is
            return self._with_real_args(call), None
        array = weight.value.numpy()
        out_channels, groups = array.shape[0], int(attrs.groups)
        width = int(data.ty.shape[1]) if data.ty.shape is not None else None
        real_in = self.real.get(data)
        if groups == 1:
            if real_in is not None:
                array = _pad_axis(array, 1, width)
            out_width = padded_width(out_channels, self.block)
        elif groups == out_channels and array.shape[1] == 1 and real_in is not None:
            out_width = groups = width  # a depthwise conv keeps its input's padding
        else:
            return self._with_real_args(call), None
        if out_width == out_channels and real_in is None:
            return call, None
        if out_width != out_channels:
            array = _pad_axis(array, 0, out_width)
            self.padded += 1
        out_dtype = None if str(attrs.out_dtype) in ("", "void") else attrs.out_dtype
        conv = relax.op.nn.conv2d(data, relax.const(array), attrs.strides, attrs.padding,
                                  attrs.dilation, groups, "NCHW", "OIHW", "NCHW", out_dtype)
        return conv, (out_channels if out_width != out_channels else None)

    def _binary(self, call) -> tuple[relax.Expr, int | None]:
        a, b = call.args
        real_a, real_b = self.real.get(a), self.real.get(b)
        if real_a is None and real_b is None:
            return call, None
        if real_a is not None and real_b is not None:
            if real_a == real_b and _width(a) == _width(b):
                return call, real_a
            return self._with_real_args(call), None
        padded, other, real = (a, b, real_a) if real_a is not None else (b, a, real_b)
        widened = _widened_constant(other, real, _width(padded))
        if widened is None:
            return self._with_real_args(call), None
        args = [padded, widened] if padded is a else [widened, padded]
        return relax.Call(call.op, args, call.attrs, call.ty_args), real

    def _with_real_args(self, call):
        """``call`` reading the real channels of every padded var among its arguments."""
        if not isinstance(call, relax.Call):
            return call
        args = [self._real_channels(arg) for arg in call.args]
        if all(new.same_as(old) for new, old in zip(args, call.args)):
            return call
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def _real_channels(self, expr):
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self._real_channels(field) for field in expr.fields])
        real = self.real.get(expr) if isinstance(expr, relax.Var) else None
        if real is None:
            return expr
        if expr not in self.sliced:
            self.sliced[expr] = self.builder_.emit(self._slice(expr, real))
        return self.sliced[expr]

    @staticmethod
    def _slice(expr, real: int):
        return relax.op.strided_slice(expr, axes=[1], begin=[0], end=[real])


def _keeps_channels(call: relax.Call) -> bool:
    """A divide of a padded tensor by a scalar constant; a pad of its rows and columns only; a
    mean over its rows and columns that keeps them (as 1 x 1)."""
    if call.op.name == MEAN:
        axes = sorted(int(axis) % 4 for axis in (call.attrs.axis or []))
        return axes == [2, 3] and bool(call.attrs.keepdims)
    if call.op.name == DIVIDE:
        divisor = call.args[1]
        return (isinstance(divisor, tvm.ir.expr.Constant) and divisor.value.numpy().size == 1
                and divisor.value.numpy().reshape(-1)[0] != 0)
    widths = [int(w) for w in call.attrs.pad_width]
    return len(widths) == 8 and widths[:4] == [0, 0, 0, 0]


def _width(expr) -> int | None:
    shape = expr.ty.shape
    return int(shape[1]) if shape is not None and len(shape) == 4 else None


def _widened_constant(expr, real: int, width: int | None):
    """A constant operand broadcast against a padded NCHW tensor, padded with zeros along the
    channels where it has ``real`` of them (a bias); unchanged where it has one (a scalar);
    ``None`` for anything else."""
    if width is None or not isinstance(expr, tvm.ir.expr.Constant):
        return None
    array = expr.value.numpy()
    if array.ndim < 3 or array.ndim > 4:
        return expr if array.size == 1 else None
    axis = array.ndim - 3
    if array.shape[axis] == 1:
        return expr
    if array.shape[axis] != real or any(d != 1 for d in array.shape[axis + 1:]):
        return None
    return relax.const(_pad_axis(array, axis, width))

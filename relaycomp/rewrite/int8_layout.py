"""Plan the layout of uint8 activations between int8 convs: ``NCHW16c`` along conv chains.

``lower_qdq_to_integer`` leaves each int8 conv as ``conv2d(x_q, W_q) -> int32`` followed by its
requantizing epilogue (rescale, bias, residual add, the next ``quantize``), all on NCHW. The
x86 int8 kernels then copy their uint8 input into the layout ``vpdpbusd`` reads (four input
channels of a pixel adjacent) and write their channels-last accumulators back to NCHW through a
transpose, in every conv. :func:`plan_int8_layout` gives chains of such convs ``NCHW16c``
activations instead: a pixel's 16 channels adjacent, so a 32-bit broadcast of the input is four
channels of one pixel, and the 16 int32 lanes of a ``vpdpbusd`` accumulator are one output
pixel's 16 channels, stored whole (one 16-byte store after requantizing). Layout changes happen
where a chain starts or ends (the stem, the pooling head, ops that need NCHW).

How: the per-tensor ``quantize``/``dequantize`` ops become the elementwise ops their TVM
legalization computes (bit-identical), so that TVM's ``ConvertLayout`` carries the layout through
them as through the rescale and residual adds. Asked for ``NCHW16c``: the one-group int8 convs
(uint8 x int8 -> int32, channels multiples of :data:`BLOCK`; the RGB stem, three channels and
the zero one ``lower_qdq_to_integer`` adds, reads its image as one ``NCHW4c`` block), and the
depthwise ones whose input
a planned conv makes (a depthwise conv after an NCHW producer - MobileNetV2's convs over 24
channels - keeps NCHW: changing its input, 4-6x its expansion's, would cost more); a depthwise
conv ``lower_qdq_to_integer`` left summing in float32 (7-wide rows) is made the same integer
conv in int32 first. The others are asked for what they have. The planned convs then become the
kernels of :mod:`relaycomp.rewrite.int8_kernels` (weights laid out at compile time: a step's
16 x 4 weights of an output block are one 64-byte load), scheduled by
:mod:`relaycomp.schedules.cpu.int8_nchwc`.

Keeps: outputs bit-identical (the same integer sums and float epilogue operations).
Applies on x86 CPUs with AVX-512 VNNI only (the kernels' instruction); refused, the module
unchanged and the reason reported, when the layout would change more than once per
:data:`CONVS_PER_CHANGE` planned convs. ResNet-18: all 20 convs planned, 2 layout changes (the
image, the pooled features); MobileNetV2: 46 of 52 convs, 4 changes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from relaycomp.rewrite.int8_kernels import BLOCK, GROUP, LAYOUT, TAPS, BlockedToKernels
from relaycomp.schedules.cpu.int8 import AVX512_VNNI, int8_instructions

CONVS_PER_CHANGE = 2  # planned convs a layout change must pay for
CONV_OP = "relax.nn.conv2d"
# the ops of a requantizing epilogue and a residual add, quantize/dequantize decomposed
ELEMENTWISE = {f"relax.{name}" for name in (
    "astype", "add", "subtract", "multiply", "divide", "round", "minimum", "maximum")}


def _scalar(expr) -> float | None:
    if not isinstance(expr, tvm.ir.expr.Constant):
        return None
    value = expr.value.numpy()
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _float_depthwise(call: relax.Call) -> np.ndarray | None:
    """The int8 weights, widened to ``TAPS``-wide rows, of a depthwise conv that
    ``lower_qdq_to_integer`` left summing uint8 inputs in float32 (rows its NCHW kernel does
    not tile, e.g. 7 wide) with integer weights, its channels whole blocks; else ``None``."""
    data, weight = call.args
    attrs = call.attrs
    if not (isinstance(weight, tvm.ir.expr.Constant) and len(weight.ty.shape) == 4
            and str(weight.ty.dtype) == "float32" and str(data.ty.dtype) == "uint8"
            and str(call.ty.dtype) == "float32" and attrs.data_layout == "NCHW"
            and attrs.kernel_layout == "OIHW" and attrs.out_layout == "NCHW"):
        return None
    values = weight.value.numpy()
    channels = values.shape[0]
    if not (int(attrs.groups) == channels == int(data.ty.shape[1]) and values.shape[1] == 1
            and channels % BLOCK == 0 and values.shape[3] <= TAPS
            and all(int(d) == 1 for d in attrs.dilation)):
        return None
    if np.any(values != np.round(values)) or values.min() < -128 or values.max() > 127:
        return None
    extra = np.zeros((*values.shape[:3], TAPS - values.shape[3]), np.int8)
    return np.concatenate([values.astype(np.int8), extra], axis=3)


def _plannable(call: relax.Call) -> str | None:
    """``"dense"`` for a one-group NCHW uint8 x int8 -> int32 conv with a constant weight, its
    channels whole blocks (``"stem"`` with four input channels: ``NCHW4c`` in); ``"depthwise"`` for such a depthwise conv with ``TAPS``-wide kernel
    rows and no dilation; else ``None``."""
    data, weight = call.args
    attrs = call.attrs
    if not (isinstance(weight, tvm.ir.expr.Constant) and len(weight.ty.shape) == 4):
        return None
    out_channels, in_channels = int(weight.ty.shape[0]), int(weight.ty.shape[1])
    if not (attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW"
            and attrs.out_layout == "NCHW" and str(data.ty.dtype) == "uint8"
            and str(weight.ty.dtype) == "int8" and str(call.ty.dtype) == "int32"
            and out_channels % BLOCK == 0):
        return None
    groups = int(attrs.groups)
    if groups == 1 and in_channels % BLOCK == 0 and int(data.ty.shape[1]) == in_channels:
        return "dense"
    if groups == 1 and in_channels == GROUP and int(data.ty.shape[1]) == in_channels:
        return "stem"  # an RGB image (and a zero channel): read as one block of 4 channels
    if (groups == out_channels and in_channels == 1 and int(data.ty.shape[1]) == groups
            and int(weight.ty.shape[3]) == TAPS and all(int(d) == 1 for d in attrs.dilation)):
        return "depthwise"
    return None


@relax.expr_functor.mutator
class _QdqToElementwise(relax.PyExprMutator):
    """Per-tensor ``quantize``/``dequantize`` -> the elementwise ops of their legalization:
    ``astype(max(min(round(x / s) + zp, hi), lo))`` and ``astype(astype(q, int32) - zp, float32) *
    s`` (the same float operations, in the same order)."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in (
                "relax.quantize", "relax.dequantize"):
            return call
        data, scale, zero_point = call.args
        s, zp = _scalar(scale), _scalar(zero_point)
        dtype = str(call.attrs.out_dtype)
        if s is None or zp is None:
            return call
        if call.op.name == "relax.quantize":
            if dtype not in ("uint8", "int8") or str(data.ty.dtype) != "float32":
                return call
            info = np.iinfo(dtype)
            value = relax.op.round(relax.op.divide(data, relax.const(s, "float32")))
            value = relax.op.add(value, relax.const(zp, "float32"))
            # clip as minimum then maximum (what TVM's clip computes), which ConvertLayout
            # carries and clip it does not
            value = relax.op.minimum(value, relax.const(float(info.max), "float32"))
            value = relax.op.maximum(value, relax.const(float(info.min), "float32"))
            return relax.op.astype(value, dtype)
        if dtype != "float32" or str(data.ty.dtype) not in ("uint8", "int8"):
            return call
        shifted = relax.op.subtract(relax.op.astype(data, "int32"),
                                    relax.const(int(zp), "int32"))
        return relax.op.multiply(relax.op.astype(shifted, "float32"), relax.const(s, "float32"))


@relax.expr_functor.mutator
class _DepthwiseToInt32(relax.PyExprMutator):
    """A float-summing depthwise conv (:func:`_float_depthwise`) whose weight is in ``fed``
    -> ``astype(conv2d(x, W_q widened to TAPS columns, one more column of padding per extra
    tap, out_dtype="int32"), "float32")``: the same integers (the float sums were exact), so
    that the planned depthwise kernel takes it."""

    def __init__(self, fed: list):
        super().__init__()
        self.fed = fed

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP):
            return call
        weight = _float_depthwise(call)
        if weight is None or not any(call.args[1].same_as(w) for w in self.fed):
            return call
        attrs = call.attrs
        top, left, bottom, right = (int(p) for p in attrs.padding)
        right += TAPS - int(call.args[1].ty.shape[3])
        acc = relax.op.nn.conv2d(call.args[0], relax.const(weight), strides=attrs.strides,
                                 padding=[top, left, bottom, right], dilation=attrs.dilation,
                                 groups=attrs.groups, out_dtype="int32")
        return relax.op.astype(acc, "float32")


@relax.expr_functor.mutator
class _TransformBeforeDequantize(relax.PyExprMutator):
    """``layout_transform(f(x))``, ``f`` a decomposed ``dequantize`` (elementwise ops with
    scalar constants) of a uint8/int8 ``x`` -> ``f(layout_transform(x))``: the layout of a
    residual's 1-byte input changes, not of its 4-byte float dequantization (ResNet-18's first
    residual), and usually the same ``layout_transform(x)`` the next conv reads."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.layout_transform"):
            return call
        chain, value = [], call.args[0]
        while isinstance(value, relax.Var):
            bound = self.lookup_binding(value)
            if not (isinstance(bound, relax.Call) and isinstance(bound.op, tvm.ir.Op)
                    and bound.op.name in ELEMENTWISE and len(chain) < 8
                    and all(_scalar(arg) is not None for arg in bound.args[1:])):
                break
            chain.append(bound)
            value = bound.args[0]
        if not chain or str(value.ty.dtype) not in ("uint8", "int8"):
            return call
        result = relax.Call(call.op, [value], call.attrs)
        for bound in reversed(chain):
            result = relax.Call(bound.op, [result, *bound.args[1:]], bound.attrs)
        return result


def _mutate(mutator, mod: tvm.IRModule) -> tvm.IRModule:
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


def layout_changes(func: relax.Function) -> int:
    """``layout_transform`` calls on activations (not constants)."""
    count = 0

    def visit(expr) -> None:
        nonlocal count
        if (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)
                and expr.op.name == "relax.layout_transform"
                and not isinstance(expr.args[0], tvm.ir.expr.Constant)):
            count += 1

    relax.analysis.post_order_visit(func, visit)
    return count


def _fed_by_dense_convs(func: relax.Function) -> list:
    """The weights of the depthwise convs whose input a plannable one-group conv produces,
    through elementwise ops (its requantizing epilogue, a residual add): the convs whose input
    is already ``NCHW16c`` once that one is planned. A depthwise conv after an NCHW producer (a
    conv over 24 channels) keeps NCHW: its input, 4-6x its expansion's input, would change
    layout instead."""
    bound: dict = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            bound[binding.var] = binding.value

    def from_dense(expr, depth: int = 0) -> bool:
        value = bound.get(expr)
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op) or depth > 32:
            return False
        if value.op.name == CONV_OP:
            return _plannable(value) in ("dense", "stem")
        if value.op.name not in ELEMENTWISE:
            return False
        return any(from_dense(arg, depth + 1) for arg in value.args
                   if isinstance(arg, relax.Var))

    return [value.args[1] for value in bound.values()
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
            and value.op.name == CONV_OP and from_dense(value.args[0])
            and (_plannable(value) == "depthwise" or _float_depthwise(value) is not None)]


def _convs(func: relax.Function) -> list[relax.Call]:
    found = []
    relax.analysis.post_order_visit(func, lambda expr: found.append(expr) if (
        isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)
        and expr.op.name == CONV_OP) else None)
    return found


def applies(target: tvm.target.Target | None) -> bool:
    """Whether ``target`` runs the planned kernels: an x86 CPU with AVX-512 VNNI."""
    return (target is not None and target.kind.name == "llvm"
            and int8_instructions(target) is AVX512_VNNI)


def plan_int8_layout(mod: tvm.IRModule, target: tvm.target.Target | None,
                     report: dict | None = None) -> tvm.IRModule:
    """``mod`` with its chains of int8 convs on ``NCHW16c`` uint8 activations (module
    docstring), or ``mod`` itself where that does not apply or pay. ``report`` gets
    ``int8_planned`` (convs given the layout) and ``int8_layout_changes``, or ``int8_skipped``
    and why."""
    if not applies(target) or not any(gvar.name_hint == "main"
                                      for gvar in mod.get_global_vars()):
        return mod
    if not any(_plannable(call) in ("dense", "stem") for call in _convs(mod["main"])):
        return mod  # a float model, or int8 convs none of which fills a block
    planned = 0
    decomposed = _mutate(_QdqToElementwise(mod), mod)
    decomposed = _mutate(_DepthwiseToInt32(_fed_by_dense_convs(decomposed["main"])), decomposed)
    fed = _fed_by_dense_convs(decomposed["main"])

    def desired(call: relax.Call):
        nonlocal planned
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP):
            return {}
        kind = _plannable(call)
        if kind == "depthwise" and not any(call.args[1].same_as(weight) for weight in fed):
            kind = None  # its input is NCHW: changing it before would move 4-6x the bytes
        if kind is None:  # said explicitly: left alone it would adopt its input's layout
            return {CONV_OP: [str(call.attrs.data_layout), str(call.attrs.kernel_layout)]}
        planned += 1
        return {CONV_OP: {"dense": [LAYOUT, f"OIHW{BLOCK}i{BLOCK}o"],
                          "stem": [f"NCHW{GROUP}c", f"OIHW{GROUP}i{BLOCK}o", LAYOUT],
                          "depthwise": [LAYOUT, f"OIHW1i{BLOCK}o"]}[kind]}

    try:
        converted = relax.transform.ConvertLayout({}, desired)(decomposed)
    except Exception as err:  # noqa: BLE001 - what ConvertLayout cannot carry keeps NCHW
        if report is not None:
            report["int8_skipped"] = str(err).strip().splitlines()[-1] if str(err) else (
                type(err).__name__)
        return mod
    converted = relax.transform.EliminateCommonSubexpr()(converted)
    converted = relax.transform.DeadCodeElimination()(relax.transform.EliminateCommonSubexpr()(
        _mutate(_TransformBeforeDequantize(converted), converted)))
    changes = layout_changes(converted["main"])
    if planned == 0 or changes * CONVS_PER_CHANGE > planned:
        if report is not None and planned:
            report["int8_skipped"] = (f"{changes} layout changes for {planned} int8 convs: "
                                      "chains too short to pay")
        return mod
    converted = relax.transform.FoldConstant()(converted)
    if report is not None:
        report.update(int8_planned=planned, int8_layout_changes=changes)
    return relax.transform.DeadCodeElimination()(_mutate(BlockedToKernels(converted),
                                                         converted))

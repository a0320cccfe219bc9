"""Plan the layout of uint8 activations between int8 convs: ``NCHW[b]c`` along conv chains.

``lower_qdq_to_integer`` leaves each int8 conv as ``conv2d(x_q, W_q) -> int32`` followed by its
requantizing epilogue (rescale, bias, residual add, the next ``quantize``), all on NCHW. The
x86 int8 kernels then copy their uint8 input into the layout their dot product reads (four
input channels of a pixel adjacent) and write their channels-last accumulators back to NCHW
through a transpose, in every conv. :func:`plan_int8_layout` gives chains of such convs
``NCHW[b]c`` activations instead: a pixel's ``b`` channels adjacent, so a 32-bit broadcast of
the input is four channels of one pixel, and the ``b`` int32 lanes of an accumulator are one
output pixel's ``b`` channels, stored whole (``b`` bytes after requantizing). The block is the
target's (:func:`block_for`): 16 with AVX-512 VNNI (``vpdpbusd`` on zmm), 8 on AVX2 without it
(ymm: ``vpmaddubsw`` + ``vpmaddwd`` where the weights are pair-safe, ``int8.pair_safe`` - the
7-bit weights relaycomp's quantizer gives AVX2 targets always are - else ``vpmaddwd`` on
widened operands; both exact). Layout changes happen where
a chain starts or ends (the stem, the pooling head, ops that need NCHW).

How: the importer's ``Clip`` kernels (``call_tir`` of a max/min) become ``maximum``/``minimum``
ops and the per-tensor ``quantize``/``dequantize`` ops the elementwise ops their TVM
legalization computes (bit-identical; :mod:`int8_elementwise`), so that TVM's ``ConvertLayout``
carries the layout through them as through the rescale and residual adds. Asked for
``NCHW[b]c``: the one-group int8 convs (uint8 x int8 -> int32, channels multiples of ``b``;
the RGB stem, three channels and the zero one ``lower_qdq_to_integer`` adds, reads its image as
one ``NCHW4c`` block), and the depthwise ones whose input a planned conv makes (a depthwise
conv after an NCHW producer - a conv whose channels fill no block even padded - keeps NCHW:
changing its input, 4-6x its expansion's, would cost more); a depthwise conv
``lower_qdq_to_integer`` left summing in float32 (7-wide rows; on AVX2 all) is made the same
integer conv in int32 first, its kernel rows widened to :data:`TAPS`. The others are asked for
what they have. The planned convs then become the kernels of
:mod:`relaycomp.rewrite.int8_kernels` (weights laid out at compile time: a step's ``b`` x 4
weights of an output block are one vector load), scheduled by
:mod:`relaycomp.schedules.cpu.int8_nchwc` and ``int8_nchwc_depthwise``.

Keeps: outputs bit-identical (the same integer sums and float epilogue operations).
Applies on x86 CPUs with AVX-512 VNNI or AVX2; refused, the module unchanged and the reason
reported, when the layout would change more than once per :data:`CONVS_PER_CHANGE` planned
convs. Convs whose channels fill no block get zero filters up to it first
(``rewrite.pad_channels``, as the float plan does: MobileNetV2's 24 channels become 32; a padded
channel holds the zero point after each requantization and meets zero weights). ResNet-18: all
20 convs planned, 2 layout changes (the image, the pooled features); MobileNetV2 (onnxruntime's
QDQ, VNNI): all 52 (46 and 4 changes before the padding; 1.73 -> 1.59 ms on a Zen 4 with 2
threads, outputs bit-identical); MobileNetV2 quantized by relaycomp for AVX2: all 52, 2 changes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from relaycomp.ir import mutate_relax_functions
from relaycomp.rewrite.int8_elementwise import (
    ELEMENTWISE,
    ClipTirToOps,
    QdqToElementwise,
    TransformBeforeDequantize,
)
from relaycomp.rewrite.int8_kernels import AVX2_BLOCK, BLOCK, GROUP, TAPS, BlockedToKernels
from relaycomp.rewrite.pad_channels import pad_channels
from relaycomp.schedules.cpu.int8_isa import AVX2, AVX512_VNNI, int8_instructions

CONVS_PER_CHANGE = 2  # planned convs a layout change must pay for
CONV_OP = "relax.nn.conv2d"
def _float_depthwise(call: relax.Call, block: int = BLOCK) -> np.ndarray | None:
    """The int8 weights, widened to ``TAPS``-wide rows, of a depthwise conv that
    ``lower_qdq_to_integer`` left summing uint8 inputs in float32 (rows its NCHW kernel does
    not tile, e.g. 7 wide; every one on AVX2) with integer weights, its channels whole
    ``block`` s; else ``None``."""
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
            and channels % block == 0 and values.shape[3] <= TAPS
            and all(int(d) == 1 for d in attrs.dilation)):
        return None
    if np.any(values != np.round(values)) or values.min() < -128 or values.max() > 127:
        return None
    extra = np.zeros((*values.shape[:3], TAPS - values.shape[3]), np.int8)
    return np.concatenate([values.astype(np.int8), extra], axis=3)


def _plannable(call: relax.Call, block: int = BLOCK) -> str | None:
    """``"dense"`` for a one-group NCHW uint8 x int8 -> int32 conv with a constant weight, its
    channels whole ``block`` s (``"stem"`` with four input channels: ``NCHW4c`` in);
    ``"depthwise"`` for such a depthwise conv with ``TAPS``-wide kernel rows and no dilation;
    else ``None``."""
    data, weight = call.args
    attrs = call.attrs
    if not (isinstance(weight, tvm.ir.expr.Constant) and len(weight.ty.shape) == 4):
        return None
    out_channels, in_channels = int(weight.ty.shape[0]), int(weight.ty.shape[1])
    if not (attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW"
            and attrs.out_layout == "NCHW" and str(data.ty.dtype) == "uint8"
            and str(weight.ty.dtype) == "int8" and str(call.ty.dtype) == "int32"
            and out_channels % block == 0):
        return None
    groups = int(attrs.groups)
    kind = None
    if groups == 1 and in_channels % block == 0 and int(data.ty.shape[1]) == in_channels:
        kind = "dense"
    elif groups == 1 and in_channels == GROUP and int(data.ty.shape[1]) == in_channels:
        kind = "stem"  # an RGB image (and a zero channel): read as one block of 4 channels
    elif (groups == out_channels and in_channels == 1 and int(data.ty.shape[1]) == groups
            and int(weight.ty.shape[3]) == TAPS and all(int(d) == 1 for d in attrs.dilation)):
        kind = "depthwise"
    return kind


@relax.expr_functor.mutator
class _DepthwiseToInt32(relax.PyExprMutator):
    """A float-summing depthwise conv (:func:`_float_depthwise`) whose weight is in ``fed``
    -> ``astype(conv2d(x, W_q widened to TAPS columns, one more column of padding per extra
    tap, out_dtype="int32"), "float32")``: the same integers (the float sums were exact), so
    that the planned depthwise kernel takes it."""

    def __init__(self, fed: list, block: int = BLOCK):
        super().__init__()
        self.fed, self.channel_block = fed, block

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP):
            return call
        weight = _float_depthwise(call, self.channel_block)
        if weight is None or not any(call.args[1].same_as(w) for w in self.fed):
            return call
        attrs = call.attrs
        top, left, bottom, right = (int(p) for p in attrs.padding)
        right += TAPS - int(call.args[1].ty.shape[3])
        acc = relax.op.nn.conv2d(call.args[0], relax.const(weight), strides=attrs.strides,
                                 padding=[top, left, bottom, right], dilation=attrs.dilation,
                                 groups=attrs.groups, out_dtype="int32")
        return relax.op.astype(acc, "float32")


def _mutate(mutator, mod: tvm.IRModule) -> tvm.IRModule:
    return mutate_relax_functions(mod, mutator)


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


def _fed_by_dense_convs(func: relax.Function, block: int = BLOCK) -> list:
    """The weights of the depthwise convs whose input a plannable one-group conv produces,
    through elementwise ops (its requantizing epilogue, a residual add): the convs whose input
    is already ``NCHW16c`` once that one is planned. A depthwise conv after an NCHW producer (a
    conv whose channels fill no block) keeps NCHW: its input, 4-6x its expansion's input,
    would change layout instead."""
    bound: dict = {}
    for dataflow in func.body.blocks:
        for binding in dataflow.bindings:
            bound[binding.var] = binding.value

    def from_dense(expr, depth: int = 0) -> bool:
        value = bound.get(expr)
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op) or depth > 32:
            return False
        if value.op.name == CONV_OP:
            return _plannable(value, block) in ("dense", "stem")
        if value.op.name not in ELEMENTWISE:
            return False
        return any(from_dense(arg, depth + 1) for arg in value.args
                   if isinstance(arg, relax.Var))

    return [value.args[1] for value in bound.values()
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
            and value.op.name == CONV_OP and from_dense(value.args[0])
            and (_plannable(value, block) == "depthwise"
                 or _float_depthwise(value, block) is not None)]


def _convs(func: relax.Function) -> list[relax.Call]:
    found = []
    relax.analysis.post_order_visit(func, lambda expr: found.append(expr) if (
        isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)
        and expr.op.name == CONV_OP) else None)
    return found


def block_for(target: tvm.target.Target | None) -> int | None:
    """The channel block ``target``'s planned kernels take: 16 on an x86 CPU with AVX-512
    VNNI (``vpdpbusd``), 8 with AVX2 only (``vpmaddubsw`` + ``vpmaddwd``, pair-safe weights);
    else ``None``."""
    if target is None or target.kind.name != "llvm":
        return None
    return {AVX512_VNNI: BLOCK, AVX2: AVX2_BLOCK}.get(int8_instructions(target))


def applies(target: tvm.target.Target | None) -> bool:
    """Whether ``target`` runs the planned kernels: an x86 CPU with AVX-512 VNNI or AVX2."""
    return block_for(target) is not None


def plan_int8_layout(mod: tvm.IRModule, target: tvm.target.Target | None,
                     report: dict | None = None) -> tvm.IRModule:
    """``mod`` with its chains of int8 convs on ``NCHW[b]c`` uint8 activations (module
    docstring; ``b`` from :func:`block_for`), or ``mod`` itself where that does not apply or
    pay. ``report`` gets ``int8_planned`` (convs given the layout) and
    ``int8_layout_changes``, or ``int8_skipped`` and why."""
    block = block_for(target)
    if block is None or not any(gvar.name_hint == "main" for gvar in mod.get_global_vars()):
        return mod
    if not any(_plannable(call, block) in ("dense", "stem")
               for call in _convs(mod["main"])):
        return mod  # a float model, or int8 convs none of which fills a block
    planned = 0
    layout = f"NCHW{block}c"
    raised = relax.transform.DeadCodeElimination()(_mutate(ClipTirToOps(mod), mod))
    padding = {}  # 24 channels (MobileNetV2's) fill no block: 32, with zero filters
    decomposed = pad_channels(_mutate(QdqToElementwise(raised), raised), block, padding,
                              weight_dtype="int8")
    decomposed = _mutate(_DepthwiseToInt32(_fed_by_dense_convs(decomposed["main"], block),
                                           block), decomposed)
    fed = _fed_by_dense_convs(decomposed["main"], block)

    def desired(call: relax.Call):
        nonlocal planned
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP):
            return {}
        kind = _plannable(call, block)
        if kind == "depthwise" and not any(call.args[1].same_as(weight) for weight in fed):
            kind = None  # its input is NCHW: changing it before would move 4-6x the bytes
        if kind is None:  # said explicitly: left alone it would adopt its input's layout
            return {CONV_OP: [str(call.attrs.data_layout), str(call.attrs.kernel_layout)]}
        planned += 1
        return {CONV_OP: {"dense": [layout, f"OIHW{block}i{block}o"],
                          "stem": [f"NCHW{GROUP}c", f"OIHW{GROUP}i{block}o", layout],
                          "depthwise": [layout, f"OIHW1i{block}o"]}[kind]}

    try:
        converted = relax.transform.ConvertLayout({}, desired)(decomposed)
    except Exception as err:  # noqa: BLE001 - what ConvertLayout cannot carry keeps NCHW
        if report is not None:
            report["int8_skipped"] = str(err).strip().splitlines()[-1] if str(err) else (
                type(err).__name__)
        return mod
    converted = relax.transform.EliminateCommonSubexpr()(converted)
    converted = relax.transform.DeadCodeElimination()(relax.transform.EliminateCommonSubexpr()(
        _mutate(TransformBeforeDequantize(converted), converted)))
    changes = layout_changes(converted["main"])
    if planned == 0 or changes * CONVS_PER_CHANGE > planned:
        if report is not None and planned:
            report["int8_skipped"] = (f"{changes} layout changes for {planned} int8 convs: "
                                      "chains too short to pay")
        return mod
    converted = relax.transform.FoldConstant()(converted)
    if report is not None:
        report.update(int8_planned=planned, int8_layout_changes=changes)
        if padding.get("padded"):
            report["int8_padded"] = padding["padded"]
    # on AVX2 vpmaddubsw sums weight pairs in int16: other weights take exact kernels
    kernels = BlockedToKernels(converted, block, pairs=block == AVX2_BLOCK)
    return relax.transform.DeadCodeElimination()(_mutate(kernels, converted))

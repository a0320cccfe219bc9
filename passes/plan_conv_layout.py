"""Plan the activation layout of conv chains: blocked ``NCHW[b]c`` between convs, NCHW outside.

Matches: ``conv2d`` in NCHW/OIHW with an fp32 input and a constant fp32 weight, either with one
group or depthwise (one filter per channel), whose channels are multiples of the block ``b``
once padded (``rewrite.pad_channels``: 24 channels become 32 with zero filters, as onnxruntime's
NCHWc does). ``b`` is two vectors of the target's fp32 lanes (32 on AVX-512, 16 on AVX2, 8 on
NEON), or one vector when more convs fit that (MobileNetV2's 16 and 144 channels on AVX-512).
Produces: those convs on ``NCHW[b]c`` activations and ``OIHW[b]i[b]o`` (depthwise:
``OIHW1i[b]o``) weights re-laid out at compile time, still ``conv2d`` ops (so that
``convert_to_bf16`` can take them); ``legalize_blocked_convs`` makes them this module's
``conv2d_nchwc`` / ``depthwise_conv2d_nchwc`` / ``stem_conv2d_nchwc`` kernels, whose output
channels are the innermost axis: a register
tile's vectors are stored whole, and the epilogue (bias, residual add, ReLU, ReLU6) reads its
operands the same way. The importer's ``Clip`` kernels become ``maximum``/``minimum`` ops first,
so that TVM's ``ConvertLayout`` carries the layout through them as through the other ops
between convs (elementwise ops, pooling); ``layout_transform`` kernels appear only where a chain
starts or ends (the graph's input and output, ops that need NCHW).
Keeps: the function signature; outputs equal up to fp32 summation order.
Also plans int8: on AVX-512 VNNI, chains of integer convs keep their uint8 activations in
``NCHW16c`` between convs (``relaycomp.rewrite.int8_layout``, run first; its facts are the
report's ``int8_*`` keys).
Refuses (leaves the module as it was, and says why in the report) when the layout would change
more often than there are planned convs: chains too short to pay for their conversions.
Runs: in stage ``layout``, after ``quantize`` (int8 and bf16 took the convs they run), for CPU
targets. Reports: ``planned`` (convs given the blocked layout), ``block``, ``layout_changes``
(activation ``layout_transform`` kernels), ``padded`` (convs given zero filters) or
``padding_skipped`` (why padding did not apply), or ``skipped`` and the reason.
"""

from __future__ import annotations

import tvm
from tvm import relax, te

from relaycomp.channels.relax_ops import elementwise_tir
from relaycomp.ir import mutate_relax_functions
from relaycomp.registry import register_pass
from relaycomp.rewrite.conv_window import SlidingWindow
from relaycomp.rewrite.int8_layout import layout_changes, plan_int8_layout
from relaycomp.rewrite.pad_channels import pad_channels
from relaycomp.schedules.cpu.common import cpu_facts

CONV_KERNEL = "conv2d_nchwc"
DEPTHWISE_KERNEL = "depthwise_conv2d_nchwc"
STEM_KERNEL = "stem_conv2d_nchwc"
VECTORS_PER_BLOCK = 2  # the register tile's vectors along the output channels
CONV_OP = "relax.nn.conv2d"
_COMMUTATIVE = ("relax.add", "relax.multiply", "relax.maximum", "relax.minimum")
_BINARY = (*_COMMUTATIVE, "relax.subtract", "relax.divide")


def blocks_for(target: tvm.target.Target) -> list[int]:
    """The channel blocks of ``target``, preferred first: ``VECTORS_PER_BLOCK`` fp32 vectors,
    then one (for channel counts such as MobileNetV2's 16 and 144 on AVX-512)."""
    lanes = cpu_facts(target).lanes("float32")
    return [VECTORS_PER_BLOCK * lanes, lanes]


def choose_block(mod: tvm.IRModule, blocks: list[int]) -> int:
    """The block of ``blocks`` that the most convs of ``mod`` fit once their channels are
    padded to it, the first on a tie."""
    raised = _raise_elementwise_tir(mod)
    fitting = []
    for block in blocks:
        convs = [call for call in _calls(_padded(raised, block))
                 if isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP]
        fitting.append(sum(_conv_kind(call, block) is not None for call in convs))
    return blocks[fitting.index(max(fitting))]


def _padded(mod: tvm.IRModule, block: int, report: dict | None = None) -> tvm.IRModule:
    """``rewrite.pad_channels`` of ``mod``, or ``mod`` itself where the padding does not apply
    (a graph form it does not know, e.g. a ``match_cast`` of a padded tensor): the convs whose
    channels fill no block then keep NCHW, which is slower but computes the same."""
    try:
        return pad_channels(mod, block, report)
    except Exception as err:  # noqa: BLE001 - padding is an optimization, never a reason to fail
        if report is not None:  # said in the manifest's report.layout
            report["padding_skipped"] = str(err).strip().splitlines()[-1] if str(err) else (
                type(err).__name__)
        return mod


def _calls(mod: tvm.IRModule) -> list[relax.Call]:
    found = []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func, lambda expr: found.append(expr) if isinstance(expr, relax.Call) else None)
    return found


def _conv_kind(call: relax.Call, block: int) -> str | None:
    """``"dense"`` (one group), ``"depthwise"`` or ``"stem"`` (one group, fewer input channels
    than the block) for a plannable conv, else ``None``."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP):
        return None
    data, weight = call.args
    attrs = call.attrs
    if not isinstance(weight, tvm.ir.expr.Constant) or len(weight.ty.shape) != 4:
        return None
    shape = weight.ty.shape
    out_channels, in_channels = int(shape[0]), int(shape[1])
    groups = int(attrs.groups)
    if not (attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW"
            and attrs.out_layout == "NCHW" and str(data.ty.dtype) == "float32"
            and str(weight.ty.dtype) == "float32" and str(call.ty.dtype) == "float32"
            and out_channels % block == 0):
        return None
    if groups == 1 and in_channels % block == 0:
        return "dense"
    if groups == 1 and in_channels < block:
        return "stem"  # an RGB input: read as NCHW, written blocked
    if groups == out_channels and in_channels == 1 and int(data.ty.shape[1]) == groups:
        return "depthwise"
    return None


def conv2d_nchwc(data: te.Tensor, weight: te.Tensor, strides, padding, dilation) -> te.Tensor:
    """``out[n, fo, y, x, fi] = sum(data[n, co, y', x', ci] * weight[fo, co, ry, rx, ci, fi])``
    over ``co, ry, ci, rx``: the window's columns innermost, so the unrolled register tile
    shares each broadcast input across them (42 multiply-adds per 9 broadcasts and 6 weight
    vectors on AVX-512, as the NCHW kernel's sliding window)."""
    out_blocks, in_blocks, kernel_h, kernel_w, in_block, out_block = weight.shape
    window = SlidingWindow(data, (kernel_h, kernel_w), strides, padding, dilation)
    co = te.reduce_axis((0, in_blocks), name="co")
    ci = te.reduce_axis((0, in_block), name="ci")
    data_block = int(data.shape[4])

    def data_channel(n, y, x):  # the input channel ``(co, ci)`` reads
        if in_block == data_block:
            return window.padded[n, co, *window.at(y, x), ci]
        return window.padded[n, ci // data_block, *window.at(y, x), ci % data_block]

    return te.compute(
        (data.shape[0], out_blocks, window.height, window.width, out_block),
        lambda n, fo, y, x, fi: te.sum(
            data_channel(n, y, x) * weight[fo, co, window.ry, window.rx, ci, fi],
            axis=[co, window.ry, ci, window.rx]),
        name="conv2d_nchwc", tag="conv2d_nchwc")


def stem_conv2d_nchwc(data: te.Tensor, weight: te.Tensor, strides, padding,
                      dilation) -> te.Tensor:
    """``out[n, fo, y, x, fi] = sum(data[n, c, y', x'] * weight[fo, c, ry, rx, fi])``: an NCHW
    input with few channels (an image) written blocked, so no layout change follows it."""
    out_blocks, in_channels, kernel_h, kernel_w, out_block = weight.shape
    window = SlidingWindow(data, (kernel_h, kernel_w), strides, padding, dilation)
    c = te.reduce_axis((0, in_channels), name="c")
    return te.compute(
        (data.shape[0], out_blocks, window.height, window.width, out_block),
        lambda n, fo, y, x, fi: te.sum(
            window.padded[n, c, *window.at(y, x)] * weight[fo, c, window.ry, window.rx, fi],
            axis=[c, window.ry, window.rx]),
        name="stem_conv2d_nchwc", tag="stem_conv2d_nchwc")


def depthwise_conv2d_nchwc(data: te.Tensor, weight: te.Tensor, strides, padding,
                           dilation) -> te.Tensor:
    """``out[n, c, y, x, i] = sum(data[n, c, y', x', i] * weight[c, 0, ry, rx, 0, i])``: one
    filter per channel, whole vectors of the block's channels (no broadcast, no shuffle)."""
    blocks, _, kernel_h, kernel_w, _, block = weight.shape
    window = SlidingWindow(data, (kernel_h, kernel_w), strides, padding, dilation)
    return te.compute(
        (data.shape[0], blocks, window.height, window.width, block),
        lambda n, c, y, x, i: te.sum(
            window.padded[n, c, *window.at(y, x), i] * weight[c, 0, window.ry, window.rx, 0, i],
            axis=[window.ry, window.rx]),
        name="depthwise_conv2d_nchwc", tag="depthwise_conv2d_nchwc")


@relax.expr_functor.mutator
class _ElementwiseTirToOps(relax.PyExprMutator):
    """``call_tir`` of a TE ``max``/``min`` with a scalar (how TVM's ONNX importer lowers
    ``Clip``) and ``relax.clip`` with scalar bounds (its ``HardSigmoid``/``HardSwish``) ->
    ``relax.maximum``/``relax.minimum``, which ``ConvertLayout`` carries through; a commutative
    op with a constant first gets its tensor first (``ConvertLayout`` takes the first operand's
    layout: ``3 * x`` would stay NCHW)."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod = mod

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.clip"
                and all(isinstance(bound, (tvm.tirx.IntImm, tvm.tirx.FloatImm))
                        for bound in call.args[1:])):
            data, low, high = call.args
            dtype = str(data.ty.dtype)
            return relax.op.minimum(relax.op.maximum(data, relax.const(float(low.value), dtype)),
                                    relax.const(float(high.value), dtype))
        if isinstance(call.op, tvm.ir.Op) and call.op.name in _BINARY:
            return self._tensor_first(call)
        found = elementwise_tir(self.mod, call)
        if found is None:
            return call
        tensor, scalar = call.args[1].fields
        return found[1](tensor, scalar)


    @staticmethod
    def _tensor_first(call: relax.Call) -> relax.Call:
        """A one-element constant operand as a scalar, the tensor operand first (commutative
        ops): ``ConvertLayout`` cannot lay out a ``[1]`` operand, and takes the first operand's
        layout (``3 * x`` would stay NCHW)."""
        args = list(call.args)
        for i, arg in enumerate(args):
            if (isinstance(arg, tvm.ir.expr.Constant) and arg.value.numpy().size == 1
                    and arg.value.numpy().ndim > 0 and _same_shape(call, args[1 - i])):
                args[i] = relax.const(arg.value.numpy().reshape(()), str(arg.ty.dtype))
        if (call.op.name in _COMMUTATIVE and isinstance(args[0], tvm.ir.expr.Constant)
                and not isinstance(args[1], tvm.ir.expr.Constant)):
            args.reverse()
        return relax.Call(call.op, args, call.attrs, call.ty_args)


def _same_shape(call: relax.Call, operand: relax.Expr) -> bool:
    """Whether ``call``'s result has ``operand``'s static shape (broadcasting added nothing)."""
    shapes = [getattr(expr.ty, "shape", None) for expr in (call, operand)]
    if any(shape is None or not hasattr(shape, "values") for shape in shapes):
        return False
    return [str(d) for d in shapes[0].values] == [str(d) for d in shapes[1].values]


def _raise_elementwise_tir(mod: tvm.IRModule) -> tvm.IRModule:
    return relax.transform.DeadCodeElimination()(
        mutate_relax_functions(mod, _ElementwiseTirToOps(mod)))


def plan_layout(mod: tvm.IRModule, block: int, report: dict | None = None) -> tvm.IRModule:
    """``mod`` with its plannable convs on ``NCHW[block]c`` (see the module docstring)."""
    planned, padding = 0, {}

    def desired(call: relax.Call):
        nonlocal planned
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP):
            return {}
        kind = _conv_kind(call, block)
        if kind is None:  # said explicitly: left alone, it would adopt its input's layout
            return {CONV_OP: [str(call.attrs.data_layout), str(call.attrs.kernel_layout)]}
        planned += 1
        blocked = f"NCHW{block}c"
        return {CONV_OP: {"dense": [blocked, f"OIHW{block}i{block}o"],
                          "depthwise": [blocked, f"OIHW1i{block}o"],
                          "stem": ["NCHW", f"OIHW{block}o", blocked]}[kind]}

    if not any(gvar.name_hint == "main" for gvar in mod.get_global_vars()):
        return mod
    try:
        converted = relax.transform.ConvertLayout({}, desired)(
            _padded(_raise_elementwise_tir(mod), block, padding))
    except Exception as err:  # noqa: BLE001 - what ConvertLayout cannot carry keeps NCHW
        if report is not None:
            report.update(block=block, planned=0, skipped=str(err).strip().splitlines()[-1])
        return mod
    converted = relax.transform.EliminateCommonSubexpr()(converted)
    changes = layout_changes(converted["main"])
    facts = {"block": block, "planned": planned, "layout_changes": changes}
    facts.update({key: padding[key] for key in ("padded", "padding_skipped")
                  if padding.get(key)})
    if planned == 0 or changes > planned:
        if report is not None:
            report.update(facts, planned=0, skipped=(
                "no conv fits the block" if planned == 0 else
                f"{changes} layout changes for {planned} convs: chains too short to pay"))
        return mod
    if report is not None:
        report.update(facts)
    return relax.transform.FoldConstant()(converted)


@register_pass("plan_conv_layout", stage="layout", kinds=("llvm",))
def plan_conv_layout(target: tvm.target.Target | None = None, report: dict | None = None,
                     ) -> tvm.transform.Pass:
    """Give chains of fp32 convs the blocked NCHW[b]c layout, changed only at their ends."""

    @tvm.transform.module_pass(opt_level=0, name="plan_conv_layout")
    def _plan(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        chosen = target or tvm.target.Target.current()
        if chosen is None:
            return mod
        planned = plan_int8_layout(mod, chosen, report)  # int8 convs: NCHW16c uint8
        if not planned.same_as(mod):
            # TVM's ConvertLayout fails on a graph with blocked tensors already (in C++, with a
            # warning on stderr): the fp32 plan keeps the convs the int8 plan left alone NCHW
            if report is not None:
                report.update(planned=0, skipped="the int8 plan laid out the graph")
            return planned
        return plan_layout(mod, choose_block(mod, blocks_for(chosen)), report)

    return _plan

"""Lower planned fp32 3x3 stride-1 convs to Winograd F(4x4, 3x3): a quarter of the multiply-adds.

Matches: ``conv2d`` on ``NCHW[b]c`` activations (as ``plan_conv_layout`` leaves it) with one
group, a constant fp32 ``3 x 3`` weight whose transform takes at most ``MAX_TRANSFORMED_BYTES``,
stride 1, dilation 1, fp32 input and output, static shapes, and at least ``MIN_OUTPUT_PIXELS``
outputs per image (at 7x7 the transformed weight is streamed for too few tiles: ResNet-18's
512-channel convs measured 1.8x slower with 4x4 tiles, 1.15x with 2x2). Outputs that 4 does not
divide get a last row and column of tiles that reach past them (inputs there read as zeros,
outputs there are not written).
Produces: per conv three kernels of :mod:`relaycomp.rewrite.winograd`: the input transform
(``winograd_input``, marked ``kOutEWiseFusable`` so that FuseOps never merges it with the
kernel before it, whose output it reads in overlapping windows), the tile products
(``winograd_products``, a batch of matmuls with the weight transformed at compile time) and the
output transform (``winograd_output``, injective: the conv's bias, residual add and ReLU fuse
into it).
Keeps: the function signature; outputs equal the direct conv's up to the transform's rounding
(3e-7 relative per Barabasz et al.'s points; measured 2e-6 on a 64-channel conv).
Runs: at the start of stage ``legalize`` for CPU targets, before ``legalize_blocked_convs``
lowers the other planned convs. Reports: ``lowered`` (convs lowered), ``tile``.
Measured (Zen 5, 2 threads, against the direct blocked kernel; ReLU fused): 64 channels at 56x56
2.6x faster, 128 at 28x28 3.1x (256 at 14x14 2.1x, but see ``MAX_TRANSFORMED_BYTES``); ResNet-18
fp32 from 1.02x onnxruntime's time to 0.75x. In a bf16 build ``convert_to_bf16`` takes these
convs first, as bf16 Winograd F(2x2, 3x3) (fp32 F(4x4) measured slower there than the direct
bf16 kernel).
"""

from __future__ import annotations

import math
import re

import numpy as np
import tvm
from tvm import relax, te

from relaycomp.ir import mutate_relax_functions, static_shape
from relaycomp.passes.plan_conv_layout import CONV_OP
from relaycomp.registry import register_pass
from relaycomp.rewrite import winograd

TILE = 4  # F(4x4, 3x3)
# Output pixels per image, at least: 14x14 (measured 2.1x faster than the direct conv at 256
# channels); at 7x7 the transformed weight (512 channels: 9.4 MB) is streamed for 4 tiles, and
# F(2x2, 3x3)'s 16 tiles still measured 1.15x slower.
MIN_OUTPUT_PIXELS = 14 * 14
# The transformed weight is (4 + 2)^2 / 3^2 = 4x the conv's, in the artifact and streamed per call:
# at most this much per conv. ResNet-18's 256-channel convs (9.4 MB each) stay direct: the
# artifact grows 47 -> 54 MB instead of 75 MB, for 3% of the speed (0.75x onnxruntime's time
# instead of 0.73x, by min, interleaved with six other builds).
MAX_TRANSFORMED_BYTES = 4 << 20
OUT_EWISE_FUSABLE = 4  # tvm.relay's OpPatternKind.kOutEWiseFusable
_BLOCKED = re.compile(r"NCHW\d+c")


def fits(call: relax.Call, tile: int = TILE, element_bytes: int = 4) -> bool:
    """Whether ``call`` is a conv this pass lowers (see the module docstring); ``tile`` and
    ``element_bytes`` size the transformed weight (``convert_to_bf16``: F(2x2) in bf16)."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP):
        return False
    attrs = call.attrs
    data, weight = call.args
    if (_BLOCKED.fullmatch(str(attrs.out_layout)) is None
            or str(attrs.data_layout) != str(attrs.out_layout)
            or int(attrs.groups) != 1 or not isinstance(weight, tvm.ir.expr.Constant)
            or [int(s) for s in attrs.strides] != [1, 1]
            or [int(d) for d in attrs.dilation] != [1, 1]
            or any(str(e.ty.dtype) != "float32" for e in (data, weight, call))):
        return False
    shape, out_shape = static_shape(data), static_shape(call)
    kernel = tuple(int(d) for d in weight.value.shape)
    if shape is None or out_shape is None or len(kernel) != 6 or kernel[2:4] != (3, 3):
        return False
    transformed_bytes = ((tile + 2) ** 2 * math.prod(kernel[:2]) * math.prod(kernel[4:])
                         * element_bytes)
    return (out_shape[2] * out_shape[3] >= MIN_OUTPUT_PIXELS
            and transformed_bytes <= MAX_TRANSFORMED_BYTES)


def oihw(blocked: np.ndarray) -> np.ndarray:
    """An ``OIHW[b]i[b]o`` weight ``[K/b, C/b, 3, 3, b, b]`` as ``OIHW`` ``[K, C, 3, 3]``."""
    out_blocks, in_blocks, height, width, in_block, out_block = blocked.shape
    return blocked.transpose(0, 5, 1, 4, 2, 3).reshape(
        out_blocks * out_block, in_blocks * in_block, height, width)


def call_input_transform(builder: relax.BlockBuilder, data: relax.Expr, transform,
                         name: str) -> relax.Var:
    """Emit ``transform(data)`` (a TE input transform) as a kernel of its own, marked
    ``kOutEWiseFusable``: FuseOps never merges it with the kernel before it, whose output it
    reads in overlapping windows."""
    placeholder = te.placeholder(static_shape(data), str(data.ty.dtype), name="data")
    transformed = transform(placeholder)
    func = te.create_prim_func([placeholder, transformed]).with_attr(
        "op_pattern", OUT_EWISE_FUSABLE).without_attr("global_symbol")
    gvar = builder.add_func(func, name)
    return builder.emit(relax.call_tir(gvar, [data], relax.TensorType(
        [int(d) for d in transformed.shape], str(transformed.dtype))))


@relax.expr_functor.mutator
class _WinogradConvs(relax.PyExprMutator):
    """Each conv :func:`fits` accepts -> input transform, tile products, output transform."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.lowered = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not fits(call):
            return call
        data, weight = call.args
        shape, out_shape = static_shape(data), static_shape(call)
        top, left = int(call.attrs.padding[0]), int(call.attrs.padding[1])
        out_size = out_shape[2:4]
        v = call_input_transform(
            self.builder_, data, lambda x: winograd.input_transform(x, TILE, (top, left), out_size),
            winograd.INPUT_TRANSFORM)
        u = relax.const(winograd.transform_weight(oihw(weight.value.numpy()), TILE))
        products = self.builder_.emit_te(winograd.tile_products, v, u,
                                         primfunc_name_hint=winograd.TILE_PRODUCTS)
        self.lowered += 1
        return self.builder_.call_te(winograd.output_transform, products, TILE, shape[0],
                                     out_size, shape[4],
                                     primfunc_name_hint=winograd.OUTPUT_TRANSFORM)


def lower_to_winograd(mod: tvm.IRModule, report: dict | None = None) -> tvm.IRModule:
    """``mod`` with every conv :func:`fits` accepts lowered to Winograd's three kernels."""
    mutator = _WinogradConvs(mod)
    mutated = mutate_relax_functions(mod, mutator)
    if not mutator.lowered:
        return mod
    if report is not None:
        report.update(lowered=mutator.lowered, tile=f"F({TILE}x{TILE}, 3x3)")
    return relax.transform.DeadCodeElimination()(mutated)


@register_pass("lower_convs_to_winograd", stage="legalize", kinds=("llvm",))
def lower_convs_to_winograd(target: tvm.target.Target | None = None,
                            report: dict | None = None) -> tvm.transform.Pass:
    """Lower planned fp32 3x3 stride-1 convs to Winograd F(4x4, 3x3) kernels."""

    @tvm.transform.module_pass(opt_level=0, name="lower_convs_to_winograd")
    def _lower(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return lower_to_winograd(mod, report)

    return _lower

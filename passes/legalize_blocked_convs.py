"""Lower the convs ``plan_conv_layout`` put on blocked ``NCHW[b]c`` activations to TE kernels.

Matches: ``conv2d`` whose output layout is ``NCHW[b]c``, as TVM's ``ConvertLayout`` leaves it
(TOPI has no Relax lowering for blocked layouts, so ``legalize_ops`` cannot).
Produces: one ``call_tir`` each, by the conv's kind: ``conv2d_nchwc`` (one group, ``NCHW[b]c``
in), ``depthwise_conv2d_nchwc`` (one filter per channel), ``stem_conv2d_nchwc`` (an NCHW input,
the RGB stem) - the kernels of :mod:`relaycomp.passes.plan_conv_layout`, whose output channels
are the innermost axis. A ``conv2d_nchwc`` whose trailing input channels have all-zero weights
(the channels ``pad_channels`` added to fill a block) gets a weight without them
(``pad_channels.without_unused_inputs``) and does not read them.
Keeps: the function signature; outputs equal to the planned convs'.
Runs: at the start of stage ``legalize`` for CPU targets, so that passes between the layout
stage and it (``convert_to_bf16``) still see the planned convs as ``conv2d`` ops. Reports:
``lowered`` (convs turned into kernels).
"""

from __future__ import annotations

import re

import tvm
from tvm import relax

from relaycomp.ir import mutate_relax_functions
from relaycomp.passes.plan_conv_layout import (
    CONV_KERNEL,
    CONV_OP,
    DEPTHWISE_KERNEL,
    STEM_KERNEL,
    conv2d_nchwc,
    depthwise_conv2d_nchwc,
    stem_conv2d_nchwc,
)
from relaycomp.registry import register_pass
from relaycomp.rewrite.pad_channels import without_unused_inputs

_BLOCKED = re.compile(r"NCHW\d+c")


@relax.expr_functor.mutator
class _BlockedConvsToKernels(relax.PyExprMutator):
    """``conv2d`` on ``NCHW[b]c`` -> the kernel of its kind."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.lowered = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CONV_OP
                and _BLOCKED.fullmatch(str(call.attrs.out_layout))):
            return call
        data, weight = call.args
        attrs = call.attrs
        self.lowered += 1
        if attrs.data_layout != attrs.out_layout:
            kernel, name = stem_conv2d_nchwc, STEM_KERNEL
        elif int(attrs.groups) == 1:
            kernel, name = conv2d_nchwc, CONV_KERNEL
            if isinstance(weight, tvm.ir.expr.GenericConst):
                weight = relax.const(without_unused_inputs(weight.value.numpy()))
        else:
            kernel, name = depthwise_conv2d_nchwc, DEPTHWISE_KERNEL
        return self.builder_.call_te(
            kernel, data, weight, [int(s) for s in attrs.strides],
            [int(p) for p in attrs.padding], [int(d) for d in attrs.dilation],
            primfunc_name_hint=name)


def lower_blocked_convs(mod: tvm.IRModule, report: dict | None = None) -> tvm.IRModule:
    """``mod`` with every blocked conv a kernel (see the module docstring)."""
    mutator = _BlockedConvsToKernels(mod)
    mutated = mutate_relax_functions(mod, mutator)
    if report is not None and mutator.lowered:
        report["lowered"] = mutator.lowered
    return relax.transform.DeadCodeElimination()(mutated) if mutator.lowered else mod


@register_pass("legalize_blocked_convs", stage="legalize", kinds=("llvm",))
def legalize_blocked_convs(target: tvm.target.Target | None = None, report: dict | None = None,
                           ) -> tvm.transform.Pass:
    """Turn the blocked convs ``plan_conv_layout`` planned into their TE kernels."""

    @tvm.transform.module_pass(opt_level=0, name="legalize_blocked_convs")
    def _legalize(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return lower_blocked_convs(mod, report)

    return _legalize

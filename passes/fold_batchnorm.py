"""Fold inference BatchNorm into the preceding conv2d or conv2d_transpose.

Matches: ``batch_norm(conv2d(x, W) [+ b], gamma, beta, mean, var)[0]`` with constant weights and
statistics (channel axis 1); the same after a ``conv2d_transpose`` with one group (detection and
segmentation heads' upsampling: its weight is ``IOHW``, scaled along ``O``). Produces:
``conv2d(x, W * s) + (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``: one conv and
one bias add, no normalisation at run time (a divide per element, before).
Keeps: outputs within fp32 rounding (1e-5 relative), the function signature, output names.
Runs: stage ``simplify``, before ``decompose_ops_for_inference`` (which would otherwise expand the
BatchNorm into four elementwise ops). Reports:
``fold_batchnorm`` folds, into the runner's report dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern, is_const, is_op, is_tuple_get_item, wildcard

from relaycomp.registry import register_pass
from relaycomp.rewrite.rules import Rule, rule_pass


@dataclass(frozen=True)
class _ConvBatchNorm:
    """The pattern ``batch_norm(conv(x, W) [+ b], gamma, beta, mean, var)[0]`` for one conv op,
    with the weight axis that holds its output channels (``OIHW``: 0, ``IOHW``: 1)."""

    op: str
    kernel_layout: str
    out_axis: int
    x: DFPattern = field(default_factory=wildcard)
    weight: DFPattern = field(default_factory=is_const)
    bias: DFPattern = field(default_factory=is_const)
    stats: tuple[DFPattern, ...] = field(default_factory=lambda: tuple(is_const() for _ in range(4)))

    @property
    def conv(self) -> DFPattern:
        return self._parts[0]

    @property
    def bn(self) -> DFPattern:
        return self._parts[1]

    @property
    def pattern(self) -> DFPattern:
        return is_tuple_get_item(self.bn, 0)

    @cached_property
    def _parts(self) -> tuple[DFPattern, DFPattern]:
        conv = is_op(self.op)(self.x, self.weight)
        bn = is_op("relax.nn.batch_norm")(conv | is_op("relax.add")(conv, self.bias), *self.stats)
        return conv, bn


def _array(expr) -> np.ndarray:
    return expr.value.numpy()


def _foldable(parts: _ConvBatchNorm):
    def check(matches) -> bool:
        conv, bn = matches[parts.conv], matches[parts.bn]
        return (conv.attrs.data_layout == "NCHW" and conv.attrs.kernel_layout == parts.kernel_layout
                and (parts.out_axis == 0 or int(conv.attrs.groups) == 1)
                and int(bn.attrs.axis) == 1 and str(conv.ty.dtype) == "float32")

    return check


def _fold(parts: _ConvBatchNorm):
    def rewrite(expr, matches):
        conv, bn = matches[parts.conv], matches[parts.bn]
        gamma, beta, mean, var = (_array(matches[p]) for p in parts.stats)
        scale = gamma / np.sqrt(var + float(bn.attrs.epsilon))
        weight = _array(matches[parts.weight])
        out_channels = weight.shape[parts.out_axis]
        bias = np.zeros(out_channels, weight.dtype)
        if parts.bias in matches:
            bias = _array(matches[parts.bias]).reshape(-1)
            if bias.size != out_channels:
                return expr
        shape = [1] * weight.ndim
        shape[parts.out_axis] = out_channels
        new_weight = (weight * scale.reshape(shape)).astype(weight.dtype)
        new_bias = ((bias - mean) * scale + beta).astype(weight.dtype).reshape(1, -1, 1, 1)
        new_conv = relax.Call(conv.op, [matches[parts.x], relax.const(new_weight)], conv.attrs)
        return relax.op.add(new_conv, relax.const(new_bias))

    return rewrite


_CONV = _ConvBatchNorm("relax.nn.conv2d", "OIHW", 0)
# A transposed conv's weight is [in, out / groups, kh, kw]: foldable with one group.
_CONV_TRANSPOSE = _ConvBatchNorm("relax.nn.conv2d_transpose", "IOHW", 1)
RULES = (Rule("fold_batchnorm", _CONV.pattern, _fold(_CONV), _foldable(_CONV)),
         Rule("fold_batchnorm_transpose", _CONV_TRANSPOSE.pattern, _fold(_CONV_TRANSPOSE),
              _foldable(_CONV_TRANSPOSE)))


@register_pass("fold_batchnorm", stage="simplify")
def fold_batchnorm(target: tvm.target.Target | None = None, report: dict | None = None,
                   ) -> tvm.transform.Pass:
    """Fold inference BatchNorm into the preceding conv2d or conv2d_transpose."""
    return rule_pass("fold_batchnorm", RULES, report)

"""Fold inference BatchNorm into the preceding conv2d.

Matches: ``batch_norm(conv2d(x, W) [+ b], gamma, beta, mean, var)[0]`` with constant weights and
statistics (channel axis 1). Produces: ``conv2d(x, W * s) + (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``: one conv and one bias add, no normalisation at run time.
Keeps: outputs within fp32 rounding (1e-5 relative), the function signature, output names.
Runs: stage ``simplify``, before ``decompose_ops_for_inference`` (which would otherwise expand the
BatchNorm into four elementwise ops). Reports:
``fold_batchnorm`` folds, into the runner's report dict.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, is_tuple_get_item, wildcard

from relaycomp.registry import register_pass
from relaycomp.rewrite.rules import Rule, rule_pass

_x, _weight, _bias = wildcard(), is_const(), is_const()
_conv = is_op("relax.nn.conv2d")(_x, _weight)
_conv_bias = is_op("relax.add")(_conv, _bias)
_stats = [is_const() for _ in range(4)]
_bn = is_op("relax.nn.batch_norm")(_conv | _conv_bias, *_stats)
PATTERN = is_tuple_get_item(_bn, 0)


def _array(expr) -> np.ndarray:
    return expr.value.numpy()


def _foldable(matches) -> bool:
    conv = matches[_conv]
    bn = matches[_bn]
    return (conv.attrs.data_layout == "NCHW" and conv.attrs.kernel_layout == "OIHW"
            and int(bn.attrs.axis) == 1 and str(conv.ty.dtype) == "float32")


def _fold(expr, matches):
    conv, bn = matches[_conv], matches[_bn]
    gamma, beta, mean, var = (_array(matches[p]) for p in _stats)
    scale = gamma / np.sqrt(var + float(bn.attrs.epsilon))
    weight = _array(matches[_weight])
    out_channels = weight.shape[0]
    bias = np.zeros(out_channels, weight.dtype)
    if _bias in matches:
        bias = _array(matches[_bias]).reshape(-1)
        if bias.size != out_channels:
            return expr
    new_weight = (weight * scale.reshape(-1, 1, 1, 1)).astype(weight.dtype)
    new_bias = ((bias - mean) * scale + beta).astype(weight.dtype).reshape(1, -1, 1, 1)
    new_conv = relax.Call(conv.op, [matches[_x], relax.const(new_weight)], conv.attrs)
    return relax.op.add(new_conv, relax.const(new_bias))


RULES = (Rule("fold_batchnorm", PATTERN, _fold, _foldable),)


@register_pass("fold_batchnorm", stage="simplify")
def fold_batchnorm(target: tvm.target.Target | None = None, report: dict | None = None,
                   ) -> tvm.transform.Pass:
    """Fold inference BatchNorm into the preceding conv2d."""
    return rule_pass("fold_batchnorm", RULES, report)

"""Turn a transposed conv whose stride equals its kernel into a 1x1 conv and a depth-to-space.

Matches: ``nn.conv2d_transpose(x, W)`` (NCHW/IOHW, ``W`` a constant ``[C, O, s, t]``) with
strides ``(s, t)``, no padding or output padding, dilation 1 and one group - the upsampling
layers of segmentation and detection heads (PP-OCR's DB head: 2x2, stride 2). Its output
windows do not overlap, so ``out[n, o, y*s + i, x*t + j] = sum_c x[n, c, y, x] * W[c, o, i, j]``.
Produces::

    reshape(permute_dims(reshape(conv2d(x, W'), [N, O, s, t, H, W]), [0, 1, 4, 2, 5, 3]),
            [N, O, H*s, W*t])        # W'[(o, i, j), c, 0, 0] = W[c, o, i, j]

Keeps: the same sums in the same order per output (numerics within float rounding of the
original), the signature. The stock lowering dilates the input with zeros and runs a full conv
over it: ``s*t`` times the multiply-adds, in a loop nest no CPU rule tiles well (PP-OCRv4 det's
24 -> 1 channel head took 28% of the model); a 1x1 conv is the best-scheduled kernel there is.
Runs: after ``prune`` and ``quantize``, whose analyses follow a transposed conv's channels but
not a depth-to-space (weights are constants by then): on CPUs first in stage ``layout``, so that
``plan_conv_layout`` plans the 1x1 conv with the convs before it (PP-OCRv4 det's head: no layout
change before it; 3-4% of the fp32 and bf16 model on Zen 5); elsewhere first in ``legalize``.
Reports: ``decomposed``, the transposed convs rewritten.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard

from relaycomp.registry import register_pass
from relaycomp.rewrite.rules import Rule, rule_pass

_x, _w = wildcard(), is_const()


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _decomposable(matches) -> bool:
    call = matches[_transpose]
    attrs, data_type = call.attrs, matches[_x].ty
    weight = matches[_w].value.numpy()
    if weight.ndim != 4 or (attrs.data_layout, attrs.kernel_layout) != ("NCHW", "IOHW"):
        return False
    if (attrs.out_layout or "NCHW") != "NCHW" or int(attrs.groups) != 1:
        return False
    static = all(isinstance(d, tvm.tirx.IntImm) for d in getattr(data_type, "shape", []) or [0])
    return (static and len(data_type.shape) == 4
            and _ints(attrs.strides) == list(weight.shape[2:])
            and not any(_ints(attrs.padding)) and not any(_ints(attrs.output_padding))
            and _ints(attrs.dilation) == [1, 1])


def _decompose(expr, matches):
    x, weight = matches[_x], matches[_w].value.numpy()
    channels, out_channels, s, t = weight.shape
    batch, _, height, width = (int(d) for d in x.ty.shape)
    pointwise = np.ascontiguousarray(
        weight.transpose(1, 2, 3, 0).reshape(out_channels * s * t, channels, 1, 1))
    out_dtype = expr.attrs.out_dtype or None
    conv = relax.op.nn.conv2d(x, relax.const(pointwise), out_dtype=out_dtype)
    blocks = relax.op.reshape(conv, [batch, out_channels, s, t, height, width])
    spread = relax.op.permute_dims(blocks, [0, 1, 4, 2, 5, 3])
    return relax.op.reshape(spread, [batch, out_channels, height * s, width * t])


_transpose = is_op("relax.nn.conv2d_transpose")(_x, _w)
RULES = (Rule("decomposed", _transpose, _decompose, _decomposable),)


@register_pass("decompose_conv_transpose", stage="legalize", position="start")
def decompose_conv_transpose(target: tvm.target.Target | None = None,
                             report: dict | None = None) -> tvm.transform.Pass:
    """Rewrite stride-equals-kernel transposed convs as a 1x1 conv and a depth-to-space."""
    return rule_pass("decompose_conv_transpose", RULES, report)

"""Merge sibling conv2d ops that read the same tensor (Inception branches) into one wider conv.

Matches: two or more ``conv2d(x, W_i)`` in one dataflow block with the same input ``x``, constant
weights of the same kernel size, ``groups == 1``, NCHW/OIHW layouts and identical strides,
padding, dilation and output dtype. Produces: one ``conv2d(x, concat(W_i))`` whose output is
``split`` along channels back into the original values, so one kernel reads ``x`` once instead of
once per branch. Keeps: numerics (each output channel's sum is unchanged) and the signature.
Runs: stage ``simplify``, after ``fold_batchnorm`` (so BN-folded weights are merged). Opt-in
(``--pass merge_parallel_convs``), not in the default pipeline: on CPU the ``split`` becomes a
kernel of its own and the branches' different epilogues stop fusing into the conv, so it only
pays off when the branches are too small to keep the cores busy one by one.
Reports: convs merged and groups formed, into the runner's report dict.
"""

from __future__ import annotations

import tvm

from relaycomp.registry import register_pass
from relaycomp.rewrite.parallel_merge import Sibling, constant_weight, merge_pass


def _conv_key(call):
    weight, attrs = constant_weight(call), call.attrs
    if weight is None or int(attrs.groups) != 1:
        return None
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
        return None
    kernel = tuple(int(d) for d in weight.ty.shape)[2:]
    return (call.args[0], kernel, str(weight.ty.dtype), str(attrs.strides), str(attrs.padding),
            str(attrs.dilation), str(attrs.out_dtype))


CONV2D = Sibling("relax.nn.conv2d", _conv_key, weight_axis=0, output_axis=1)


@register_pass("merge_parallel_convs", stage="simplify")
def merge_parallel_convs(target: tvm.target.Target | None = None, report: dict | None = None,
                         ) -> tvm.transform.Pass:
    """Merge sibling convs reading one tensor."""
    return merge_pass("merge_parallel_convs", CONV2D, report)

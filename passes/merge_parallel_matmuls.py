"""Merge sibling matmuls that read the same tensor (separate Q/K/V projections) into one.

Matches: two or more ``matmul(x, W_i)`` in one dataflow block with the same left operand ``x``
and constant 2-D weights ``[K, N_i]`` of one dtype. Produces: ``matmul(x, concat(W_i, axis=1))``
split along the last axis into the original values: one kernel streams ``x`` once. (TVM's own
``CombineParallelMatmul`` does not merge constant weights, which is what imported models have.)
Keeps: numerics (each output column's sum is unchanged) and the signature. Runs: stage
``simplify``, after ``fold_constant`` (which turns transposed Gemm weights into constants).
Reports: matmuls merged and groups formed, into the runner's report dict.
"""

from __future__ import annotations

import tvm

from relaycomp.registry import register_pass
from relaycomp.rewrite.parallel_merge import Sibling, constant_weight, merge_pass


def _matmul_key(call):
    weight = constant_weight(call)
    if weight is None or len(weight.ty.shape) != 2:
        return None
    return (call.args[0], int(weight.ty.shape[0]), str(weight.ty.dtype), str(call.attrs.out_dtype))


MATMUL = Sibling("relax.matmul", _matmul_key, weight_axis=1, output_axis=-1)


@register_pass("merge_parallel_matmuls", stage="simplify")
def merge_parallel_matmuls(target: tvm.target.Target | None = None, report: dict | None = None,
                           ) -> tvm.transform.Pass:
    """Merge sibling matmuls reading one tensor."""
    return merge_pass("merge_parallel_matmuls", MATMUL, report)

"""Merge sibling matmuls that read the same tensor (Q/K/V projections) into one wider matmul.

Matches: two or more ``matmul(x, W_i)`` with the same left operand ``x`` (with identical bias /
activation epilogues, if any). Produces: ``matmul(x, concat(W_i))`` followed by slices, via TVM's
``CombineParallelMatmul``. Keeps: numerics and the signature. Runs: stage ``simplify``, before
``fold_constant`` (which folds the weight concatenation away). Reports: the pipeline's op counts
(``matmul`` drops, ``strided_slice``/``split`` appear).
"""

from __future__ import annotations

import tvm
from tvm import relax

from relaycomp.registry import register_pass


@register_pass("merge_parallel_matmuls", stage="simplify")
def merge_parallel_matmuls(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """TVM's CombineParallelMatmul (see the module docstring)."""
    return relax.transform.CombineParallelMatmul()

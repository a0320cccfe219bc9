"""Give every unscheduled PrimFunc a GPU schedule with TVM's dlight rules.

Matches: PrimFuncs without a schedule after ``fuse_tir``. Produces: thread-bound kernels (matmul,
GEMV, reductions, everything else through dlight's fallback). Keeps: numerics and signatures.
Runs: stage ``schedule``, CUDA targets only (an unbound kernel fails GPU codegen).
Reports: kernels scheduled, through the pipeline's per-pass function counts.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import dlight

from relaycomp.registry import register_pass


@register_pass("schedule_gpu_default", stage="schedule", kinds=("cuda",))
def schedule_gpu_default(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """dlight's default GPU rules, most specific first."""
    return dlight.ApplyDefaultSchedule(
        dlight.gpu.Matmul(),
        dlight.gpu.GEMV(),
        dlight.gpu.Reduction(),
        dlight.gpu.GeneralReduction(),
        dlight.gpu.Fallback(),
    )

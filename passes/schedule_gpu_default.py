"""Give every unscheduled PrimFunc a GPU schedule with TVM's dlight rules.

Matches: PrimFuncs without a schedule after ``fuse_tir``. Produces: thread-bound kernels (matmul,
GEMV, reductions, everything else through dlight's fallback). Keeps: numerics and signatures.
Runs: stage ``schedule``, CUDA targets only (an unbound kernel fails GPU codegen).
Reports: kernels scheduled, through the pipeline's per-pass function counts.
The input module is left as it was (dlight writes into the module it is given: it gets a copy).
"""

from __future__ import annotations

import contextlib

import tvm
from tvm.s_tir import dlight

from relaycomp.registry import register_pass


@register_pass("schedule_gpu_default", stage="schedule", kinds=("cuda",))
def schedule_gpu_default(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """dlight's default GPU rules, most specific first, for ``target`` (else the target in
    context)."""
    rules = dlight.ApplyDefaultSchedule(
        dlight.gpu.Matmul(),
        dlight.gpu.GEMV(),
        dlight.gpu.Reduction(),
        dlight.gpu.GeneralReduction(),
        dlight.gpu.Fallback(),
    )

    @tvm.transform.module_pass(opt_level=0, name="schedule_gpu_default")
    def run(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        copy = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        with target if target is not None else contextlib.nullcontext():
            return rules(copy)

    return run

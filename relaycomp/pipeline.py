"""The compile pipeline: named stages, each a list of registered passes, run by one runner.

A pipeline is data (:data:`PIPELINES`, one per target kind) composed by concatenation. The runner
guarantees that every pass is named, timed and checked: the module must stay well-formed and
``main`` must keep its signature; a failure is a :class:`PassError` naming the pass and stage.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import tvm
from tvm import relax

from . import ir
from .errors import PassError, RelaycompError, last_line
from .registry import PASSES, register_pass

# Stock TVM passes, registered like any other pass: name -> (default stage, factory).
_STOCK_PASSES = {
    "decompose_ops_for_inference": ("simplify", relax.transform.DecomposeOpsForInference),
    "canonicalize_bindings": ("simplify", relax.transform.CanonicalizeBindings),
    "fold_constant": ("simplify", relax.transform.FoldConstant),
    "dispatch_sampling": ("dispatch", relax.backend.DispatchSampling),
    "dispatch_sort_scan": ("dispatch", relax.backend.DispatchSortScan),
    "legalize_ops": ("legalize", relax.transform.LegalizeOps),
    "annotate_op_pattern": ("legalize", relax.transform.AnnotateTIROpPattern),
    "fuse_ops": ("fuse", relax.transform.FuseOps),
    "fuse_tir": ("fuse", relax.transform.FuseTIR),
    "rewrite_dataflow_reshape": ("lower", relax.transform.RewriteDataflowReshape),
    "to_non_dataflow": ("lower", relax.transform.ToNonDataflow),
    "remove_purity_checking": ("lower", relax.transform.RemovePurityChecking),
    "call_tir_rewrite": ("lower", relax.transform.CallTIRRewrite),
    "static_plan_block_memory": ("lower", relax.transform.StaticPlanBlockMemory),
    "rewrite_cuda_graph": ("lower", relax.transform.RewriteCUDAGraph),
    "lower_alloc_tensor": ("lower", relax.transform.LowerAllocTensor),
    "kill_after_last_use": ("lower", relax.transform.KillAfterLastUse),
    "lower_runtime_builtin": ("lower", relax.transform.LowerRuntimeBuiltin),
    "compute_prim_value": ("lower", relax.transform.ComputePrimValue),
    "vm_shape_lower": ("lower", relax.transform.VMShapeLower),
    "attach_global_symbol": ("lower", relax.transform.AttachGlobalSymbol),
}
for _name, (_stage, _make) in _STOCK_PASSES.items():
    register_pass(_name, _stage, description=f"TVM relax.transform.{_make.__name__}")(
        lambda target, make=_make: make())

_LOWER = ["rewrite_dataflow_reshape", "to_non_dataflow", "remove_purity_checking",
          "call_tir_rewrite", "static_plan_block_memory", "lower_alloc_tensor",
          "kill_after_last_use", "lower_runtime_builtin", "compute_prim_value", "vm_shape_lower",
          "attach_global_symbol"]
_FRONT = [
    ("simplify", ["decompose_ops_for_inference", "canonicalize_bindings", "fold_constant"]),
    ("dispatch", ["dispatch_sampling", "dispatch_sort_scan"]),
    ("legalize", ["legalize_ops", "annotate_op_pattern", "fold_constant"]),
    ("fuse", ["fuse_ops", "fuse_tir"]),
]
# Stage name -> pass names, per target kind. Stage names are the public vocabulary.
PIPELINES: dict[str, list[tuple[str, list[str]]]] = {
    "llvm": _FRONT + [("schedule", ["schedule_cpu_loops"]), ("lower", _LOWER)],
    "cuda": _FRONT + [("schedule", ["schedule_gpu_default"]),
                      ("lower", _LOWER[:5] + ["rewrite_cuda_graph"] + _LOWER[5:])],
}
LOWERING_STAGES = ("lower",)


@dataclass(frozen=True)
class Stage:
    """A named list of pass names."""

    name: str
    passes: tuple[str, ...]


@dataclass
class PassRecord:
    """One pass run: where, how long, and the module's size before/after."""

    name: str
    stage: str
    seconds: float
    funcs_before: dict
    funcs_after: dict


@dataclass
class PipelineReport:
    """Every pass run, in order."""

    records: list[PassRecord] = field(default_factory=list)

    @property
    def passes_applied(self) -> list[str]:
        """``stage/pass`` names in run order, as recorded in the manifest."""
        return [f"{r.stage}/{r.name}" for r in self.records]

    def seconds_by_stage(self) -> dict[str, float]:
        """Total time per stage."""
        totals: dict[str, float] = {}
        for record in self.records:
            totals[record.stage] = totals.get(record.stage, 0.0) + record.seconds
        return totals


def default_stages(target_kind: str) -> list[Stage]:
    """The built-in pipeline for a target kind ("llvm" or "cuda")."""
    return [Stage(name, tuple(passes)) for name, passes in PIPELINES[target_kind]]


def stage_names(stages: Sequence[Stage]) -> list[str]:
    """Stage names in order."""
    return [stage.name for stage in stages]


def run_stages(mod: tvm.IRModule, stages: Sequence[Stage], target: tvm.target.Target,
               ) -> tuple[tvm.IRModule, PipelineReport]:
    """Run every pass of every stage under ``target``; returns the module and the report."""
    report = PipelineReport()
    signature = ir.signature_of(mod)
    with target, tvm.transform.PassContext(opt_level=3):
        for stage in stages:
            for name in stage.passes:
                mod = _run_one(mod, name, stage.name, target, signature, report)
    return mod, report


def _run_one(mod, name, stage, target, signature, report) -> tvm.IRModule:
    info = PASSES.get(name)
    before = ir.function_counts(mod)
    start = time.perf_counter()
    try:
        result = info.factory(target)(mod)
    except RelaycompError:
        raise
    except Exception as err:
        raise PassError(name, stage, last_line(err)) from err
    seconds = time.perf_counter() - start
    if not isinstance(result, tvm.IRModule):
        raise PassError(name, stage, f"returned {type(result).__name__}, not an IRModule")
    if stage not in LOWERING_STAGES:
        problem = ir.well_formedness_problem(result)
        if problem:
            raise PassError(name, stage, f"the resulting module is not well-formed: {problem}")
        if ir.signature_of(result) != signature:
            raise PassError(name, stage, "the pass changed the signature of 'main'")
    report.records.append(PassRecord(name, stage, seconds, before, ir.function_counts(result)))
    return result


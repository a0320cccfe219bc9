"""The compile pipeline: named stages, each a list of registered passes, run by one runner.

A pipeline is data (:data:`PIPELINES`, one per target kind) composed by concatenation. The runner
guarantees that every pass is named, timed and checked: the module must stay well-formed and
``main`` must keep its signature; a failure is a :class:`PassError` naming the pass and stage.
It owns the reports: a pass reports what it did into the dict the runner hands it (its
``report`` parameter), recorded in the pass's :class:`PassRecord`.

The checks are the runner's own rather than TVM's ``WellFormedInstrument``: that instrument
prints the whole module and raises a bare ``AssertionError`` (the reason is lost), and fires on
every nested pass; the runner checks each registered pass once and reports TVM's reason.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax

from relaycomp import ir
from relaycomp import passes as _builtin_passes  # noqa: F401 - importing registers them
from relaycomp.compiler.manifest import write_atomically
from relaycomp.errors import PassError, RelaycompError, last_line
from relaycomp.registry import PASSES, register_pass

# Stock TVM passes, registered like any other pass: name -> (stage, factory[, target kinds]).
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
    "rewrite_cuda_graph": ("lower", relax.transform.RewriteCUDAGraph, ("cuda",)),
    "lower_alloc_tensor": ("lower", relax.transform.LowerAllocTensor),
    "kill_after_last_use": ("lower", relax.transform.KillAfterLastUse),
    "lower_runtime_builtin": ("lower", relax.transform.LowerRuntimeBuiltin),
    "compute_prim_value": ("lower", relax.transform.ComputePrimValue),
    "vm_shape_lower": ("lower", relax.transform.VMShapeLower),
    "attach_global_symbol": ("lower", relax.transform.AttachGlobalSymbol),
}
for _name, (_stage, _make, *_kinds) in _STOCK_PASSES.items():
    register_pass(_name, _stage, *_kinds, description=f"TVM relax.transform.{_make.__name__}")(
        lambda target, make=_make: make())

_LOWER = ["rewrite_dataflow_reshape", "to_non_dataflow", "remove_purity_checking",
          "call_tir_rewrite", "static_plan_block_memory", "lower_alloc_tensor",
          "kill_after_last_use", "lower_runtime_builtin", "compute_prim_value", "vm_shape_lower",
          "attach_global_symbol"]
_LEGALIZE_OPS = ["legalize_ops", "annotate_op_pattern", "fold_constant"]
_FRONT = [
    ("simplify", ["fold_batchnorm", "remove_noop_ops", "unstack_max_min",
                  "decompose_ops_for_inference", "canonicalize_bindings", "fold_constant",
                  "merge_parallel_matmuls", "fuse_by_pattern"]),
    ("prune", []),  # where a feature's pass may go (the prune feature's prune_channels)
    ("quantize", ["lower_qdq_to_integer", "tabulate_byte_functions"]),  # the quantize feature puts quantize_int8 first
    ("dispatch", ["dispatch_sampling", "dispatch_sort_scan"]),
    ("legalize", ["decompose_conv_transpose", *_LEGALIZE_OPS]),
    ("fuse", ["fuse_ops", "fuse_tir", "mark_pair_safe_weights"]),
]
# NaN-propagating max/min name an operand twice: made after the schedule stage, where no pass
# inlines a producer into both names any more, and tuning (before it) never sees them.
_NUMERICS = ("numerics", ["propagate_nan_in_max_min"])
# Stage name -> pass names, per target kind. Stage names are the public vocabulary.
PIPELINES: dict[str, list[tuple[str, list[str]]]] = {
    # CPU: the activation layout is planned once int8 took the convs it runs (bf16 takes them
    # after, in the planned layout); the blocked convs become kernels as legalization starts.
    "llvm": (_FRONT[:3] + [("layout", ["decompose_conv_transpose", "plan_conv_layout"]),
                           _FRONT[3],
                           ("legalize", ["lower_convs_to_winograd", "legalize_blocked_convs",
                                         "legalize_layout_transforms", "pack_matvec_weights",
                                         *_LEGALIZE_OPS,
                                         "reduce_from_infinity"]), _FRONT[5],
                           ("schedule", ["schedule_cpu_loops"]),
                           ("numerics", ["vectorize_math", *_NUMERICS[1]]), ("lower", _LOWER)]),
    "cuda": _FRONT + [("schedule", ["schedule_gpu_default"]), _NUMERICS,
                      ("lower", _LOWER[:5] + ["rewrite_cuda_graph"] + _LOWER[5:])],
}
LOWERING_STAGES = ("lower",)


@dataclass(frozen=True)
class Stage:
    """A named list of pass names."""

    name: str
    passes: tuple[str, ...]


@dataclass(frozen=True)
class Placement:
    """Where an added pass runs: at the ``position`` ("start"/"end") of ``stage``."""

    name: str
    stage: str
    position: str = "end"


@dataclass
class PassRecord:
    """One pass run: where, how long, the module's size and Relax op counts before/after."""

    name: str
    stage: str
    seconds: float
    funcs_before: dict
    funcs_after: dict
    ops_before: dict = field(default_factory=dict)
    ops_after: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)  # what the pass reported (its ``report`` dict)

    @property
    def ops_changed(self) -> dict[str, int]:
        """Relax op → change in count (only ops whose count changed)."""
        names = set(self.ops_before) | set(self.ops_after)
        deltas = {n: self.ops_after.get(n, 0) - self.ops_before.get(n, 0) for n in names}
        return {n: d for n, d in sorted(deltas.items()) if d}


@dataclass
class PipelineReport:
    """Every pass run, in order."""

    records: list[PassRecord] = field(default_factory=list)
    after_stage: dict[str, dict] = field(default_factory=dict)  # stage -> ir.kernel_traffic

    def fusion(self) -> dict[str, int] | None:
        """Kernels and intermediate bytes before (after ``legalize``) and after ``fuse``."""
        before, after = self.after_stage.get("legalize"), self.after_stage.get("fuse")
        if before is None or after is None:
            return None
        return {"kernels_before": before["kernels"], "kernels_after": after["kernels"],
                "intermediate_bytes_before": before["intermediate_bytes"],
                "intermediate_bytes_after": after["intermediate_bytes"]}

    def facts(self, pass_name: str) -> dict:
        """What the last run of ``pass_name`` reported (empty if it did not run or report)."""
        runs = [r for r in self.records if r.name == pass_name]
        return dict(runs[-1].facts) if runs else {}

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


def split_before(stages: Sequence[Stage], name: str) -> tuple[list[Stage], list[Stage]]:
    """``stages`` cut before the stage called ``name`` (all of them first if there is none)."""
    names = stage_names(stages)
    cut = names.index(name) if name in names else len(names)
    return list(stages[:cut]), list(stages[cut:])


def stage_names(stages: Sequence[Stage]) -> list[str]:
    """Stage names in order."""
    return [stage.name for stage in stages]


def placement_of(name: str) -> Placement:
    """A registered pass's own placement (its ``stage`` and ``position``)."""
    info = PASSES.get(name)
    return Placement(name, info.stage, info.position)


def with_passes(stages: Sequence[Stage], placements: Sequence[Placement]) -> list[Stage]:
    """``stages`` with each placed pass inserted at the start or end of its stage, in order."""
    result = list(stages)
    names = stage_names(result)
    for placement in placements:
        PASSES.get(placement.name)  # an unknown pass fails here, listing the known ones
        if placement.stage not in names:
            raise PassError(placement.name, placement.stage, "no such stage in this pipeline",
                            hint=f"stages: {', '.join(names)}")
        index = names.index(placement.stage)
        passes = result[index].passes
        passes = ((placement.name,) + passes if placement.position == "start"
                  else passes + (placement.name,))
        result[index] = Stage(placement.stage, passes)
    return result


def run_stages(mod: tvm.IRModule, stages: Sequence[Stage], target: tvm.target.Target,
               dump_ir: Path | None = None, options: Mapping[str, Mapping] | None = None,
               report: PipelineReport | None = None) -> tuple[tvm.IRModule, PipelineReport]:
    """Run every pass of every stage under ``target``; returns the module and the report.

    ``options`` maps a pass name to keyword arguments for its factory,
    ``factory(target, **options[name])``: how a pass receives its configuration or a plan. A
    factory with a ``report`` parameter is handed a fresh dict by the runner, to fill in with
    what the pass did; it becomes the pass's :attr:`PassRecord.facts`.

    With ``dump_ir``, the module is written there as TVMScript before the first pass
    (``000_input.py``) and after each pass (``NNN_<stage>_<pass>.py``). Given a ``report`` of
    earlier stages, the run continues it (records and dump numbering carry on).
    """
    continuing = report is not None
    report = report if continuing else PipelineReport()
    signature = ir.signature_of(mod)
    if dump_ir is not None and not continuing:
        dump_ir.mkdir(parents=True, exist_ok=True)
        write_atomically(dump_ir / "000_input.py", ir.as_script(mod).encode())
    with target, tvm.transform.PassContext(opt_level=3):
        for stage in stages:
            for name in stage.passes:
                mod = _run_one(mod, name, stage.name, target, signature, report,
                               (options or {}).get(name, {}))
                if dump_ir is not None:
                    index = len(report.records)
                    path = dump_ir / f"{index:03d}_{stage.name}_{name}.py"
                    write_atomically(path, ir.as_script(mod).encode())
            if stage.name in ("legalize", "fuse"):
                report.after_stage[stage.name] = ir.kernel_traffic(mod)
    return mod, report


def _run_one(mod, name, stage, target, signature, report, options) -> tvm.IRModule:
    info = PASSES.get(name)
    if target.kind.name not in info.kinds:
        raise PassError(name, stage, f"does not apply to {target.kind.name} targets",
                        hint=f"it applies to: {', '.join(info.kinds)}")
    previous = report.records[-1] if report.records else None  # its result is this input
    before = previous.funcs_after if previous else ir.function_counts(mod)
    ops_before = previous.ops_after if previous else ir.op_counts(mod)
    kwargs, facts = dict(options), {}
    if info.reports:
        kwargs["report"] = facts
    start = time.perf_counter()
    try:
        result = info.factory(target, **kwargs)(mod)
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
    report.records.append(PassRecord(name, stage, seconds, before, ir.function_counts(result),
                                     ops_before, ir.op_counts(result), facts))
    return result


"""bf16 as a compile feature: refused for a target without bf16 dot products; planned on the
simplified module by measuring bf16 against fp32 on the calibration (or evaluation) data, like
the int8 guard; applied by ``convert_to_bf16`` at the end of the ``layout`` stage (after ``plan_conv_layout``:
the convs it planned run bf16 in its blocked layout)."""

from __future__ import annotations

from relaycomp.compiler.features import Feature, Plan, PlanContext, register_feature
from relaycomp.compiler.pipeline import Placement
from relaycomp.errors import PassError
from relaycomp.precision.config import PrecisionConfig

PASS, STAGE = "convert_to_bf16", "layout"
PLACEMENT = Placement(PASS, STAGE, "end")


def plan_precision(config: PrecisionConfig, context: PlanContext) -> Plan:
    """Check the target, then measure the bf16 module against the fp32 one when data is given."""
    from relaycomp.schedules.cpu.int8 import ARM_BFDOT, bf16_instructions

    target = context.spec.tvm_target()
    isa = bf16_instructions(target) if context.spec.kind == "llvm" else None
    if isa is None:
        raise PassError(PASS, STAGE, f"target '{context.spec.name}' has no bf16 dot product "
                        "relaycomp can use (x86 AVX-512 BF16: vdpbf16ps; AArch64 BF16, "
                        "Armv8.6: bfdot)",
                        hint="leave out --precision bf16 here, or pick a CPU with bf16 (e.g. "
                             "--mcpu sapphirerapids or znver4 on x86, --target aws-graviton3 "
                             "or --mattr +bf16 on Arm)")
    source = context.evaluation if context.evaluation is not None else context.calibration
    report = {"dtype": config.dtype,
              "target_instruction": "bfdot" if isa is ARM_BFDOT else "vdpbf16ps"}
    if source is None:
        report["accuracy"] = None
        report["note"] = "not measured: no --calib/--eval data"
    else:
        report["accuracy"] = _accuracy(context, source, config.samples)
    return Plan(options={}, report=report)


def _accuracy(context: PlanContext, source, samples: int) -> dict:
    """bf16 against fp32 on up to ``samples`` samples of ``source``: top-1 agreement, cosine,
    max error and, with labels, both accuracies."""
    import numpy as np

    from relaycomp.frontend.inputs import load_batches
    from relaycomp.runtime.agreement import HostModule, compare_outputs

    inputs = context.imported.inputs
    batches, labels = load_batches(source, inputs, what="bf16 accuracy", allow_labels=True)
    batches = batches[:samples]
    feeds = [[batch[spec.name] for spec in inputs] for batch in batches]
    # bf16 as compiled: after the layout plan (on this machine's block), its convs converted
    fp32, bf16 = HostModule(context.mod), HostModule(context.mod, [PLACEMENT])
    reference = np.concatenate([fp32.run(feed)[0] for feed in feeds])
    actual = np.concatenate([bf16.run(feed)[0] for feed in feeds])
    if labels is not None:
        labels = labels[:reference.shape[0]]
    result = compare_outputs(reference, actual, labels).to_json()
    result["samples"] = len(feeds)
    return result


PRECISION = register_feature(Feature(
    "precision", PrecisionConfig, PLACEMENT, plan_precision,
    cli="relaycomp.precision.cli", description="bf16 convolutions with fp32 sums"))

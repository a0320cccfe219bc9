"""Quantization as a compile feature: ``QuantConfig`` planned on the simplified (and pruned)
module, applied by the ``quantize_int8`` pass at the start of the ``quantize`` stage."""

from __future__ import annotations

from relaycomp.compiler.features import Feature, Plan, PlanContext, register_feature
from relaycomp.compiler.pipeline import Placement
from relaycomp.errors import PassError
from relaycomp.frontend.layer_names import onnx_layer_names
from relaycomp.quantize.quantizer import QUANTIZED_OPS, QuantConfig, plan_and_annotate


def plan_quantization(config: QuantConfig, context: PlanContext) -> Plan:
    """Calibrate, quantize weights and run the accuracy guard; the pass gets the layer plans."""
    kind = context.spec.kind
    if config.dtype == "float16" and kind != "cuda":
        raise PassError("quantize_int8", "quantize", "float16 mixed precision is for CUDA "
                        f"targets, not {kind}", hint="use int8 on CPUs")
    names = onnx_layer_names(context.imported.onnx_model, QUANTIZED_OPS)
    _, report, plans = plan_and_annotate(
        context.mod, config, calib=context.calibration, eval_data=context.evaluation,
        inputs=context.imported.inputs, onnx_names=names, target=context.spec.tvm_target())
    return Plan(options={"layer_plans": plans, "dtype": config.dtype}, report=report.to_json())


QUANTIZE = register_feature(Feature(
    "quantize", QuantConfig, Placement("quantize_int8", "quantize", "start"), plan_quantization,
    cli="relaycomp.quantize.cli", description="int8 / int4-weight / fp16 quantization"))

"""Pruning as a compile feature: ``PruneConfig`` ranked on the simplified module, applied by
the ``prune_channels`` pass in the ``prune`` stage."""

from __future__ import annotations

from relaycomp.compiler.features import Feature, Plan, PlanContext, register_feature
from relaycomp.compiler.pipeline import Placement
from relaycomp.frontend.inputs import load_batches
from relaycomp.frontend.layer_names import onnx_layer_names
from relaycomp.prune.pruner import PruneConfig, plan_pruning


def plan_channels(config: PruneConfig, context: PlanContext) -> Plan:
    """Rank channels on the module. The ``activation`` criterion (or a user's), and
    compensation, run on the first calibration batch when the compile has calibration data;
    the other criteria do not read it."""
    calib = None
    reads_data = config.compensate or config.importance == "activation" or not isinstance(
        config.importance, str)  # a user's criterion object may use the data
    if context.calibration is not None and reads_data:
        batches, _ = load_batches(context.calibration, context.imported.inputs)
        calib = batches[0]
    names = onnx_layer_names(context.imported.onnx_model)
    keep = plan_pruning(context.mod, config, calib, names)
    options = {"keep": keep, "compensate": config.compensate, "calib": calib,
               "layer_names": names, "protected": config.protected}
    return Plan(options=options, report={"config": config.to_json()})


PRUNE = register_feature(Feature(
    "prune", PruneConfig, Placement("prune_channels", "prune"), plan_channels,
    cli="relaycomp.prune.cli", description="structured channel pruning"))

"""Distillation as a feature of the command line: a ``distill`` command, no compile pass (it
retrains an ONNX student before compilation)."""

from __future__ import annotations

from relaycomp.compiler.features import Feature, register_feature
from relaycomp.distill.distiller import DistillConfig

DISTILL = register_feature(Feature(
    "distill", DistillConfig, placement=None, plan=None, cli="relaycomp.distill.cli",
    description="knowledge distillation of a student from a teacher"))

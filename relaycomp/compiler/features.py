"""How a feature plugs into the compile pipeline: a frozen config, a plan, a pass.

A feature (quantization, pruning, tuning, or a user's own) registers one :class:`Feature`: the
type of its config, where its apply pass goes, and ``plan(config, context) -> Plan``. For every
feature config in ``CompileConfig.features`` the driver inserts the pass, runs the pipeline up
to the start of that pass's stage, calls ``plan`` on the module as it is there (calibration,
channel ranking, search happen in ``plan``), hands the plan's ``options`` to the pass, and files
``plan.report`` plus what the pass reported under the feature's name in the manifest. The driver
never names a feature::

    @dataclass(frozen=True)
    class ScaleConfig:
        factor: float = 2.0

    register_feature(Feature(
        "scale", ScaleConfig, Placement("scale_outputs", "simplify"),
        plan=lambda config, context: Plan(options={"factor": config.factor})))

A feature's command-line part is named by ``cli`` (a module path; see :mod:`relaycomp.cli.main`
for the functions it provides), imported only by the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tvm

from relaycomp.compiler.pipeline import Placement, Stage
from relaycomp.errors import RelaycompError
from relaycomp.frontend.onnx_import import ImportedModel
from relaycomp.registry import Registry
from relaycomp.targets import TargetSpec


@dataclass(frozen=True)
class PlanContext:
    """What a feature's ``plan`` sees: the module just before its stage, and the compile's
    target, imported model, representative data and remaining stages."""

    mod: tvm.IRModule
    spec: TargetSpec
    imported: ImportedModel
    stages: Sequence[Stage]          # the rest of the pipeline, from the feature's stage on
    calibration: Any = None          # representative inputs (.npz, folder, example:NAME, dicts)
    evaluation: Any = None           # held-out inputs (+ labels) for accuracy checks


@dataclass(frozen=True)
class Plan:
    """What ``plan`` decided: keyword options for the feature's pass, and a JSON report."""

    options: Mapping[str, Any] = field(default_factory=dict)
    report: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Feature:
    """A pluggable compile feature (see the module docstring)."""

    name: str
    config_type: type
    placement: Placement | None
    plan: Callable[[Any, PlanContext], Plan] | None
    cli: str | None = None  # module path of its command-line part
    description: str = ""


FEATURES: Registry[Feature] = Registry("feature")


def register_feature(feature: Feature) -> Feature:
    """Register ``feature`` under its name (a name or config type already taken is refused)."""
    taken = [f.name for f in map(FEATURES.get, FEATURES) if f.config_type is feature.config_type]
    if taken:
        raise RelaycompError(f"feature '{feature.name}': {feature.config_type.__name__} already "
                             f"belongs to feature '{taken[0]}'")
    return FEATURES.add(feature.name, feature)


def feature_of(config: object) -> Feature:
    """The registered feature whose config type ``config`` is."""
    for name in FEATURES:
        feature = FEATURES.get(name)
        if isinstance(config, feature.config_type) and feature.placement is not None:
            return feature
    known = ", ".join(FEATURES.get(n).config_type.__name__ for n in FEATURES
                      if FEATURES.get(n).placement is not None) or "none"
    raise RelaycompError(f"no compile feature takes a {type(config).__name__}",
                         hint=f"feature configs: {known}")

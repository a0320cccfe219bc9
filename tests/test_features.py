"""A feature plugs in one way: a frozen config, a plan made on the module just before its
stage, a pure pass that applies the plan, and a report in the manifest under its name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import tvm
from models import conv_net, random_inputs
from tvm import relax

import relaycomp
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.compiler.features import Feature, Plan, feature_of, register_feature
from relaycomp.compiler.pipeline import Placement
from relaycomp.errors import RelaycompError
from relaycomp.registry import register_pass


@dataclass(frozen=True)
class ScaleOutputs:
    factor: float = 2.0


def _scale_pass(target=None, factor: float = 1.0, report: dict | None = None):
    """Multiply ``main``'s result by ``factor``."""

    @tvm.transform.module_pass(opt_level=0, name="scale_outputs")
    def run(mod, ctx):
        func = mod["main"]
        body = func.body
        scaled = relax.op.multiply(body.body, relax.const(factor, "float32"))
        new = relax.Function(func.params, relax.SeqExpr(body.blocks, scaled), func.ret_ty,
                             func.is_pure, func.attrs)
        mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        mod["main"] = new
        if report is not None:
            report["scaled_by"] = factor
        return relax.transform.Normalize()(mod)

    return run


@pytest.fixture
def scale_feature(scoped_passes, scoped_features):
    seen = {}

    def plan(config: ScaleOutputs, context) -> Plan:
        seen["ops"] = relaycomp.ir.op_counts(context.mod)
        seen["stages"] = [s.name for s in context.stages]
        return Plan(options={"factor": config.factor}, report={"asked": config.factor})

    register_pass("scale_outputs", stage="simplify")(_scale_pass)
    register_feature(Feature("scale", ScaleOutputs, Placement("scale_outputs", "prune"), plan))
    return seen


def test_a_feature_is_planned_before_its_stage_and_its_pass_applies_the_plan(scale_feature,
                                                                            tmp_path):
    model = conv_net()
    inputs = random_inputs(model)
    plain = compile_model(model, tmp_path / "plain.so")
    scaled = compile_model(model, tmp_path / "scaled.so",
                           CompileConfig(features=(ScaleOutputs(3.0),)))
    expected = next(iter(relaycomp.load(plain.path).run(inputs).values())) * 3.0
    actual = next(iter(relaycomp.load(scaled.path).run(inputs).values()))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert "nn.batch_norm" not in scale_feature["ops"], "planned after simplify"
    assert scale_feature["stages"][0] == "prune", "the rest of the pipeline starts at its stage"
    assert "prune/scale_outputs" in scaled.manifest.passes
    assert scaled.manifest.report["scale"] == {"asked": 3.0, "scaled_by": 3.0}
    assert "scale" not in plain.manifest.report


def test_an_unknown_config_type_is_refused_naming_the_known_ones():
    with pytest.raises(RelaycompError, match="no compile feature takes a dict") as err:
        CompileConfig(features=({"ratio": 0.3},))
    assert "QuantConfig" in err.value.hint and "PruneConfig" in err.value.hint


def test_a_config_type_belongs_to_one_feature(scoped_features):
    with pytest.raises(RelaycompError, match="already belongs to feature 'quantize'"):
        register_feature(Feature("other", relaycomp.QuantConfig,
                                 Placement("quantize_int8", "quantize"), lambda c, x: Plan()))


def test_the_built_in_features_are_found_by_config_type():
    assert feature_of(relaycomp.QuantConfig()).placement.name == "quantize_int8"
    assert feature_of(relaycomp.PruneConfig(ratio=0.1)).placement.name == "prune_channels"
    assert feature_of(relaycomp.TuneConfig()).placement.name == "apply_tuning_database"


def test_the_simple_api_takes_features_by_keyword(tmp_path):
    model = conv_net()
    artifact = relaycomp.compile(model, tmp_path / "m.so", prune=0.5)
    before, after = (artifact.manifest.report["prune"][k]["macs"] for k in ("before", "after"))
    assert after < before
    assert artifact.manifest.report["prune"]["config"]["ratio"] == 0.5

"""prune_channels: structured pruning as a Relax pass, agreeing with the ONNX pruner.

The pass runs the same dependency analysis as ``relaycomp prune`` (on a Relax view of ``main``
after ``simplify``), so for one config both front ends keep the same channels; the compiled
Relax-pruned model computes what onnxruntime computes on the ONNX-pruned one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from helpers import ort_outputs
from models import conv_net, random_inputs
from test_prune import BUILDERS, FilterNorm, constant_channel_net, digits_model, lrn_net

import relaycomp
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.compiler.pipeline import default_stages, run_stages
from relaycomp.frontend.examples import get_example
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.ir import op_counts
from relaycomp.passes.prune_channels import prune_channels
from relaycomp.prune.pruner import PruneConfig, Pruner, PruneReport, plan_pruning, prune
from relaycomp.runtime.reference import compare

FIXTURES = Path(__file__).parents[1] / "fixtures"
MODELS = {**BUILDERS, "conv": conv_net,
          **{path.stem: (lambda path=path: onnx.load(str(path)))
             for path in sorted(FIXTURES.glob("torch_*.onnx"))}}


def simplified(model: onnx.ModelProto) -> tvm.IRModule:
    """``model`` imported and run through the ``simplify`` stage: what the pass sees."""
    mod = import_onnx(model).mod
    stages = [s for s in default_stages("llvm") if s.name == "simplify"]
    return run_stages(mod, stages, tvm.target.Target("llvm"))[0]


def prune_relax(mod: tvm.IRModule, config: PruneConfig, calib=None):
    """The prune feature's two halves on ``mod``: the plan, then the pass applying it."""
    report = {}
    keep = plan_pruning(mod, config, calib)
    pruned = prune_channels(None, keep=keep, compensate=config.compensate, calib=calib,
                            protected=config.protected, report=report)(mod)
    return pruned, PruneReport(config.to_json(), report["before"], report["after"],
                               report["groups"], report["skipped"],
                               {g: np.array(kept) for g, kept in report["kept_channels"].items()})


def plans(report) -> dict[int, list[int]]:
    return {group: kept.tolist() for group, kept in report.plan.items()}


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", list(MODELS))
def test_both_front_ends_keep_the_same_channels(name, ratio):
    model = MODELS[name]()
    config = PruneConfig(ratio=ratio, round_to=1, importance="random")
    mod = simplified(model)
    pruned, report = prune_relax(mod, config)
    _, onnx_report = prune(model, config)
    relax_plan, onnx_plan = plans(report), plans(onnx_report)
    assert {group: relax_plan.get(group) for group in onnx_plan} == onnx_plan
    # The importer folds shape arithmetic (Shape -> Gather -> Reshape) that blocks the ONNX
    # analysis, so the Relax pass may prune a group more -- only one the ONNX side left alone.
    onnx_graph = Pruner(model, config).graph
    assert all(onnx_graph.groups[group].blocked for group in set(relax_plan) - set(onnx_plan))
    tvm.relax.analysis.well_formed(pruned)
    assert str(pruned["main"].ret_ty) == str(mod["main"].ret_ty)
    if onnx_report.pruned and any(g["kept"] < g["channels"] for g in onnx_report.pruned):
        assert report.after["macs"] < report.before["macs"]


@pytest.mark.parametrize("name", ["concat", "c2f", "decoder", "mlp", "flatten", "conv"])
def test_weight_norms_agree_where_no_batchnorm_is_folded_away(name):
    # After simplify a conv's weights carry its BatchNorm's scale, so L2 ranks folded filters;
    # these models keep the same order either way.
    model = MODELS[name]()
    config = PruneConfig(ratio=0.5, round_to=1, importance="l2")
    _, report = prune_relax(simplified(model), config)
    assert plans(report) == plans(prune(model, config)[1])


def test_activation_criterion_agrees_on_a_batchnorm_model():
    samples = get_example("digits").samples()
    calib = {"input": samples["calibration"]}
    config = PruneConfig(ratio=0.5, round_to=1, importance="activation")
    _, report = prune_relax(simplified(digits_model()), config, calib)
    assert plans(report) == plans(prune(digits_model(), config, calib)[1])


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "concat", "c2f", "decoder", "mlp",
                                  "flatten", "digits", "conv"])
def test_compiled_relax_pruned_model_matches_onnxruntime_on_the_onnx_pruned_one(name, tmp_path):
    model = MODELS[name]()
    config = PruneConfig(ratio=0.5, round_to=1, importance="random")
    artifact = compile_model(model, tmp_path / "pruned.so", CompileConfig(features=(config,)))
    onnx_pruned, onnx_report = prune(model, config)
    inputs = random_inputs(model)
    actual = relaycomp.load(artifact.path).run(inputs)
    expected = ort_outputs(onnx_pruned, inputs)
    assert {k: v.shape for k, v in actual.items()} == {k: v.shape for k, v in expected.items()}
    worst = {k: e["max_rel"] for k, e in compare(actual, expected).items() if e["max_rel"] > 1e-3}
    assert not worst, worst
    assert "prune/prune_channels" in artifact.manifest.passes
    report = artifact.manifest.report["prune"]
    assert [g["kept"] for g in report["groups"]] == [g["kept"] for g in onnx_report.pruned]
    assert report["after"]["macs"] < report["before"]["macs"]


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "concat", "mlp"])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_macs_fall_with_the_ratio(name, ratio):
    _, report = prune_relax(simplified(MODELS[name]()), PruneConfig(ratio=ratio, round_to=1))
    share = report.after["macs"] / report.before["macs"]
    # Interior layers lose inputs and outputs, (1 - r)^2; the first/last layers one side only.
    assert (1 - ratio) ** 2 - 0.05 <= share <= 1 - ratio + 0.05, share
    assert report.after["param_bytes"] < report.before["param_bytes"]


def test_depthwise_groups_and_weights_shrink_together():
    pruned, _ = prune_relax(simplified(MODELS["mobilenet"]()), PruneConfig(ratio=0.5, round_to=1))
    convs = []
    tvm.relax.analysis.post_order_visit(pruned["main"], lambda e: convs.append(e) if isinstance(
        e, tvm.relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d" else None)
    depthwise = [c for c in convs if int(c.attrs.groups) > 1]
    assert depthwise and all(int(c.attrs.groups) == 16 for c in depthwise)  # 32 -> 16
    assert all(int(c.args[1].ty.shape[0]) == 16 for c in depthwise)
    # The importer lowers Clip to call_tir kernels; pruned ones become maximum/minimum ops.
    assert op_counts(pruned).get("maximum", 0) >= 2


def test_ratio_zero_returns_the_module_unchanged_and_the_same_outputs(tmp_path):
    model = MODELS["resnet"]()
    mod = simplified(model)
    pruned, report = prune_relax(mod, PruneConfig(ratio=0.0))
    tvm.ir.assert_structural_equal(pruned, mod)
    assert report.after == report.before
    inputs = random_inputs(model)
    plain = relaycomp.load(compile_model(model, tmp_path / "a.so").path).run(inputs)
    zero = compile_model(model, tmp_path / "b.so",
                         CompileConfig(features=(PruneConfig(ratio=0.0),)))
    for key, value in relaycomp.load(zero.path).run(inputs).items():
        np.testing.assert_array_equal(value, plain[key])


def test_unanalyzable_groups_are_left_alone_and_reported():
    pruned, report = prune_relax(simplified(lrn_net()), PruneConfig(ratio=0.5, round_to=1))
    skipped = {g["name"]: g["reasons"] for g in report.skipped}
    assert any("which pruning does not analyze" in r for rs in skipped.values() for r in rs)
    first_conv = next(c for c in _calls(pruned, "relax.nn.conv2d"))
    assert int(first_conv.args[1].ty.shape[0]) == 8  # LRN reads it: untouched
    assert report.pruned and report.after["macs"] < report.before["macs"]


def _calls(mod, op_name):
    calls = []
    tvm.relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e) if isinstance(
        e, tvm.relax.Call) and getattr(e.op, "name", "") == op_name else None)
    return calls


def _compiled_outputs(model, path, config, inputs, calib=None):
    options = {"prune_channels": {"calib": calib}} if calib else {}
    shapes = {name: (1, *value.shape[1:]) for name, value in inputs.items()}
    artifact = compile_model(model, path, CompileConfig(input_shapes=shapes, features=(config,),
                                                        pass_options=options))
    loaded = relaycomp.load(artifact.path)
    count = len(next(iter(inputs.values())))
    runs = [loaded.run({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(count)]
    return {key: np.concatenate([run[key] for run in runs]) for key in runs[0]}


def test_compensation_makes_removing_constant_channels_exact_in_relax(tmp_path):
    model = constant_channel_net()
    inputs = random_inputs(model)
    config = PruneConfig(ratio=0.5, round_to=1, importance=FilterNorm(), compensate=True)
    _, report = prune_relax(simplified(model), config)
    assert report.plan[0].tolist() == [0, 1, 2, 3]
    actual = _compiled_outputs(model, tmp_path / "c.so", config, inputs)["y"]
    np.testing.assert_allclose(actual, ort_outputs(model, inputs)["y"], atol=1e-5)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_calibrated_compensation_lowers_the_output_error_on_digits(ratio, tmp_path):
    samples = get_example("digits").samples()
    model, feed = digits_model(), {"input": samples["input"]}
    expected = ort_outputs(model, feed)["logits"]

    def error(compensate, calib=None):
        config = PruneConfig(ratio=ratio, compensate=compensate)
        actual = _compiled_outputs(model, tmp_path / f"{compensate}.so", config, feed, calib)
        return np.abs(actual["logits"] - expected).mean()

    assert error(True, {"input": samples["calibration"]}) < 0.9 * error(False)


def test_compile_names_groups_after_the_onnx_layers_and_honours_protected_and_overrides(
        tmp_path):
    model = digits_model()
    config = PruneConfig(ratio=0.5, round_to=1, protected=("/conv2/Conv",),
                         overrides={"/conv1/Conv": 0.75})
    artifact = compile_model(model, tmp_path / "d.so", CompileConfig(features=(config,)))
    report = artifact.manifest.report["prune"]
    _, onnx_report = prune(model, config)
    assert [(g["name"], g["kept"]) for g in report["groups"]] == \
        [(g["name"], g["kept"]) for g in onnx_report.pruned] == [("/conv1/Conv", 4),
                                                                  ("/conv3/Conv", 16)]
    assert {"name": "/conv2/Conv", "producers": ["/conv2/Conv"], "channels": 32,
            "reasons": ["protected"]} in report["skipped"]
    assert report["after"]["macs"] == onnx_report.after["macs"]

"""The pass runner: every pass named, timed and checked."""

import pytest
import tvm
from models import conv_net
from tvm import relax

from relaycomp.compiler.pipeline import Stage, default_stages, run_stages
from relaycomp.errors import PassError
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.registry import register_pass

TARGET = tvm.target.Target({"kind": "llvm"})


def test_default_pipeline_runs_every_pass_in_stage_order():
    stages = default_stages("llvm")
    _mod, report = run_stages(import_onnx(conv_net()).mod, stages, TARGET)
    expected = [f"{s.name}/{p}" for s in stages for p in s.passes]
    assert report.passes_applied == expected
    assert all(r.seconds >= 0 for r in report.records)


def test_fusion_reduces_the_number_of_kernels():
    stages = [s for s in default_stages("llvm") if s.name in ("simplify", "legalize", "fuse")]
    _, report = run_stages(import_onnx(conv_net()).mod, stages, TARGET)
    by_name = {r.name: r for r in report.records}
    assert by_name["fuse_tir"].funcs_after["tir"] < by_name["fuse_ops"].funcs_before["tir"]


def test_a_pass_that_raises_is_named(scoped_passes):
    @register_pass("explode", stage="simplify")
    def explode(target):
        @tvm.transform.module_pass(opt_level=0)
        def run(mod, ctx):
            raise RuntimeError("kaboom")
        return run

    with pytest.raises(PassError, match="pass 'explode' \\(stage 'simplify'\\) failed: kaboom"):
        run_stages(import_onnx(conv_net()).mod, [Stage("simplify", ("explode",))], TARGET)


def test_options_reach_the_pass_factory_and_its_report_reaches_the_record(scoped_passes):
    @register_pass("count_functions", stage="simplify")
    def count_functions(target, label, report=None):
        @tvm.transform.module_pass(opt_level=0)
        def run(mod, ctx):
            report[label] = len(mod.functions)
            return mod
        return run

    options = {"count_functions": {"label": "functions"}}
    _, pipeline = run_stages(import_onnx(conv_net()).mod,
                             [Stage("simplify", ("count_functions", "count_functions"))], TARGET,
                             options=options)
    assert [r.facts for r in pipeline.records] == [{"functions": 1}, {"functions": 1}]
    assert pipeline.records[0].facts is not pipeline.records[1].facts  # a fresh dict per run
    assert pipeline.facts("count_functions") == {"functions": 1}


def _replace_main(make_main):
    @tvm.transform.module_pass(opt_level=0)
    def run(mod, ctx):
        return tvm.IRModule({"main": make_main()})
    return run


def test_a_pass_that_returns_an_ill_formed_module_is_caught(scoped_passes):
    def untyped_main():
        x = relax.Var("x", relax.TensorType((1,), "float32"))
        return relax.Function([x], x)  # no return type: not well-formed

    register_pass("break_main", stage="simplify")(lambda target: _replace_main(untyped_main))
    with pytest.raises(PassError, match="'break_main'.*not well-formed"):
        run_stages(import_onnx(conv_net()).mod, [Stage("simplify", ("break_main",))], TARGET)


def test_a_pass_that_changes_the_signature_is_caught(scoped_passes):
    def other_main():
        builder = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((1,), "float32"))
        with builder.function("main", [x]):
            builder.emit_func_output(x)
        return builder.get()["main"]

    register_pass("swap_main", stage="simplify")(lambda target: _replace_main(other_main))
    with pytest.raises(PassError, match="'swap_main'.*signature"):
        run_stages(import_onnx(conv_net()).mod, [Stage("simplify", ("swap_main",))], TARGET)


def test_unknown_pass_name_lists_registered_ones():
    with pytest.raises(Exception, match="unknown pass 'nope'") as info:
        run_stages(import_onnx(conv_net()).mod, [Stage("simplify", ("nope",))], TARGET)
    assert "fold_constant" in info.value.hint

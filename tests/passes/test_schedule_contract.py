"""schedule_cpu_loops, end to end: every kernel of real nets scheduled, numerics unchanged."""

import numpy as np
import pytest
import tvm
from models import conv_net, dynamic_dims_net, mlp, mobilenet_style_net, random_inputs

from relaycomp.compiler.pipeline import default_stages, run_stages
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.passes.schedule_cpu_loops import schedule_report

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})
BUILDERS = {"conv_net": conv_net, "mobilenet_style_net": mobilenet_style_net, "mlp": mlp}


def _through_schedule(model):
    stages = [s for s in default_stages("llvm") if s.name != "lower"]
    mod, _ = run_stages(import_onnx(model).mod, stages, TARGET)
    return mod


@pytest.mark.parametrize("name", BUILDERS)
def test_every_kernel_gets_a_schedule(name):
    report = schedule_report(_through_schedule(BUILDERS[name]()))
    assert report["unscheduled"] == 0, report["unscheduled_funcs"]
    assert report["scheduled"] > 0


def test_conv_kernels_are_parallel_and_vectorized():
    mod = _through_schedule(conv_net())
    conv_funcs = [f for g, f in mod.functions_items()
                  if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in g.name_hint]
    assert conv_funcs
    for func in conv_funcs:
        text = func.script()  # the printed TIR names each loop's kind
        assert "T.parallel(" in text
        assert "T.vectorized(" in text


@pytest.mark.parametrize("name", BUILDERS)
def test_scheduled_build_matches_the_unscheduled_one(name):
    model = BUILDERS[name]()
    inputs = random_inputs(model)
    imported = import_onnx(model)
    args = [tvm.runtime.tensor(inputs[s.name]) for s in imported.inputs]
    results = []
    for stages in (default_stages("llvm"),
                   [s for s in default_stages("llvm") if s.name != "schedule"]):
        mod, _ = run_stages(imported.mod, stages, TARGET)
        vm = tvm.relax.VirtualMachine(tvm.compile(mod, TARGET, relax_pipeline=None), tvm.cpu())
        out = vm["main"](*args)
        results.append(out.numpy() if hasattr(out, "numpy") else out[0].numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_pinned_dynamic_dims_are_scheduled():
    imported = import_onnx(dynamic_dims_net(), {"x": (1, 3, 20, 28)})
    stages = [s for s in default_stages("llvm") if s.name != "lower"]
    mod, _ = run_stages(imported.mod, stages, TARGET)
    assert schedule_report(mod)["scheduled"] > 0

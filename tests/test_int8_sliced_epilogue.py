"""An int8 conv whose output is sliced along the channels (a Slice after a quantized conv):
the slice fused into the conv's kernel must not have the kernel store its whole register tile
into the smaller output - it once wrote past the end of it (heap corruption, a crash later)."""

import numpy as np
import tvm
from models import _float_input, _float_output, _Graph
from qdq import ort_qdq, ort_run, output_scale

import relaycomp
from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.schedules.cpu.common import single_reduction
from relaycomp.targets import resolve


def _conv_then_slice():
    g = _Graph(seed=2)
    a = g.op("Relu", [g.conv("x", 16, 32, kernel=3)])
    sliced = g.op("Slice", [a, g.ints(0), g.ints(24), g.ints(1)])
    y = g.op("Relu", [g.conv(sliced, 24, 32, kernel=3)])
    return g.model("sliced", [_float_input("x", [1, 16, 28, 28])], {"y": y},
                   {"y": _float_output([1, 32, 28, 28])})


def test_a_kernel_whose_epilogue_writes_fewer_elements_is_no_single_reduction_nest():
    model = ort_qdq(_conv_then_slice())
    stages, _ = split_before(default_stages("llvm"), "schedule")
    fused, _ = run_stages(import_onnx(model).mod, stages,
                          resolve("x86-64-avx512", num_cores=2).tvm_target())
    sliced = [f for gv, f in fused.functions_items()
              if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint
              and "strided_slice" in gv.name_hint]
    assert sliced, "the slice is no longer fused into the conv: this test checks nothing"
    for func in sliced:
        assert single_reduction(tvm.s_tir.Schedule(func)) is None


def test_the_sliced_int8_model_runs_and_matches_onnxruntime(tmp_path):
    model = ort_qdq(_conv_then_slice())
    x = np.random.default_rng(0).standard_normal((1, 16, 28, 28)).astype(np.float32)
    loaded = relaycomp.load(relaycomp.compile(model, tmp_path / "m.so").path)
    expected = ort_run(model, {"x": x})
    for _ in range(10):  # a write past the end shows up, if at all, in a later allocation
        actual = loaded.run({"x": x})["y"]
    assert np.abs(actual - expected).max() <= 2 * output_scale(model)

"""vectorize_math: float32 exp/sigmoid/tanh/erf become arithmetic that vectorizes (no ``expf`` call
per lane), within a few ulp of the exact function, with exp's infinities and NaN."""

import math
import re

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper

import relaycomp
from relaycomp.compiler.pipeline import default_stages, run_stages
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.targets import resolve

SPECIAL = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-30, -1e-30, 1e-4, -87.5, -100.0,
                    -104.5, 88.5, 88.9, 1e30], np.float32)
REFERENCES = {
    "Exp": lambda x: np.exp(x.astype(np.float64)),
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x.astype(np.float64))),
    "Tanh": lambda x: np.tanh(x.astype(np.float64)),
    "Erf": lambda x: np.vectorize(math.erf)(x.astype(np.float64)),
}


def _unary(op: str, size: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op", sorted(REFERENCES))
def test_results_are_within_a_few_ulp_and_keep_infinities_and_nan(op, tmp_path):
    sweep = np.linspace(-110, 88.7, 100_001, dtype=np.float32)
    x = np.concatenate([sweep, SPECIAL])
    model = _unary(op, x.size)
    y = relaycomp.load(relaycomp.compile(model, tmp_path / "m.so").path).run({"x": x})["y"]
    with np.errstate(over="ignore"):
        exact = REFERENCES[op](x)
        expected = exact.astype(np.float32)
    normal = np.isfinite(expected) & (np.abs(expected) >= np.finfo(np.float32).tiny)
    relative = np.abs(y[normal] - exact[normal]) / np.abs(exact[normal])
    assert relative.max() <= 4e-7
    tiny = np.isfinite(expected) & ~normal  # denormal or zero results: absolutely tiny
    assert np.abs(y[tiny] - expected[tiny]).max() <= 2 * np.finfo(np.float32).tiny
    specials = slice(-SPECIAL.size, None)
    np.testing.assert_array_equal(np.isnan(y[specials]), np.isnan(expected[specials]))
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(y[infinite], expected[infinite])
    np.testing.assert_array_equal(np.signbit(y[specials]), np.signbit(expected[specials]))


@pytest.mark.parametrize("preset", ["x86-64-avx512", "x86-64-avx2", "aws-graviton3"])
def test_the_kernel_calls_no_scalar_exp(preset):
    target = resolve(preset, num_cores=2).tvm_target()
    mod = import_onnx(_unary("Sigmoid", 4096)).mod
    lowered, report = run_stages(mod, default_stages("llvm"), target)
    assert report.facts("vectorize_math")["calls"] == 1
    asm = tvm.compile(lowered, target, relax_pipeline=None).mod.imports[0].inspect_source("asm")
    assert "expf" not in asm
    packed_fma = {"x86-64-avx512": r"vfn?madd\w+ps\s+%[yz]mm", "x86-64-avx2": r"vfn?madd\w+ps\s+%ymm",
                  "aws-graviton3": r"fml[as]\s+v\d+\.4s"}[preset]
    assert re.search(packed_fma, asm)  # the polynomial, on whole vectors


def _nodes(func) -> int:
    import tvm_ffi

    count = [0]
    tvm_ffi.structural_walk(func.body, lambda _node: count.__setitem__(0, count[0] + 1))
    return count[0]


def _level(previous, op):
    return lambda i: op(previous[i] * 1.5 + 0.25)


def test_nested_calls_grow_the_code_linearly_not_exponentially(tmp_path):
    """An LSTM cell's tanh of sigmoids, nested: each expansion binds a large argument once (a
    ``Let``), so four levels cost about four expansions, not their product (which took 50 s to
    compile a small CRNN); the results still match onnxruntime."""
    from relaycomp.passes.vectorize_math import rewrite_primfunc

    def nested(depth: int) -> tvm.tirx.PrimFunc:
        x = tvm.te.placeholder((64,), "float32", name="x")
        y = tvm.te.compute((64,), lambda i: x[i], name="y")
        for level in range(depth):
            y = tvm.te.compute((64,), _level(y, tvm.tirx.tanh if level % 2 else tvm.tirx.sigmoid),
                               name=f"y{level}")
        return tvm.te.create_prim_func([x, y])

    def inlined(func):  # one expression: what FuseTIR and the injective rule leave
        sch = tvm.s_tir.Schedule(func)
        for block in list(sch.get_child_blocks(sch.get_sblock("root")))[:-1]:
            sch.compute_inline(block)
        return sch.mod["main"]

    one, four = (_nodes(rewrite_primfunc(inlined(nested(d)))[0]) for d in (1, 4))
    assert four < 10 * one  # repeated arguments: over 100x
    nodes = [helper.make_node("Sigmoid" if i % 2 == 0 else "Tanh", [f"t{i}"], [f"t{i + 1}"])
             for i in range(4)]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [256])],
        [helper.make_tensor_value_info("t4", TensorProto.FLOAT, [256])]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(0).standard_normal(256).astype(np.float32) * 4
    y = relaycomp.load(relaycomp.compile(model, tmp_path / "m.so").path).run({"t0": x})["t4"]
    expected = x.astype(np.float64)
    for i in range(4):
        expected = 1 / (1 + np.exp(-expected)) if i % 2 == 0 else np.tanh(expected)
    np.testing.assert_allclose(y, expected, rtol=2e-6)

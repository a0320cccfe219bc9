"""quantize_int8: layer discovery, the QDQ form it writes, and its evaluation copies."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from relaycomp.compiler.pipeline import Placement, Stage, default_stages, run_stages, with_passes
from relaycomp.passes.quantize_int8 import (
    LayerPlan,
    annotate,
    find_layers,
    instrumented,
    switchable,
)
from relaycomp.quantize.quantizer import QuantConfig, plan_and_annotate, weight_params

RNG = np.random.default_rng(0)
W_CONV = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3
W_DEPTHWISE = RNG.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.3
W_DENSE = RNG.standard_normal((8, 5)).astype(np.float32) * 0.3


def tiny_net() -> tvm.IRModule:
    """conv2d → relu → depthwise conv2d → mean → reshape → matmul: one layer of each kind."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(W_CONV), padding=1))
            y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit(relax.op.nn.conv2d(y, relax.const(W_DEPTHWISE), padding=1, groups=8))
            y = bb.emit(relax.op.reshape(relax.op.mean(y, axis=[2, 3]), (2, 8)))
            out = bb.emit_output(bb.emit(relax.op.matmul(y, relax.const(W_DENSE))))
        bb.emit_func_output(out)
    return bb.get()


def run(mod: tvm.IRModule, *arrays) -> list[np.ndarray]:
    executable = tvm.compile(mod, "llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
    items = result if isinstance(result, (list, tuple)) or hasattr(result, "__len__") else [result]
    return [r.numpy() for r in items]


def weight_dtypes(mod: tvm.IRModule) -> list[str]:
    """dtypes of the tensor constants of rank > 1 (weights) in ``main``."""
    dtypes = []

    def visit(expr):
        value = getattr(expr, "value", None) if isinstance(expr, tvm.ir.expr.Constant) else None
        if hasattr(value, "numpy") and value.numpy().ndim > 1:
            dtypes.append(str(value.numpy().dtype))

    relax.analysis.post_order_visit(mod["main"], visit)
    return dtypes


def plans_for(layers, scale=0.02, zero_point=-10) -> dict[int, LayerPlan]:
    plans = {}
    for layer in layers:
        weight_q, weight_scale = weight_params(layer.weight, layer.channel_axis, True)
        plans[layer.index] = LayerPlan("int8", weight_q, weight_scale, scale, zero_point)
    return plans


def test_finds_conv_depthwise_and_matmul_with_their_channel_axes():
    layers = find_layers(tiny_net())
    assert [(la.name, la.channel_axis) for la in layers] == [
        ("conv2d_0", 0), ("depthwise_conv2d_1", 0), ("matmul_2", 1)]
    np.testing.assert_array_equal(layers[2].weight, W_DENSE)


def test_grouped_conv_and_matmul_of_two_activations_are_not_layers():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    a = relax.Var("a", relax.TensorType((3, 3), "float32"))
    with bb.function("main", [x, a]):
        with bb.dataflow():
            weight = relax.const(np.ones((4, 2, 3, 3), np.float32))
            y = bb.emit(relax.op.nn.conv2d(x, weight, groups=2))  # grouped, not depthwise
            z = bb.emit(relax.op.matmul(a, a))
            out = bb.emit_output(relax.Tuple([y, z]))
        bb.emit_func_output(out)
    assert find_layers(bb.get()) == []


def test_writes_the_qdq_contract_form():
    before = tiny_net()
    layers = find_layers(before)
    plan = plans_for(layers)[0]
    after = annotate(before, layers, {0: plan})

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4, 6, 6), "float32"))
    scale, zero = relax.const(np.float32(0.02)), relax.const(np.int8(-10))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = bb.emit(relax.op.dequantize(relax.const(plan.weight_q),
                                            relax.const(plan.weight_scale),
                                            relax.const(np.int8(0)), axis=0))
            q = bb.emit(relax.op.quantize(x, scale, zero, axis=-1, out_dtype="int8"))
            dq = bb.emit(relax.op.dequantize(q, scale, zero, axis=-1))
            y = bb.emit(relax.op.nn.conv2d(dq, w, padding=1))
            y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit(relax.op.nn.conv2d(y, relax.const(W_DEPTHWISE), padding=1, groups=8))
            y = bb.emit(relax.op.reshape(relax.op.mean(y, axis=[2, 3]), (2, 8)))
            out = bb.emit_output(bb.emit(relax.op.matmul(y, relax.const(W_DENSE))))
        bb.emit_func_output(out)
    tvm.ir.assert_structural_equal(after, bb.get())


def test_weight_quantization_is_symmetric_per_channel_within_half_a_step():
    weight_q, scale = weight_params(W_CONV, 0, per_channel=True)
    assert weight_q.dtype == np.int8 and scale.shape == (8,)
    assert np.abs(weight_q).max() == 127
    error = np.abs(weight_q * scale[:, None, None, None] - W_CONV)
    assert np.all(error <= scale[:, None, None, None] / 2 + 1e-7)
    _, per_tensor = weight_params(W_DENSE, 1, per_channel=False)
    assert per_tensor.shape == () and per_tensor == pytest.approx(np.abs(W_DENSE).max() / 127)


def test_fake_quant_module_runs_and_matches_numpy_qdq():
    mod = tiny_net()
    layers = find_layers(mod)
    x = RNG.random((2, 4, 6, 6), dtype=np.float32)
    plan = plans_for(layers, scale=0.05, zero_point=0)[2]
    quantized = annotate(mod, layers, {2: plan})
    float_out, = run(instrumented(mod), x)[:1]
    taps = run(instrumented(mod), x)[1:]
    np.testing.assert_allclose(taps[0], x)
    y = taps[2]  # the matmul's float input
    y_qdq = np.clip(np.round(y / 0.05), -128, 127) * 0.05
    w_qdq = plan.weight_q * plan.weight_scale[None, :]
    np.testing.assert_allclose(run(quantized, x)[0], y_qdq @ w_qdq, rtol=1e-5, atol=1e-5)
    assert not np.allclose(run(quantized, x)[0], float_out, rtol=1e-6, atol=1e-6)


def test_switchable_copy_is_float_with_mask_off_and_quantized_with_mask_on():
    mod = tiny_net()
    layers = find_layers(mod)
    plans = plans_for(layers)
    x = RNG.random((2, 4, 6, 6), dtype=np.float32)
    evaluation = switchable(mod, layers, plans)
    off = run(evaluation, x, np.zeros(3, bool))[0]
    on = run(evaluation, x, np.ones(3, bool))[0]
    np.testing.assert_allclose(off, run(mod, x)[0], rtol=1e-6)
    np.testing.assert_allclose(on, run(annotate(mod, layers, plans), x)[0], rtol=1e-6)


def test_weight_only_layers_keep_int8_weights_through_constant_folding():
    mod = tiny_net()
    layers = find_layers(mod)
    plans = {i: LayerPlan("weight_only", *weight_params(la.weight, la.channel_axis, True))
             for i, la in enumerate(layers)}
    annotated = annotate(mod, layers, plans)
    target = tvm.target.Target("llvm")
    stages = [s for s in default_stages("llvm") if s.name in ("legalize", "fuse")]
    lowered, _ = run_stages(annotated, stages, target)
    assert weight_dtypes(lowered) == ["int8"] * 3  # the three weights, never folded back to float32
    x = RNG.random((2, 4, 6, 6), dtype=np.float32)
    np.testing.assert_allclose(run(annotated, x)[0], run(mod, x)[0], rtol=0.05, atol=0.02)


def test_runs_at_the_start_of_the_quantize_stage_and_applies_the_plans_it_is_given():
    mod = tiny_net()
    stages = with_passes(default_stages("llvm"), [Placement("quantize_int8", "quantize", "start")])
    quantize_stage = next(s for s in stages if s.name == "quantize")
    assert quantize_stage.passes[0] == "quantize_int8"
    calib = {"x": RNG.random((8, 2, 4, 6, 6), dtype=np.float32)}
    simplify = [s for s in stages if s.name == "simplify"]
    simplified, _ = run_stages(mod, simplify, tvm.target.Target("llvm"))
    expected, report, plans = plan_and_annotate(simplified, QuantConfig(), calib=calib)
    assert [la["mode"] for la in report.layers] == ["int8", "int8", "int8"]
    assert report.samples["calibration"] == 16

    only_quantize = [Stage("quantize", ("quantize_int8",))]
    after, pipeline = run_stages(simplified, only_quantize, tvm.target.Target("llvm"),
                                 options={"quantize_int8": {"layer_plans": plans}})
    assert pipeline.records[-1].ops_changed == {"dequantize": 6, "quantize": 3}
    assert pipeline.facts("quantize_int8") == {"layers_int8": 3, "layers_weight_only": 0}
    tvm.ir.assert_structural_equal(after, expected)  # the pass applies the plan, nothing else


def test_layers_reading_one_tensor_with_equal_parameters_share_one_quantize():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(x, relax.const(W_CONV), padding=1))
            b = bb.emit(relax.op.nn.conv2d(x, relax.const(W_CONV * 2), padding=1))
            out = bb.emit_output(bb.emit(relax.op.add(a, b)))
        bb.emit_func_output(out)
    mod = bb.get()
    layers = find_layers(mod)
    counts = relaycomp_op_counts(annotate(mod, layers, plans_for(layers)))
    assert (counts["quantize"], counts["dequantize"]) == (1, 3)  # one input pair, two weights
    other = {**plans_for(layers), 1: plans_for(layers, scale=0.5)[1]}
    assert relaycomp_op_counts(annotate(mod, layers, other))["quantize"] == 2


def relaycomp_op_counts(mod):
    from relaycomp.ir import op_counts

    return op_counts(mod)

"""lower_qdq_to_integer: QDQ conv/matmul become int8 x int8 -> int32 kernels, exactly.

The reference is onnxruntime running the same onnxruntime-quantized QDQ model op by op (float
compute between exact quantize/dequantize): the integer kernels compute the same products and
sums exactly, so the outputs agree to float rounding. onnxruntime's own fused QLinear kernels
round differently; against them: the same top-1 class and a cosine near 1.
"""

import numpy as np
import pytest
import tvm
import tvm_ffi
from models import conv_net, mlp, mobilenet_style_net, random_inputs, resnet_block_net
from qdq import ort_qdq, ort_run
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

import relaycomp
from relaycomp.compiler.pipeline import Stage, default_stages, run_stages
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.ir import op_counts
from relaycomp.passes import lower_qdq_to_integer as pass_module

MODELS = {"conv_net": conv_net, "resnet_block_net": resnet_block_net,
          "mobilenet_style_net": mobilenet_style_net, "mlp": mlp}


@pytest.fixture(scope="module")
def quantized():
    return {name: ort_qdq(build()) for name, build in MODELS.items()}


def _front(mod, lower=True):
    """simplify + quantize stages, as the compiler runs them."""
    stages = [s for s in default_stages("llvm") if s.name in ("simplify", "quantize")]
    if not lower:
        stages = [Stage(s.name, tuple(p for p in s.passes if p != "lower_qdq_to_integer"))
                  for s in stages]
    return run_stages(mod, stages, tvm.target.Target("llvm"))[0]


def _conv_dtypes(mod) -> list[tuple[str, str, str]]:
    found = []

    @relax.expr_functor.visitor
    class _Visitor(relax.PyExprVisitor):
        def visit_call_(self, call):
            if getattr(call.op, "name", "") in ("relax.nn.conv2d", "relax.matmul"):
                found.append((str(call.args[0].ty.dtype), str(call.args[1].ty.dtype),
                              str(call.ty.dtype)))
            super().visit_call_(call)

    _Visitor().visit_expr(mod["main"])
    return found


def _arrays(mod) -> list[np.ndarray]:
    found: list = []
    tvm_ffi.structural_walk(mod["main"], (tvm.ir.Constant, found.append))
    return [c.value.numpy() for c in found if hasattr(c.value, "numpy")]


def _constant_bytes(mod) -> int:
    return sum(a.nbytes for a in _arrays(mod))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_contraction_runs_on_integers(quantized, name):
    mod = _front(import_onnx(quantized[name]).mod)
    contractions = _conv_dtypes(mod)
    integer = contractions.count(("uint8", "int8", "int32"))
    # A depthwise conv reads the same integers and sums them in float32 (exactly): see the pass.
    depthwise = contractions.count(("uint8", "float32", "float32"))
    assert integer and integer + depthwise == len(contractions)
    assert depthwise == (2 if name == "mobilenet_style_net" else 0)
    weights = [a for a in _arrays(mod) if sum(d > 1 for d in a.shape) >= 2]
    assert weights
    for weight in weights:
        assert weight.dtype == np.int8 or weight.shape[1] == 1 and np.all(
            weight == np.round(weight)) and np.abs(weight).max() <= 128


@pytest.mark.parametrize("name", list(MODELS))
def test_integer_build_equals_onnxruntime_qdq_graph(quantized, name, tmp_path):
    model = quantized[name]
    inputs = random_inputs(model)
    artifact = relaycomp.compile(model, tmp_path / "q.so",
                                 inputs={k: v.shape for k, v in inputs.items()})
    actual = next(iter(relaycomp.load(artifact.path).run(inputs).values()))
    expected = ort_run(model, inputs, optimized=False)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, atol=1e-4 * scale, rtol=0)
    fused = ort_run(model, inputs, optimized=True)  # onnxruntime's QLinear kernels
    assert np.argmax(actual, -1).tolist() == np.argmax(fused, -1).tolist()
    cosine = np.dot(actual.ravel(), fused.ravel()) / (
        np.linalg.norm(actual) * np.linalg.norm(fused))
    assert cosine > 0.98


def test_imported_weights_stay_int8(quantized):
    model = quantized["resnet_block_net"]
    lowered = _front(import_onnx(model).mod)
    floating = _front(import_onnx(model).mod, lower=False)  # fold_constant made them float
    assert _constant_bytes(lowered) <= 0.3 * _constant_bytes(floating)


def test_float_model_is_unchanged():
    mod = _front(import_onnx(conv_net()).mod, lower=False)
    tvm.ir.assert_structural_equal(pass_module.lower_qdq_to_integer()(mod), mod)


def test_padded_conv_pads_with_the_zero_point():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "uint8")) -> R.Tensor((1, 2, 4, 4), "float32"):
            with R.dataflow():
                a = R.dequantize(x, R.const(0.5, "float32"), R.const(3, "uint8"), axis=1)
                w = R.dequantize(R.const(np.ones((2, 2, 3, 3), "int8")),
                                 R.const(np.array([0.25, 0.125], "float32")),
                                 R.const(np.zeros(2, "int8")), axis=0)
                y = R.nn.conv2d(a, w, padding=[1, 1, 1, 1])
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "uint8")) -> R.Tensor((1, 2, 4, 4), "float32"):
            with R.dataflow():
                p = R.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 1], pad_value=3.0)
                c = R.nn.conv2d(p, R.const(np.ones((2, 2, 3, 3), "int8")), out_dtype="int32")
                s = R.subtract(c, R.const(np.array([54, 54], "int32").reshape(1, 2, 1, 1)))
                y = R.multiply(R.astype(s, "float32"),
                               R.const(np.array([0.125, 0.0625], "float32").reshape(1, 2, 1, 1)))
                R.output(y)
            return y

    report = {}
    after = pass_module.lower_qdq_to_integer(report=report)(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert report == {"conv2d_int8": 1}
    x = np.random.default_rng(0).integers(0, 255, (1, 2, 4, 4)).astype("uint8")
    outputs = [relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy() for m in (Before, after)]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-6)


def test_requantize_with_the_same_parameters_cancels():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "uint8")) -> R.Tensor((16,), "uint8"):
            with R.dataflow():
                a = R.dequantize(x, R.const(0.5, "float32"), R.const(3, "uint8"))
                r = R.reshape(a, (16,))
                q = R.quantize(R.dequantize(R.quantize(r, R.const(0.5, "float32"),
                                                       R.const(3, "uint8"), out_dtype="uint8"),
                                            R.const(0.5, "float32"), R.const(3, "uint8")),
                               R.const(0.5, "float32"), R.const(3, "uint8"), out_dtype="uint8")
                R.output(q)
            return q

    report = {}
    after = pass_module.lower_qdq_to_integer(report=report)(Before)
    assert op_counts(after).get("quantize") == 1 and op_counts(after).get("dequantize") == 1
    assert report == {"requantize_cancelled": 1}


def test_int8_activations_for_aarch64_sdot_compute_the_same(quantized):
    """For an AArch64 dotprod target the dense convs read int8 (uint8 - 128, zero point along):
    the same integers, so the same outputs - checked by running that module on this CPU."""
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                             "mcpu": "neoverse-n1"})
    model = quantized["resnet_block_net"]
    inputs = random_inputs(model)
    simplified = _front(import_onnx(model).mod, lower=False)
    lowered = pass_module.lower_qdq_to_integer(arm)(simplified)
    # The 6 convs read int8; the one matmul keeps its uint8 input (not an sdot kernel).
    assert _conv_dtypes(lowered).count(("int8", "int8", "int32")) == 6
    host = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    rest = [s for s in default_stages("llvm") if s.name not in ("simplify", "prune", "quantize")]
    built, _ = run_stages(lowered, rest, host)
    vm = relax.VirtualMachine(tvm.compile(built, host, relax_pipeline=None), tvm.cpu())
    actual = vm["main"](*[tvm.runtime.tensor(v) for v in inputs.values()]).numpy()
    expected = ort_run(model, inputs, optimized=False)
    np.testing.assert_allclose(actual, expected, atol=1e-4 * float(np.abs(expected).max()),
                               rtol=0)


def test_folded_weights_are_recovered_on_any_int8_grid():
    """fold_constant turns dequantize(W_q, s) into floats: each channel's grid is found again,
    whatever its largest integer (an enlarged scale leaves it below 127), with the smallest
    integers that represent it; a weight on no grid is not taken for one."""
    rng = np.random.default_rng(0)
    weight_q = rng.integers(-100, 101, (6, 8, 3, 3)).astype(np.int8)
    weight_q[1] = np.clip(weight_q[1], -37, 37)
    weight_q[2] = 0
    scale = rng.uniform(1e-3, 1e-2, 6).astype(np.float32)
    folded = weight_q.astype(np.float32) * scale[:, None, None, None]
    recovered, found_scale = pass_module._on_int8_grid(folded, 0)
    np.testing.assert_array_equal(recovered, weight_q)
    np.testing.assert_allclose(found_scale[[0, 1, 3, 4, 5]], scale[[0, 1, 3, 4, 5]], rtol=1e-6)
    assert pass_module._on_int8_grid(rng.standard_normal((6, 8, 3, 3)).astype(np.float32),
                                     0) is None

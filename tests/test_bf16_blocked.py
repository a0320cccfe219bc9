"""bf16 in the planned layout: ``convert_to_bf16`` runs after ``plan_conv_layout``, so the convs
of a planned chain run bf16 on ``NCHW[b]c`` activations (``conv2d_nchwc_bf16``), tensorized
over a register tile (``schedules/cpu/bf16_nchwc``), with the layout changed only where the
chain ends - no per-conv input copy, no transposing write-back. The assembly checks
cross-compile (AVX-512 BF16, Graviton3), so they run on any CPU; the numerics run on this
machine (on the portable kernels where it has no bf16) against onnxruntime fp32."""

import re

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from test_bf16 import BF16_RTOL
from test_bf16 import _hot_loop as _x86_hot_loop
from test_bf16_arm import _SPILL
from test_bf16_arm import _hot_loop as _arm_hot_loop
from tvm import relax

from relaycomp.compiler.pipeline import (
    Placement,
    default_stages,
    run_stages,
    split_before,
    with_passes,
)
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.ir import kernel_calls
from relaycomp.passes.convert_to_bf16 import bf16_bits
from relaycomp.targets import resolve
from tests.passes.test_plan_conv_layout import _inverted_residual, _onnx_chain, _weight


def _strided_stem_net(size: int = 29):
    """A ResNet-style 7x7 stride-2 RGB stem over an odd-sized image (the kernel row's pairs
    end on a zero column past the padding), a 3x3 stride-2 max pool, then a 3x3 conv."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / 12).astype("float32"), name)
             for name, shape in (("w0", (32, 3, 7, 7)), ("w1", (32, 32, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], strides=[2, 2], pads=[3] * 4),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1] * 4),
             helper.make_node("Conv", ["p0", "w1"], ["y"], pads=[1] * 4)]
    out = ((size + 6 - 7) // 2 + 1 + 2 - 3) // 2 + 1
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, out, out])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


_BF16_STAGES = with_passes(default_stages("llvm"), [Placement("convert_to_bf16", "layout", "end")])
_ZMM_DOT = re.compile(r"^\s*vdpbf16ps\s+[^\n]*%(zmm\d+)\s*$", re.MULTILINE)


def _lowered(mod: tvm.IRModule, preset: str,
             mcpu: str | None = None) -> tuple[tvm.IRModule, tvm.target.Target, dict]:
    target = resolve(preset, mcpu=mcpu, num_cores=2).tvm_target()
    lowered, report = run_stages(mod, _BF16_STAGES, target)
    return lowered, target, report


def _kernels(mod: tvm.IRModule, preset: str) -> list[str]:
    """The kernels ``main`` calls before fusion."""
    stages, _ = split_before(_BF16_STAGES, "fuse")
    planned, _ = run_stages(mod, stages, resolve(preset, num_cores=2).tvm_target())
    return [call.args[0].name_hint for call in kernel_calls(planned)]


def _count(kernels: list[str], kernel: str) -> int:
    """Calls of ``kernel`` or its numbered copies (``conv2d_nchwc_bf161``)."""
    return sum(bool(re.fullmatch(rf"{kernel}\d*", name)) for name in kernels)


def test_a_planned_chain_runs_bf16_blocked_with_the_layout_changed_at_its_ends_only():
    """32 channels: too few for bf16 Winograd, the direct blocked kernel."""
    kernels = _kernels(import_onnx(_onnx_chain()).mod, "x86-64-avx512-bf16")
    assert _count(kernels, "conv2d_nchwc_bf16") == 4
    assert _count(kernels, "conv2d_bf16") == _count(kernels, "conv2d_nchwc") == 0
    assert _count(kernels, "layout_transform") == 2


def test_a_max_pool_between_convs_reads_bf16():
    """Max commutes with rounding: the pool after the stem reads the stem's bf16 bits (the stem
    writes half the bytes) and gives the values the next conv would round to anyway."""
    kernels = _kernels(import_onnx(_strided_stem_net()).mod, "x86-64-avx512-bf16")
    assert _count(kernels, "max_pool2d_bf16") == 1 and _count(kernels, "max_pool2d") == 0
    assert _count(kernels, "conv2d_nchwc_bf16") == 2


def test_a_mobilenet_block_runs_bf16_from_its_rgb_stem_through_its_depthwise_conv():
    """The stem reads the NCHW image (its pairs along the kernel row), the expand and project
    convs (padded 24 -> 32) take the dot product, the depthwise conv reads bf16 inputs; the
    layout changes once, at the end."""
    kernels = _kernels(import_onnx(_inverted_residual(channels=24, expanded=144,
                                                      stem=True)).mod, "x86-64-avx512-bf16")
    assert _count(kernels, "conv2d_nchwc_bf16") == 3
    assert _count(kernels, "depthwise_conv2d_nchwc_bf16") == 1
    assert not [name for name in kernels if re.fullmatch(r"\w*conv2d(_nchwc)?\d*", name)]
    assert _count(kernels, "layout_transform") == 1


def _blocked_weights(mod: tvm.IRModule, preset: str, mcpu: str | None = None) -> list[list[int]]:
    """The weight shapes of the blocked bf16 convs ``main`` calls, before fusion."""
    stages, _ = split_before(_BF16_STAGES, "fuse")
    planned, _ = run_stages(mod, stages, resolve(preset, mcpu=mcpu, num_cores=2).tvm_target())
    return [[int(d) for d in call.args[1][1].ty.shape] for call in kernel_calls(planned)
            if re.fullmatch(r"conv2d_nchwc_bf16\d*", call.args[0].name_hint)]


def test_a_conv_over_padded_channels_skips_their_zero_weights():
    """144 channels padded to 5 blocks of 32: the projection conv reads the 72 channel pairs
    that have weights (one weight block, the pairs of all input blocks along one axis), not the
    8 zero pairs ``pad_channels`` added; the sums are the same (the numerics test below)."""
    weights = _blocked_weights(import_onnx(_inverted_residual(channels=24, expanded=144)).mod,
                               "x86-64-avx512-bf16")
    assert [1, 1, 1, 1, 72, 32, 2] in weights, weights


@pytest.mark.parametrize("model", [
    _onnx_chain(), _inverted_residual(channels=24, expanded=144, stem=True),
    _inverted_residual(channels=32, expanded=96, size=15, stem=True), _strided_stem_net()],
    ids=["resnet-chain", "mobilenet-block", "odd-size-mobilenet-block", "strided-7x7-stem"])
def test_blocked_bf16_build_matches_onnxruntime_to_bf16_rounding(model):
    """On this CPU: the vdpbf16ps kernels where it has AVX-512 BF16, the portable ones else."""
    name = model.graph.input[0].name
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    lowered, target, report = _lowered(import_onnx(model).mod, "host")
    by_kind = report.facts("convert_to_bf16")["by_kind"]
    assert by_kind.get("blocked", 0) + by_kind.get("winograd", 0) >= 1
    vm = relax.VirtualMachine(tvm.compile(lowered, target, relax_pipeline=None), tvm.cpu())
    actual = vm["main"](tvm.runtime.tensor(x)).numpy()
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {name: x})[0]
    error = np.abs(actual - expected).max()
    assert 0 < error <= BF16_RTOL * np.abs(expected).max()  # bf16 operands, fp32 sums


def _conv_chain(channels: int, size: int, kernel: int) -> tvm.IRModule:
    """Two convs over a ``size x size`` map (under 14x14, a 3x3 conv keeps the direct bf16
    kernel: Winograd takes larger ones)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, size, size), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(
                x, _weight(channels, channels, size=kernel), padding=kernel // 2)))
            y = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(
                a, _weight(channels, channels, size=kernel), padding=kernel // 2)))
        bb.emit_func_output(y)
    return bb.get()


def _assembly(mod: tvm.IRModule, preset: str, mcpu: str | None = None) -> str:
    lowered, target, _ = _lowered(mod, preset, mcpu)
    return tvm.compile(lowered, target, relax_pipeline=None).mod.imports[0].inspect_source("asm")


@pytest.mark.parametrize(("channels", "kernel"), [(64, 3), (48, 1)],
                         ids=["two-vector-block-3x3", "one-vector-block-1x1"])
def test_avx512_blocked_bf16_loop_shares_each_broadcast_across_accumulators(channels, kernel):
    """The hot loop: at least 12 zmm accumulators, every broadcast input pair feeding two or
    more ``vdpbf16ps`` (two output vectors of a block, or two blocks of a one-vector block),
    no spill."""
    loop = _x86_hot_loop(_assembly(_conv_chain(channels, 12, kernel), "x86-64-avx512-bf16"))
    assert len(set(_ZMM_DOT.findall(loop))) >= 12, loop
    broadcasts = len(re.findall(r"vpbroadcastd|vbroadcastss|\{1to16\}", loop))
    assert loop.count("vdpbf16ps") >= 2 * broadcasts > 0, loop
    assert not re.findall(r"vmov\w*\s+[^\n]*\(%rsp\)", loop), "spilled in the hot loop"


def _projection_chain(channels: int = 32, size: int = 12) -> tvm.IRModule:
    """conv -> relu -> 1x1 conv (no activation: a MobileNet projection) -> conv -> relu: the
    projection's epilogue only rounds its sums to bf16 for the next conv."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, size, size), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, _weight(channels, channels),
                                                            padding=1)))
            b = bb.emit(relax.op.nn.conv2d(a, _weight(channels, channels, size=1)))
            y = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(
                b, _weight(channels, channels), padding=1)))
        bb.emit_func_output(y)
    return bb.get()


def test_avx512_bf16_rounding_epilogue_is_vector_code():
    """``round_to_bf16``'s NaN test once scalarized its loop (TVM's vectorizer has no rule for
    ``isnan``): a ``vucomiss`` and a branch per lane after every tile of MobileNetV2's
    projection convs, half their time. It compares bits now, sixteen lanes at a time."""
    asm = _assembly(_projection_chain(), "x86-64-avx512-bf16")
    assert "vdpbf16ps" in asm
    assert not re.findall(r"\bv?u?comiss\b", asm), "a scalar NaN test"


def test_graviton3_blocked_bf16_loop_is_bfdot_on_registers():
    loop = _arm_hot_loop(_assembly(_conv_chain(64, 12, 3), "aws-graviton3"))
    accumulators = set(re.findall(r"^\s*bfdot\s+(v\d+)\.4s", loop, re.MULTILINE))
    assert len(accumulators) >= 12, loop
    assert not _SPILL.findall(loop), f"spilled q-registers:\n{loop}"


def test_the_bf16_pass_runs_after_the_layout_is_planned():
    names = [name for stage in _BF16_STAGES for name in stage.passes]
    assert names.index("plan_conv_layout") < names.index("convert_to_bf16") < names.index(
        "legalize_blocked_convs")



def test_a_classifier_weight_is_bf16_and_its_sums_fp32():
    """``matmul`` with a constant 2-D weight (a Gemm's, folded): the weight in bf16 (half the
    bytes the batch-1 product streams), the input and sums fp32."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((64, 10)).astype("float32")
    x = rng.standard_normal((1, 64)).astype("float32")
    bb = relax.BlockBuilder()
    var = relax.Var("x", relax.TensorType((1, 64), "float32"))
    with bb.function("main", [var]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(var, relax.const(weight)))
        bb.emit_func_output(y)
    lowered, target, report = _lowered(bb.get(), "host")
    assert report.facts("convert_to_bf16")["by_kind"] == {"matmul": 1}
    vm = relax.VirtualMachine(tvm.compile(lowered, target, relax_pipeline=None), tvm.cpu())
    actual = vm["main"](tvm.runtime.tensor(x)).numpy()
    rounded = (bf16_bits(weight).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_allclose(actual, x @ rounded, rtol=1e-5, atol=1e-5)  # exactly the bf16 weight
    assert not np.allclose(actual, x @ weight, rtol=1e-6, atol=0)

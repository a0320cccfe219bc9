"""The planned uint8 activation layout of int8 conv chains (rewrite/int8_layout, scheduled by
schedules/cpu/int8_nchwc): NCHW16c between convs on AVX-512 VNNI, the same outputs (AVX2:
tests/test_int8_avx2_layout.py)."""

import numpy as np
import onnx
import pytest
import tvm
from helpers import run_cli
from models import _float_input, _float_output, _Graph, _inverted_residual, _residual_block
from qdq import ort_qdq, ort_run, output_scale
from tvm import relax
from tvm.target import codegen

import relaycomp
from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.rewrite.int8_kernels import DEPTHWISE_KERNEL, KERNEL
from relaycomp.rewrite.int8_layout import plan_int8_layout
from relaycomp.targets import resolve

CASCADE_LAKE = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                  "mcpu": "cascadelake", "num-cores": 2})
AVX2 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3",
                          "num-cores": 2})
NEOVERSE = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                              "mcpu": "neoverse-n1", "num-cores": 2})
HOST_HAS_VNNI = bool(codegen.llvm_cpu_has_features(["avx512vnni", "avx512vl"],
                                                   resolve("host").tvm_target()))


def _resnet_chain():
    """A ResNet in miniature whose convs after the stem have 16 and 32 channels: three residual
    blocks (one strided, with a 1x1 projection), global pooling, a classifier."""
    g = _Graph(seed=3)
    y = g.op("Relu", [g.batchnorm(g.conv("x", 3, 16, bias=False), 16)])
    y = _residual_block(g, y, 16, 16, stride=1)
    y = _residual_block(g, y, 16, 32, stride=2)
    y = _residual_block(g, y, 32, 32, stride=1)
    logits = g.classifier_head(y, 32, 10)
    return g.model("resnet_chain", [_float_input("x", [1, 3, 16, 16])], {"logits": logits},
                   {"logits": _float_output([1, 10])})


def _mobilenet_chain():
    """A MobileNetV2 in miniature: an RGB stem, then inverted residuals over 16-64 channels
    at 28, 14 and 7 pixels a row (the last one's depthwise conv 7 wide)."""
    g = _Graph(seed=4)
    y = g.op("Relu", [g.batchnorm(g.conv("x", 3, 16, bias=False), 16)])
    y = _inverted_residual(g, y, 16, 16, expand=2, stride=1)
    y = _inverted_residual(g, y, 16, 32, expand=3, stride=2)
    y = _inverted_residual(g, y, 32, 32, expand=2, stride=2)
    y = _inverted_residual(g, y, 32, 32, expand=2, stride=1)
    logits = g.classifier_head(y, 32, 10)
    return g.model("mobilenet_chain", [_float_input("x", [1, 3, 28, 28])], {"logits": logits},
                   {"logits": _float_output([1, 10])})


def _mobilenet_24_chain():
    """A MobileNetV2 in miniature with its 24-channel stage (features 2 and 3: 16 -> 24 strided,
    24 -> 24 with a residual add, expansion 6), which fills no 16-channel block."""
    g = _Graph(seed=5)
    y = g.op("Relu", [g.batchnorm(g.conv("x", 3, 16, bias=False), 16)])
    y = _inverted_residual(g, y, 16, 24, expand=6, stride=2)
    y = _inverted_residual(g, y, 24, 24, expand=6, stride=1)
    y = _inverted_residual(g, y, 24, 32, expand=6, stride=2)
    logits = g.classifier_head(y, 32, 10)
    return g.model("mobilenet_24_chain", [_float_input("x", [1, 3, 28, 28])],
                   {"logits": logits}, {"logits": _float_output([1, 10])})


@pytest.fixture(scope="module")
def qdq_model():
    return ort_qdq(_resnet_chain())


@pytest.fixture(scope="module")
def before_layout(qdq_model):
    """The QDQ model through the stages before ``layout``, for Cascade Lake."""
    stages, _ = split_before(default_stages("llvm"), "layout")
    return run_stages(import_onnx(qdq_model).mod, stages, CASCADE_LAKE)[0]


def _kernels(mod: tvm.IRModule, kernel: str = KERNEL) -> int:
    """``call_tir`` calls of ``kernel`` in ``main``."""
    calls = []

    def visit(expr) -> None:
        if (isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir"
                and expr.args[0].name_hint.startswith(kernel)):
            calls.append(expr)

    relax.analysis.post_order_visit(mod["main"], visit)
    return len(calls)


def test_chain_of_int8_convs_is_planned_once(before_layout):
    report = {}
    planned = plan_int8_layout(before_layout, CASCADE_LAKE, report)
    # all eight convs: the RGB stem (3 channels and a zero one) read as one NCHW4c block,
    # the others NCHW16c; NCHW4c into the stem, NCHW out of the pooling head
    assert report["int8_planned"] == 8 and _kernels(planned) == 8
    assert report["int8_layout_changes"] == 2
    relax.analysis.well_formed(planned)


def test_arm_targets_keep_nchw(before_layout):
    # (AVX2-only x86 targets plan NCHW8c: tests/test_int8_avx2_layout.py)
    report = {}
    assert plan_int8_layout(before_layout, NEOVERSE, report).same_as(before_layout)
    assert report == {}


def test_a_lone_conv_is_not_worth_two_layout_changes():
    weight = np.random.default_rng(0).integers(-128, 128, (16, 16, 3, 3)).astype("int8")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 8, 8), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = relax.op.nn.conv2d(x, relax.const(weight), padding=1, out_dtype="int32")
            y = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(np.float32(1e-3)))
            y = bb.emit_output(relax.op.quantize(y, relax.const(np.float32(0.05)),
                                                 relax.const(np.uint8(3)), out_dtype="uint8"))
        bb.emit_func_output(y)
    mod, report = bb.get(), {}
    assert plan_int8_layout(mod, CASCADE_LAKE, report).same_as(mod)
    assert report["int8_skipped"].startswith("2 layout changes for 1 int8 convs")


def _asm_of_planned_kernel(before_layout) -> str:
    planned = plan_int8_layout(before_layout, CASCADE_LAKE)
    _, rest = split_before(default_stages("llvm"), "dispatch")
    lowered = run_stages(planned, rest, CASCADE_LAKE)[0]
    return tvm.compile(lowered, CASCADE_LAKE, relax_pipeline=None).mod.imports[0].inspect_source(
        "asm")


def test_planned_kernels_are_vpdpbusd_without_spills(before_layout):
    asm = _asm_of_planned_kernel(before_layout)
    # the kernels' loops are outlined into parallel lambdas
    dot_loops = [part for part in asm.split(".type\t") if "vpdpbusd" in part]
    assert dot_loops
    for loop in dot_loops:
        assert "Spill" not in loop and "Reload" not in loop


@pytest.mark.skipif(not HOST_HAS_VNNI, reason="the host has no AVX-512 VNNI to run it on")
def test_planned_build_matches_onnxruntime(qdq_model, tmp_path):
    rng = np.random.default_rng(7)
    inputs = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    artifact = relaycomp.compile(qdq_model, tmp_path / "m.so", num_cores=2)
    layout = artifact.manifest.report["layout"]
    assert layout["int8_planned"] == 8
    assert layout["skipped"] == "the int8 plan laid out the graph"  # the fp32 plan's
    actual = relaycomp.load(artifact.path).run(inputs)["logits"]
    expected = ort_run(qdq_model, inputs, optimized=False)
    # within two quantization steps of the output (the float rescale rounds differently)
    assert np.abs(actual - expected).max() <= 2 * output_scale(qdq_model) + 1e-6


def _pooled_resnet_chain():
    """:func:`_resnet_chain` with ResNet-18's 3x3 stride-2 max pool after the stem."""
    g = _Graph(seed=3)
    y = g.op("Relu", [g.batchnorm(g.conv("x", 3, 16, bias=False), 16)])
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = _residual_block(g, y, 16, 16, stride=1)
    y = _residual_block(g, y, 16, 32, stride=2)
    logits = g.classifier_head(y, 32, 10)
    return g.model("pooled_resnet_chain", [_float_input("x", [1, 3, 32, 32])],
                   {"logits": logits}, {"logits": _float_output([1, 10])})


def test_compiling_a_planned_int8_model_prints_nothing_from_tvm(tmp_path):
    """The fp32 plan, after the int8 one, once ran TVM's ConvertLayout over the planned graph:
    it failed in C++ on the blocked max pool and TVM wrote a warning line on the CLI's
    stderr."""
    onnx.save(ort_qdq(_pooled_resnet_chain()), tmp_path / "m.onnx")
    result = run_cli("compile", tmp_path / "m.onnx", "-o", tmp_path / "m.so", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.fixture(scope="module")
def mobilenet_qdq():
    return ort_qdq(_mobilenet_chain())


def test_depthwise_convs_after_planned_convs_are_planned_too(mobilenet_qdq):
    stages, _ = split_before(default_stages("llvm"), "layout")
    mod = run_stages(import_onnx(mobilenet_qdq).mod, stages, CASCADE_LAKE)[0]
    report = {}
    planned = plan_int8_layout(mod, CASCADE_LAKE, report)
    # the stem, 8 one-group convs and 4 depthwise ones (the 7-wide one, which
    # lower_qdq_to_integer left summing in float32, made an int32 conv); NCHW4c into the stem,
    # NCHW out at the head
    assert _kernels(planned) == 9 and _kernels(planned, DEPTHWISE_KERNEL) == 4
    assert report == {"int8_planned": 13, "int8_layout_changes": 2}


@pytest.mark.skipif(not HOST_HAS_VNNI, reason="the host has no AVX-512 VNNI to run it on")
def test_planned_mobilenet_matches_onnxruntime(mobilenet_qdq, tmp_path):
    inputs = {"x": np.random.default_rng(8).standard_normal((1, 3, 28, 28)).astype(np.float32)}
    artifact = relaycomp.compile(mobilenet_qdq, tmp_path / "m.so", num_cores=2)
    assert artifact.manifest.report["layout"]["int8_planned"] == 13
    actual = relaycomp.load(artifact.path).run(inputs)["logits"]
    expected = ort_run(mobilenet_qdq, inputs, optimized=False)
    assert np.abs(actual - expected).max() <= 2 * output_scale(mobilenet_qdq) + 1e-6


def test_24_channel_convs_are_padded_to_the_block_and_planned_with_the_rest(tmp_path):
    model = ort_qdq(_mobilenet_24_chain())
    stages, _ = split_before(default_stages("llvm"), "layout")
    mod = run_stages(import_onnx(model).mod, stages, CASCADE_LAKE)[0]
    report = {}
    planned = plan_int8_layout(mod, CASCADE_LAKE, report)
    # the stem and all nine convs of the three blocks; the three that make 24 channels padded
    # (16 -> 24, 24 -> 24 and its residual, and the expansion reading them pads its weights)
    assert report == {"int8_planned": 10, "int8_layout_changes": 2, "int8_padded": 2}
    assert _kernels(planned, DEPTHWISE_KERNEL) == 3
    if HOST_HAS_VNNI:
        inputs = {"x": np.random.default_rng(9).standard_normal((1, 3, 28, 28))
                  .astype(np.float32)}
        artifact = relaycomp.compile(model, tmp_path / "m.so", num_cores=2)
        actual = relaycomp.load(artifact.path).run(inputs)["logits"]
        expected = ort_run(model, inputs, optimized=False)
        assert np.abs(actual - expected).max() <= 2 * output_scale(model) + 1e-6

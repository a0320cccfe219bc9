"""The planned uint8 activation layout on AVX2-only x86 CPUs (rewrite/int8_layout with an 8-channel
block, schedules/cpu/int8_nchwc and int8_nchwc_depthwise): NCHW8c between int8 convs, on
vpmaddubsw + vpmaddwd for pair-safe (7-bit) weights and on vpmaddwd for 8-bit ones, the same
integers as the NCHW build."""

import numpy as np
import pytest
import tvm
from models import _float_input, _float_output, _Graph, _inverted_residual
from qdq import ort_qdq, ort_run, output_scale
from tvm import relax
from tvm.target import codegen

from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.rewrite.int8_elementwise import ClipTirToOps
from relaycomp.rewrite.int8_kernels import DEPTHWISE_KERNEL, KERNEL
from relaycomp.rewrite.int8_layout import _mutate, block_for, plan_int8_layout
from relaycomp.targets import resolve

AVX2 = resolve("x86-64-avx2", num_cores=2).tvm_target()  # Haswell: AVX2, no AVX-512
HOST_HAS_AVX2 = bool(codegen.llvm_cpu_has_features(["avx2"], resolve("host").tvm_target()))


def _mobilenet_chain() -> "onnx.ModelProto":  # noqa: F821 - onnx is the fixtures' business
    """A MobileNetV2 in miniature: an RGB stem, inverted residuals over 8-48 channels at 16, 8
    and 4 pixels a row (ReLU6 as Clip), a classifier."""
    g = _Graph(seed=5)
    y = g.op("Relu", [g.batchnorm(g.conv("x", 3, 16, bias=False), 16)])
    y = _inverted_residual(g, y, 16, 8, expand=1, stride=1)
    y = _inverted_residual(g, y, 8, 24, expand=3, stride=2)
    y = _inverted_residual(g, y, 24, 24, expand=2, stride=1)
    y = _inverted_residual(g, y, 24, 32, expand=2, stride=2)
    logits = g.classifier_head(y, 32, 10)
    return g.model("mobilenet_avx2", [_float_input("x", [1, 3, 16, 16])], {"logits": logits},
                   {"logits": _float_output([1, 10])})


@pytest.fixture(scope="module", params=[True, False], ids=["7-bit", "8-bit"])
def qdq_model(request):
    """Quantized by onnxruntime: 7-bit weights (``reduce_range``, pair-safe: vpmaddubsw) or
    8-bit ones (vpmaddwd on widened operands)."""
    return ort_qdq(_mobilenet_chain(), reduce_range=request.param), request.param


@pytest.fixture(scope="module")
def before_layout(qdq_model):
    stages, _ = split_before(default_stages("llvm"), "layout")
    return run_stages(import_onnx(qdq_model[0]).mod, stages, AVX2)[0]


@pytest.fixture(scope="module")
def planned(before_layout):
    report = {}
    return plan_int8_layout(before_layout, AVX2, report), report


def _kernel_weights(mod: tvm.IRModule, kernel: str) -> list[tuple[tuple[int, ...], str]]:
    """The shapes and dtypes of the constant weights ``main`` passes to ``kernel``."""
    shapes = []

    def visit(expr) -> None:
        if (isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir"
                and expr.args[0].name_hint.startswith(kernel)):
            weight = expr.args[1].fields[1].ty
            shapes.append((tuple(int(d) for d in weight.shape), str(weight.dtype)))

    relax.analysis.post_order_visit(mod["main"], visit)
    return shapes


def test_avx2_plans_every_conv_on_eight_channel_blocks(qdq_model, planned):
    mod, report = planned
    pair_safe = qdq_model[1]
    assert block_for(AVX2) == 8
    # the stem (NCHW4c in), 8 one-group convs (24 channels: 3 blocks) and 4 depthwise ones;
    # NCHW4c into the stem, NCHW out at the head
    assert report == {"int8_planned": 13, "int8_layout_changes": 2}
    dense, depthwise = _kernel_weights(mod, KERNEL), _kernel_weights(mod, DEPTHWISE_KERNEL)
    assert len(dense) == 9 and len(depthwise) == 4
    # [fo, co, ry, rx, q, 8 lanes, 4 channels] (vpmaddubsw) or 2, widened (vpmaddwd, 8-bit)
    group = 4 if pair_safe else 2
    assert all(shape[-2:] == (8, group) and dtype == ("int8" if pair_safe else "int16")
               for shape, dtype in dense)
    # [c, ry, 8 lanes, 4 taps], int8 (vpmaddubsw) or widened to int16 (vpmaddwd)
    assert all(shape[-2:] == (8, 4) and dtype == ("int8" if pair_safe else "int16")
               for shape, dtype in depthwise)
    relax.analysis.well_formed(mod)


def test_importer_clip_kernels_become_ops_the_layout_passes_through():
    mod = import_onnx(_mobilenet_chain()).mod
    raised = relax.transform.DeadCodeElimination()(_mutate(ClipTirToOps(mod), mod))
    ops = {"call_tir": 0, "relax.minimum": 0, "relax.maximum": 0}

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") in ops:
            ops[expr.op.name] += 1
        elif isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            name = expr.args[0].name_hint
            ops["call_tir"] += name.startswith(("minimum", "maximum"))

    relax.analysis.post_order_visit(raised["main"], visit)
    # eight ReLU6 (Clip: one min and one max kernel each) of the four inverted residuals
    assert ops == {"call_tir": 0, "relax.minimum": 8, "relax.maximum": 8}


@pytest.fixture(scope="module")
def executables(before_layout, planned):
    """``(unplanned, planned)`` executables for the AVX2 target: the rest of the pipeline
    after the ``layout`` stage, once without it."""
    _, rest = split_before(default_stages("llvm"), "layout")
    builds = []
    for mod, stages in ((before_layout, rest[1:]), (planned[0], rest[1:])):
        lowered = run_stages(mod, stages, AVX2)[0]
        builds.append(tvm.compile(lowered, AVX2, relax_pipeline=None))
    return builds


def test_avx2_kernels_are_vpmaddubsw_or_vpmaddwd_on_ymm_without_spills(qdq_model,
                                                                         executables):
    asm = executables[1].mod.imports[0].inspect_source("asm")
    assert "zmm" not in asm  # AVX2 only
    dot_loops = [part for part in asm.split(".type\t") if "vpmaddwd" in part]
    # 7-bit weights: the conv kernels on vpmaddubsw; 8-bit: none (it would saturate)
    with_pairs = [loop for loop in dot_loops if "vpmaddubsw" in loop]
    assert len(with_pairs) >= 4 if qdq_model[1] else len(dot_loops) >= 4 and not with_pairs
    for loop in dot_loops:
        assert "Spill" not in loop and "Reload" not in loop


@pytest.mark.skipif(not HOST_HAS_AVX2, reason="the host cannot run AVX2 code")
def test_avx2_planned_build_is_bit_identical_and_matches_onnxruntime(qdq_model, executables):
    model = qdq_model[0]
    rng = np.random.default_rng(9)
    for _ in range(2):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        unplanned, planned = (relax.VirtualMachine(ex, tvm.cpu())["main"](
            tvm.runtime.tensor(x)).numpy() for ex in executables)
        assert np.array_equal(planned, unplanned)  # the same integers, the same epilogue
        expected = ort_run(model, {"x": x}, optimized=False)
        assert np.abs(planned - expected).max() <= 2 * output_scale(model) + 1e-6

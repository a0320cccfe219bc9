"""The int8 depthwise conv on AVX-512 VNNI (schedules/cpu/int8_depthwise): int32 accumulation,
four taps of a kernel row per vpdpbusd, exact against an integer reference."""

import numpy as np
import pytest
import tvm
from helpers import build_scheduled
from models import mobilenet_style_net
from qdq import ort_qdq
from tvm import relax
from tvm.target import codegen

from relaycomp.compiler.pipeline import default_stages, run_stages
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.schedules.cpu.int8_depthwise import TAPS, depthwise_taps, row_lanes
from relaycomp.targets import resolve

# Cross-compiled for the x86-64-avx512 preset's CPU (Cascade Lake: VNNI, no VBMI) and Zen 5
# (VBMI: one vpermt2b lays out the taps); run only where the host has VNNI.
CASCADE_LAKE = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                  "mcpu": "cascadelake", "num-cores": 2})
ZEN5 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver5",
                          "num-cores": 2})
AVX2 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3",
                          "num-cores": 2})
HOST_HAS_VNNI = bool(codegen.llvm_cpu_has_features(["avx512vnni", "avx512vl"],
                                                   resolve("host").tvm_target()))
ZERO_POINT = 7
# (channels, size, stride): rows of 16 (one zmm), 14 (a zmm's low lanes), 8 (a ymm) and 7
# (stride 2) output columns
CASES = ((32, 16, 1), (16, 28, 2), (16, 8, 1), (16, 14, 2))
SCALE = np.float32(0.05)


def _depthwise(channels: int, size: int, stride: int):
    """x (uint8) -> pad with the zero point (one more column on the right) -> depthwise conv
    with 3x4 int8 kernels (4th column zero), as ``lower_qdq_to_integer`` makes it -> rescale ->
    relu -> quantize."""
    rng = np.random.default_rng(0)
    weight = np.zeros((channels, 1, 3, TAPS), np.int8)
    weight[..., :3] = rng.integers(-128, 128, (channels, 1, 3, 3))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, size, size), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            padded = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 2],
                                             pad_value=float(ZERO_POINT)))
            acc = bb.emit(relax.op.nn.conv2d(padded, relax.const(weight), strides=stride,
                                             groups=channels, out_dtype="int32"))
            y = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(np.float32(1e-3)))
            y = bb.emit_output(relax.op.quantize(relax.op.nn.relu(y), relax.const(SCALE),
                                                 relax.const(np.uint8(0)), out_dtype="uint8"))
        bb.emit_func_output(y)
    return bb.get(), weight


def _reference(x: np.ndarray, weight: np.ndarray, stride: int) -> np.ndarray:
    """The 3x3 depthwise conv in int64, then the same rescale, relu and quantize."""
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)),
                    constant_values=ZERO_POINT)
    out = (padded.shape[2] - 3) // stride + 1
    acc = np.zeros((1, x.shape[1], out, out), np.int64)
    for ry in range(3):
        for rx in range(3):
            window = padded[:, :, ry:ry + stride * out:stride, rx:rx + stride * out:stride]
            acc += window * weight[None, :, 0, ry, rx, None, None].astype(np.int64)
    y = np.maximum(acc.astype(np.float32) * np.float32(1e-3), 0)
    return np.clip(np.round(y / SCALE), 0, 255).astype(np.uint8)


def _asm(executable) -> str:
    return executable.mod.imports[0].inspect_source("asm")


@pytest.fixture(scope="module")
def built():
    """(channels, size, stride) -> (module, weight, Cascade Lake executable) of :data:`CASES`."""
    cases = {}
    for case in CASES:
        mod, weight = _depthwise(*case)
        cases[case] = mod, weight, build_scheduled(mod, CASCADE_LAKE)
    return cases


@pytest.mark.parametrize("case", CASES)
def test_depthwise_conv_is_vpdpbusd_without_spills(built, case):
    asm = _asm(built[case][2])
    assert "vpdpbusd" in asm
    assert "Spill" not in asm and "Reload" not in asm
    # Integer accumulation: no float multiply-add of the taps (the float epilogue has none).
    assert "vfmadd" not in asm


def test_zen5_lays_out_the_taps_with_one_byte_permute():
    mod, _ = _depthwise(32, 16, 1)
    asm = _asm(build_scheduled(mod, ZEN5))
    assert "vpdpbusd" in asm and "vpermt2b" in asm and "vpinsrb" not in asm


@pytest.mark.skipif(not HOST_HAS_VNNI, reason="the host has no AVX-512 VNNI to run it on")
@pytest.mark.parametrize("case", CASES)
def test_depthwise_conv_is_exact(built, case):
    _, weight, executable = built[case]
    channels, size, stride = case
    x = np.random.default_rng(1).integers(0, 256, (1, channels, size, size)).astype("uint8")
    x[0, 0] = 255  # the extremes of the products
    actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    expected = _reference(x, weight, stride)
    # Same integers; the float rescale may round a half-way value the other way.
    assert np.abs(actual.astype(int) - expected).max() <= 1
    assert np.mean(actual == expected) > 0.99


def test_only_vnni_targets_and_rows_it_tiles_take_it():
    assert depthwise_taps(CASCADE_LAKE) == TAPS and depthwise_taps(ZEN5) == TAPS
    assert depthwise_taps(AVX2) is None
    assert depthwise_taps(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                             "mcpu": "neoverse-n1"})) is None
    assert [row_lanes(w, 1) for w in (112, 56, 28, 14, 8, 7)] == [16, 14, 14, 14, 8, None]
    assert row_lanes(7, 2) == 7  # float accumulation gathers a strided row


def test_lowering_pads_depthwise_kernels_to_four_taps_on_vnni():
    """MobileNet-style QDQ model through simplify + quantize for a VNNI CPU: every depthwise
    conv sums uint8 x int8 in int32, its 3x3 kernels widened with a zero column."""
    mod = import_onnx(ort_qdq(mobilenet_style_net())).mod
    stages = [s for s in default_stages("llvm") if s.name in ("simplify", "quantize")]
    lowered = run_stages(mod, stages, CASCADE_LAKE)[0]
    depthwise = []

    @relax.expr_functor.visitor
    class _Visitor(relax.PyExprVisitor):
        def visit_call_(self, call):
            if getattr(call.op, "name", "") == "relax.nn.conv2d" and int(call.attrs.groups) > 1:
                depthwise.append(call)
            super().visit_call_(call)

    _Visitor().visit_expr(lowered["main"])
    assert len(depthwise) == 2
    for call in depthwise:
        weight = call.args[1].value.numpy()
        assert (str(call.args[0].ty.dtype), str(weight.dtype), str(call.ty.dtype)) == (
            "uint8", "int8", "int32")
        assert weight.shape[2:] == (3, TAPS) and not weight[..., 3].any() and weight.any()

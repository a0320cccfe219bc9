"""The int8 1x1 conv with the lanes along the output row on AVX-512 VNNI
(schedules/cpu/int8_pointwise): NCHW accumulators, exact against an integer reference."""

import numpy as np
import pytest
import tvm
from helpers import build_scheduled
from tvm import relax, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.target import codegen

from relaycomp.schedules.cpu.common import cpu_facts
from relaycomp.schedules.cpu.int8_pointwise import register_tile, schedule_int8_pointwise
from relaycomp.targets import resolve

CASCADE_LAKE = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                  "mcpu": "cascadelake", "num-cores": 2})
AVX2 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3",
                          "num-cores": 2})
HOST_HAS_VNNI = bool(codegen.llvm_cpu_has_features(["avx512vnni", "avx512vl"],
                                                   resolve("host").tvm_target()))
ZERO_POINT = 5
SCALE = np.float32(0.05)


def _pointwise(channels: int, out_channels: int, size: int):
    """x (uint8) -> 1x1 int8 conv -> zero-point correction -> rescale -> relu -> quantize."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (out_channels, channels, 1, 1)).astype("int8")
    correction = ZERO_POINT * weight.astype(np.int32).reshape(out_channels, -1).sum(axis=1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, size, size), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), out_dtype="int32"))
            acc = relax.op.subtract(acc, relax.const(correction.reshape(1, -1, 1, 1)))
            y = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(np.float32(1e-3)))
            y = bb.emit_output(relax.op.quantize(relax.op.nn.relu(y), relax.const(SCALE),
                                                 relax.const(np.uint8(0)), out_dtype="uint8"))
        bb.emit_func_output(y)
    return bb.get(), weight


def _reference(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    acc = np.einsum("nchw,fc->nfhw", x.astype(np.int64) - ZERO_POINT,
                    weight[:, :, 0, 0].astype(np.int64))
    y = np.maximum(acc.astype(np.float32) * np.float32(1e-3), 0)
    return np.clip(np.round(y / SCALE), 0, 255).astype(np.uint8)


# (in, out channels, size): 28 x 28 and 12 x 12 rows across vectors; 64 -> 24 channels (no
# multiple of 16: the channel-lanes schedule would run half-width)
CASES = ((16, 32, 16), (24, 16, 28), (32, 48, 12), (64, 24, 16))


@pytest.fixture(scope="module")
def built():
    """(channels, out_channels, size) -> (weight, Cascade Lake executable)."""
    return {case: (weight, build_scheduled(mod, CASCADE_LAKE))
            for case, (mod, weight) in ((case, _pointwise(*case)) for case in CASES)}


@pytest.mark.parametrize("case", CASES)
def test_pointwise_conv_is_vpdpbusd_without_spills(built, case):
    asm = built[case][1].mod.imports[0].inspect_source("asm")
    assert "vpdpbusd" in asm
    assert "Spill" not in asm and "Reload" not in asm


@pytest.mark.skipif(not HOST_HAS_VNNI, reason="the host has no AVX-512 VNNI to run it on")
@pytest.mark.parametrize("case", CASES)
def test_pointwise_conv_is_exact(built, case):
    weight, executable = built[case]
    channels, _, size = case
    x = np.random.default_rng(1).integers(0, 256, (1, channels, size, size)).astype("uint8")
    x[0, :, 0] = 255
    actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    expected = _reference(x, weight)
    # Same integers; the float rescale may round a half-way value the other way.
    assert np.abs(actual.astype(int) - expected).max() <= 1
    assert np.mean(actual == expected) > 0.99


def test_only_vnni_short_reductions_and_whole_vectors_of_pixels():
    mod, _ = _pointwise(16, 32, 16)
    with CASCADE_LAKE:
        legal = tvm.transform.Sequential(cpu.legalize_passes(CASCADE_LAKE))(mod)
    conv = next(f for gv, f in legal.functions_items()
                if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
    assert schedule_int8_pointwise(conv, CASCADE_LAKE, cpu_facts(CASCADE_LAKE)) is not None
    assert schedule_int8_pointwise(conv, AVX2, cpu_facts(AVX2)) is None
    narrow, _ = _pointwise(16, 32, 14)  # 14 x 14 pixels: the channel-lanes schedule
    with CASCADE_LAKE:
        legal = tvm.transform.Sequential(cpu.legalize_passes(CASCADE_LAKE))(narrow)
    conv = next(f for gv, f in legal.functions_items()
                if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
    assert schedule_int8_pointwise(conv, CASCADE_LAKE, cpu_facts(CASCADE_LAKE)) is None
    wide, _ = _pointwise(64, 32, 16)  # 64 -> 32 channels: the channel-lanes schedule
    with CASCADE_LAKE:
        legal = tvm.transform.Sequential(cpu.legalize_passes(CASCADE_LAKE))(wide)
    conv = next(f for gv, f in legal.functions_items()
                if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
    assert schedule_int8_pointwise(conv, CASCADE_LAKE, cpu_facts(CASCADE_LAKE)) is None
    # 4 x 4 accumulators: 8 loads for 16 multiply-adds.
    assert register_tile(96, 784) == (4, 4) and register_tile(144, 196) == (4, 4)
    assert register_tile(6, 7) == (2, 7)  # 6 channels: 9 loads for 14 multiply-adds

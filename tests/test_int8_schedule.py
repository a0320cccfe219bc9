"""The AVX2 int8 conv2d schedule (passes/_cpu_int8): tensorized with vpmaddwd (exact for any
int8 weights) or, for pair-safe weights, vpmaddubsw (twice the products per instruction)."""

import re

import numpy as np
import pytest
import tvm
from helpers import build_scheduled
from tvm import relax, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.target import codegen

from relaycomp.passes.schedule_cpu_loops import RULE_ATTR, schedule_cpu_loops
from relaycomp.schedules.cpu.int8 import (
    DOT_8X2_AVX2,
    int8_data_dtype,
    pair_safe,
    schedule_int8_conv,
)
from relaycomp.targets import resolve

AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3", "num-cores": 2})


def _int8_conv(channels=16, out_channels=32, size=10, stride=1, zero_point=3, weight_max=127,
               data="uint8"):
    """x (``data``) -> pad with the zero point -> int8 conv -> rescale -> relu -> quantize."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-weight_max, weight_max + 1,
                          (out_channels, channels, 3, 3)).astype("int8")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, size, size), data))
    with bb.function("main", [x]):
        with bb.dataflow():
            padded = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 1],
                                             pad_value=float(zero_point)))
            acc = bb.emit(relax.op.nn.conv2d(padded, relax.const(weight), strides=stride,
                                             out_dtype="int32"))
            y = relax.op.multiply(relax.op.astype(acc, "float32"),
                                  relax.const(np.float32(1e-3)))
            y = bb.emit_output(relax.op.quantize(relax.op.nn.relu(y), relax.const(0.05, "float32"),
                                                 relax.const(np.uint8(0)), out_dtype="uint8"))
        bb.emit_func_output(y)
    return bb.get(), weight


def _reference(x, weight, stride, zero_point):
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)),
                    constant_values=zero_point)
    out_size = (padded.shape[2] - 3) // stride + 1
    acc = np.zeros((1, weight.shape[0], out_size, out_size), np.int64)
    for ry in range(3):
        for rx in range(3):
            span = stride * out_size
            window = padded[:, :, ry:ry + span:stride, rx:rx + span:stride]
            acc += np.einsum("nchw,fc->nfhw", window, weight[:, :, ry, rx].astype(np.int64))
    y = np.maximum(acc.astype(np.float32) * np.float32(1e-3), 0)
    return np.clip(np.round(y / np.float32(0.05)), 0, 255).astype(np.uint8), acc


@pytest.mark.parametrize("stride", [1, 2])
def test_int8_conv_is_tensorized_and_exact(stride):
    mod, weight = _int8_conv(stride=stride)
    executable = build_scheduled(mod, AVX2)
    asm = executable.mod.imports[0].inspect_source("asm")
    assert "vpmaddwd" in asm and "vpmaddubsw" not in asm  # 8-bit weights: not pair-safe
    x = np.random.default_rng(1).integers(0, 256, (1, 16, 10, 10)).astype("uint8")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    actual = vm["main"](tvm.runtime.tensor(x)).numpy()
    expected, acc = _reference(x, weight, stride, 3)
    assert np.abs(acc).max() > 2**15  # 8-bit pair sums that vpmaddubsw would saturate
    # Same integers; the float rescale may round a half-way value the other way.
    assert np.abs(actual.astype(int) - expected).max() <= 1
    assert np.mean(actual == expected) > 0.99


@pytest.mark.parametrize("stride", [1, 2])
def test_pair_safe_weights_take_vpmaddubsw_and_stay_exact(stride):
    mod, weight = _int8_conv(stride=stride, weight_max=63, zero_point=255)
    asm = build_scheduled(mod, AVX2).mod.imports[0].inspect_source("asm")
    assert "vpmaddubsw" in asm
    # All-255 inputs: the int16 pair sums at their extremes.
    for x in (np.full((1, 16, 10, 10), 255, np.uint8),
              np.random.default_rng(1).integers(0, 256, (1, 16, 10, 10)).astype("uint8")):
        vm = relax.VirtualMachine(build_scheduled(mod, AVX2), tvm.cpu())
        actual = vm["main"](tvm.runtime.tensor(x)).numpy()
        expected, _ = _reference(x, weight, stride, 255)
        assert np.abs(actual.astype(int) - expected).max() <= 1
        assert np.mean(actual == expected) > 0.99


@pytest.mark.parametrize("pair, safe", [((64, 64), True), ((-64, -64), True), ((127, -127), True),
                                        ((127, 2), False), ((-128, -1), False), ((65, 64), False)])
def test_pair_safety_is_the_int16_range_of_two_products(pair, safe):
    weight = np.zeros((8, 4, 3, 3), np.int8)
    weight[3, 2:4, 1, 1] = pair
    assert pair_safe(weight) is safe  # 255 x (the pair's positive / negative sum) in int16


def test_the_int8_rule_marks_the_kernel_and_leaves_others():
    mod, _ = _int8_conv()
    with AVX2:
        legal = tvm.transform.Sequential(cpu.legalize_passes(AVX2))(mod)
        scheduled = schedule_cpu_loops(AVX2)(legal)
    kernels = {gv.name_hint: f for gv, f in scheduled.functions_items()
               if isinstance(f, tirx.PrimFunc)}
    conv = next(f for name, f in kernels.items() if "conv2d" in name)
    assert str(conv.attrs[RULE_ATTR]) == "contraction"
    assert DOT_8X2_AVX2 in conv.script() or "pmadd" in conv.script()


def test_avx512_vnni_target_uses_vpdpbusd():
    """Cross-compiled for the x86-64-avx512 preset (Cascade Lake); not run on this CPU."""
    vnni = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                              "mcpu": "cascadelake", "num-cores": 2})
    mod, _ = _int8_conv(channels=16, out_channels=32)
    assert "vpdpbusd" in build_scheduled(mod, vnni).mod.imports[0].inspect_source("asm")


@pytest.mark.parametrize(("out_channels", "register"), [(32, "zmm"), (24, "ymm")])
def test_avx512_vnni_uses_512_bit_vpdpbusd_or_256_bit_for_channels_in_eights(out_channels,
                                                                             register):
    """24 output channels (MobileNetV2's) are no multiple of 16 lanes: 8-lane vpdpbusd on ymm
    registers (AVX-512 VL) instead of the generic int32 loops; the result stays exact."""
    vnni = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                              "mcpu": "cascadelake", "num-cores": 2})
    mod, weight = _int8_conv(channels=16, out_channels=out_channels)
    asm = build_scheduled(mod, vnni).mod.imports[0].inspect_source("asm")
    assert re.search(rf"vpdpbusd\s+[^\n]*%{register}\d+", asm), "not tensorized"
    if codegen.llvm_cpu_has_features(["avx512vnni", "avx512vl"], resolve("host").tvm_target()):
        x = np.random.default_rng(1).integers(0, 256, (1, 16, 10, 10)).astype("uint8")
        vm = relax.VirtualMachine(build_scheduled(mod, vnni), tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_array_equal(out, _reference(x, weight, 1, 3)[0])


def test_aarch64_dotprod_target_uses_sdot_on_int8_activations():
    """Cross-compiled for a Neoverse N1 (ARMv8.2 dotprod); not run here."""
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                             "mcpu": "neoverse-n1", "num-cores": 4})
    assert int8_data_dtype(arm) == "int8" and int8_data_dtype(AVX2) == "uint8"
    mod, _ = _int8_conv(data="int8", zero_point=-3)
    assert "sdot" in build_scheduled(mod, arm).mod.imports[0].inspect_source("asm")


def test_no_avx2_no_int8_schedule():
    mod, _ = _int8_conv()
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                             "mattr": ["+neon"]})
    with AVX2:
        legal = tvm.transform.Sequential(cpu.legalize_passes(AVX2))(mod)
    conv = next(f for gv, f in legal.functions_items()
                if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
    from relaycomp.schedules.cpu.common import cpu_facts

    assert schedule_int8_conv(conv, arm, cpu_facts(arm)) is None
    assert schedule_int8_conv(conv, AVX2, cpu_facts(AVX2)) is not None

"""Arm register tiles, checked in the cross-compiled assembly of the ``cortex-a76`` preset: the
innermost loops of the fp32 conv, the int8 ``sdot`` conv and a depthwise conv + ReLU6 keep their
tiles in the 32 NEON registers (nothing stored to or reloaded from the stack), the stride-1 int8
conv multiplies with the lane-indexed ``sdot`` (one 16-byte input load for four columns, no
``ld1r`` broadcasts) and ReLU6 is ``fmax``/``fmin``. Numerics on aarch64: test_emulated_device;
the static throughput estimate: benchmarks/mca_arm.py."""

import re

import numpy as np
import pytest
import tvm
from helpers import ort_outputs
from models import mobilenet_style_net, random_inputs, resnet_block_net
from test_cpu_isa import _conv
from test_emulated_device import KEY, device  # noqa: F401 - the emulated aarch64 device
from test_int8_schedule import _int8_conv
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu

from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.passes.propagate_nan_in_max_min import propagate_nan_in_max_min
from relaycomp.passes.schedule_cpu_loops import schedule_cpu_loops
from relaycomp.runtime.remote import load_remote
from relaycomp.targets import resolve

_MULTIPLY_ADD = re.compile(r"^\s*(fmla|sdot)\s", re.MULTILINE)
_SPILL = re.compile(r"^\s*(st|ld)\w*\s+[^\n]*\bq\d+[^\n]*\[sp\b", re.MULTILINE)


@pytest.fixture(scope="module")
def target():
    return resolve("cortex-a76", num_cores=2).tvm_target()


def _hot_loop(asm: str) -> str:
    """The basic block with the most multiply-adds (the innermost loop), up to its branch."""
    blocks = re.split(r"^\.LBB\d+_\d+:", asm, flags=re.MULTILINE)
    block = max(blocks, key=lambda text: len(_MULTIPLY_ADD.findall(text)))
    branch = re.search(r"^\s+(b\.\w+|cbn?z|tbn?z|b)\s", block, flags=re.MULTILINE)
    return block[:branch.end()] if branch else block


def _loop(mod, target) -> str:
    """The hot loop of ``mod`` legalized, fused (epilogues into the conv) and scheduled."""
    with target:
        mod = tvm.transform.Sequential(
            cpu.legalize_passes(target)
            + [relax.transform.FuseOps(), relax.transform.FuseTIR(), schedule_cpu_loops(target),
               propagate_nan_in_max_min(target)]  # as the pipeline: after the schedule
            + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(mod)
    library = tvm.compile(mod, target, relax_pipeline=None).mod.imports[0]
    return _hot_loop(library.inspect_source("asm"))


def _depthwise_relu6(channels: int = 16, size: int = 14):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, 1, 3, 3)).astype("float32")
    bias = rng.standard_normal((1, channels, 1, 1)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, size, size), "float32"))
    # Clip's bounds as they reach MobileNetV2's kernels: 0-d tensors, kernel parameters.
    low, high = (relax.Var(name, relax.TensorType((), "float32")) for name in ("low", "high"))
    with bb.function("main", [x, low, high]):
        with bb.dataflow():
            y = relax.op.nn.conv2d(x, relax.const(weight), padding=1, groups=channels)
            y = relax.op.maximum(relax.op.add(y, relax.const(bias)), low)
            y = bb.emit_output(relax.op.minimum(y, high))
        bb.emit_func_output(y)
    return bb.get()


def test_fp32_conv_tile_fits_the_neon_registers(target):
    loop = _loop(_conv(channels=32, size=14), target)
    accumulators = set(re.findall(r"fmla\s+(v\d+)\.4s", loop))
    assert len(accumulators) >= 12, f"accumulators: {sorted(accumulators)}"
    assert not _SPILL.findall(loop), f"spilled q-registers:\n{loop}"


@pytest.mark.parametrize("stride", [1, 2])
def test_int8_conv_uses_lane_indexed_sdot_without_spilling(target, stride):
    mod, _ = _int8_conv(channels=32, out_channels=64, size=14, stride=stride, data="int8",
                        zero_point=-3)
    loop = _loop(mod, target)
    lane_indexed = re.findall(r"sdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[[0-3]\]", loop)
    assert len(lane_indexed) >= 12, loop
    if stride == 1:  # strided, LLVM broadcasts the lane a load would give one column (ld1r)
        assert len(lane_indexed) == loop.count("sdot") and "ld1r" not in loop, loop
    assert not _SPILL.findall(loop), f"spilled q-registers:\n{loop}"


def test_depthwise_relu6_is_fmax_fmin_without_spilling(target):
    loop = _loop(_depthwise_relu6(), target)
    assert "fmax\t" in loop and "fmin\t" in loop, loop
    assert "fcmgt" not in loop and "bsl" not in loop
    assert not _SPILL.findall(loop), f"spilled q-registers:\n{loop}"


@pytest.mark.slow
@pytest.mark.parametrize("model", [mobilenet_style_net, resnet_block_net])
def test_cortex_a76_builds_match_onnxruntime_on_the_device(device, model, tmp_path):  # noqa: F811
    """The tiles above, the depthwise rows and the native ReLU6 compute what onnxruntime does
    (aarch64 under qemu: test_emulated_device's device)."""
    model = model()
    artifact = compile_model(model, tmp_path / "model.so", CompileConfig(target="cortex-a76"))
    inputs = random_inputs(model)
    actual = load_remote(artifact.path, device, KEY).run(inputs)
    for name, expected in ort_outputs(model, inputs).items():
        np.testing.assert_allclose(actual[name], expected, rtol=1e-4, atol=1e-5)


def _depthwise_nchwc_relu6(blocks: int = 2, size: int = 28):
    """A depthwise 3x3 conv + bias + ReLU6 on NCHW8c (NEON's block, as ``plan_conv_layout``
    gives MobileNetV2's), as the fused PrimFunc the CPU schedule gets."""
    from tvm import te, topi

    shape = (1, blocks, size, size, 8)
    data = te.placeholder(shape, name="data")
    weight = te.placeholder((blocks, 1, 3, 3, 1, 8), name="weight")
    bias = te.placeholder((1, blocks, 1, 1, 8), name="bias")
    padded = topi.nn.pad(data, [0, 0, 1, 1, 0], [0, 0, 1, 1, 0])
    ry, rx = te.reduce_axis((0, 3), name="ry"), te.reduce_axis((0, 3), name="rx")
    conv = te.compute(shape, lambda n, c, y, x, i: te.sum(
        padded[n, c, y + ry, x + rx, i] * weight[c, 0, ry, rx, 0, i], axis=[ry, rx]))
    biased = te.compute(shape, lambda n, c, y, x, i: conv[n, c, y, x, i] + bias[n, c, 0, 0, i])
    out = te.compute(shape, lambda *i: tvm.tirx.min(tvm.tirx.max(biased(*i), 0.0), 6.0))
    return te.create_prim_func([data, weight, bias, out])


def test_bias_as_the_start_value_computes_the_same():
    from relaycomp.schedules.cpu.bias_init import fold_bias_into_init

    func = _depthwise_nchwc_relu6(blocks=1, size=8)
    folded = fold_bias_into_init(func, column=3, copies=4)  # the output columns' iterator
    assert "bias_copies" in folded.script() and folded.script().count("T.init()") == 1
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(tuple(int(d) for d in p.shape)).astype("float32")
              for p in func.params[:3]]
    results = []
    for kernel in (func, folded):
        library = tvm.compile(tvm.IRModule({"main": kernel}), target="llvm")
        tensors = [tvm.runtime.tensor(a) for a in arrays] + [
            tvm.runtime.tensor(np.zeros((1, 1, 8, 8, 8), "float32"))]
        library["main"](*tensors)
        results.append(tensors[-1].numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6, atol=1e-6)
    assert results[0].max() == 6.0 and results[0].min() == 0.0  # the clamp is exercised


def test_depthwise_nchwc_loop_starts_from_the_bias_in_registers(target):
    from relaycomp.schedules.cpu.contraction import ContractionRule

    scheduled = ContractionRule().apply(_depthwise_nchwc_relu6(), target, False).mod["main"]
    library = tvm.tirx.build(tvm.IRModule({"main": scheduled}), target=target)
    loop = _hot_loop(library.inspect_source("asm"))
    accumulators = set(re.findall(r"fmla\s+(v\d+)\.4s", loop))
    assert len(accumulators) >= 8 and len(_MULTIPLY_ADD.findall(loop)) == 9 * len(accumulators)
    # No zeroing, no bias add, no register copy per accumulator: the start value is a load.
    assert not re.findall(r"^\s*(fadd|mov)\s+v\d+\.(4s|16b)", loop, re.MULTILINE), loop
    assert "\tfmax" in loop and "\tfmin" in loop and "stp\tq" in loop, loop
    assert not _SPILL.findall(loop), f"spilled q-registers:\n{loop}"

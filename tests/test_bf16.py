"""bf16 (``--precision bf16``): convs on bf16 operands with fp32 sums, ``vdpbf16ps`` kernels.

The assembly checks cross-compile for the ``x86-64-avx512-bf16`` preset, so they run on any CPU;
the end-to-end build for this machine runs where the CPU has AVX-512 BF16, and the numerics of
the same module (on the portable kernels) everywhere."""

import re

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from models import random_inputs, resnet_block_net

import relaycomp
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.ir import op_counts
from relaycomp.passes.convert_to_bf16 import bf16_bits, convert_to_bf16
from relaycomp.runtime.agreement import HostModule
from relaycomp.targets import resolve

# bf16 keeps 8 significant bits: each product is off by up to ~2^-8 relative, sums in fp32.
BF16_RTOL = 2e-2


def _host_has_bf16() -> bool:
    from relaycomp.schedules.cpu.int8 import bf16_instructions

    return bf16_instructions(resolve("host").tvm_target()) is not None


def _reference(model, feeds):
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]


def _close(actual, expected):
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= BF16_RTOL * scale


def test_rounding_to_bf16_is_nearest_even_and_keeps_nan():
    values = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, np.inf, np.nan], np.float32)
    bits = bf16_bits(values)
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
    assert widened[:5].tolist() == [1.0, 1.0, 1.0 + 2**-6, -2.5, np.inf]
    assert np.isnan(widened[5])


def test_every_conv_is_converted_and_its_weight_halved():
    mod = import_onnx(resnet_block_net()).mod  # a 3-channel stem, then 8- and 16-channel convs
    report = {}
    converted = convert_to_bf16(report=report)(mod)
    assert "nn.conv2d" not in op_counts(converted)
    assert report["convert_to_bf16"] == op_counts(mod)["nn.conv2d"] >= 5
    assert report["constant_bytes"]["after"] < report["constant_bytes"]["before"]
    names = {gvar.name_hint for gvar, _ in converted.functions_items()}
    assert {"round_to_bf16", "conv2d_bf16"} <= names


def test_an_odd_channel_conv_reads_one_zero_channel_more():
    mod = convert_to_bf16()(import_onnx(resnet_block_net()).mod)
    stem = next(func for gvar, func in mod.functions_items() if gvar.name_hint == "round_to_bf16")
    assert [int(d) for d in stem.params[-1].shape][1] == 4  # 3 RGB channels + 1 zero channel


def test_a_grouped_conv_stays_fp32():
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 8, 8), "float32"))
    weight = relax.const(np.ones((8, 1, 3, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d(x, weight, padding=1, groups=8))
        bb.emit_func_output(y)
    assert op_counts(convert_to_bf16()(bb.get()))["nn.conv2d"] == 1


def _one_pixel_conv_module(channels: int, out_channels: int):
    """``conv2d(mean(x over H, W), W)``: a squeeze-excite block's conv over pooled features."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, 8, 8), "float32"))
    weight = relax.const(np.ones((out_channels, channels, 1, 1), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            pooled = bb.emit(relax.op.mean(x, axis=[2, 3], keepdims=True))
            y = bb.emit_output(relax.op.nn.conv2d(pooled, weight))
        bb.emit_func_output(y)
    return bb.get()


def test_a_squeeze_excite_conv_stays_fp32_and_a_large_one_pixel_conv_does_not():
    report = {}
    excite = convert_to_bf16(report=report)(_one_pixel_conv_module(96, 24))  # 9 KB weight
    assert op_counts(excite)["nn.conv2d"] == 1 and report["convert_to_bf16"] == 0
    classifier = convert_to_bf16()(_one_pixel_conv_module(960, 320))  # 1.2 MB weight
    assert "nn.conv2d" not in op_counts(classifier)


def test_a_classifier_streams_its_bf16_weight_packed_in_blocks_of_columns():
    from tvm import relax

    from relaycomp.rewrite.matvec import BLOCK, KERNEL

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((512, 1000)).astype(np.float32)  # ResNet-18's classifier
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 512), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(x, relax.const(weight)))
        bb.emit_func_output(y)
    converted = convert_to_bf16()(bb.get())
    [kernel] = [func for gvar, func in converted.functions_items() if gvar.name_hint == KERNEL]
    packed = kernel.params[1]
    assert str(packed.dtype) == "uint16"
    assert [int(d) for d in packed.shape] == [16, 512, BLOCK]
    features = rng.standard_normal((1, 512)).astype(np.float32)
    _close(HostModule(converted).run([features])[0], features @ weight)


def test_converted_module_matches_onnxruntime_to_bf16_rounding():
    model = resnet_block_net()
    feeds = random_inputs(model)
    imported = import_onnx(model)
    names = [spec.name for spec in imported.inputs]
    module = HostModule(convert_to_bf16()(imported.mod))
    _close(module.run([feeds[name] for name in names])[0], _reference(model, feeds))


@pytest.mark.skipif(not _host_has_bf16(), reason="this CPU has no AVX-512 BF16")
def test_bf16_build_for_this_machine_matches_onnxruntime(tmp_path):
    model = resnet_block_net()
    feeds = random_inputs(model)
    np.savez(tmp_path / "calib.npz", **feeds)
    artifact = relaycomp.compile(model, tmp_path / "m.so", precision="bf16",
                                 calibration=tmp_path / "calib.npz")
    report = artifact.manifest.report["precision"]
    assert report["accuracy"]["cosine"] > 0.999
    outputs = relaycomp.load(artifact.path).run(feeds)
    _close(next(iter(outputs.values())), _reference(model, feeds))


def test_bf16_is_refused_for_a_target_without_it(tmp_path):
    with pytest.raises(relaycomp.RelaycompError, match="no bf16 dot product"):
        relaycomp.compile(resnet_block_net(), tmp_path / "m.so", precision="bf16",
                          target="x86-64-avx2")
    assert not (tmp_path / "m.so").exists()


def _assembly(preset: str, channels: int) -> str:
    from tvm import relax

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, channels, 3, 3)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, 28, 28), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.relu(
                relax.op.nn.conv2d(x, relax.const(weight), padding=1)))
        bb.emit_func_output(y)
    spec = resolve(preset, num_cores=2)
    artifact_mod = convert_to_bf16()(bb.get())
    from relaycomp.compiler.pipeline import default_stages, run_stages, split_before

    target = spec.tvm_target()
    lowered, _ = run_stages(artifact_mod, split_before(default_stages("llvm"), "legalize")[1],
                            target)
    return tvm.compile(lowered, target, relax_pipeline=None).mod.imports[0].inspect_source("asm")


def _hot_loop(asm: str) -> str:
    """The basic block with the most ``vdpbf16ps``, up to its branch: the innermost loop."""
    blocks = re.split(r"^\.LBB\d+_\d+:", asm, flags=re.MULTILINE)
    block = max(blocks, key=lambda text: text.count("vdpbf16ps"))
    branch = re.search(r"^\s+j\w+\s", block, flags=re.MULTILINE)
    return block[:branch.end()] if branch else block


@pytest.mark.parametrize(("channels", "register"), [(64, "zmm"), (24, "ymm")])
def test_avx512_bf16_conv_loop_is_vdpbf16ps_on_registers(channels, register):
    loop = _hot_loop(_assembly("x86-64-avx512-bf16", channels))
    accumulators = set(re.findall(rf"vdpbf16ps\s+[^\n]*%({register}\d+)\s*$", loop,
                                  re.MULTILINE))
    assert len(accumulators) >= 8, loop
    assert not re.findall(r"vmov\w*\s+[^\n]*\(%rsp\)", loop), "spilled in the hot loop"

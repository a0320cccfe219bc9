"""bf16 on Arm (``--precision bf16`` for an Armv8.6 BF16 target such as ``aws-graviton3``): the
conv kernels multiply with the lane-indexed ``bfdot v.4s, v.8h, v.2h[i]`` (one 16-byte input load
for four output columns) on tiles that fit the 32 NEON registers, checked in the cross-compiled
assembly, so on any CPU; an Arm target without BF16 is refused in one line. Slow: the builds
run on the emulated aarch64 device (qemu-user's default CPU, ``max``, has BF16) and match
onnxruntime fp32 within bf16 rounding (test_bf16's tolerance)."""

import re

import numpy as np
import pytest
import tvm
from helpers import ort_outputs
from models import mobilenet_style_net, random_inputs, resnet_block_net
from test_bf16 import BF16_RTOL
from test_emulated_device import KEY, device  # noqa: F401 - the emulated aarch64 device
from tvm import relax

from relaycomp.cli.main import main
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
from relaycomp.passes.convert_to_bf16 import convert_to_bf16
from relaycomp.precision.config import PrecisionConfig
from relaycomp.runtime.remote import load_remote
from relaycomp.schedules.cpu.int8 import ARM_BFDOT, bf16_instructions
from relaycomp.targets import resolve

_LANE_BFDOT = re.compile(r"^\s*bfdot\s+(v\d+)\.4s, v\d+\.8h, v\d+\.2h\[[0-3]\]", re.MULTILINE)
_SPILL = re.compile(r"^\s*(st|ld)\w*\s+[^\n]*\bq\d+[^\n]*\[sp\b", re.MULTILINE)


def _assembly(preset: str, channels: int, stride: int) -> str:
    """The assembly of a 3x3 conv + ReLU over ``channels`` channels (28x28), bf16, for
    ``preset``."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, channels, 3, 3)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, 28, 28), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(
                x, relax.const(weight), strides=stride, padding=1)))
        bb.emit_func_output(y)
    target = resolve(preset, num_cores=2).tvm_target()
    stages = split_before(default_stages("llvm"), "legalize")[1]
    lowered, _ = run_stages(convert_to_bf16()(bb.get()), stages, target)
    library = tvm.compile(lowered, target, relax_pipeline=None).mod.imports[0]
    return library.inspect_source("asm")


def _hot_loop(asm: str) -> str:
    """The basic block with the most ``bfdot``, up to its branch: the innermost loop."""
    blocks = re.split(r"^\.LBB\d+_\d+:", asm, flags=re.MULTILINE)
    block = max(blocks, key=lambda text: len(re.findall(r"^\s*bfdot\s", text, re.MULTILINE)))
    branch = re.search(r"^\s+(b\.\w+|cbn?z|tbn?z|b)\s", block, flags=re.MULTILINE)
    return block[:branch.end()] if branch else block


def test_bf16_instructions_follow_the_arm_targets_bf16_feature():
    assert bf16_instructions(resolve("aws-graviton3").tvm_target()) is ARM_BFDOT
    assert bf16_instructions(resolve("cortex-a76").tvm_target()) is None
    assert bf16_instructions(resolve("cortex-a76", mattr=("+bf16",)).tvm_target()) is ARM_BFDOT


@pytest.mark.parametrize("stride", [1, 2])
def test_graviton3_bf16_conv_loop_is_lane_indexed_bfdot_on_registers(stride):
    loop = _hot_loop(_assembly("aws-graviton3", channels=32, stride=stride))
    lane_indexed = _LANE_BFDOT.findall(loop)
    assert len(set(lane_indexed)) >= 8, loop  # accumulators
    if stride == 1:  # every product lane-indexed: no dup/ld1r broadcast of an input pair
        assert len(lane_indexed) == len(re.findall(r"^\s*bfdot\s", loop, re.MULTILINE))
        assert "ld1r" not in loop and "dup\t" not in loop, loop
    assert not _SPILL.findall(loop), f"spilled q-registers:\n{loop}"


def test_bf16_is_refused_in_one_line_for_an_arm_target_without_it(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(resnet_block_net().SerializeToString())
    code = main(["compile", str(model), "-o", str(tmp_path / "m.so"), "--precision", "bf16",
                 "--target", "cortex-a76"])
    error = capsys.readouterr().err
    assert code == 1
    assert error.startswith("relaycomp: error: ") and "Traceback" not in error
    assert "'cortex-a76' has no bf16 dot product" in error and "bfdot" in error
    assert "aws-graviton3" in error  # the hint names a target that has it
    assert not (tmp_path / "m.so").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model", [resnet_block_net, mobilenet_style_net])
def test_graviton3_bf16_build_matches_onnxruntime_on_the_device(device, model, tmp_path):  # noqa: F811
    """The ``bfdot`` kernels compute on aarch64 (under qemu) what onnxruntime's fp32 does, to
    bf16 rounding."""
    model = model()
    config = CompileConfig(target="aws-graviton3", features=(PrecisionConfig(),))
    artifact = compile_model(model, tmp_path / "model.so", config)
    assert artifact.manifest.report["precision"]["target_instruction"] == "bfdot"
    inputs = random_inputs(model)
    actual = load_remote(artifact.path, device, KEY).run(inputs)
    for name, expected in ort_outputs(model, inputs).items():
        error = np.abs(actual[name] - expected).max()
        assert error <= BF16_RTOL * np.abs(expected).max(), (name, error)
        assert error > 0  # bf16 operands: not the fp32 kernels

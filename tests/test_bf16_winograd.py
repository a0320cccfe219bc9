"""bf16 Winograd: ``convert_to_bf16`` takes a planned 3x3 stride-1 conv as Winograd F(2x2, 3x3) -
its input transform rounded to bf16, the tile products on the target's bf16 dot product
(``vdpbf16ps``, ``bfdot``) with fp32 sums, the output transform in fp32 - within bf16's
tolerance of onnxruntime's fp32."""

import json
import re

import numpy as np
import pytest
import tvm
from test_bf16 import BF16_RTOL
from test_bf16 import _hot_loop as _x86_hot_loop
from test_bf16_arm import _SPILL
from test_bf16_arm import _hot_loop as _arm_hot_loop
from test_emulated_device import KEY, device  # noqa: F401 - the emulated aarch64 device
from tvm import relax

import relaycomp
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.compiler.pipeline import (
    default_stages,
    placement_of,
    run_stages,
    split_before,
    with_passes,
)
from relaycomp.passes.schedule_cpu_loops import RULE_ATTR
from relaycomp.precision.config import PrecisionConfig
from relaycomp.runtime.remote import load_remote
from relaycomp.targets import resolve
from tests.helpers import ort_outputs
from tests.passes.test_lower_convs_to_winograd import _resnet_stage
from tests.passes.test_plan_conv_layout import _weight

_STAGES = with_passes(default_stages("llvm"), [placement_of("convert_to_bf16")])


def _chain(channels: int = 64, size: int = 28) -> tvm.IRModule:
    """Two 3x3 convs with ReLU over a ``size x size`` map."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, size, size), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(
                x, _weight(channels, channels), padding=1)))
            y = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(
                a, _weight(channels, channels), padding=1)))
        bb.emit_func_output(y)
    return bb.get()


def _lowered(mod: tvm.IRModule, preset: str):
    target = resolve(preset, num_cores=2).tvm_target()
    stages, _ = split_before(_STAGES, "lower")
    scheduled, report = run_stages(mod, stages, target)
    return scheduled, target, report


def test_the_convs_become_bf16_winograd_kernels_each_with_its_schedule():
    scheduled, _, report = _lowered(_chain(), "x86-64-avx512-bf16")
    assert report.facts("convert_to_bf16")["by_kind"] == {"winograd": 2}
    rules = {gvar.name_hint: str(func.attrs[RULE_ATTR])
             for gvar, func in scheduled.functions_items()
             if isinstance(func, tvm.tirx.PrimFunc) and "winograd" in gvar.name_hint}
    assert any(name.startswith("winograd_products_bf16") for name in rules), rules
    for name, rule in rules.items():  # the products: the contraction rule's bf16 schedule
        assert rule == ("contraction" if "products" in name else "winograd"), (name, rule)


def _assembly(preset: str) -> str:
    target = resolve(preset, num_cores=2).tvm_target()
    lowered, _ = run_stages(_chain(), _STAGES, target)
    return tvm.compile(lowered, target, relax_pipeline=None).mod.imports[0].inspect_source("asm")


def test_avx512_bf16_tile_products_are_vdpbf16ps_on_registers():
    """14 zmm accumulators (7 tiles x 2 output vectors), each broadcast pair feeding two, no
    spill."""
    loop = _x86_hot_loop(_assembly("x86-64-avx512-bf16"))
    accumulators = set(re.findall(r"vdpbf16ps\s+[^\n]*%(zmm\d+)\s*$", loop, re.MULTILINE))
    assert len(accumulators) >= 12, loop
    broadcasts = len(re.findall(r"vpbroadcastd|vbroadcastss|\{1to16\}", loop))
    assert loop.count("vdpbf16ps") >= 2 * broadcasts > 0, loop
    assert not re.findall(r"vmov\w*\s+[^\n]*\(%rsp\)", loop), "spilled in the hot loop"


def test_graviton3_bf16_tile_products_are_bfdot_on_registers():
    loop = _arm_hot_loop(_assembly("aws-graviton3"))
    accumulators = set(re.findall(r"^\s*bfdot\s+(v\d+)\.4s", loop, re.MULTILINE))
    assert len(accumulators) >= 12, loop
    assert not _SPILL.findall(loop), f"spilled q-registers:\n{loop}"


def test_a_bf16_winograd_build_matches_onnxruntime_to_bf16_rounding(tmp_path):
    """A ResNet basic block (the last tiles reaching past its 14x14 map): on this CPU, the
    vdpbf16ps kernels where it has AVX-512 BF16, the portable ones else."""
    model = _resnet_stage(14, channels=64)
    x = np.random.default_rng(2).standard_normal((1, 64, 14, 14)).astype("float32")
    artifact = relaycomp.compile(model, tmp_path / "model.so", precision="bf16",
                                 inputs={"x": x.shape})
    actual = relaycomp.load(artifact.path).run({"x": x})["y"]
    expected = ort_outputs(model, {"x": x})["y"]
    error = np.abs(actual - expected).max()
    assert 0 < error <= BF16_RTOL * np.abs(expected).max()
    report = json.loads((tmp_path / "model.so.json").read_text())["report"]
    assert report["winograd"] is None  # no fp32 conv left for lower_convs_to_winograd


@pytest.mark.slow
def test_graviton3_bf16_winograd_matches_onnxruntime_on_the_device(device, tmp_path):  # noqa: F811
    """The ``bfdot`` tile products compute on aarch64 (under qemu) what onnxruntime's fp32 does,
    to bf16 rounding."""
    model = _resnet_stage(16, channels=64)
    config = CompileConfig(target="aws-graviton3", features=(PrecisionConfig(),))
    artifact = compile_model(model, tmp_path / "model.so", config)
    assert artifact.manifest.report["precision"]["by_kind"] == {"winograd": 2}
    x = np.random.default_rng(3).standard_normal((1, 64, 16, 16)).astype("float32")
    actual = load_remote(artifact.path, device, KEY).run({"x": x})["y"]
    expected = ort_outputs(model, {"x": x})["y"]
    error = np.abs(actual - expected).max()
    assert 0 < error <= BF16_RTOL * np.abs(expected).max()

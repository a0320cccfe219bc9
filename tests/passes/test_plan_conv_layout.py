"""plan_conv_layout: a chain of convs runs on blocked ``NCHW[b]c`` activations, with the layout
changed once where the chain starts and once where it ends, computing the same outputs; the
block follows the target's vectors; short chains and convs that do not fit keep NCHW."""

import json
import re

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.ir import kernel_calls
from relaycomp.passes.legalize_blocked_convs import legalize_blocked_convs
from relaycomp.passes.plan_conv_layout import blocks_for, plan_conv_layout
from relaycomp.targets import resolve
from tests.helpers import assert_matches_ort

RNG = np.random.default_rng(0)


def _weight(out_channels: int, in_channels: int, size: int = 3) -> tvm.ir.expr.Constant:
    return relax.const(RNG.standard_normal((out_channels, in_channels, size, size))
                       .astype("float32") / (3 * in_channels) ** 0.5)


def _bias(channels: int) -> tvm.ir.expr.Constant:
    return relax.const(RNG.standard_normal((1, channels, 1, 1)).astype("float32"))


def _residual_block(channels: int = 32, stem_in: int | None = None, size: int = 8,
                    ) -> tvm.IRModule:
    """conv+bias+relu -> conv+bias + the first conv's output -> relu (a ResNet basic block),
    after a conv+relu from ``stem_in`` channels if given (an RGB stem)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, stem_in or channels, size, size), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = x
            if stem_in:
                h = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, _weight(channels, stem_in),
                                                                padding=1)))
            a = bb.emit(relax.op.nn.relu(relax.op.add(
                relax.op.nn.conv2d(h, _weight(channels, channels), padding=1), _bias(channels))))
            b = bb.emit(relax.op.add(relax.op.nn.conv2d(a, _weight(channels, channels), padding=1),
                                     _bias(channels)))
            y = bb.emit_output(relax.op.nn.relu(relax.op.add(b, a)))
        bb.emit_func_output(y)
    return bb.get()


def _calls(mod: tvm.IRModule) -> list[str]:
    """The ops (``call_tir``: the kernel's name) of ``main``, in order."""
    names = []
    for binding in mod["main"].body.blocks[0].bindings:
        call = binding.value
        if call.op.name == "relax.call_tir":
            names.append(call.args[0].name_hint)
        else:
            names.append(call.op.name.removeprefix("relax."))
    return names


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    executable = tvm.compile(mod, "llvm")
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _planned(mod: tvm.IRModule, preset: str = "x86-64-avx512") -> tuple[tvm.IRModule, dict]:
    """``mod`` planned, its blocked convs made kernels (``legalize_blocked_convs``)."""
    report = {}
    target = resolve(preset, num_cores=2).tvm_target()
    with target:
        return legalize_blocked_convs(target)(plan_conv_layout(target, report=report)(mod)), report


def test_a_conv_chain_changes_layout_at_its_ends_only():
    before = _residual_block(channels=32)
    after, report = _planned(before)
    assert _calls(after) == [
        "layout_transform",  # NCHW -> NCHW32c, once, at the chain's start
        "conv2d_nchwc", "add", "nn.relu",
        "conv2d_nchwc", "add", "add", "nn.relu",  # bias and residual add in the blocked layout
        "layout_transform",  # NCHW32c -> NCHW, once, at its end
    ]
    assert report == {"block": 32, "planned": 2, "layout_changes": 2}
    x = RNG.standard_normal((1, 32, 8, 8)).astype("float32")
    np.testing.assert_allclose(_run(after, x), _run(before, x), rtol=1e-5, atol=1e-5)


def test_weights_and_biases_are_laid_out_at_compile_time():
    after, _ = _planned(_residual_block(channels=32))
    params = [binding.value.args[1] for binding in after["main"].body.blocks[0].bindings
              if binding.value.op.name == "relax.call_tir"
              and binding.value.args[0].name_hint == "conv2d_nchwc"]
    assert len(params) == 2
    for args in params:
        weight = args.fields[1]
        assert isinstance(weight, tvm.ir.expr.Constant)
        assert tuple(weight.value.shape) == (1, 1, 3, 3, 32, 32)  # OIHW32i32o


def test_a_single_conv_keeps_nchw_its_two_layout_changes_would_not_pay():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d(x, _weight(32, 32), padding=1))
        bb.emit_func_output(y)
    before = bb.get()
    after, report = _planned(before)
    tvm.ir.assert_structural_equal(after, before)
    assert report["planned"] == 0
    assert "2 layout changes for 1 convs" in report["skipped"]


def test_an_rgb_stem_reads_nchw_and_writes_the_blocked_layout():
    before = _residual_block(channels=32, stem_in=3)
    after, report = _planned(before)
    calls = _calls(after)
    assert calls[:2] == ["stem_conv2d_nchwc", "nn.relu"]  # no layout change after it
    assert calls.count("conv2d_nchwc") == 2 and report["planned"] == 3
    assert report["layout_changes"] == 1  # at the end only
    x = RNG.standard_normal((1, 3, 8, 8)).astype("float32")
    np.testing.assert_allclose(_run(after, x), _run(before, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("preset", "blocks"), [("x86-64-avx512", [32, 16]),
                                                 ("x86-64-avx2", [16, 8]), ("cortex-a76", [8, 4])])
def test_the_block_is_two_vectors_of_the_target_then_one(preset, blocks):
    assert blocks_for(resolve(preset, num_cores=2).tvm_target()) == blocks


def _inverted_residual(channels: int = 16, expanded: int = 64, size: int = 14,
                       stem: bool = False):
    """A MobileNetV2 block in ONNX: 1x1 expand + ReLU6 (``Clip``), 3x3 depthwise + ReLU6,
    1x1 project, residual add; the convs with biases; with ``stem``, after a 3x3 conv from 3
    channels (the model's input then has 3)."""
    def conv(name, source, out_channels, in_channels, kernel, groups=1):
        inits.append(numpy_helper.from_array((RNG.standard_normal(
            (out_channels, in_channels // groups, kernel, kernel)) / (in_channels // groups
                                                                     * kernel * kernel) ** 0.5
        ).astype("float32"), f"{name}_w"))
        inits.append(numpy_helper.from_array(RNG.standard_normal(out_channels)
                                             .astype("float32") / 4, f"{name}_b"))
        nodes.append(helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [name],
                                      group=groups, pads=[kernel // 2] * 4))

    def relu6(name, source):
        nodes.append(helper.make_node("Clip", [source, "zero", "six"], [name]))

    nodes, inits = [], [numpy_helper.from_array(np.array(0, "float32"), "zero"),
                        numpy_helper.from_array(np.array(6, "float32"), "six")]
    source = "x"
    if stem:
        conv("stem", "x", channels, 3, 3)
        source = "stem"
    conv("expand", source, expanded, channels, 1)
    relu6("expand_relu", "expand")
    conv("depthwise", "expand_relu", expanded, expanded, 3, groups=expanded)
    relu6("depthwise_relu", "depthwise")
    conv("project", "depthwise_relu", channels, expanded, 1)
    nodes.append(helper.make_node("Add", ["project", source], ["y"]))
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes, "inverted_residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3 if stem else channels,
                                                                size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_mobilenet_block_runs_blocked_through_its_depthwise_conv_and_relu6():
    """On AVX-512, 16 channels do not fill a block of 32, so the block is one vector (16); the
    importer's ReLU6 kernels become ``maximum``/``minimum``, which keep the blocked layout."""
    after, report = _planned(relax.transform.FoldConstant()(
        import_onnx(_inverted_residual()).mod))
    assert [name.rstrip("0123456789") for name in _calls(after)] == [
        "layout_transform",
        "conv2d_nchwc", "add", "maximum", "minimum",
        "depthwise_conv2d_nchwc", "add", "maximum", "minimum",
        "conv2d_nchwc", "add", "add",
        "layout_transform",
    ]
    assert report == {"block": 16, "planned": 3, "layout_changes": 2}
    depthwise = next(binding.value.args[1].fields[1]
                     for binding in after["main"].body.blocks[0].bindings
                     if binding.value.op.name == "relax.call_tir"
                     and binding.value.args[0].name_hint == "depthwise_conv2d_nchwc")
    assert tuple(depthwise.value.shape) == (4, 1, 3, 3, 1, 16)  # OIHW1i16o


def test_a_compiled_mobilenet_block_with_padded_channels_matches_onnxruntime(tmp_path):
    """24 channels fill no block: they are padded to 32 (``rewrite.pad_channels``) and the
    whole block still runs blocked, from the stem on, with the layout changed once."""
    x = RNG.standard_normal((1, 3, 14, 14)).astype("float32") * 3  # some ReLU6 saturate
    assert_matches_ort(_inverted_residual(channels=24, expanded=144, stem=True), {"x": x},
                       tmp_path, rtol=1e-5)
    report = json.loads((tmp_path / "model.so.json").read_text())["report"]["layout"]
    assert report["planned"] == 4 and report["layout_changes"] == 1  # the stem writes blocked


def test_a_conv_over_padded_channels_reads_only_the_channels_with_weights():
    """Padded to blocks of 32, the expand conv's 24 input channels and the projection's 144 are
    all it reads (one weight block, the channels of all input blocks along one axis), not the
    8 and 16 zero channels ``pad_channels`` added: a quarter less work for MobileNetV2's 24 ->
    144 convs; the numerics test above runs the same kernels."""
    stages, _ = split_before(default_stages("llvm"), "fuse")
    lowered, _ = run_stages(import_onnx(_inverted_residual(channels=24, expanded=144,
                                                           stem=True)).mod,
                            stages, resolve("x86-64-avx512", num_cores=2).tvm_target())
    weights = [[int(d) for d in call.args[1][1].ty.shape] for call in kernel_calls(lowered)
               if re.fullmatch(r"conv2d_nchwc\d*", call.args[0].name_hint)]
    assert weights == [[5, 1, 1, 1, 24, 32], [1, 1, 1, 1, 144, 32]]


def _onnx_chain(channels: int = 32):
    """Two ResNet basic blocks in ONNX (conv with bias, relu, residual add)."""
    nodes, inits, previous = [], [], "x"
    for i in range(4):
        inits += [numpy_helper.from_array((RNG.standard_normal((channels, channels, 3, 3)) / 17)
                                          .astype("float32"), f"w{i}"),
                  numpy_helper.from_array(RNG.standard_normal(channels).astype("float32"),
                                          f"b{i}")]
        nodes.append(helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [f"c{i}"],
                                      pads=[1, 1, 1, 1]))
        if i % 2:
            nodes.append(helper.make_node("Add", [f"c{i}", f"r{i - 1}"], [f"s{i}"]))
            nodes.append(helper.make_node("Relu", [f"s{i}"], [f"r{i}"]))
        else:
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        previous = f"r{i}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 14, 14])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, channels, 14, 14])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_compiled_chain_matches_onnxruntime_and_the_manifest_records_the_plan(tmp_path):
    model = _onnx_chain()
    x = RNG.standard_normal((1, 32, 14, 14)).astype("float32")
    assert_matches_ort(model, {"x": x}, tmp_path, rtol=1e-5)
    manifest = json.loads((tmp_path / "model.so.json").read_text())
    assert "layout/plan_conv_layout" in manifest["passes"]
    assert manifest["report"]["layout"]["planned"] == 4


@pytest.mark.parametrize(("preset", "register", "accumulators"),
                         [("x86-64-avx512", "zmm", 14), ("x86-64-avx2", "ymm", 8)])
def test_blocked_conv_kernels_fill_the_target_vector_registers(preset, register, accumulators):
    """Cross-compiled, the blocked conv's innermost loop accumulates in many registers of the
    target's width and spills none; AVX2 code holds no 512-bit register."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from relaycomp.passes.schedule_cpu_loops import schedule_cpu_loops
    from tests.test_cpu_isa import _fma_accumulators, _hot_loop, _spills

    target = resolve(preset, num_cores=2).tvm_target()
    with target:
        mod = tvm.transform.Sequential(
            [plan_conv_layout(target), legalize_blocked_convs(target)] + cpu.legalize_passes(target)
            + [relax.transform.FuseOps(), relax.transform.FuseTIR(), schedule_cpu_loops(target)]
            + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(
                _residual_block(channels=64, size=28))
    assert "conv2d_nchwc" in mod.script()
    asm = _hot_loop(tvm.compile(mod, target, relax_pipeline=None).mod.imports[0]
                    .inspect_source("asm"))
    assert len(_fma_accumulators(asm, register)) >= accumulators
    assert not _spills(asm, register)
    if register == "ymm":
        assert "zmm" not in asm


def test_a_one_vector_block_tiles_two_output_blocks_per_broadcast():
    """With a one-vector block (48 channels on AVX-512), a 1x1 conv's tile spans two blocks of
    output channels, so each broadcast input feeds two multiply-adds (as with a two-vector
    block), in at least 14 accumulators, without spills."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from relaycomp.passes.schedule_cpu_loops import schedule_cpu_loops
    from tests.test_cpu_isa import _fma_accumulators, _hot_loop, _spills

    target = resolve("x86-64-avx512", num_cores=2).tvm_target()
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 48, 14, 14), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, _weight(96, 48, size=1))))
            y = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(a, _weight(96, 96, size=1))))
        bb.emit_func_output(y)
    mod = bb.get()
    with target:
        mod = tvm.transform.Sequential(
            [plan_conv_layout(target), legalize_blocked_convs(target)] + cpu.legalize_passes(target)
            + [relax.transform.FuseOps(), relax.transform.FuseTIR(), schedule_cpu_loops(target)]
            + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(mod)
    asm = _hot_loop(tvm.compile(mod, target, relax_pipeline=None).mod.imports[0]
                    .inspect_source("asm"))
    assert len(_fma_accumulators(asm, "zmm")) >= 14
    assert asm.count("vfmadd231ps") >= 2 * asm.count("vbroadcastss") > 0
    assert not _spills(asm, "zmm")


def _hardswish_chain(channels: int = 16, size: int = 10):
    """PP-LCNet's pattern: conv, a learnable affine with one-element scale and bias (``[1]``
    constants, the scale written first: ``s * x``), ``HardSwish``, then a conv and a
    ``HardSigmoid`` gate."""
    inits = [numpy_helper.from_array((RNG.standard_normal((channels, channels, 3, 3)) / 12)
                                     .astype("float32"), f"w{i}") for i in range(2)]
    inits += [numpy_helper.from_array(np.array([1.5], "float32"), "scale"),
              numpy_helper.from_array(np.array([-0.25], "float32"), "shift")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1] * 4),
             helper.make_node("Mul", ["scale", "c0"], ["m0"]),
             helper.make_node("Add", ["m0", "shift"], ["a0"]),
             helper.make_node("HardSwish", ["a0"], ["h0"]),
             helper.make_node("Conv", ["h0", "w1"], ["c1"], pads=[1] * 4),
             helper.make_node("HardSigmoid", ["c1"], ["g1"], alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["c1", "g1"], ["y"])]
    graph = helper.make_graph(
        nodes, "hardswish", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hardswish_and_one_element_affines_keep_the_blocked_layout(tmp_path):
    """``relax.clip`` becomes ``maximum``/``minimum`` and a ``[1]`` constant a scalar (put
    second), so the layout changes only at the chain's ends (PP-OCR's backbone went from 91
    changes for 56 convs, refused, to 19); the outputs match onnxruntime."""
    model = _hardswish_chain()
    planned, report = _planned(import_onnx(model).mod)
    assert report["planned"] == 2 and report["layout_changes"] == 2
    assert _calls(planned).count("layout_transform") == 2
    x = RNG.standard_normal((1, 16, 10, 10)).astype("float32") * 4  # the clips saturate
    assert_matches_ort(model, {"x": x}, tmp_path, rtol=1e-5)


def test_the_compile_command_says_what_the_plan_did(tmp_path, capsys):
    import onnx

    from relaycomp.cli.main import main

    onnx.save(_onnx_chain(), tmp_path / "chain.onnx")
    assert main(["compile", str(tmp_path / "chain.onnx"), "-o", str(tmp_path / "m.so"),
                 "--target", "x86-64-avx512"]) == 0
    assert "  layout: 4 convs on NCHW32c, 2 layout change(s)" in capsys.readouterr().out

"""A conv's or a pool's padded input is not copied whole through memory, one vector per
parallel iteration, when the kernel can do better: a depthwise conv pads, inside each parallel
iteration, the input rows that iteration reads (its iterations together pad the input about as
many times over as the window has rows); a dense conv, whose every output-channel block would
pad the whole input again, copies its padded input in a stage of its own, one whole row per
parallel iteration; a max pool reads its input where it is, the padding folded into its loads.
Checked in the scheduled loops for AVX-512, AVX2 and Arm; the outputs, at odd sizes whose
borders differ from the interior, match onnxruntime."""

import numpy as np
import onnx
import pytest
from tvm import s_tir, tirx

from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.targets import resolve
from tests.helpers import assert_matches_ort
from tests.models import OPSET, _Graph

PRESETS = ["x86-64-avx512", "x86-64-avx2", "cortex-a76"]


def _net() -> onnx.ModelProto:
    """An RGB stem, a dense 5x5 conv (several blocks of output channels whichever the block; a
    3x3 one would be Winograd's), a
    max pool, then a 1x1 expansion, depthwise 3x3 convs (stride 1 and 2) with ReLU6, a 1x1
    projection; a classifier head.
    Input [1, 3, 30, 30]: 15x15 after the stem, 8x8 after the pool, 4x4 after the last
    stride 2."""
    g = _Graph(seed=3)
    zero, six = g.const(np.float32(0.0), "clip_min"), g.const(np.float32(6.0), "clip_max")
    y = g.op("Relu", [g.conv("x", 3, 64, stride=2)])
    y = g.op("Relu", [g.conv(y, 64, 64, kernel=5)])
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = g.op("Clip", [g.conv(y, 64, 128, kernel=1), zero, six])
    y = g.op("Clip", [g.conv(y, 128, 128, group=128), zero, six])
    y = g.op("Clip", [g.conv(y, 128, 128, stride=2, group=128), zero, six])
    y = g.conv(y, 128, 32, kernel=1)
    logits = g.classifier_head(y, 32, 10)
    inputs = [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 30, 30])]
    model = g.model("padded_inputs_net", inputs, {"logits": logits},
                    {"logits": (onnx.TensorProto.FLOAT, [1, 10])})
    assert model.opset_import[0].version == OPSET
    return model


@pytest.fixture(scope="module")
def net() -> onnx.ModelProto:
    return _net()


def _scheduled(model: onnx.ModelProto, preset: str) -> dict[str, tirx.PrimFunc]:
    """The model's kernels after the ``schedule`` stage for ``preset``, by name."""
    target = resolve(preset, num_cores=2).tvm_target()
    stages, _ = split_before(default_stages("llvm"), "lower")
    mod = run_stages(import_onnx(model).mod, stages, target)[0]
    return {gvar.name_hint: func for gvar, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc)}


def _blocks(func: tirx.PrimFunc) -> list[str]:
    sch = s_tir.Schedule(func)
    return [sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))]


def _outer_loops(sch: s_tir.Schedule, block: str) -> list:
    return [sch.get(loop) for loop in sch.get_loops(sch.get_sblock(block))]


def _padding_and_main(func: tirx.PrimFunc, kind: str) -> tuple[list, list]:
    """The loops around the padding block and around the ``kind`` reduction's update."""
    sch = s_tir.Schedule(func)
    names = _blocks(func)
    (pad,) = [name for name in names if name.startswith("pad_temp")]
    main = next(name for name in names if name.startswith(kind) and not name.endswith("_init")
                and "global" not in name)
    return _outer_loops(sch, pad), _outer_loops(sch, main)


@pytest.fixture(scope="module", params=PRESETS)
def kernels(request, net) -> tuple[str, dict[str, tirx.PrimFunc]]:
    return request.param, _scheduled(net, request.param)


def _kernels_of(kernels: dict, kind: str) -> list[tirx.PrimFunc]:
    found = [func for name, func in kernels.items()
             if kind in name and any(b.startswith("pad_temp") for b in _blocks(func))]
    assert found, f"no {kind} kernel with a padded input among {sorted(kernels)}"
    return found


def test_a_depthwise_conv_pads_the_rows_each_parallel_iteration_reads(kernels):
    preset, found = kernels
    for func in _kernels_of(found, "depthwise_conv2d_nchwc"):
        pad_loops, main_loops = _padding_and_main(func, "depthwise_conv2d_nchwc")
        assert pad_loops[0].kind == tirx.ForKind.PARALLEL, preset
        assert pad_loops[0].same_as(main_loops[0]), f"{preset}: padding is a stage of its own"


def test_a_dense_conv_copies_its_padded_input_a_row_per_iteration(kernels):
    preset, found = kernels
    dense = [func for func in _kernels_of(found, "conv2d_nchwc")
             if not any(b.startswith(("depthwise", "stem")) for b in _blocks(func))]
    assert dense, f"{preset}: no dense conv with a padded input"
    for func in dense:
        pad_loops, main_loops = _padding_and_main(func, "conv2d_nchwc")
        assert pad_loops[0].kind == tirx.ForKind.PARALLEL, preset
        assert not pad_loops[0].same_as(main_loops[0]), f"{preset}: padding recomputed per tile"
        row = [loop for loop in pad_loops[1:] if int(loop.extent) > 1]
        assert row and row[0].kind == tirx.ForKind.SERIAL, f"{preset}: not a row per iteration"


def test_a_max_pool_reads_its_input_with_the_padding_folded_into_its_loads(kernels):
    preset, found = kernels
    pools = [func for func in found.values()
             if any(b.startswith("pool_max") for b in _blocks(func))]
    assert pools, f"{preset}: no max pool kernel"
    for func in pools:
        blocks = _blocks(func)
        assert not any(b.startswith("pad_temp") for b in blocks), f"{preset}: {blocks}"
        assert func.attrs["relaycomp.cpu_schedule_rule"] == "contraction", preset


def test_padded_inputs_keep_the_outputs_of_onnxruntime(net, tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 3, 30, 30)).astype(np.float32)
    assert_matches_ort(net, {"x": x}, tmp_path)

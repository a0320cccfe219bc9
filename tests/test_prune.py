"""Structured pruning: dependency groups, importance criteria, ratios, the ONNX rewrite, the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import assert_matches_ort, ort_outputs
from models import (
    _float_input,
    _float_output,
    _Graph,
    conv_net,
    mlp,
    mobilenet_style_net,
    random_inputs,
    resnet_block_net,
)
from onnx import numpy_helper

from relaycomp.channels.graph import ChannelGraph
from relaycomp.cli.main import main
from relaycomp.errors import CalibrationError
from relaycomp.frontend.examples import get_example
from relaycomp.frontend.onnx_import import load_onnx
from relaycomp.prune.importance import group_slices
from relaycomp.prune.pruner import PruneConfig, PruneError, Pruner, prune


def concat_net() -> onnx.ModelProto:
    """Inception/DenseNet-style: two branches concatenated, then a dense-block concat of the
    input with a conv of it, a BN over the concatenation, and a Split back into two halves that
    are added (so the halves' channel sets join)."""
    g = _Graph(seed=11)
    stem = g.op("Relu", [g.batchnorm(g.conv("x", 3, 8), 8)])
    branch_a = g.op("Relu", [g.conv(stem, 8, 8, kernel=1)])
    branch_b = g.op("Relu", [g.conv(stem, 8, 8)])
    mixed = g.op("Concat", [branch_a, branch_b], axis=1)  # 16 = 8 + 8
    dense = g.op("Concat", [mixed, g.op("Relu", [g.conv(mixed, 16, 8)])], axis=1)  # 24
    dense = g.op("Relu", [g.batchnorm(dense, 24)])
    first, second = g.op("Split", [dense, g.ints(16, 8)], outputs=2, axis=1)
    summed = g.op("Add", [g.conv(first, 16, 8, kernel=1), second])
    logits = g.classifier_head(summed, 8, 10)
    return g.model("concat_net", [_float_input("x", [1, 3, 16, 16])], {"logits": logits},
                   {"logits": _float_output([1, 10])})


def flatten_net() -> onnx.ModelProto:
    """A LeNet-style head: conv → Flatten → Gemm, and conv → Reshape([1, -1]-as-literal) →
    Gemm, so whole H*W blocks of dense input columns go with each channel."""
    g = _Graph(seed=12)
    y = g.op("Relu", [g.conv("x", 3, 8, stride=2)])  # [1,8,4,4]
    flat = g.op("Flatten", [y], axis=1)
    z = g.op("Relu", [g.conv(y, 8, 8)])
    reshaped = g.op("Reshape", [z, g.ints(1, 128)])
    joined = g.op("Add", [g.linear(flat, 128, 16), g.linear(reshaped, 128, 16)])
    logits = g.linear(g.op("Relu", [joined]), 16, 10)
    return g.model("flatten_net", [_float_input("x", [1, 3, 8, 8])], {"logits": logits},
                   {"logits": _float_output([1, 10])})


def lrn_net() -> onnx.ModelProto:
    """conv_1 feeds LRN, which mixes neighbouring channels: pruning cannot follow it."""
    g = _Graph(seed=13)
    y = g.op("LRN", [g.op("Relu", [g.conv("x", 3, 8)])], size=3)
    y = g.op("Relu", [g.conv(y, 8, 16)])
    logits = g.classifier_head(y, 16, 10)
    return g.model("lrn_net", [_float_input("x", [1, 3, 8, 8])], {"logits": logits},
                   {"logits": _float_output([1, 10])})


def c2f_net() -> onnx.ModelProto:
    """YOLOv8's C2f block: one conv's output Split in halves, a bottleneck with a residual on
    the second half, and the halves and the bottleneck concatenated into a 1x1 conv."""
    g = _Graph(seed=14)
    stem = g.op("Relu", [g.batchnorm(g.conv("x", 3, 16), 16)])
    first, second = g.op("Split", [stem, g.ints(8, 8)], outputs=2, axis=1)
    bottleneck = g.op("Add", [second, g.op("Relu", [g.conv(second, 8, 8)])])
    mixed = g.op("Concat", [first, second, bottleneck], axis=1)  # 24
    logits = g.classifier_head(g.op("Relu", [g.conv(mixed, 24, 16, kernel=1)]), 16, 10)
    return g.model("c2f_net", [_float_input("x", [1, 3, 16, 16])], {"logits": logits},
                   {"logits": _float_output([1, 10])})


def decoder_net() -> onnx.ModelProto:
    """Channel Slices of one conv (added back together), spatial Pad, a ConvTranspose up and a
    Resize down, Squeeze/Unsqueeze around the head: the ops of FPN/U-Net style decoders."""
    g = _Graph(seed=15)
    y = g.op("Relu", [g.conv("x", 3, 16)])
    low = g.op("Slice", [y, g.ints(0), g.ints(8), g.ints(1)])
    high = g.op("Slice", [y, g.ints(8), g.ints(16), g.ints(1)])
    y = g.op("Pad", [g.op("Add", [low, high]), g.ints(0, 0, 1, 1, 0, 0, 1, 1)])  # [1,8,10,10]
    y = g.op("Relu", [g.conv(y, 8, 8)])
    up = g.op("ConvTranspose", [y, g.weight((8, 8, 2, 2), 32), g.const(np.zeros(8, np.float32))],
              kernel_shape=[2, 2], strides=[2, 2])  # [1,8,20,20]
    scales = g.const(np.array([1, 1, 0.5, 0.5], np.float32))
    y = g.op("Resize", [g.op("Relu", [up]), "", scales], mode="nearest")  # [1,8,10,10]
    y = g.op("Squeeze", [g.op("GlobalAveragePool", [y]), g.ints(2, 3)])  # [1,8]
    y = g.op("Unsqueeze", [y, g.ints(0)])  # [1,1,8]
    logits = g.op("MatMul", [y, g.weight((8, 10), 8)])
    return g.model("decoder_net", [_float_input("x", [1, 3, 8, 8])], {"logits": logits},
                   {"logits": _float_output([1, 1, 10])})


def digits_model() -> onnx.ModelProto:
    """The bundled digits CNN (conv-BN-ReLU x3, GAP, Gemm)."""
    return load_onnx(get_example("digits").model_path)


BUILDERS = {"resnet": resnet_block_net, "mobilenet": mobilenet_style_net, "concat": concat_net,
            "c2f": c2f_net, "decoder": decoder_net, "mlp": mlp, "flatten": flatten_net,
            "digits": digits_model}


def _feed(model):
    return random_inputs(model, {"batch": 2})


def _initializer(model, name) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_pruned_model_is_valid_smaller_and_keeps_output_shapes(name, ratio):
    model = BUILDERS[name]()
    pruned, report = prune(model, PruneConfig(ratio=ratio, round_to=1))
    onnx.checker.check_model(pruned, full_check=True)
    inputs = _feed(model)
    before, after = ort_outputs(model, inputs), ort_outputs(pruned, inputs)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    share = report.after["macs"] / report.before["macs"]
    # Interior layers lose input and output channels, (1 - r)^2; layers next to the fixed
    # input/output only one side, (1 - r).
    assert (1 - ratio) ** 2 - 0.05 <= share <= 1 - ratio + 0.05, share
    assert report.after["params"] < report.before["params"]
    assert report.pruned and all(g["kept"] < g["channels"] for g in report.pruned)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_pruned_model_compiles_and_matches_onnxruntime(name, tmp_path):
    pruned, _ = prune(BUILDERS[name](), PruneConfig(ratio=0.5, round_to=1))
    inputs = random_inputs(pruned)
    assert_matches_ort(pruned, inputs, tmp_path)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_ratio_zero_reproduces_the_model_exactly(name):
    model = BUILDERS[name]()
    pruned, report = prune(model, PruneConfig(ratio=0.0))
    assert pruned.SerializeToString() == model.SerializeToString()
    inputs = _feed(model)
    for key, value in ort_outputs(model, inputs).items():
        np.testing.assert_array_equal(ort_outputs(pruned, inputs)[key], value)
    assert report.after == report.before


def test_digits_macs_and_channels_at_half():
    pruned, report = prune(digits_model(), PruneConfig(ratio=0.5))
    assert report.before["macs"] == 230_720 and report.after["macs"] == 60_064
    assert [(g["name"], g["kept"]) for g in report.pruned] == [
        ("/conv1/Conv", 8), ("/conv2/Conv", 16), ("/conv3/Conv", 16)]
    assert _initializer(pruned, "fc.weight").shape == (10, 16)
    assert report.skipped == [{"name": "/fc/Gemm", "producers": ["/fc/Gemm"], "channels": 10,
                               "reasons": ["reaches graph output 'logits'"]}]


def test_digits_accuracy_is_reported_before_and_after_pruning():
    samples = get_example("digits").samples()
    model = digits_model()

    def accuracy(m):
        logits = ort_outputs(m, {"input": samples["input"]})["logits"]
        return float(np.mean(logits.argmax(axis=1) == samples["labels"]))

    pruned, _ = prune(model, PruneConfig(ratio=0.3, importance="activation", round_to=1),
                      calib={"input": samples["calibration"]})
    # No fine-tuning (that is distillation's job): accuracy drops but stays above chance.
    assert accuracy(model) >= 0.95
    assert 0.2 < accuracy(pruned) < accuracy(model)


def test_residual_branches_and_shortcut_share_one_group():
    graph = ChannelGraph.build(resnet_block_net())
    producers = sorted(g.producers for g in graph.groups if len(g.producers) > 1)
    # stem conv + identity block's second conv; strided block's conv + projection shortcut
    assert producers == [["conv_1", "conv_3"], ["conv_5", "conv_6"]]


def test_depthwise_conv_follows_its_input_channels():
    pruned, _ = prune(mobilenet_style_net(), PruneConfig(ratio=0.5, round_to=1))
    depthwise = [n for n in pruned.graph.node if n.op_type == "Conv"
                 and next(a.i for a in n.attribute if a.name == "group") > 1]
    for node in depthwise:
        group = next(a.i for a in node.attribute if a.name == "group")
        assert _initializer(pruned, node.input[1]).shape[0] == group == 16  # 32 -> 16


def test_concat_offsets_and_split_sizes_follow_the_groups():
    graph = ChannelGraph.build(concat_net())
    assert all(g.prunable for g in graph.groups if g.producers != ["gemm_1"])
    pruned, _ = prune(concat_net(), PruneConfig(ratio=0.5, round_to=1))
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    assert list(_initializer(pruned, split.input[1])) == [8, 4]
    assert _initializer(pruned, "w_5").shape[1] == 8  # reads the 4+4 concatenated branches


def test_a_split_inside_one_conv_cuts_it_into_separately_pruned_pieces():
    graph = ChannelGraph.build(c2f_net())
    names = sorted(g.name for g in graph.groups)
    assert names == ["conv_1[0:8]", "conv_1[8:16]+conv_2", "conv_3", "gemm_1"]
    pruned, _ = prune(c2f_net(), PruneConfig(ratio=0.5, round_to=1))
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    assert list(_initializer(pruned, split.input[1])) == [4, 4]
    assert _initializer(pruned, "w_3").shape == (8, 12, 1, 1)  # 4 + 4 + 4 concatenated


def test_slices_pads_transposed_convs_resizes_and_squeezes_are_followed():
    graph = ChannelGraph.build(decoder_net())
    assert sorted(g.name for g in graph.groups if g.prunable) == [
        "conv_1[0:8]+conv_1[8:16]", "conv_2", "convtranspose_1"]
    pruned, _ = prune(decoder_net(), PruneConfig(ratio=0.5, round_to=1))
    slices = [n for n in pruned.graph.node if n.op_type == "Slice"]
    bounds = [(int(_initializer(pruned, n.input[1])[0]), int(_initializer(pruned, n.input[2])[0]))
              for n in slices]
    assert bounds == [(0, 4), (4, 8)]
    assert _initializer(pruned, "w_1").shape == (8, 3, 3, 3)
    assert _initializer(pruned, "w_4").shape == (4, 10)


def test_flatten_and_reshape_remove_whole_spatial_blocks():
    pruned, _ = prune(flatten_net(), PruneConfig(ratio=0.5, round_to=1))
    dense_weights = [_initializer(pruned, n.input[1]).shape for n in pruned.graph.node
                     if n.op_type == "Gemm"]
    assert dense_weights[:2] == [(8, 64), (8, 64)]  # 4 of 8 channels x 4*4 pixels; 16 -> 8


def test_unanalyzable_group_is_left_alone_and_reported():
    model = lrn_net()
    pruned, report = prune(model, PruneConfig(ratio=0.5, round_to=1))
    skipped = {g["name"]: g["reasons"] for g in report.skipped}
    assert "LRN (node 'lrn_1')" in skipped["conv_1"][0]
    assert _initializer(pruned, "w_1").shape == _initializer(model, "w_1").shape
    assert _initializer(pruned, "w_2").shape == (8, 8, 3, 3)  # conv_2's own filters still go
    onnx.checker.check_model(pruned, full_check=True)


def test_kept_channels_round_up_to_a_multiple_and_never_reach_zero():
    _, report = prune(digits_model(), PruneConfig(ratio=0.3, round_to=8))
    # 16 * 0.7 = 11.2 -> 16 (nothing removed); 32 * 0.7 = 22.4 -> 24
    assert [g["kept"] for g in report.pruned] == [16, 24, 24]
    _, report = prune(mlp(), PruneConfig(ratio=0.99, round_to=1))
    assert [g["kept"] for g in report.pruned] == [1, 1]


def test_protected_layers_and_overrides():
    model = digits_model()
    config = PruneConfig(ratio=0.5, round_to=1, protected=("/conv2/Conv",),
                         overrides={"/conv1/Conv": 0.75})
    pruned, report = prune(model, config)
    assert _initializer(pruned, "conv2.weight").shape == (32, 4, 3, 3)  # only its inputs shrink
    assert _initializer(pruned, "conv3.weight").shape == (16, 32, 3, 3)
    assert {"name": "/conv2/Conv", "producers": ["/conv2/Conv"], "channels": 32,
            "reasons": ["protected"]} in report.skipped
    with pytest.raises(PruneError, match="no node named"):
        Pruner(model, PruneConfig(protected=("conv9",)))


def test_global_scope_removes_the_requested_share_across_layers():
    pruner = Pruner(resnet_block_net(), PruneConfig(ratio=0.4, scope="global", round_to=1))
    keep = pruner.plan()
    total = sum(g.size for g in pruner.candidates())
    removed = sum(pruner.graph.groups[i].size - len(k) for i, k in keep.items())
    assert removed == int(0.4 * total)
    assert len({len(k) / pruner.graph.groups[i].size for i, k in keep.items()}) > 1


def _conv_net_with(**edits) -> onnx.ModelProto:
    """conv_net with some of conv_1's channels made unimportant in one specific way."""
    model = conv_net()
    values = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    for name, (channels, axis, value) in edits.items():
        index = [slice(None)] * values[name].ndim
        index[axis] = list(channels)
        values[name][tuple(index)] = value
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
    return model


def _removed(model, importance, calib=None) -> set[int]:
    pruner = Pruner(model, PruneConfig(ratio=0.25, importance=importance, round_to=1), calib)
    group = pruner.graph.group_of("conv_1")
    return set(range(group.size)) - set(pruner.plan()[group.id].tolist())


@pytest.mark.parametrize("importance", ["l1", "l2"])
def test_weight_norms_remove_zeroed_filters_first(importance):
    # conv_1's filters 0 and 3, their bias, and conv_2's input slices for them are zero
    model = _conv_net_with(w_1=([0, 3], 0, 0.0), const_1=([0, 3], 0, 0.0), w_2=([0, 3], 1, 0.0))
    assert _removed(model, importance) == {0, 3}


def test_bn_scale_removes_channels_with_the_smallest_gamma():
    assert _removed(_conv_net_with(bn_1=([2, 5], 0, 0.0)), "bn_scale") == {2, 5}


def test_activation_removes_channels_that_are_never_active():
    # gamma 0 and beta -1: these channels are 0 after the ReLU for every input
    model = _conv_net_with(bn_1=([1, 6], 0, 0.0), bn_2=([1, 6], 0, -1.0))
    calib = random_inputs(model, {"x": (4, 3, 32, 32)})
    assert _removed(model, "activation", calib) == {1, 6}
    with pytest.raises(CalibrationError):
        prune(model, PruneConfig(importance="activation"))


def test_random_baseline_is_seeded():
    assert _removed(conv_net(), "random") == _removed(conv_net(), "random")


def test_custom_importance_object():
    class LastChannelsFirst:
        def __call__(self, group, graph):
            return -np.arange(group.size, dtype=float)

    pruner = Pruner(conv_net(), PruneConfig(ratio=0.25, importance=LastChannelsFirst(),
                                            round_to=1))
    group = pruner.graph.group_of("conv_1")
    assert pruner.plan()[group.id].tolist() == [0, 1, 2, 3, 4, 5]


def test_config_is_validated():
    for bad in [{"ratio": 1.0}, {"ratio": -0.1}, {"scope": "layer"}, {"round_to": 0},
                {"importance": "taylor"}, {"overrides": {"conv_1": 2.0}}]:
        with pytest.raises(Exception, match="must be|unknown"):
            PruneConfig(**bad)


def test_cli_prune_writes_a_pruned_onnx_and_compile_records_it(tmp_path, capsys):
    out = tmp_path / "pruned.onnx"
    assert main(["prune", "example:digits", "--ratio", "0.5", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["after"]["macs"] == 60_064
    assert onnx.load(str(out)).graph.initializer[0].dims[0] == 8
    assert main(["compile", "example:digits", "--prune", "0.5", "-o", str(tmp_path / "d.so")]) == 0
    manifest = json.loads((tmp_path / "d.so.json").read_text())
    stages = [name.split("/")[0] for name in manifest["passes"]]
    assert "prune/prune_channels" in manifest["passes"]  # the Relax pass, after simplify
    assert stages.index("prune") == stages.count("simplify")
    assert manifest["report"]["prune"]["after"]["macs"] == 60_064
    compensated = tmp_path / "compensated.onnx"
    assert main(["prune", "example:digits", "--ratio", "0.5", "-o", str(compensated),
                 "--compensate", "--calib", "example:digits"]) == 0
    capsys.readouterr()
    assert _initializer(onnx.load(str(compensated)), "fc.bias").tolist() != \
        _initializer(onnx.load(str(out)), "fc.bias").tolist()
    assert main(["prune", "example:digits", "--ratio", "1.5"]) == 1
    assert "must be in [0, 1)" in capsys.readouterr().err


class FilterNorm:
    """|W| of each channel's own filters only (the consumers' input slices not counted)."""

    def __call__(self, group, graph):
        return sum(np.abs(values).sum(axis=1) for _cut, values in group_slices(
            group, graph, roles=("out",)))


def constant_channel_net() -> onnx.ModelProto:
    """conv_1 (1x1) whose filters 4..7 are zero, so those channels are their bias everywhere;
    ReLU; conv_2 (1x1) reads all eight; global pooling to the output."""
    g = _Graph(seed=16)
    y = g.op("Relu", [g.conv("x", 3, 8, kernel=1)])
    pooled = g.op("GlobalAveragePool", [g.conv(y, 8, 4, kernel=1)])
    model = g.model("constant_channel_net", [_float_input("x", [1, 3, 6, 6])],
                    {"y": g.op("Flatten", [pooled], axis=1)}, {"y": _float_output([1, 4])})
    for init in model.graph.initializer:
        if init.name in ("w_1", "const_1"):
            value = numpy_helper.to_array(init).copy()
            value[4:] = 0.0 if init.name == "w_1" else np.abs(value[4:]) + 0.5
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    return model


def test_compensation_makes_removing_constant_channels_exact():
    model = constant_channel_net()
    config = PruneConfig(ratio=0.5, round_to=1, importance=FilterNorm())
    inputs = _feed(model)
    expected = ort_outputs(model, inputs)["y"]
    plain, report = prune(model, config)
    assert report.plan[0].tolist() == [0, 1, 2, 3]  # the zero filters go
    assert np.abs(ort_outputs(plain, inputs)["y"] - expected).max() > 0.1
    compensated, _ = prune(model, PruneConfig(ratio=0.5, round_to=1, importance=FilterNorm(),
                                              compensate=True))
    np.testing.assert_allclose(ort_outputs(compensated, inputs)["y"], expected, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_compensation_lowers_the_output_error_on_digits(ratio):
    samples = get_example("digits").samples()
    model, feed = digits_model(), {"input": samples["input"]}
    calib = {"input": samples["calibration"]}
    expected = ort_outputs(model, feed)["logits"]

    def error(compensate, calib=None):
        config = PruneConfig(ratio=ratio, compensate=compensate)
        pruned, _ = prune(model, config, calib=calib)
        return np.abs(ort_outputs(pruned, feed)["logits"] - expected).mean()

    plain = error(False)
    assert error(True) < 0.9 * plain  # data-free: E[relu] of each BatchNorm's N(beta, gamma^2)
    assert error(True, calib) < 0.9 * plain  # calibrated channel means

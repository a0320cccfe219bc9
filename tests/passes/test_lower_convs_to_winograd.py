"""lower_convs_to_winograd: planned fp32 3x3 stride-1 convs become Winograd F(4x4, 3x3)'s input
transform, tile products and output transform - same outputs, a quarter of the multiply-adds."""

import json

import numpy as np
import pytest
import tvm
from tvm import relax

from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.passes.lower_convs_to_winograd import OUT_EWISE_FUSABLE, lower_to_winograd
from relaycomp.passes.schedule_cpu_loops import RULE_ATTR, schedule_cpu_loops, schedule_report
from relaycomp.rewrite import winograd
from relaycomp.targets import resolve
from tests.helpers import assert_matches_ort
from tests.models import _float_input, _float_output, _Graph

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("tile", [4, 2])
def test_the_transforms_compute_a_3x3_correlation(tile):
    """``A^T [(G g G^T) . (B^T d B)] A`` is the ``tile x tile`` valid correlation of ``d``."""
    a, b, g = winograd.matrices(tile)
    d = RNG.standard_normal((tile + 2, tile + 2))
    kernel = RNG.standard_normal((3, 3))
    direct = np.array([[(d[y:y + 3, x:x + 3] * kernel).sum() for x in range(tile)]
                       for y in range(tile)])
    np.testing.assert_allclose(a.T @ ((g @ kernel @ g.T) * (b.T @ d @ b)) @ a, direct,
                               rtol=1e-9, atol=1e-9)


def _blocked_conv(size=16, stride=1, dilation=1, dtype="float32", block=32, padding=1):
    """A Relax conv on ``NCHW32c``, as ``plan_conv_layout`` leaves one."""
    x = relax.Var("x", relax.TensorType((1, 1, size, size, block), dtype))
    weight = relax.const(RNG.standard_normal((1, 1, 3, 3, block, block)).astype(dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(
                x, weight, strides=stride, padding=padding, dilation=dilation,
                data_layout=f"NCHW{block}c", kernel_layout=f"OIHW{block}i{block}o",
                out_layout=f"NCHW{block}c"))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    return bb.get()


def _kernel_names(mod) -> list[str]:
    return sorted(gvar.name_hint for gvar, func in mod.functions_items()
                  if isinstance(func, tvm.tirx.PrimFunc))


def test_a_fitting_conv_becomes_three_kernels_its_input_transform_never_fused_into():
    report = {}
    lowered = lower_to_winograd(_blocked_conv(), report)
    assert report == {"lowered": 1, "tile": "F(4x4, 3x3)"}
    assert _kernel_names(lowered) == ["winograd_input", "winograd_output", "winograd_products"]
    annotated = relax.transform.AnnotateTIROpPattern()(lowered)
    patterns = {gvar.name_hint: int(func.attrs["op_pattern"])
                for gvar, func in annotated.functions_items()
                if isinstance(func, tvm.tirx.PrimFunc)}
    assert patterns["winograd_input"] == OUT_EWISE_FUSABLE  # kept through the annotation
    assert patterns["winograd_output"] <= 2  # injective: the conv's epilogue fuses into it
    products = next(binding.value for binding in lowered["main"].body.blocks[0].bindings
                    if binding.value.op.name == "relax.call_tir"
                    and binding.value.args[0].name_hint == "winograd_products")
    assert tuple(products.args[1].fields[1].value.shape) == (36, 32, 32)  # U, at compile time


@pytest.mark.parametrize("conv", [
    {"stride": 2},                 # strided: no tiles of a correlation
    {"dilation": 2},
    {"size": 7},                   # 7x7 outputs: too few tiles to pay for the weight
    {"dtype": "bfloat16"},         # fp32 only
], ids=["stride2", "dilation2", "7x7", "bf16"])
def test_convs_it_does_not_fit_keep_the_direct_kernel(conv):
    report = {}
    before = _blocked_conv(**conv)
    assert lower_to_winograd(before, report) is before
    assert report == {}


def test_the_transforms_get_the_winograd_schedule():
    target = resolve("x86-64-avx512", num_cores=2).tvm_target()
    with target:
        mod = tvm.transform.Sequential([
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
            relax.transform.FuseOps(), relax.transform.FuseTIR(),
            schedule_cpu_loops(target)])(lower_to_winograd(_blocked_conv()))
    by_rule = schedule_report(mod)["by_rule"]
    assert by_rule == {"contraction": 1, "winograd": 2}  # the ReLU fused into the output's


def _resnet_stage(size: int, channels: int = 32, batch: int = 1, first_pads=(1, 1, 1, 1)):
    """conv + ReLU, conv, residual add, ReLU (a ResNet basic block), in ONNX; with other
    ``first_pads`` (top, left, bottom, right) than 1 the first conv changes the map's size and
    the block has no residual."""
    g = _Graph(seed=3)
    first = g.op("Relu", [g.op("Conv", [
        "x", g.weight((channels, channels, 3, 3), 9 * channels),
        g.const(RNG.standard_normal(channels).astype("float32") * 0.1)],
        kernel_shape=[3, 3], pads=list(first_pads))])
    second = g.conv(first, channels, channels)
    top, left, bottom, right = first_pads
    out_size = [size + top + bottom - 2, size + left + right - 2]
    residual = tuple(first_pads) == (1, 1, 1, 1)
    out = g.op("Relu", [g.op("Add", [second, "x"]) if residual else second])
    return g.model("stage", [_float_input("x", [batch, channels, size, size])], {"y": out},
                   {"y": _float_output([batch, channels, *out_size])})


@pytest.mark.parametrize(("size", "batch", "first_pads"), [
    (16, 1, (1, 1, 1, 1)),   # 4x4 tiles that cover the map exactly
    (14, 2, (1, 1, 1, 1)),   # the last tiles reach past the map; two images
    (18, 1, (0, 0, 0, 0)),   # an unpadded conv: 16x16 outputs of an 18x18 input
    (16, 1, (2, 0, 1, 1)),   # uneven padding: 17x15 outputs
])
def test_compiled_convs_match_onnxruntime(tmp_path, size, batch, first_pads):
    x = RNG.standard_normal((batch, 32, size, size)).astype("float32")
    assert_matches_ort(_resnet_stage(size, batch=batch, first_pads=first_pads), {"x": x},
                       tmp_path, rtol=2e-5)
    report = json.loads((tmp_path / "model.so.json").read_text())["report"]
    assert report["winograd"] == {"lowered": 2, "tile": "F(4x4, 3x3)"}


def test_an_onnx_conv_without_bias_matches_too(tmp_path):
    """No bias: the output transform is the kernel's last block, nothing fused after it."""
    g = _Graph(seed=5)
    hidden = g.conv("x", 32, 32, bias=False)
    out = g.conv(hidden, 32, 32, bias=False)
    model = g.model("plain", [_float_input("x", [1, 32, 16, 16])], {"y": out},
                    {"y": _float_output([1, 32, 16, 16])})
    x = RNG.standard_normal((1, 32, 16, 16)).astype("float32")
    assert_matches_ort(model, {"x": x}, tmp_path, rtol=2e-5)


def test_every_kernel_of_a_lowered_conv_gets_its_rule():
    """The transforms get the Winograd schedule, also an output transform fused with the
    layout change back to NCHW where the chain ends (else the injective rule left its
    coefficients as runtime selects: 27x slower); the tile products the contraction rule."""
    target = resolve("host", num_cores=2).tvm_target()
    stages, _ = split_before(default_stages("llvm"), "lower")
    mod = run_stages(import_onnx(_resnet_stage(16)).mod, stages, target)[0]
    rules = {gvar.name_hint: str(func.attrs[RULE_ATTR]) for gvar, func in mod.functions_items()
             if isinstance(func, tvm.tirx.PrimFunc) and "winograd" in gvar.name_hint}
    assert any("layout_transform" in name for name in rules), rules  # the case in question
    for name, rule in rules.items():
        assert rule == ("contraction" if "products" in name else "winograd"), (name, rule)


def test_a_conv_whose_transformed_weight_would_take_over_4_mib_stays_direct():
    """256 channels: the transformed weight, 4x the conv's, would be 9.4 MB in the artifact."""
    x = relax.Var("x", relax.TensorType((1, 8, 14, 14, 32), "float32"))
    weight = relax.const(np.zeros((8, 8, 3, 3, 32, 32), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(
                x, weight, padding=1, data_layout="NCHW32c", kernel_layout="OIHW32i32o",
                out_layout="NCHW32c"))
        bb.emit_func_output(out)
    before = bb.get()
    assert lower_to_winograd(before) is before

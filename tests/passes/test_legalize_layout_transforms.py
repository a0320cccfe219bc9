"""legalize_layout_transforms: a layout change is a kernel written over its output - a copy
(padding where the map sends nothing), injective, so that FuseOps merges it with its neighbours."""

import numpy as np
import pytest
import tvm
from tvm import relax

from relaycomp.passes.legalize_layout_transforms import lower_layout_transforms
from tests.helpers import assert_matches_ort
from tests.models import _float_input, _float_output, _Graph

PACK = tvm.tirx.IndexMap.from_func(lambda n, c, h, w: (n, c // 4, h, w, c % 4))
UNPACK = tvm.tirx.IndexMap.from_func(lambda n, c, h, w, b: (n, c * 4 + b, h, w))


def _module(shape, index_map, pad_value=None, then_concat=False):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.layout_transform(x, index_map, pad_value))
            if then_concat:
                y = bb.emit(relax.op.concat([y, y], axis=1))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, *arrays):
    exe = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def _kernels(mod) -> list[tvm.tirx.PrimFunc]:
    return [func for _, func in mod.functions_items() if isinstance(func, tvm.tirx.PrimFunc)]


def test_a_layout_change_becomes_one_injective_kernel_written_over_its_output():
    lowered = lower_layout_transforms(_module((1, 8, 3, 5), PACK))
    annotated = relax.transform.AnnotateTIROpPattern()(lowered)
    [kernel] = _kernels(annotated)
    assert int(kernel.attrs["op_pattern"]) <= 2  # injective (TVM's own lowering: opaque)
    assert "layout_transform" not in [call.op.name for call in _calls(lowered)
                                      if isinstance(call.op, tvm.ir.Op)]


def _calls(mod):
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e)
                                    if isinstance(e, relax.Call) else None)
    return found


@pytest.mark.parametrize(("shape", "index_map", "pad"), [
    ((1, 8, 3, 5), PACK, None),
    ((1, 3, 4, 6), PACK, 0.0),   # 3 channels into one 4-wide block: the fourth is padding
    ((1, 3, 4, 6), PACK, 7.5),   # ... with the pad value asked for
    ((1, 2, 3, 5, 4), UNPACK, None),
])
def test_the_kernel_copies_every_element_and_pads_the_rest(shape, index_map, pad):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    mod = _module(shape, index_map, pad)
    expected = _run(relax.transform.LegalizeOps()(mod), x)  # TVM's own lowering
    actual = _run(lower_layout_transforms(mod), x)
    np.testing.assert_array_equal(actual, expected)
    if pad is not None:
        assert (actual[:, :, :, :, 3] == pad).all()


def test_fuse_ops_merges_the_change_with_its_consumer():
    mod = relax.transform.LegalizeOps()(lower_layout_transforms(
        _module((1, 8, 3, 5), PACK, then_concat=True)))
    fused = relax.transform.FuseTIR()(relax.transform.FuseOps()(
        relax.transform.AnnotateTIROpPattern()(mod)))
    assert len(_kernels(fused)) == 1


def test_a_resize_concat_neck_between_planned_convs_matches_onnxruntime(tmp_path):
    """PP-OCR's neck: planned convs, an upsampled branch and a concat on 24-channel (padded)
    tensors - the layout changes fuse with the slice/resize/concat around them."""
    g = _Graph(seed=3)
    x = g.conv(g.conv("x", 16, 32), 32, 24)
    low = g.conv(g.conv(x, 24, 32, stride=2), 32, 24)
    up = g.op("Resize", [low, "", g.const(np.array([1, 1, 2, 2], np.float32))],
              mode="nearest")
    cat = g.op("Concat", [x, up], axis=1)
    y = g.op("Relu", [g.conv(cat, 48, 32)])
    model = g.model("neck", [_float_input("x", [1, 16, 16, 16])], {"y": y},
                    {"y": _float_output([1, 32, 16, 16])})
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 16)).astype(np.float32)
    assert_matches_ort(model, {"x": x}, tmp_path)

"""pack_matvec_weights: a product of few rows with a large constant weight reads that weight
packed in blocks of 64 columns, then slices the padding off; other products stay as they are."""

import numpy as np
import onnx
import pytest
import tvm
from models import _float_input, _float_output, _Graph
from tvm import relax

import relaycomp
from relaycomp.ir import op_counts
from relaycomp.passes.pack_matvec_weights import pack_matvec
from relaycomp.rewrite.matvec import BLOCK, KERNEL, pack_columns
from tests.helpers import ort_outputs


def _product(rows: int, depth: int, columns: int) -> tuple[tvm.IRModule, np.ndarray]:
    """``x @ W + b`` with ``x: [rows, depth]`` and constants ``W: [depth, columns]``, ``b``."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((depth, columns)).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((rows, depth), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            product = bb.emit(relax.op.matmul(x, relax.const(weight)))
            biased = bb.emit_output(relax.op.add(product, relax.const(
                rng.standard_normal(columns).astype(np.float32))))
        bb.emit_func_output(biased)
    return bb.get(), weight


def _kernels(mod) -> dict[str, tvm.tirx.PrimFunc]:
    return {gvar.name_hint: func for gvar, func in mod.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc)}


def test_a_classifier_reads_its_weight_packed_and_slices_the_padding_off():
    mod, weight = _product(1, 1280, 1000)  # MobileNetV2's classifier
    report = {}
    packed = pack_matvec(mod, report)
    assert report == {"packed": 1}
    assert "matmul" not in op_counts(packed)
    assert op_counts(packed)["strided_slice"] == 1
    kernel = _kernels(packed)[KERNEL]
    assert [int(d) for d in kernel.params[1].shape] == [16, 1280, BLOCK]  # 1000 -> 16 x 64
    [call] = [c for c in _calls(packed) if c.op.name == "relax.call_tir"]
    blocks = call.args[1][1].value.numpy()
    np.testing.assert_array_equal(blocks[3, :, 5], weight[:, 3 * BLOCK + 5])
    assert not blocks[-1, :, 1000 - 15 * BLOCK:].any()  # the 24 columns past N are zero


def _calls(mod) -> list[relax.Call]:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e)
                                    if isinstance(e, relax.Call) else None)
    return found


@pytest.mark.parametrize(("rows", "depth", "columns"), [
    (1, 64, 100),      # 25 KB: in cache whichever way it is read
    (8, 1280, 1000),   # eight rows share each weight vector in the plain layout
    (1, 2048, 64),     # one block of columns: nothing to run in parallel
])
def test_small_weights_many_rows_and_single_blocks_stay_a_matmul(rows, depth, columns):
    mod, _ = _product(rows, depth, columns)
    report = {}
    assert pack_matvec(mod, report) is mod
    assert report == {}


def _gemm_model(rows: int, depth: int, columns: int) -> onnx.ModelProto:
    g = _Graph(seed=5)
    y = g.linear("x", depth, columns)  # Gemm with transB=1, as nn.Linear exports
    return g.model("classifier", [_float_input("x", [rows, depth])], {"y": y},
                   {"y": _float_output([rows, columns])})


@pytest.mark.parametrize(("rows", "columns"), [(1, 1000), (3, 130)])
def test_a_packed_classifier_matches_onnxruntime(tmp_path, rows, columns):
    model = _gemm_model(rows, 1280, columns)
    x = np.random.default_rng(1).standard_normal((rows, 1280)).astype(np.float32)
    artifact = relaycomp.compile(model, tmp_path / "m.so", inputs={"x": x.shape})
    assert artifact.pipeline.facts("pack_matvec_weights") == {"packed": 1}
    actual = relaycomp.load(artifact.path).run({"x": x})["y"]
    expected = ort_outputs(model, {"x": x})["y"]
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_pack_columns_keeps_every_column_in_its_block():
    weight = np.arange(3 * 130, dtype=np.float32).reshape(3, 130)
    blocks = pack_columns(weight)
    assert blocks.shape == (3, 3, BLOCK)
    restored = blocks.transpose(1, 0, 2).reshape(3, -1)
    np.testing.assert_array_equal(restored[:, :130], weight)
    assert not restored[:, 130:].any()

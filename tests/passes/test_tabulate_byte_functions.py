"""tabulate_byte_functions: an elementwise chain of quantize round trips on one 8-bit tensor
becomes one table lookup, computed at compile time by running the chain on all 256 values; the
outputs are the chain's, value for value."""

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper
from qdq import ort_qdq, ort_run
from tvm import relax

import relaycomp
from relaycomp.ir import op_counts
from relaycomp.passes.tabulate_byte_functions import tabulate_chains

SHAPE = (1, 4, 3, 5)
SCALES = np.array([0.05, 0.1, 0.2, 0.4], "float32")  # per channel (axis 1)


def _quantize(bb, x, scale, dtype="uint8"):
    zero = 128 if dtype == "uint8" else 0
    return bb.emit(relax.op.quantize(x, relax.const(scale), relax.const(zero, dtype), axis=1,
                                     out_dtype=dtype))


def _dequantize(bb, q, scale, dtype="uint8"):
    zero = 128 if dtype == "uint8" else 0
    return bb.emit(relax.op.dequantize(q, relax.const(scale), relax.const(zero, dtype), axis=1,
                                       out_dtype="float32"))


def _hardswish_chain(dtype="uint8", *, reads_intermediate=False, reshape=False,
                     quantize_ops=3) -> tvm.IRModule:
    """``x * clip(x + 3, 0, 6) / 6`` on dequantized 8-bit ``q``, requantized after each step:
    a QDQ model's hardswish, per-channel scales on the way."""
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType(SHAPE, dtype))
    with bb.function("main", [q]):
        with bb.dataflow():
            x = _dequantize(bb, q, SCALES, dtype)
            shifted = bb.emit(relax.op.clip(bb.emit(relax.op.add(x, relax.const(3.0))), 0, 6))
            if quantize_ops >= 3:
                shifted = _dequantize(bb, _quantize(bb, shifted, np.float32(0.03), dtype),
                                      np.float32(0.03), dtype)
            if reshape:
                shifted = bb.emit(relax.op.reshape(bb.emit(relax.op.reshape(shifted, (60,))),
                                                   SHAPE))
            product = bb.emit(relax.op.multiply(x, shifted))
            if quantize_ops >= 2:
                product = _dequantize(bb, _quantize(bb, product, np.float32(0.15), dtype),
                                      np.float32(0.15), dtype)
            out = _quantize(bb, bb.emit(relax.op.divide(product, relax.const(6.0))),
                            SCALES / 2, dtype)
            outputs = (out, x) if reads_intermediate else out
            result = bb.emit_output(relax.Tuple(outputs) if reads_intermediate else outputs)
        bb.emit_func_output(result)
    return bb.get()


def _run(mod, q: np.ndarray):
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(q)).numpy()


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_a_hardswish_chain_becomes_one_lookup_with_the_same_outputs(dtype):
    before = _hardswish_chain(dtype)
    report = {}
    after = tabulate_chains(before, report)
    assert report == {"tabulated": 1, "quantize_ops": 3}
    assert not {"quantize", "dequantize", "multiply"} & set(op_counts(after))
    [table] = [func for gvar, func in after.functions_items() if gvar.name_hint == "lookup_table"]
    assert [int(d) for d in table.params[1].shape] == [4 * 256]  # per channel: 4 x 256 values
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    for _ in range(5):  # every value lands in every channel over the draws
        q = rng.integers(info.min, info.max + 1, SHAPE).astype(dtype)
        np.testing.assert_array_equal(_run(after, q), _run(before, q))


def test_every_input_value_in_every_channel_looks_up_what_the_chain_computes():
    before = _hardswish_chain("uint8")
    after = tabulate_chains(before)
    for shift in range(0, 256, 15):  # 15 positions per channel: 18 shifts cover 256 values
        q = np.stack([(np.arange(15) + shift + 7 * c) % 256 for c in range(4)]) \
            .reshape(SHAPE).astype("uint8")
        np.testing.assert_array_equal(_run(after, q), _run(before, q))


@pytest.mark.parametrize("variant", [
    {"quantize_ops": 1},              # one rounding: the arithmetic is as cheap as a lookup
    {"reads_intermediate": True},     # the dequantized input is read outside the chain
    {"reshape": True},                # a reshape is not elementwise: two separate pieces
])
def test_chains_that_must_stay_arithmetic_stay(variant):
    mod = _hardswish_chain(**variant)
    report = {}
    assert tabulate_chains(mod, report) is mod
    assert report == {}


def test_a_function_of_two_8bit_tensors_is_no_chain():
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType(SHAPE, "uint8"))
    b = relax.Var("b", relax.TensorType(SHAPE, "uint8"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            total = bb.emit(relax.op.add(_dequantize(bb, a, SCALES), _dequantize(bb, b, SCALES)))
            again = _dequantize(bb, _quantize(bb, total, np.float32(0.1)), np.float32(0.1))
            out = bb.emit_output(_quantize(bb, bb.emit(relax.op.multiply(again, again)),
                                           np.float32(0.2)))
        bb.emit_func_output(out)
    mod = bb.get()
    assert tabulate_chains(mod) is mod


def _conv_hardswish_model() -> onnx.ModelProto:
    """Conv -> HardSwish written out (x * clip(x + 3, 0, 6) / 6) -> Conv, as exporters do."""
    rng = np.random.default_rng(0)

    def weight(name, shape):
        return helper.make_tensor(name, TensorProto.FLOAT, shape,
                                  (rng.standard_normal(shape) * 0.3).astype(np.float32).ravel())

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "three"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "zero", "six"], ["gate"]),
        helper.make_node("Mul", ["c1", "gate"], ["scaled"]),
        helper.make_node("Div", ["scaled", "six"], ["act"]),
        helper.make_node("Conv", ["act", "w2"], ["y"]),
    ]
    scalars = [helper.make_tensor(n, TensorProto.FLOAT, [], [v])
               for n, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0))]
    graph = helper.make_graph(
        nodes, "conv_hardswish", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                [1, 8, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 12])],
        [weight("w1", [16, 8, 3, 3]), weight("w2", [8, 16, 1, 1]), *scalars])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_quantized_hardswish_model_is_tabulated_and_matches_onnxruntime(tmp_path):
    model = ort_qdq(_conv_hardswish_model())
    x = np.random.default_rng(1).standard_normal((1, 8, 12, 12)).astype(np.float32)
    artifact = relaycomp.compile(model, tmp_path / "m.so", inputs={"x": x.shape})
    assert artifact.pipeline.facts("tabulate_byte_functions")["tabulated"] == 1
    actual = relaycomp.load(artifact.path).run({"x": x})["y"]
    expected = ort_run(model, {"x": x}, optimized=False)  # float compute between exact Q/DQ
    scale = float(np.abs(expected).max()) / 127
    assert np.abs(actual - expected).max() <= 2 * scale
    assert np.mean(np.abs(actual - expected) <= scale / 2) > 0.95

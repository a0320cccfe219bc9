"""reduce_from_infinity: float max/min reductions start from -inf/+inf, so a row of -inf
reduces to -inf (onnxruntime's answer), not to the lowest finite float; sums are untouched."""

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax

from relaycomp.passes.reduce_from_infinity import rewrite_primfunc
from tests.helpers import assert_matches_ort


def _legalized(op) -> tvm.tirx.PrimFunc:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(op(x, axis=1))
        bb.emit_func_output(y)
    mod = relax.transform.LegalizeOps()(bb.get())
    return next(f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


@pytest.mark.parametrize(("op", "start"), [(relax.op.max, "-inf"), (relax.op.min, "inf")])
def test_a_max_or_min_reduction_starts_from_infinity(op, start):
    func, count = rewrite_primfunc(_legalized(op))
    assert count == 1
    assert f"T.float32(\"{start}\")" in func.script() or f"T.float32({start})" in func.script()


def test_a_sum_is_left_alone():
    before = _legalized(relax.op.sum)
    after, count = rewrite_primfunc(before)
    assert count == 0 and after.same_as(before)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_rows_of_infinity_match_onnxruntime(op, tmp_path):
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], axes=[1], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.array([[-np.inf] * 3, [np.inf] * 3, [1, 2, 3]], np.float32)
    actual = assert_matches_ort(model, {"x": x}, tmp_path)
    assert np.isinf(actual["y"][0 if op == "ReduceMax" else 1])

"""schedule_cpu_loops' row-reductions rule: softmax's row maximum and sum accumulate in vectors
(rfactor), inside one parallel loop over the rows; the maximum still starts from -inf."""

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper

from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.schedules.cpu.row_reductions import RowReductionsRule
from relaycomp.targets import resolve
from tests.helpers import assert_matches_ort

SHAPE = [2, 6, 128]


def _model(op: str):
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], axis=-1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _kernel(op: str) -> tvm.tirx.PrimFunc:
    target = resolve("x86-64-avx512", num_cores=2).tvm_target()
    stages, _ = split_before(default_stages("llvm"), "lower")
    scheduled, _ = run_stages(import_onnx(_model(op)).mod, stages, target)
    [kernel] = [f for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    return kernel


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_every_reduction_of_a_row_accumulates_in_vectors(op):
    kernel = _kernel(op)
    assert kernel.attrs["relaycomp.cpu_schedule_rule"] == RowReductionsRule.name
    script = kernel.script()
    assert script.count("_rf_update") == 2  # the maximum and the sum, both rfactor-ed
    assert 'T.float32("-inf")' in script  # reduce_from_infinity's start survives the rfactor
    assert "-3.4028234663852886e+38" not in script


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_rows_with_masked_entries_match_onnxruntime(op, tmp_path):
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32) * 4
    x[0, 1, ::3] = -np.inf  # an attention mask
    x[1, 2, :100] = -np.inf
    x[1, 3] = -50.0  # all equal, far below zero
    actual = assert_matches_ort(_model(op), {"x": x}, tmp_path, rtol=1e-5)
    if op == "Softmax":
        assert (actual["y"][0, 1, ::3] == 0).all()

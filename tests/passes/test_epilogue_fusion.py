"""Epilogue fusion: conv/matmul + bias + activation + residual add compile to one kernel."""

import numpy as np
import pytest
import tvm
from helpers import assert_matches_ort
from onnx import TensorProto, helper, numpy_helper

from relaycomp.compiler.pipeline import default_stages, run_stages
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.ir import kernel_traffic

ACTIVATIONS = {
    "Relu": lambda: [helper.make_node("Relu", ["c"], ["a"])],
    "Clip": lambda: [helper.make_node("Clip", ["c", "lo", "hi"], ["a"])],  # ReLU6
    "SiLU": lambda: [helper.make_node("Sigmoid", ["c"], ["s"]),
                     helper.make_node("Mul", ["c", "s"], ["a"])],
    "HardSwish": lambda: [helper.make_node("HardSwish", ["c"], ["a"])],
    "Gelu": lambda: [helper.make_node("Gelu", ["c"], ["a"])],
}


def block(anchor: str, activation: str):
    """anchor(x) + bias -> activation -> + x (residual), as ONNX (opset 20 for Gelu)."""
    rng = np.random.default_rng(0)
    if anchor == "Conv":
        shape = [1, 8, 16, 16]
        inits = [numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3), np.float32) * .2, "w"),
                 numpy_helper.from_array(rng.standard_normal(8, np.float32), "b")]
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    else:
        shape = [4, 32]
        inits = [numpy_helper.from_array(rng.standard_normal((32, 32), np.float32) * .2, "w"),
                 numpy_helper.from_array(rng.standard_normal(32, np.float32), "b")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
                 helper.make_node("Add", ["m", "b"], ["c"])]
    inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
              numpy_helper.from_array(np.array(6, np.float32), "hi")]
    nodes += ACTIVATIONS[activation]() + [helper.make_node("Add", ["a", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "epilogue", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), shape


@pytest.mark.parametrize("anchor", ["Conv", "MatMul"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_anchor_bias_activation_and_residual_become_one_kernel(anchor, activation, tmp_path):
    model, shape = block(anchor, activation)
    stages = [s for s in default_stages("llvm") if s.name not in ("schedule", "lower")]
    mod, _ = run_stages(import_onnx(model).mod, stages, tvm.target.Target({"kind": "llvm"}))
    assert kernel_traffic(mod) == {"kernels": 1, "intermediate_bytes": 0}
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert_matches_ort(model, {"x": x}, tmp_path)
